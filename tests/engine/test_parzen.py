"""Parzen-window log-likelihood: agreement with a float64 scipy reference, the grid, chunking,
sigma selection, the data-as-model baseline, a closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from scipy.special import logsumexp
from scipy.stats import Covariance, multivariate_normal
from sklearn.datasets import load_digits

from gansweep.engine.parzen import (
    GOODFELLOW_SIGMAS,
    ParzenResult,
    data_as_model_baseline,
    evaluate,
    parzen_log_likelihood,
    parzen_log_likelihood_grid,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
NATS = 1e-3  # the agreement the project asks for, per example


def reference(samples: np.ndarray, x: np.ndarray, sigma: float) -> np.ndarray:
    """float64 numpy/scipy: direct squared distances (no expansion), scipy's logsumexp."""
    samples = np.asarray(samples, dtype=np.float64).reshape(len(samples), -1)
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    n, d = samples.shape
    sq = cdist(x, samples, "sqeuclidean")  # (M, N)
    return (
        logsumexp(-sq / (2 * sigma**2), axis=1)
        - math.log(n)
        - d * math.log(sigma * math.sqrt(2 * math.pi))
    )


def data(kind: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if kind == "2d":
        return torch.rand(300, 2, generator=g), torch.rand(50, 2, generator=g)
    if kind == "784d":
        return torch.rand(300, 784, generator=g), torch.rand(40, 784, generator=g)
    # "near": MNIST-like mostly-0/1 images whose nearest sample is a close copy: the case in
    # which ||x||^2 + ||mu||^2 - 2 x.mu cancels badly (a float32 product misses by 2e-3 here).
    base = (torch.rand(40, 784, generator=g) < 0.2).float()
    noise = 0.03 * torch.randn(300, 784, generator=g)
    samples = (base.repeat(8, 1)[:300] + noise).clamp(0, 1)
    return samples, (base + 0.03 * torch.randn(40, 784, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["2d", "784d", "near"])
@pytest.mark.parametrize("sigma", [0.1, 0.3, 1.0])
def test_agrees_with_float64_reference(kind: str, sigma: float, device: str) -> None:
    samples, x = data(kind)
    got = parzen_log_likelihood(samples.to(device), x.to(device), sigma)
    assert got.shape == (len(x),)
    assert got.device.type == device
    want = torch.from_numpy(reference(samples.numpy(), x.numpy(), sigma))
    torch.testing.assert_close(got.cpu().double(), want, rtol=0, atol=NATS)


def test_grid_equals_per_sigma_calls() -> None:
    samples, x = data("784d")
    grid = parzen_log_likelihood_grid(samples, x, GOODFELLOW_SIGMAS)
    assert grid.shape == (len(GOODFELLOW_SIGMAS), len(x))
    for k, sigma in enumerate(GOODFELLOW_SIGMAS):
        torch.testing.assert_close(grid[k], parzen_log_likelihood(samples, x, sigma))


def test_grid_computes_distances_once_per_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    addmm = torch.addmm

    def counting_addmm(*args, **kwargs):
        calls.append(1)
        return addmm(*args, **kwargs)

    monkeypatch.setattr(torch, "addmm", counting_addmm)
    samples, x = data("2d")
    parzen_log_likelihood_grid(samples, x, [0.5], chunk_size=100)
    one_sigma = len(calls)
    calls.clear()
    parzen_log_likelihood_grid(samples, x, GOODFELLOW_SIGMAS, chunk_size=100)
    assert len(calls) == one_sigma == 3  # 1 block of x rows times 3 blocks of samples


@pytest.mark.parametrize("chunk_size", [7, 10_000])
def test_chunking_does_not_change_results(chunk_size: int) -> None:
    samples, x = data("784d")
    whole = parzen_log_likelihood_grid(samples, x, GOODFELLOW_SIGMAS)
    chunked = parzen_log_likelihood_grid(samples, x, GOODFELLOW_SIGMAS, chunk_size=chunk_size)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)


@pytest.mark.parametrize("d", [1, 5, 784])
@pytest.mark.parametrize("sigma", [0.1, 1.0])
def test_single_sample_is_the_gaussian_density(d: int, sigma: float) -> None:
    rng = np.random.default_rng(d)
    mu, x = rng.random(d), rng.random(d)
    got = parzen_log_likelihood(torch.from_numpy(mu)[None], torch.from_numpy(x)[None], sigma)
    # cov = sigma^2 I, given as a diagonal so that scipy skips a 784 x 784 eigendecomposition
    want = multivariate_normal.logpdf(
        x, mean=mu, cov=Covariance.from_diagonal(np.full(d, sigma**2))
    )
    assert got.item() == pytest.approx(want, abs=NATS)


def test_evaluate_picks_the_known_width() -> None:
    # One kernel at the origin makes the model N(0, sigma^2 I); data drawn from N(0, s^2 I)
    # have their expected log-likelihood maximised at sigma = s, a point of the grid.
    s = GOODFELLOW_SIGMAS[4]
    g = torch.Generator().manual_seed(1)
    valid = s * torch.randn(4000, 2, generator=g, dtype=torch.float64)
    test = s * torch.randn(3000, 2, generator=g, dtype=torch.float64)
    result = evaluate(torch.zeros(1, 2), valid, test, GOODFELLOW_SIGMAS)
    assert result.sigma == s
    # closed form of the mean validation log-likelihood for each width
    mean_sq = float(valid.square().sum(1).mean())
    closed = [-math.log(2 * math.pi * sg**2) - mean_sq / (2 * sg**2) for sg in GOODFELLOW_SIGMAS]
    assert result.valid_means == pytest.approx(closed, abs=NATS)


def test_evaluate_matches_an_independent_computation() -> None:
    g = torch.Generator().manual_seed(2)
    samples = torch.randn(400, 3, generator=g) * 0.3
    valid = torch.randn(150, 3, generator=g) * 0.3
    test = torch.randn(250, 3, generator=g) * 0.3
    result = evaluate(samples, valid, test, GOODFELLOW_SIGMAS)

    valid_means = [reference(samples, valid, sg).mean() for sg in GOODFELLOW_SIGMAS]
    best = int(np.argmax(valid_means))
    test_ll = reference(samples, test, GOODFELLOW_SIGMAS[best])
    assert isinstance(result, ParzenResult)
    assert result.valid_means == pytest.approx(valid_means, abs=NATS)
    assert result.sigma == GOODFELLOW_SIGMAS[best]
    assert 0 < best < len(GOODFELLOW_SIGMAS) - 1  # an interior optimum: the choice matters
    assert result.mean == pytest.approx(test_ll.mean(), abs=NATS)
    assert result.stderr == pytest.approx(test_ll.std() / math.sqrt(len(test_ll)), rel=1e-6)
    assert result.sigmas == GOODFELLOW_SIGMAS
    assert (result.n_samples, result.n_test) == (400, 250)


def test_evaluate_flattens_images() -> None:
    g = torch.Generator().manual_seed(3)
    samples, valid, test = (torch.rand(n, 1, 4, 4, generator=g) for n in (60, 20, 30))
    flat = evaluate(samples.flatten(1), valid.flatten(1), test.flatten(1), GOODFELLOW_SIGMAS)
    assert evaluate(samples, valid, test, GOODFELLOW_SIGMAS) == flat


def test_evaluate_reads_back_once(monkeypatch: pytest.MonkeyPatch) -> None:
    reads = []
    cpu = torch.Tensor.cpu

    def counting_cpu(self, *args, **kwargs):
        reads.append(1)
        return cpu(self, *args, **kwargs)

    def forbidden(self, *args, **kwargs):
        raise AssertionError("a per-value read-back")

    monkeypatch.setattr(torch.Tensor, "cpu", counting_cpu)
    for name in ("item", "numpy", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    samples, x = data("784d")
    evaluate(samples, x[:20], x[20:], GOODFELLOW_SIGMAS, chunk_size=7)
    assert len(reads) == 1


def digits_splits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(load_digits().data / 16.0).float()  # (1797, 64) in [0, 1]
    return images[:1000], images[1000:1300], images[1300:]


def test_data_as_model_baseline_beats_noise() -> None:
    train, valid, test = digits_splits()
    baseline = data_as_model_baseline(train, valid, test, GOODFELLOW_SIGMAS, n_samples=500)
    noise = torch.rand(500, 64, generator=torch.Generator().manual_seed(0))
    noise_result = evaluate(noise, valid, test, GOODFELLOW_SIGMAS)
    assert math.isfinite(baseline.mean) and math.isfinite(noise_result.mean)
    assert baseline.n_samples == 500 and baseline.n_test == len(test)
    assert baseline.mean > noise_result.mean + 10 * (baseline.stderr + noise_result.stderr)


def test_data_as_model_baseline_is_seeded() -> None:
    train, valid, test = digits_splits()
    first = data_as_model_baseline(train, valid, test, GOODFELLOW_SIGMAS, n_samples=200, seed=5)
    again = data_as_model_baseline(train, valid, test, GOODFELLOW_SIGMAS, n_samples=200, seed=5)
    other = data_as_model_baseline(train, valid, test, GOODFELLOW_SIGMAS, n_samples=200, seed=6)
    assert first == again
    assert first.mean != other.mean
    whole = data_as_model_baseline(train, valid, test, GOODFELLOW_SIGMAS, n_samples=5_000)
    assert whole.n_samples == len(train)  # a small training set is used whole
    with pytest.raises(ValueError, match="n_samples"):
        data_as_model_baseline(train, valid, test, GOODFELLOW_SIGMAS, n_samples=0)


def test_goodfellow_grid() -> None:
    assert len(GOODFELLOW_SIGMAS) == 10
    assert GOODFELLOW_SIGMAS[0] == pytest.approx(0.1)
    assert GOODFELLOW_SIGMAS[-1] == pytest.approx(1.0)
    assert all(type(s) is float for s in GOODFELLOW_SIGMAS)


@pytest.mark.parametrize(
    ("sigmas", "x_dim", "message"),
    [([], 2, "sigmas must not be empty"), ([0.1, -1.0], 2, "positive"), ([0.1], 3, "dimensions")],
)
def test_bad_arguments_are_named(sigmas: list[float], x_dim: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parzen_log_likelihood_grid(torch.rand(5, 2), torch.rand(4, x_dim), sigmas)
