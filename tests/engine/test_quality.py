"""Sample-quality metrics (engine/quality.py) against independent references: the Frechet
distance against pytorch-fid's and a closed form, KID against a direct NumPy sum and
torch-fidelity's, precision and recall against brute force and the prdc package, C2ST on
equal and disjoint sets, the AUC against scikit-learn; the side values each evaluation
records with them (engine/scoring.py); and the blind-discriminator decision (config/theory.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from gansweep.config.theory import BLIND, equilibrium, equilibrium_verdict
from gansweep.engine.quality import (
    c2st_accuracy,
    energy_distance,
    fid,
    fid_infinity,
    frechet_distance,
    kid,
    mmd2_unbiased,
    precision_recall,
    roc_auc,
)


def random_spd(d: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def sqrtm_reference(mu1, s1, mu2, s2) -> float:
    """pytorch-fid's Frechet distance (scipy's general matrix square root of S1 S2)."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    return float(calculate_frechet_distance(mu1, s1, mu2, s2))


# ---------------------------------------------------------------------------- FID


def test_frechet_distance_closed_form_of_diagonal_gaussians() -> None:
    # diagonal covariances commute: tr(S1 + S2 - 2 (S1 S2)^1/2) = sum (sqrt a - sqrt b)^2
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    assert expected == pytest.approx(1 + 6.25 + 4 + 1)


@pytest.mark.parametrize("d", [2, 16, 64])
def test_frechet_distance_agrees_with_pytorch_fid(d: int) -> None:
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = random_spd(d, rng), random_spd(d, rng)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(sqrtm_reference(mu1, s1, mu2, s2), rel=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_fid_of_samples_uses_their_mean_and_unbiased_covariance() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 5))
    y = rng.normal(loc=0.5, scale=2.0, size=(400, 5))
    expected = sqrtm_reference(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert fid(torch.tensor(x), torch.tensor(y)) == pytest.approx(expected, rel=1e-8)
    # and the estimate approaches the populations' closed form: 5 * 0.25 + 5 * (1 - 2)^2
    big = torch.randn(200_000, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert fid(big[:100_000], big[100_000:] * 2 + 0.5) == pytest.approx(6.25, rel=0.02)


def test_fid_infinity_agrees_with_chong_and_forsyths_procedure() -> None:
    """Their calculate_FID_infinity: FID at sizes evenly spaced over the generated rows, each of a
    fresh shuffle, then scikit-learn's linear regression on 1/n; here with pytorch-fid's FID."""
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(12)
    real, fake = rng.normal(size=(400, 6)), rng.normal(loc=0.3, scale=1.2, size=(300, 6))
    sizes = np.linspace(30, 300, 15).astype(np.int64)  # a tenth of the generated rows to all
    shuffles = np.random.RandomState(7)
    fids = [sqrtm_reference(real.mean(0), np.cov(real, rowvar=False), *moments_of(fake[shuffles.permutation(300)[:n]]))
            for n in sizes]
    expected = LinearRegression().fit(1 / sizes.reshape(-1, 1), np.array(fids)).predict(np.array([[0.0]]))[0]
    assert fid_infinity(torch.tensor(real), torch.tensor(fake), seed=7) == pytest.approx(expected, rel=1e-8)


def moments_of(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(0), np.cov(x, rowvar=False)


def test_fid_infinity_is_comparable_across_sizes_where_fid_is_not() -> None:
    # Gaussians with a known Frechet distance: 32 dimensions, mean shift 0.2, scale 1.5:
    # 32 * 0.2^2 + 32 * (1 - 1.5)^2 = 9.28. FID's bias at 500 generated rows is ~15%.
    g = torch.Generator().manual_seed(0)
    real = torch.randn(50_000, 32, generator=g, dtype=torch.float64)
    small, large = (torch.randn(n, 32, generator=g, dtype=torch.float64) * 1.5 + 0.2 for n in (500, 4_000))
    assert fid(real, small) == pytest.approx(10.63, abs=0.01)  # 9.28 + bias
    assert fid_infinity(real, small) == pytest.approx(9.28, rel=0.03)
    assert fid_infinity(real, large) == pytest.approx(9.28, rel=0.03)


# ---------------------------------------------------------------------------- KID


def mmd2_numpy(x: np.ndarray, y: np.ndarray) -> float:
    """Binkowski et al.'s unbiased estimator, written out as its sums over index pairs."""
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_mmd2_agrees_with_direct_numpy_sums() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(30, 4)), rng.normal(loc=0.3, size=(25, 4))
    assert float(mmd2_unbiased(torch.tensor(x), torch.tensor(y))) == pytest.approx(mmd2_numpy(x, y), rel=1e-10)


def test_kid_one_subset_is_the_mmd2_of_its_rows() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(40, 3)), rng.normal(scale=1.5, size=(40, 3))
    estimate = kid(torch.tensor(x), torch.tensor(y), subsets=1, subset_size=20, seed=5)
    draws = np.random.RandomState(5)  # torch-fidelity's generator: real rows first, then generated
    ix, iy = draws.choice(40, 20, replace=False), draws.choice(40, 20, replace=False)
    assert estimate.mean == pytest.approx(mmd2_numpy(x[ix], y[iy]), rel=1e-10)
    assert (estimate.subset_size, estimate.subsets) == (20, 1)
    assert math.isnan(estimate.std)  # one estimate has no spread


def torch_fidelity_kid(x: np.ndarray, y: np.ndarray, subsets: int, subset_size: int, seed: int) -> tuple[float, float]:
    from torch_fidelity.metric_kid import kid_features_to_metric

    out = kid_features_to_metric(torch.tensor(x), torch.tensor(y), kid_subsets=subsets, kid_subset_size=subset_size,
                                 rng_seed=seed, verbose=False)
    return out["kernel_inception_distance_mean"], out["kernel_inception_distance_std"]


def test_kid_agrees_with_torch_fidelity_on_large_sets() -> None:
    # at least twice the subset size in each set: torch-fidelity's own subsets, drawn alike
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(260, 6)), rng.normal(loc=0.2, scale=1.3, size=(300, 6))
    estimate = kid(torch.tensor(x), torch.tensor(y), subsets=30, subset_size=100, seed=11)
    mean, std = torch_fidelity_kid(x, y, subsets=30, subset_size=100, seed=11)
    assert (estimate.mean, estimate.std) == (pytest.approx(mean, rel=1e-10), pytest.approx(std, rel=1e-8))
    assert (estimate.subset_size, estimate.subsets) == (100, 30)


