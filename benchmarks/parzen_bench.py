"""Parzen evaluation: gansweep.parzen.evaluate against named baselines, in one run.

    python -m benchmarks.parzen_bench            # 10,000 samples x 10,000 test x 784 dims
    python -m benchmarks.parzen_bench --small    # 2,000 x 2,000, 200 validation points

Every method runs Goodfellow's protocol: choose sigma from the 10-point grid by the mean
log-likelihood of the validation points, then score the test points at that sigma.

- ours: gansweep.parzen.evaluate (float64 distances once per block, shared by the grid);
- per-sigma, recomputed: gansweep's kernel called once per sigma (distances recomputed);
- per-sigma, torch.cdist float32: the obvious torch code (cdist, logsumexp) per sigma;
- Goodfellow 2014 code: direct differences (x - mu) / sigma per sigma, as in the paper's
  Theano script, here in torch float32; timed on a subset of rows and extrapolated;
- scikit-learn KernelDensity (gaussian, bandwidth = sigma, exact tree, one thread):
  timed on a subset of rows and extrapolated;
- floor: the matrix products x @ samples.T alone, float64 (what ours needs) and float32.

The error column is the largest |log p| difference per example from a float64 reference
(scipy cdist 'sqeuclidean' + scipy logsumexp) on a subset of test points, at the chosen
sigma. Random data in [0, 1] by default; --data fashion-mnist uses real images (test images
scored against training images), where near neighbours make float32 expansions cancel.
"""

from __future__ import annotations

import argparse
import gzip
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.distance import cdist
from scipy.special import logsumexp

from gansweep.parzen import (
    GOODFELLOW_SIGMAS,
    evaluate,
    parzen_log_likelihood,
    parzen_log_likelihood_grid,
)

FASHION = Path("/usr/share/datasets/fashion-mnist")
ROWS_PER_BLOCK = 838  # what gansweep uses for 10,000 samples


def reference(samples: np.ndarray, x: np.ndarray, sigma: float) -> np.ndarray:
    n, d = samples.shape
    sq = cdist(x.astype(np.float64), samples.astype(np.float64), "sqeuclidean")
    return (
        logsumexp(-sq / (2 * sigma**2), axis=1)
        - math.log(n)
        - d * math.log(sigma * math.sqrt(2 * math.pi))
    )


def protocol(score: Callable[[torch.Tensor, float], torch.Tensor], valid, test) -> float:
    """Sigma selection on valid, then the test scores; returns the chosen sigma."""
    means = [float(score(valid, s).mean()) for s in GOODFELLOW_SIGMAS]
    sigma = GOODFELLOW_SIGMAS[int(np.argmax(means))]
    score(test, sigma).mean()
    return sigma


