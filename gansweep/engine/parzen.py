"""Parzen-window log-likelihood (Goodfellow et al. 2014, Table 1).

Fit an isotropic Gaussian of width sigma at each of N generated samples mu_i and score
held-out data x in d dimensions:

    log p(x) = logsumexp_i(-||x - mu_i||^2 / (2 sigma^2)) - log N - d log(sigma sqrt(2 pi))

The protocol of the original code on MNIST (data scaled to [0, 1]):

- N = 10,000 generated samples are the kernel centres;
- sigma is chosen from GOODFELLOW_SIGMAS = logspace(-1, 0, 10) (0.100 ... 1.000) by the
  mean log-likelihood of 1,000 validation images (training examples 50,000 to 50,999);
- the reported number is the mean log-likelihood of the whole test set (10,000 images),
  plus or minus the standard error std / sqrt(n_test) (numpy's std, ddof = 0).

`evaluate` runs that protocol; `data_as_model_baseline` runs it with real training images
as the centres. Parzen scores in high dimensions say little about sample quality (Theis,
van den Oord and Bethge 2015): report the baseline beside every GAN score.

Numerics. With sigma = 0.1 an error of e in a squared distance moves log p by e / 0.02,
and the expansion ||x||^2 + ||mu||^2 - 2 x.mu cancels badly for near neighbours: with a
float32 matrix product, even on data centred by a common mean and with float64 norms, the
Fashion-MNIST data-as-model score is off by up to 2.4e-3 nats per example at sigma = 0.1
(benchmarks/README.md). So the distances are computed in float64, on data centred by the
samples' mean (which keeps the three terms small), and clamped at 0: error about 1e-7 nats.
The float64 product still dominates the cost (evaluate() takes about 1.2x the bare float64
products on a 2-core CPU, where float64 products take 1.8x float32 ones). Data-centre GPUs
run float64 at or near their float32 (non-TF32) rate; consumer GPUs at 1/64 of it, which
still does the protocol's 1.7e11 flops in about 0.1 s.
The exponentials of the max-shifted exponents are taken in float32: only exponents within
about 40 nats of the maximum matter, and their float32 rounding is below 1e-5 nats.
Devices without float64 (Apple MPS) fall back to float32 throughout, with the error above.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

GOODFELLOW_SIGMAS: tuple[float, ...] = tuple(float(s) for s in np.logspace(-1, 0, 10))
GOODFELLOW_N_SAMPLES = 10_000
GOODFELLOW_N_VALID = 1_000

# Elements of one (x rows, samples) block of squared distances when chunk_size is None.
# A block holds 16 bytes per element at its peak (float64 distances, a float32 copy and one
# float32 buffer of exponentials): 2**23 elements is 128 MiB.
_BLOCK_ELEMENTS = 1 << 23
# Exponents are shifted so that the largest is exp(0) = 1. Those below -80 are raised to -80:
# that keeps exp() off its slow underflow and denormal path, and N terms of e^-80 (2e-35)
# change no sum that holds a 1.
_MIN_EXPONENT = -80.0


@dataclass(frozen=True)
class ParzenResult:
    """The outcome of one Parzen evaluation. Log-likelihoods are in nats per example."""

    sigma: float  # the kernel width chosen on the validation set
    mean: float  # mean test log-likelihood at that width
    stderr: float  # std / sqrt(n_test) of the per-example test log-likelihoods (ddof 0)
    valid_means: tuple[float, ...]  # mean validation log-likelihood per grid sigma
    sigmas: tuple[float, ...]  # the grid
    n_samples: int  # kernel centres
    n_test: int


def _wide_dtype(device: torch.device) -> torch.dtype:
    # MPS has no float64; everything else does.
    return torch.float32 if device.type == "mps" else torch.float64


def _flatten(t: Tensor, name: str) -> Tensor:
    if t.dim() < 2:
        raise ValueError(f"{name} must have shape (N, d) or (N, C, H, W), got {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    return t.reshape(t.shape[0], -1)


def _check_sigmas(sigmas: Sequence[float]) -> tuple[float, ...]:
    out = tuple(float(s) for s in sigmas)
    if not out:
        raise ValueError("sigmas must not be empty")
    bad = [s for s in out if not (s > 0.0 and math.isfinite(s))]
    if bad:
        raise ValueError(f"sigmas must be positive and finite, got {bad}")
    return out


def _block_shape(n_x: int, n_samples: int, chunk_size: int | None) -> tuple[int, int]:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return chunk_size, chunk_size
    cols = min(n_samples, _BLOCK_ELEMENTS // 64)
    return max(1, min(n_x, _BLOCK_ELEMENTS // cols)), cols


@dataclass(frozen=True)
class _Centres:
    """Kernel centres prepared once per evaluation: centred, widened, with squared norms."""

    centre: Tensor  # (d,) the samples' mean
    mu: Tensor  # (N, d) samples - centre
    mu_sq: Tensor  # (N,) ||mu||^2

    @classmethod
    def of(cls, samples: Tensor) -> _Centres:
        wide = _wide_dtype(samples.device)
        # Centring by a common mean keeps ||x||^2, ||mu||^2 and x.mu small, so their sum
        # cancels less; the distances themselves do not change.
        centre = samples.mean(0, dtype=wide)
        mu = samples.to(wide, copy=True).sub_(centre)
        return cls(centre, mu, mu.square().sum(1))


def _log_likelihoods(
    centres: _Centres, x: Tensor, sigmas: Tensor, chunk_size: int | None
) -> Tensor:
    """Per-example log p(x) for each sigma: (S,) sigmas, (M, d) x -> (S, M).

    sigmas is a tensor (on any device) so that callers can pick a width on the device without
    reading it back. Each block's squared distances are computed once and reused for every
    sigma.
    """
    mu, mu_sq, centre = centres.mu, centres.mu_sq, centres.centre
    n, d = mu.shape
    if x.shape[1] != d:
        raise ValueError(f"samples have {d} dimensions but the data have {x.shape[1]}")
    device, wide = mu.device, mu.dtype
    m, s = x.shape[0], sigmas.shape[0]
    x = x.to(device)
    sigmas = sigmas.to(device=device, dtype=wide)
    inv = 0.5 / sigmas**2  # (S,) 1 / (2 sigma^2)
    neg_inv32 = (-inv).float()
    log_norm = math.log(n) + d * torch.log(sigmas * math.sqrt(2.0 * math.pi))  # (S,)

    rows, cols = _block_shape(m, n, chunk_size)
    rows, cols = min(rows, m), min(cols, n)
    # Buffers reused by every block: fresh CPU allocations of this size are mmap'd and
    # page-faulted in on each use, which costs more than the exponentials themselves.
    xb_buf = torch.empty(rows, d, dtype=wide, device=device)
    partial_buf = torch.empty(rows * cols, dtype=wide, device=device)
    shifted_buf = torch.empty(rows * cols, dtype=torch.float32, device=device)
    exp_buf = torch.empty(rows * cols, dtype=torch.float32, device=device)
    sums = torch.empty(s, rows, dtype=torch.float32, device=device)
    out = torch.empty(s, m, dtype=wide, device=device)
    for r0 in range(0, m, rows):
        x_b = x[r0 : r0 + rows]
        m_b = x_b.shape[0]
        xb = xb_buf[:m_b].copy_(x_b).sub_(centre)  # (m_b, d)
        xb_sq = xb.square().sum(1)  # (m_b,)
        acc: Tensor | None = None  # (S, m_b) logsumexp over the sample blocks seen so far
        for c0 in range(0, n, cols):
            mu_b = mu[c0 : c0 + cols]
            shape = (m_b, mu_b.shape[0])
            count = shape[0] * shape[1]
            # (m_b, n_b): ||mu||^2 - 2 x.mu, one matrix product. ||x||^2 is constant along a
            # row, so it cancels from the shifted distances and joins only the row minimum.
            partial = torch.addmm(
                mu_sq[c0 : c0 + cols],
                xb,
                mu_b.T,
                alpha=-2.0,
                out=partial_buf[:count].view(shape),
            )
            row_min = partial.amin(1)  # (m_b,)
            nearest = (row_min + xb_sq).clamp_min_(0.0)  # (m_b,) smallest squared distance
            # (m_b, n_b) >= 0: squared distance minus the row's smallest, then float32.
            # (In place and copy_: a float32 out= on float64 inputs allocates a temporary.)
            partial.sub_(row_min[:, None])
            shifted = shifted_buf[:count].view(shape).copy_(partial)
            block = sums[:, :m_b]  # (S, m_b)
            for k in range(s):
                exps = torch.mul(shifted, neg_inv32[k], out=exp_buf[:count].view(shape))
                exps.clamp_min_(_MIN_EXPONENT).exp_()
                torch.sum(exps, 1, out=block[k])  # >= 1: the nearest term is exp(0)
            lse = block.to(wide).log_() - inv[:, None] * nearest  # (S, m_b)
            acc = lse if acc is None else torch.logaddexp(acc, lse)
        assert acc is not None
        out[:, r0 : r0 + m_b] = acc
    return out.sub_(log_norm[:, None])


def parzen_log_likelihood_grid(
    samples: Tensor,
    x: Tensor,
    sigmas: Sequence[float],
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """Per-example Parzen log-likelihoods of x for every width in sigmas: (len(sigmas), M).

    samples: (N, d) kernel centres; x: (M, d) points to score (images are flattened). Works in
    chunks of at most chunk_size rows of x and chunk_size samples (by default, blocks of about
    8M distances); each chunk's squared distances are computed once and shared by all sigmas.
    The result is float64 (float32 on MPS) on the samples' device.
    """
    samples = _flatten(samples, "samples")
    x = _flatten(x, "x")
    grid = torch.tensor(_check_sigmas(sigmas), dtype=torch.float64)
    return _log_likelihoods(_Centres.of(samples), x, grid, chunk_size)


def parzen_log_likelihood(
    samples: Tensor,
    x: Tensor,
    sigma: float,
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """Per-example Parzen log-likelihood of x (M,) under kernels of width sigma at samples."""
    return parzen_log_likelihood_grid(samples, x, [sigma], chunk_size=chunk_size)[0]


def evaluate(
    samples: Tensor,
    valid: Tensor,
    test: Tensor,
    sigmas: Sequence[float] = GOODFELLOW_SIGMAS,
    *,
    chunk_size: int | None = None,
) -> ParzenResult:
    """Goodfellow's protocol: choose sigma by the mean validation log-likelihood over the grid,
    then score the test set at that sigma. Reads back from the device once."""
    grid = _check_sigmas(sigmas)
    samples = _flatten(samples, "samples")
    valid = _flatten(valid, "valid")
    test = _flatten(test, "test")
    sigma_t = torch.tensor(grid, dtype=torch.float64)
    centres = _Centres.of(samples)
    valid_means = _log_likelihoods(centres, valid, sigma_t, chunk_size).mean(1)  # (S,)
    best = valid_means.argmax()  # first maximum, on the device
    sigma_best = sigma_t.to(valid_means.device)[best].reshape(1)
    test_ll = _log_likelihoods(centres, test, sigma_best, chunk_size)[0]  # (n_test,)
    n_test = test_ll.shape[0]
    summary = torch.cat(
        [
            valid_means,
            test_ll.mean().reshape(1),
            (test_ll.std(correction=0) / math.sqrt(n_test)).reshape(1),
            best.to(valid_means.dtype).reshape(1),
        ]
    ).cpu()  # the one read-back
    values = summary.tolist()
    s = len(grid)
    return ParzenResult(
        sigma=grid[int(values[s + 2])],
        mean=values[s],
        stderr=values[s + 1],
        valid_means=tuple(values[:s]),
        sigmas=grid,
        n_samples=samples.shape[0],
        n_test=n_test,
    )


def data_as_model_baseline(
    train: Tensor,
    valid: Tensor,
    test: Tensor,
    sigmas: Sequence[float] = GOODFELLOW_SIGMAS,
    n_samples: int = GOODFELLOW_N_SAMPLES,
    seed: int = 0,
    *,
    chunk_size: int | None = None,
) -> ParzenResult:
    """The Theis et al. caveat baseline: evaluate() with n_samples real training examples
    (a random subset drawn with `seed`) as the kernel centres instead of generated samples.

    A training set smaller than n_samples (the bundled digits) is used whole; the result's
    n_samples says how many centres were used."""
    train = _flatten(train, "train")
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    n_samples = min(n_samples, train.shape[0])
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(train.shape[0], generator=generator)[:n_samples]
    centres = train[index.to(train.device)]
    return evaluate(centres, valid, test, sigmas, chunk_size=chunk_size)