def test_kid_of_small_sets_draws_subsets_of_half_the_smaller_set() -> None:
    """Below twice the subset size, a subset of the whole set would make every subset the same
    (torch-fidelity refuses; gansweep's std was ~1e-16): half the smaller set instead, and
    torch-fidelity asked for that size gives the same mean and the same, real, spread."""
    rng = np.random.default_rng(10)
    x, y = rng.normal(size=(150, 6)), rng.normal(loc=0.2, size=(121, 6))
    estimate = kid(torch.tensor(x), torch.tensor(y), seed=3)  # the defaults: up to 100 subsets of 1,000
    assert (estimate.subset_size, estimate.subsets) == (60, 100)
    mean, std = torch_fidelity_kid(x, y, subsets=100, subset_size=60, seed=3)
    assert (estimate.mean, estimate.std) == (pytest.approx(mean, rel=1e-10), pytest.approx(std, rel=1e-8))


def test_kid_is_unbiased_near_zero_for_one_distribution_and_large_for_another() -> None:
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(3_000, 8, generator=g), torch.randn(3_000, 8, generator=g)
    same = kid(x, y, subsets=10, subset_size=1_000)
    assert same.mean == pytest.approx(0.0, abs=3 * same.std + 1e-3)
    assert kid(x, y + 1.0, subsets=10, subset_size=1_000).mean > 0.5


# ---------------------------------------------------------------------------- precision, recall