def cdist_float32(samples: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    n, d = samples.shape
    out = []
    for xb in x.split(ROWS_PER_BLOCK):
        sq = torch.cdist(xb, samples).square()  # float32, uses the mm expansion
        out.append(torch.logsumexp(-sq / (2 * sigma**2), 1))
    return torch.cat(out) - math.log(n) - d * math.log(sigma * math.sqrt(2 * math.pi))


def goodfellow_direct(samples: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    n, d = samples.shape
    out = []
    for xb in x.split(10):  # the original script's batch of 10
        a = (xb[:, None, :] - samples[None, :, :]) / sigma  # (10, N, d)
        out.append(torch.logsumexp(-0.5 * a.square().sum(2), 1))
    return torch.cat(out) - math.log(n) - d * math.log(sigma * math.sqrt(2 * math.pi))


def sklearn_kde(samples: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    from sklearn.neighbors import KernelDensity

    kde = KernelDensity(kernel="gaussian", bandwidth=sigma).fit(samples.double().numpy())
    return torch.from_numpy(kde.score_samples(x.double().numpy()))


def matmul_floor(samples: torch.Tensor, valid, test, dtype: torch.dtype) -> None:
    s = samples.to(dtype)
    for x in (valid, test):
        for xb in x.to(dtype).split(ROWS_PER_BLOCK):
            torch.mm(xb, s.T)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def load_fashion(n_samples: int, n_valid: int, n_test: int):
    def images(name: str) -> torch.Tensor:
        with gzip.open(FASHION / name) as f:
            raw = np.frombuffer(f.read(), np.uint8, offset=16)
        return torch.from_numpy(raw.reshape(-1, 784).astype(np.float32) / 255.0)

    train = images("train-images-idx3-ubyte.gz")
    test = images("t10k-images-idx3-ubyte.gz")
    return train[:n_samples], train[50_000 : 50_000 + n_valid], test[:n_test]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="2,000 x 2,000, quick")
    parser.add_argument("--data", choices=["uniform", "fashion-mnist"], default="uniform")
    parser.add_argument("--subset", type=int, default=200, help="test points for the error")
    parser.add_argument("--slow-rows", type=int, default=20, help="rows timed for slow ones")
    args = parser.parse_args()

    n_samples, n_valid, n_test = (2_000, 200, 2_000) if args.small else (10_000, 1_000, 10_000)
    d = 784
    if args.data == "uniform":
        g = torch.Generator().manual_seed(0)
        samples, valid, test = (torch.rand(n, d, generator=g) for n in (n_samples, n_valid, n_test))
    else:
        samples, valid, test = load_fashion(n_samples, n_valid, n_test)
    sub = test[: args.subset]
    print(
        f"{n_samples} samples x {n_test} test x {d} dims, {n_valid} validation points, "
        f"{args.data} data; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    parzen_log_likelihood(samples[:50], valid[:50], 0.2)  # warm up the kernels

    rows: list[tuple[str, float, str, float | None, float | None]] = []

    # ours
    seconds, result = timed(lambda: evaluate(samples, valid, test, GOODFELLOW_SIGMAS))
    sigma = result.sigma
    ref = reference(samples.numpy(), sub.numpy(), sigma)

    def err(values: torch.Tensor) -> float:
        return float(np.abs(values.double().numpy() - ref).max())

    ours_err = err(parzen_log_likelihood(samples, sub, sigma))
    rows.append(("ours: evaluate()", seconds, "measured", sigma, ours_err))
    print(f"ours: sigma {sigma:.4f}, test LL {result.mean:.2f} +- {result.stderr:.2f}")

    seconds, chosen = timed(
        lambda: protocol(lambda x, s: parzen_log_likelihood(samples, x, s), valid, test)
    )
    rows.append(("per-sigma, distances recomputed (gansweep kernel)", seconds, "measured",
                 chosen, ours_err))

    seconds, chosen = timed(lambda: protocol(lambda x, s: cdist_float32(samples, x, s), valid, test))
    rows.append(("per-sigma, torch.cdist float32 + logsumexp", seconds, "measured", chosen,
                 err(cdist_float32(samples, sub, sigma))))

    # the slow ones: time the protocol's work on a few rows and scale by rows x sigmas
    k = args.slow_rows
    work_full = n_valid * len(GOODFELLOW_SIGMAS) + n_test  # (row, sigma) evaluations
    work_part = k * len(GOODFELLOW_SIGMAS) + k
    for name, fn in (
        ("Goodfellow 2014 code: direct differences, per sigma", goodfellow_direct),
        ("scikit-learn KernelDensity (1 thread)", sklearn_kde),
    ):
        seconds, _ = timed(lambda: protocol(lambda x, s: fn(samples, x, s), valid[:k], test[:k]))
        rows.append((name, seconds * work_full / work_part,
                     f"extrapolated from {k} valid + {k} test rows", None,
                     err(fn(samples, sub, sigma))))

    for dtype, label in ((torch.float64, "float64"), (torch.float32, "float32")):
        seconds, _ = timed(lambda: matmul_floor(samples, valid, test, dtype))
        rows.append((f"floor: x @ samples.T alone, {label}", seconds, "measured", None, None))

    # the grid alone, to show what sharing distances saves on validation
    seconds, _ = timed(lambda: parzen_log_likelihood_grid(samples, valid, GOODFELLOW_SIGMAS))
    rows.append(("  (ours, validation grid only)", seconds, "measured", None, None))

    ours = rows[0][1]
    print(f"\nerror: largest |difference| per example from the float64 reference on "
          f"{len(sub)} test points at sigma {sigma:.4f}\n")
    print(f"| method | seconds | ratio to ours | timing | sigma chosen | error (nats) |")
    print("|---|---:|---:|---|---:|---:|")
    for name, seconds, how, chosen, error in rows:
        chosen_s = "" if chosen is None else f"{chosen:.4f}"
        error_s = "" if error is None else f"{error:.1e}"
        print(f"| {name} | {seconds:.2f} | {seconds / ours:.2f} | {how} | {chosen_s} | {error_s} |")


if __name__ == "__main__":
    main()
