"""Sample-quality metrics in a feature space, as pure functions of two sets of feature rows
(real, generated); where the features come from is gansweep.engine.features'.

    fid              Frechet distance between Gaussians fitted to the two sets (Heusel et al.
                     2017); 0 for equal moments, lower is better. Biased upwards by about
                     c / n: compare only at equal sizes.
    fid_infinity     FID extrapolated to infinitely many generated rows (Chong and Forsyth
                     2020): comparable across generated set sizes.
    kid              the unbiased MMD^2 estimator with the cubic polynomial kernel
                     k(x, y) = (x.y / d + 1)^3, averaged over random subsets (Binkowski et al.
                     2018; torch-fidelity's subsets and spread); 0 in expectation for equal
                     distributions, lower is better.
    precision/recall the k-nearest-neighbour manifolds of Kynkaanniemi et al. 2019: the share
                     of generated points inside the real manifold (precision) and of real
                     points inside the generated one (recall); higher is better.
    c2st_accuracy    the classifier two-sample test (Lopez-Paz and Oquab 2017): a fresh
                     k-NN classifier, fitted on half of each set, labels the other halves;
                     its held-out accuracy is 0.5 when the sets are indistinguishable.
    energy_distance  sqrt(2 E|X - Y| - E|X - X'| - E|Y - Y'|) (Szekely and Rizzo 2013): a
                     metric between distributions, 0 only for equal ones, no kernel or
                     bandwidth to choose; lower is better.
    d_auc            the ROC AUC of scores (a trial's own discriminator) real vs generated:
                     0.5 when D cannot tell them apart (whether because G is good or D blind).

Everything runs in float64 on the tensors' device; each function reads one result back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from gansweep.config.names import METRICS  # the registry, with the built-ins declared
from gansweep.extend import BUILT_IN

PR_NEIGHBOURS = 3  # Kynkaanniemi et al.'s k
FID_INFINITY_POINTS = 15  # Chong and Forsyth's number of sizes
KID_SUBSETS = 100  # Binkowski et al.'s and torch-fidelity's: 100 subsets of 1,000 rows
KID_SUBSET_SIZE = 1_000
CHUNK = 2_048  # rows of a distance matrix computed at once


def feature_metric(name: str) -> Callable[[Callable[[Tensor, Tensor], float]], Callable[[Tensor, Tensor], float]]:
    """A built-in metric of (real, generated) feature rows (config.names declares it, reads
    features): scoring.feature_scores computes every registered one that trial.metrics names."""

    def register(function: Callable[[Tensor, Tensor], float]) -> Callable[[Tensor, Tensor], float]:
        return METRICS.add(name, function, BUILT_IN)

    return register


def _rows(x: Tensor, name: str) -> Tensor:
    if x.dim() < 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must hold at least 2 feature rows (N, D), got {tuple(x.shape)}")
    return x.flatten(1).double()


# ---------------------------------------------------------------------------- FID


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians.

    tr((S1 S2)^(1/2)) is computed as the sum of the square roots of the eigenvalues of the
    symmetric S1^(1/2) S2 S1^(1/2) (the same spectrum): eigh on symmetric matrices, no
    complex parts to discard, unlike a general matrix square root."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    values, vectors = np.linalg.eigh(sigma1)
    root1 = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
    middle = root1 @ sigma2 @ root1
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * cross)


def moments(features: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of (N, D) rows, in float64 numpy."""
    x = _rows(features, "features")
    mean = x.mean(0)
    centred = x - mean
    cov = centred.T @ centred / (x.shape[0] - 1)
    return mean.cpu().numpy(), cov.cpu().numpy()


def fid(real: Tensor, fake: Tensor) -> float:
    return frechet_distance(*moments(real), *moments(fake))


