"""Losses against their formulas written out independently in numpy float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gansweep.engine import losses as L
from gansweep.config.names import LossName
from typing import get_args

REAL = np.array([0.3, -1.2, 2.0, 0.5, -0.1, 1.5])
FAKE = np.array([-0.7, 0.4, -2.5, 0.1, 1.1, -0.3])


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# Per-sample terms written from the definitions (D = sigmoid(logit) for the BCE family).
def ref_real(loss: str, l: np.ndarray, s: float) -> np.ndarray:
    d = sigmoid(l)
    return {
        "minimax": -(s * np.log(d) + (1 - s) * np.log(1 - d)),
        "non_saturating": -(s * np.log(d) + (1 - s) * np.log(1 - d)),
        "max_likelihood": -(s * np.log(d) + (1 - s) * np.log(1 - d)),
        "least_squares": (l - s) ** 2,
        "hinge": np.maximum(0, 1 - l),
        "wasserstein_gp": -l,
        "feature_matching": -(s * np.log(d) + (1 - s) * np.log(1 - d)),
    }[loss]


def ref_fake(loss: str, l: np.ndarray) -> np.ndarray:
    d = sigmoid(l)
    return {
        "minimax": -np.log(1 - d),
        "non_saturating": -np.log(1 - d),
        "max_likelihood": -np.log(1 - d),
        "least_squares": l**2,
        "hinge": np.maximum(0, 1 + l),
        "wasserstein_gp": l,
        "feature_matching": -np.log(1 - d),
    }[loss]


def ref_generator(loss: str, l: np.ndarray) -> float:
    d = sigmoid(l)
    return float(
        {
            "minimax": np.log(1 - d),
            "non_saturating": -np.log(d),
            "max_likelihood": -d / (1 - d),
            "least_squares": 0.5 * (l - 1) ** 2,
            "hinge": -l,
            "wasserstein_gp": -l,
            "feature_matching": 0 * l,  # its cost is D's features' distance (test_stabilisers.py)
        }[loss].mean()
    )


def t(x: np.ndarray) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def test_registry_matches_study_names() -> None:
    assert set(L.LOSSES) == set(get_args(LossName))


@pytest.mark.parametrize("loss", list(L.LOSSES))
@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.7])
def test_weight_mode_matches_formula(loss: str, alpha: float) -> None:
    s = 0.9 if loss in ("minimax", "non_saturating", "max_likelihood", "least_squares") else 1.0
    plan = L.minibatch_plan("weight", alpha, len(REAL))
    w_real, w_fake = L.alpha_weights("weight", alpha, plan, torch.device("cpu"))
    got = L.discriminator_loss(L.LOSSES[loss], t(REAL), t(FAKE), w_real.double(), w_fake.double(), s)
    want = alpha * ref_real(loss, REAL, s).mean() + (1 - alpha) * ref_fake(loss, FAKE).mean()
    assert got.item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("loss", list(L.LOSSES))
def test_compose_mode_counts_each_sample_once(loss: str) -> None:
    alpha, m = 0.3, 10
    plan = L.minibatch_plan("compose", alpha, m)
    assert (plan.n_real, plan.n_fake) == (3, 7)
    real, fake = np.linspace(-1, 2, 3), np.linspace(-2, 1, 7)
    w_real, w_fake = L.alpha_weights("compose", alpha, plan, torch.device("cpu"))
    got = L.discriminator_loss(L.LOSSES[loss], t(real), t(fake), w_real.double(), w_fake.double())
    want = (ref_real(loss, real, 1.0).sum() + ref_fake(loss, fake).sum()) / m
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_bernoulli_mode_picks_one_term_per_slot() -> None:
    torch.manual_seed(3)
    plan = L.minibatch_plan("bernoulli", 0.3, 6)
    w_real, w_fake = L.alpha_weights("bernoulli", 0.3, plan, torch.device("cpu"))
    # each slot carries exactly one sample, real or fake, with weight 1/m
    torch.testing.assert_close(w_real + w_fake, torch.full((6,), 1 / 6))
    is_real = (w_real > 0).numpy()
    got = L.discriminator_loss(L.LOSSES["non_saturating"], t(REAL), t(FAKE), w_real.double(), w_fake.double())
    want = (ref_real("non_saturating", REAL, 1.0) * is_real + ref_fake("non_saturating", FAKE) * ~is_real).mean()
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_bernoulli_share_of_real_samples_is_alpha() -> None:
    torch.manual_seed(0)
    alpha, m, draws = 0.3, 64, 500
    plan = L.minibatch_plan("bernoulli", alpha, m)
    shares = [L.alpha_weights("bernoulli", alpha, plan, torch.device("cpu"))[0].sum().item() for _ in range(draws)]
    # binomial standard error of the mean share: sqrt(a(1-a)/(m draws)) ~ 0.0026; allow 4 of them
    assert np.mean(shares) == pytest.approx(alpha, abs=4 * math.sqrt(alpha * (1 - alpha) / (m * draws)))
    assert np.std(shares) == pytest.approx(math.sqrt(alpha * (1 - alpha) / m), rel=0.15)


@pytest.mark.parametrize("loss", list(L.LOSSES))
def test_generator_loss_matches_formula(loss: str) -> None:
    got = L.generator_loss(L.LOSSES[loss], t(FAKE))
    assert got.item() == pytest.approx(ref_generator(loss, FAKE), rel=1e-6)


@pytest.mark.parametrize("loss", ["minimax", "non_saturating", "max_likelihood"])
def test_bce_terms_stay_finite_for_confident_logits(loss: str) -> None:
    logits = torch.tensor([-200.0, 200.0])
    terms = (L.LOSSES[loss].real_term(logits, 0.9), L.LOSSES[loss].fake_term(logits))
    assert all(torch.isfinite(x).all() for x in terms)
    # -log sigmoid(-200) = 200 exactly in the stable form (log(sigmoid + eps) would cap it)
    assert L.LOSSES[loss].real_term(logits, 1.0)[0].item() == pytest.approx(200.0)


THEORY_TABLE = [(0.1, 0.3251, 2.3026), (0.3, 0.6109, 1.2040), (0.5, 0.6931, 0.6931), (0.7, 0.6109, 0.3567), (0.9, 0.3251, 0.1054)]


@pytest.mark.parametrize(("alpha", "d_star", "g_star"), THEORY_TABLE)
def test_equilibrium_matches_theory_table(alpha: float, d_star: float, g_star: float) -> None:
    star = L.equilibrium("non_saturating", alpha)
    assert star.d_loss == pytest.approx(d_star, abs=5e-5)
    assert star.g_loss == pytest.approx(g_star, abs=5e-5)
    assert star.d_output == pytest.approx(alpha)


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.9])
def test_equilibrium_generator_costs(alpha: float) -> None:
    assert L.equilibrium("minimax", alpha).g_loss == pytest.approx(math.log(1 - alpha))
    assert L.equilibrium("max_likelihood", alpha).g_loss == pytest.approx(-alpha / (1 - alpha))


def test_smoothed_equilibrium_matches_theory() -> None:
    alpha, s = 0.5, 0.9
    star = L.equilibrium("non_saturating", alpha, s)
    want = -alpha * (s * math.log(s * alpha) + (1 - s) * math.log(1 - s * alpha)) - (1 - alpha) * math.log(1 - s * alpha)
    assert star.d_loss == pytest.approx(want)
    assert star.g_loss == pytest.approx(-math.log(s * alpha))


@pytest.mark.parametrize("loss", [n for n, rule in L.EQUILIBRIA.items() if rule is not None])
@pytest.mark.parametrize(("alpha", "s"), [(0.3, 1.0), (0.5, 0.9), (0.7, 0.8)])
def test_equilibrium_is_the_loss_at_the_optimal_discriminator(loss: str, alpha: float, s: float) -> None:
    """With p_g = p_data, a constant D output is optimal; the loss there is L_D*, and any
    other constant gives more (the optimum is a minimum, checked on both sides)."""
    rule = L.LOSSES[loss]
    star = L.equilibrium(loss, alpha, s)
    to_logit = (lambda d: math.log(d / (1 - d))) if rule.probabilistic else (lambda d: d)

    def d_loss_at(output: float) -> float:
        x = torch.full((4,), to_logit(output), dtype=torch.float64)
        w = L.alpha_weights("weight", alpha, L.minibatch_plan("weight", alpha, 4), torch.device("cpu"))
        return L.discriminator_loss(rule, x, x, w[0].double(), w[1].double(), s).item()

    assert d_loss_at(star.d_output) == pytest.approx(star.d_loss, rel=1e-6)
    assert d_loss_at(star.d_output * 0.95) > star.d_loss
    assert d_loss_at(star.d_output * 1.05) > star.d_loss
    g = L.generator_loss(rule, torch.full((4,), to_logit(star.d_output), dtype=torch.float64))
    assert g.item() == pytest.approx(star.g_loss, rel=1e-6)


def test_no_equilibrium_where_theory_gives_none() -> None:
    assert L.equilibrium("hinge", 0.5) is None
    assert L.equilibrium("wasserstein_gp", 0.5) is None


def test_every_loss_has_an_equilibrium_entry() -> None:
    """theory.EQUILIBRIA (torch-free, for the driver and the report) covers exactly LOSSES."""
    assert set(L.EQUILIBRIA) == set(L.LOSSES)
    with pytest.raises(ValueError, match="unknown loss 'hinged'"):
        L.equilibrium("hinged", 0.5)


def test_gradient_penalty_of_a_linear_critic() -> None:
    # D(x) = w.x has gradient w everywhere: the penalty is (||w|| - 1)^2 exactly
    critic = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[2.0, 1.0, 2.0]]))  # norm 3
    gp = L.gradient_penalty(lambda x: critic(x).squeeze(1), torch.randn(5, 3), torch.randn(7, 3))
    assert gp.item() == pytest.approx(4.0)


def test_unknown_loss_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="non_saturating"):
        L.get_loss("wgan")