def pr_brute_force(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(points: np.ndarray) -> np.ndarray:
        out = []
        for i, p in enumerate(points):
            others = sorted(np.linalg.norm(p - q) for j, q in enumerate(points) if j != i)
            out.append(others[k - 1])
        return np.array(out)

    def share(points: np.ndarray, centres: np.ndarray, r: np.ndarray) -> float:
        return float(np.mean([any(np.linalg.norm(p - c) <= rc for c, rc in zip(centres, r)) for p in points]))

    return share(fake, real, radii(real)), share(real, fake, radii(fake))


@pytest.mark.parametrize(("seed", "k"), [(1, 3), (2, 5)])
def test_precision_recall_agree_with_brute_force_and_prdc(seed: int, k: int) -> None:
    from prdc import compute_prdc

    rng = np.random.default_rng(seed)
    real, fake = rng.normal(size=(60, 3)), rng.normal(loc=0.7, scale=0.6, size=(50, 3))
    p, r = precision_recall(torch.tensor(real), torch.tensor(fake), k=k)
    bp, br = pr_brute_force(real, fake, k)
    assert (p, r) == (pytest.approx(bp, abs=1e-12), pytest.approx(br, abs=1e-12))
    # prdc counts strictly inside a radius, gansweep on it too: equal with no ties (random floats)
    reference = compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
    assert (p, r) == (pytest.approx(reference["precision"], abs=1e-12), pytest.approx(reference["recall"], abs=1e-12))
    assert 0 < p < 1 and 0 < r < 1  # the case is not trivial


def test_precision_recall_known_answers() -> None:
    rng = np.random.default_rng(5)
    real = rng.uniform(size=(200, 2))
    # a generator of exactly the data: both manifolds are the same
    assert precision_recall(torch.tensor(real), torch.tensor(real)) == (1.0, 1.0)
    # half of its samples on the data, half collapsed far away: precision 1/2; the collapsed
    # half has a radius of 0 (identical points) and covers no real point, the other half
    # covers the real points it copies (among them) and maybe a few more
    fake = np.concatenate([real[:100], np.full((100, 2), 50.0)])
    p, r = precision_recall(torch.tensor(real), torch.tensor(fake))
    assert p == pytest.approx(0.5)
    assert r == pytest.approx(pr_brute_force(real, fake, 3)[1]) and r >= 0.5
    # disjoint sets: nothing of one lies in the other's manifold
    assert precision_recall(torch.tensor(real), torch.tensor(real + 10.0)) == (0.0, 0.0)


# ---------------------------------------------------------------------------- C2ST


def test_c2st_is_chance_for_one_distribution_and_perfect_for_disjoint_ones() -> None:
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(4_000, 2, generator=g), torch.randn(4_000, 2, generator=g)
    assert c2st_accuracy(x, y) == pytest.approx(0.5, abs=0.03)
    assert c2st_accuracy(x, y + 20.0) == pytest.approx(1.0)
    # a ring against a blob of the same mean: the moments agree roughly, the shapes do not
    angle = torch.rand(4_000, generator=g) * 6.283
    ring = torch.stack([angle.cos(), angle.sin()], 1) + 0.05 * torch.randn(4_000, 2, generator=g)
    assert c2st_accuracy(ring, 0.7 * x) > 0.8


def test_c2st_balances_the_classes() -> None:
    g = torch.Generator().manual_seed(7)
    # 10x more real rows than generated ones: chance stays 0.5, not 10/11
    assert c2st_accuracy(torch.randn(5_000, 3, generator=g), torch.randn(500, 3, generator=g)) == pytest.approx(
        0.5, abs=0.06
    )


# ---------------------------------------------------------------------------- D's AUC


def test_roc_auc_agrees_with_scikit_learn_with_ties() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(8)
    real = rng.integers(0, 6, size=300).astype(float)  # many ties, within and across
    fake = rng.integers(-2, 4, size=200).astype(float)
    expected = roc_auc_score(np.r_[np.ones(300), np.zeros(200)], np.r_[real, fake])
    assert roc_auc(torch.tensor(real), torch.tensor(fake)) == pytest.approx(expected, abs=1e-12)
    assert roc_auc(torch.zeros(10), torch.zeros(7)) == pytest.approx(0.5)  # a constant D
    assert roc_auc(torch.ones(10), torch.zeros(7)) == pytest.approx(1.0)


# ---------------------------------------------------------------------------- blind D


def at_equilibrium(loss: str = "non_saturating", alpha: float = 0.5, s: float = 0.534, **changes: float) -> dict:
    star = equilibrium(loss, alpha, s)
    assert star is not None
    metrics = {
        "d_loss_star": star.d_loss, "g_loss_star": star.g_loss, "d_loss_gap": 0.01 * star.d_loss,
        "g_loss_gap": 0.01 * abs(star.g_loss), "d_auc": 0.5, "d_logit_std": 0.0, "c2st_accuracy": 0.93,
    }
    return {**metrics, **changes}


def test_blind_discriminator_seed_003s_case() -> None:
    # D outputs the constant s alpha = 0.267: the losses are the equilibrium's, D's AUC is
    # 0.5, and a fresh classifier tells the samples from the data
    assert equilibrium("non_saturating", 0.5, 0.534).d_output == pytest.approx(0.267)
    assert equilibrium_verdict(at_equilibrium()) == BLIND


@pytest.mark.parametrize(
    "changes",
    [
        {"c2st_accuracy": 0.52},  # the samples are as good as the equilibrium says
        {"d_auc": 0.8, "d_logit_std": 0.3},  # D still sees the difference: not blind
        {"d_auc": 0.2, "d_logit_std": 0.3},
        {"d_loss_gap": 0.3},  # away from the equilibrium
        {"g_loss_gap": 0.5},
    ],
)
def test_not_blind_when_any_sign_is_missing(changes: dict) -> None:
    assert equilibrium_verdict(at_equilibrium(**changes)) != BLIND


def test_blind_discriminator_unknown_without_its_metrics() -> None:
    metrics = at_equilibrium()
    del metrics["d_auc"]
    with pytest.raises(ValueError, match="d_auc"):  # no verdict made up without D's check
        equilibrium_verdict(metrics)


# ---------------------------------------------------------------------------- energy distance


@pytest.mark.parametrize("seed", [0, 1])
def test_energy_distance_agrees_with_scipy_in_one_dimension(seed: int) -> None:
    rng = np.random.default_rng(seed)
    real, fake = rng.normal(size=700), rng.normal(0.3, 1.4, size=500)
    got = energy_distance(torch.tensor(real).unsqueeze(1), torch.tensor(fake).unsqueeze(1))
    assert got == pytest.approx(scipy.stats.energy_distance(real, fake), rel=1e-9)


def test_energy_distance_by_hand_in_two_dimensions() -> None:
    # E|X - Y| = (0 + 0 + 5 + 5) / 4, E|X - X'| = (0 + 5 + 5 + 0) / 4, E|Y - Y'| = 0
    real = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    fake = torch.zeros(2, 2)
    assert energy_distance(real, fake) == pytest.approx(math.sqrt(2 * 2.5 - 2.5 - 0.0))
    assert energy_distance(real, real) == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------------------- an evaluation's record


def test_an_evaluation_records_kid_and_precision_recall_with_their_settings() -> None:
    """engine.scoring.feature_scores keeps, beside the scores, what they were computed with:
    the rows compared, KID's subsets, precision's and recall's k; the same settings given to
    torch-fidelity and prdc reproduce the scores (a 2D set's features are its points)."""
    from prdc import compute_prdc

    from gansweep.config.schema import TrialConfig
    from gansweep.engine.data import load_dataset
    from gansweep.engine.scoring import feature_scores

    data = load_dataset("circle", seed=0, device="cpu")
    trial = TrialConfig(dataset="circle", metrics=("kid", "precision", "recall"), device="cpu")
    real, fake = data.test[:300], data.train[:250] * 1.1  # a generator a little too wide
    scores = feature_scores(trial, data, real, fake, seed=4)
    assert (scores["features"], scores["n_real"], scores["n_generated"]) == ("points:circle", 300, 250)
    assert (scores["kid_subset_size"], scores["kid_subsets"], scores["pr_k"]) == (125, 100, 3)
    x, y = real.double().numpy(), fake.double().numpy()
    mean, std = torch_fidelity_kid(x, y, subsets=100, subset_size=125, seed=4)
    assert (scores["kid"], scores["kid_std"]) == (pytest.approx(mean, rel=1e-10), pytest.approx(std, rel=1e-8))
    reference = compute_prdc(real_features=x, fake_features=y, nearest_k=3)
    assert (scores["precision"], scores["recall"]) == (
        pytest.approx(reference["precision"], abs=1e-12), pytest.approx(reference["recall"], abs=1e-12))