def fid_infinity_sizes(n: int, points: int = FID_INFINITY_POINTS) -> np.ndarray:
    """`points` sizes evenly spaced from a tenth of n to n (Chong and Forsyth's 5,000 to
    50,000), without repeats."""
    return np.unique(np.linspace(max(2, n // 10), n, points).astype(np.int64))


@feature_metric("fid_infinity")
def fid_infinity(real: Tensor, fake: Tensor, *, seed: int = 0, points: int = FID_INFINITY_POINTS) -> float:
    """Chong and Forsyth's FID_infinity (their calculate_FID_infinity): the FID of all real
    rows against the first n of a fresh shuffle of the generated rows, for each n of
    fid_infinity_sizes (numpy's RandomState(seed) shuffles); the least-squares line of FID in
    1/n, evaluated at 1/n = 0. FID's bias is linear in 1/n, so the intercept is the FID of
    infinitely many generated samples, comparable across n (not across real set sizes)."""
    x, y = _rows(real, "real"), _rows(fake, "fake").to(real.device)
    real_moments = moments(x)
    sizes = fid_infinity_sizes(y.shape[0], points)
    rng = np.random.RandomState(seed)
    fids = [frechet_distance(*real_moments, *moments(y[torch.from_numpy(rng.permutation(y.shape[0])[:n]).to(y.device)]))
            for n in sizes]
    _, intercept = np.polyfit(1.0 / sizes, fids, 1)
    return float(intercept)


# ---------------------------------------------------------------------------- KID


def mmd2_unbiased(x: Tensor, y: Tensor) -> Tensor:
    """The unbiased MMD^2 of (m, d) and (n, d) rows under k(a, b) = (a.b / d + 1)^3."""
    d = x.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    m, n = x.shape[0], y.shape[0]
    xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return xx + yy - 2.0 * kxy.mean()


class KidEstimate(NamedTuple):
    """KID over random subsets: the mean and spread of the subsets' unbiased MMD^2, and the
    subsets that gave them (recorded beside the score: kid_subset_size, kid_subsets)."""

    mean: float
    std: float  # NaN for a single subset: one estimate has no spread
    subset_size: int
    subsets: int


def kid_subset_size(n_real: int, n_fake: int, largest: int = KID_SUBSET_SIZE) -> int:
    """`largest` rows, or half the smaller set where that is fewer.

    A subset as large as its set is the whole set: every subset then gives the same MMD^2 and
    the spread over subsets is 0 up to rounding (torch-fidelity refuses such a size; gansweep
    once took it silently). With at most half the rows, subsets differ and the spread is the
    spread of one subset's estimate, as torch-fidelity's is with its 1,000 of 10,000 or more
    rows (somewhat smaller: drawn from n rows, not from the distribution, by about
    sqrt(1 - size / n))."""
    return min(largest, min(n_real, n_fake) // 2)


def kid(
    real: Tensor, fake: Tensor, *, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE, seed: int = 0
) -> KidEstimate:
    """torch-fidelity's KID (kid_features_to_metric): `subsets` subsets of kid_subset_size rows
    of each set, each drawn without replacement (independently of the others) by numpy's
    RandomState(seed), real then generated; the mean and the population std (np.std) of their
    unbiased MMD^2. The same generator and order of draws: the same seed picks the same rows."""
    x, y = _rows(real, "real"), _rows(fake, "fake").to(real.device)
    size = kid_subset_size(x.shape[0], y.shape[0], subset_size)
    if size < 2:
        raise ValueError(f"KID needs at least 4 rows of each set (subsets of 2), got {x.shape[0]} and {y.shape[0]}")
    rng = np.random.RandomState(seed)
    values = []
    for _ in range(subsets):
        ix = torch.from_numpy(rng.choice(x.shape[0], size, replace=False)).to(x.device)
        iy = torch.from_numpy(rng.choice(y.shape[0], size, replace=False)).to(y.device)
        values.append(mmd2_unbiased(x[ix], y[iy]))
    stacked = torch.stack(values)
    mean, spread = torch.stack((stacked.mean(), stacked.std(correction=0))).tolist()
    return KidEstimate(mean, spread if subsets > 1 else math.nan, size, subsets)


# ---------------------------------------------------------------------------- precision, recall


def _kth_neighbour_radii(x: Tensor, k: int) -> Tensor:
    """Each row's distance to its k-th nearest other row of x."""
    radii = []
    for start in range(0, x.shape[0], CHUNK):
        dist = torch.cdist(x[start : start + CHUNK], x)
        # the row itself is at distance 0: the k-th other neighbour is the (k + 1)-th smallest
        radii.append(dist.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _inside_share(points: Tensor, centres: Tensor, radii: Tensor) -> Tensor:
    """The share of `points` within radii[j] of some centre j."""
    inside = []
    for start in range(0, points.shape[0], CHUNK):
        dist = torch.cdist(points[start : start + CHUNK], centres)
        inside.append((dist <= radii.unsqueeze(0)).any(1))
    return torch.cat(inside).double().mean()


def precision_recall(real: Tensor, fake: Tensor, k: int = PR_NEIGHBOURS) -> tuple[float, float]:
    """Kynkaanniemi et al.'s improved precision and recall with k-NN radii."""
    x, y = _rows(real, "real"), _rows(fake, "fake").to(real.device)
    if k >= min(x.shape[0], y.shape[0]):
        raise ValueError(f"k={k} needs more than k rows in each set, got {x.shape[0]} and {y.shape[0]}")
    precision = _inside_share(y, x, _kth_neighbour_radii(x, k))
    recall = _inside_share(x, y, _kth_neighbour_radii(y, k))
    p, r = torch.stack((precision, recall)).tolist()
    return p, r


# ---------------------------------------------------------------------------- energy distance


def _mean_distance(x: Tensor, y: Tensor) -> Tensor:
    """E|X - Y| over every pair of rows (a row with itself included: distance 0)."""
    total = torch.zeros((), dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[0], CHUNK):
        total = total + torch.cdist(x[start : start + CHUNK], y).sum()
    return total / (x.shape[0] * y.shape[0])


@feature_metric("energy_distance")
def energy_distance(real: Tensor, fake: Tensor) -> float:
    """Szekely and Rizzo's energy distance of the two sets' empirical distributions, the
    V-statistic over all pairs: scipy.stats.energy_distance's definition in one dimension."""
    x, y = _rows(real, "real"), _rows(fake, "fake").to(real.device)
    squared = 2 * _mean_distance(x, y) - _mean_distance(x, x) - _mean_distance(y, y)
    return math.sqrt(max(squared.item(), 0.0))  # >= 0 in exact arithmetic; rounding may dip below


# ---------------------------------------------------------------------------- C2ST


C2ST_MIN_ROWS = 4  # of each set: two to fit on, two to label


def c2st_accuracy(real: Tensor, fake: Tensor, *, seed: int = 0, neighbours: int | None = None) -> float:
    """Held-out accuracy of a k-NN classifier telling real from generated rows.

    Each set is cut to the smaller one's size (balanced classes: chance is 0.5), shuffled with
    `seed`, and halved; the classifier is fitted on the first halves and labels the second.
    k defaults to an odd number near sqrt(n_train) / 2, Lopez-Paz and Oquab's choice for their
    k-NN C2ST; features are standardised by the training half's moments (k-NN is not scale
    free). Ties cannot happen: k is odd and both classes are counted."""
    x, y = _rows(real, "real"), _rows(fake, "fake").to(real.device)
    n = min(x.shape[0], y.shape[0])
    if n < C2ST_MIN_ROWS:
        raise ValueError(f"C2ST needs at least {C2ST_MIN_ROWS} rows of each set, got {n}")
    generator = torch.Generator().manual_seed(seed)
    x = x[torch.randperm(x.shape[0], generator=generator)[:n].to(x.device)]
    y = y[torch.randperm(y.shape[0], generator=generator)[:n].to(y.device)]
    half = n // 2
    train = torch.cat((x[:half], y[:half]))
    test = torch.cat((x[half:], y[half:]))
    train_labels = torch.cat((torch.ones(half), torch.zeros(half))).to(x.device, torch.bool)
    test_labels = torch.cat((torch.ones(n - half), torch.zeros(n - half))).to(x.device, torch.bool)
    mean, std = train.mean(0), train.std(0).clamp_min(1e-12)
    train, test = (train - mean) / std, (test - mean) / std
    k = neighbours or max(1, round(math.sqrt(train.shape[0]) / 2))
    k += 1 - k % 2  # odd: a majority always exists
    correct = []
    for start in range(0, test.shape[0], CHUNK):
        nearest = torch.cdist(test[start : start + CHUNK], train).topk(k, dim=1, largest=False).indices
        votes = train_labels[nearest].sum(1) * 2 > k
        correct.append(votes == test_labels[start : start + CHUNK])
    return float(torch.cat(correct).double().mean())


# ---------------------------------------------------------------------------- D's AUC


def roc_auc(real_scores: Tensor, fake_scores: Tensor) -> float:
    """P(score of a real row > score of a generated row) + P(equal) / 2: the ROC AUC as the
    Mann-Whitney statistic, from the ranks of the pooled scores (ties get their mean rank)."""
    real, fake = real_scores.flatten().double(), fake_scores.flatten().double().to(real_scores.device)
    m, n = real.shape[0], fake.shape[0]
    if m == 0 or n == 0:
        raise ValueError(f"roc_auc needs scores of both kinds, got {m} real and {n} generated")
    pooled = torch.cat((real, fake))
    values, inverse, counts = torch.unique(pooled, return_inverse=True, return_counts=True)
    del values
    ends = counts.cumsum(0).double()
    mean_ranks = ends - (counts.double() - 1.0) / 2.0  # 1-based mean rank of each distinct value
    real_rank_sum = mean_ranks[inverse[:m]].sum()
    return float((real_rank_sum - m * (m + 1) / 2.0) / (m * n))
