"""Losses against their formulas written out independently in numpy float64, and the alpha
weights the iteration gives them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gansweep.engine import losses as L
from gansweep.engine.iteration import ALPHA_WEIGHTS
from gansweep.extend import LOSSES

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


def d_loss(loss: str, real: torch.Tensor, fake: torch.Tensor, w_real, w_fake, s: float = 1.0) -> float:
    """L_D of one minibatch as the iteration weighs a loss's terms (iteration.d_losses)."""
    terms = L.loss_terms(loss)
    return float((w_real * terms.real_term(real, s)).sum() + (w_fake * terms.d_fake(fake)).sum())


def g_loss(loss: str, fake: torch.Tensor) -> float:
    return float(L.loss_terms(loss).g(fake).mean())


def test_every_declared_loss_has_its_code_and_its_declared_needs() -> None:
    """config.names declares each built-in torch-free; engine.losses attaches the code. What
    the config's rules read (smoothable, the input gradient, D's features, a probability)
    must be what the code does."""
    assert LOSSES.names(built_in=True) == tuple(LOSSES)
    for name in LOSSES:
        terms = L.loss_terms(name)
        assert LOSSES.meta(name, "input_gradient") == (terms.d_input_gradient is not None), name
        assert LOSSES.meta(name, "features") == (terms.g_features is not None), name
        assert LOSSES.meta(name, "probabilistic") == terms.probabilistic, name
        assert LOSSES.get(name).description, name


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.7])
def test_weight_mode_matches_formula(loss: str, alpha: float) -> None:
    s = 0.9 if LOSSES.meta(loss, "smoothable") else 1.0
    m = len(REAL)
    w_real, w_fake = ALPHA_WEIGHTS["weight"](alpha, torch.empty(0), m, m)
    got = d_loss(loss, t(REAL), t(FAKE), w_real, w_fake, s)
    want = alpha * ref_real(loss, REAL, s).mean() + (1 - alpha) * ref_fake(loss, FAKE).mean()
    assert got == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("loss", list(LOSSES))
def test_compose_mode_counts_each_sample_once(loss: str) -> None:
    alpha, m = 0.3, 10
    plan = L.minibatch_plan("compose", alpha, m)
    assert (plan.n_real, plan.n_fake) == (3, 7)
    real, fake = np.linspace(-1, 2, 3), np.linspace(-2, 1, 7)
    w_real, w_fake = ALPHA_WEIGHTS["compose"](torch.tensor([[alpha]]), torch.empty(0), plan.n_real, plan.n_fake)
    got = d_loss(loss, t(real), t(fake), w_real.double().squeeze(0), w_fake.double().squeeze(0))
    want = (ref_real(loss, real, 1.0).sum() + ref_fake(loss, fake).sum()) / m
    assert got == pytest.approx(want, rel=1e-6)


def test_bernoulli_mode_picks_one_term_per_slot() -> None:
    coins = torch.rand(1, 6, generator=torch.Generator().manual_seed(3))
    w_real, w_fake = ALPHA_WEIGHTS["bernoulli"](torch.tensor([[0.3]]), coins, 6, 6)
    # each slot carries exactly one sample, real or fake, with weight 1/m
    torch.testing.assert_close(w_real + w_fake, torch.full((1, 6), 1 / 6))
    is_real = (w_real[0] > 0).numpy()
    got = d_loss("non_saturating", t(REAL), t(FAKE), w_real[0].double(), w_fake[0].double())
    want = (ref_real("non_saturating", REAL, 1.0) * is_real + ref_fake("non_saturating", FAKE) * ~is_real).mean()
    assert got == pytest.approx(want, rel=1e-6)


def test_bernoulli_share_of_real_samples_is_alpha() -> None:
    alpha, m, draws = 0.3, 64, 500
    coins = torch.rand(draws, m, generator=torch.Generator().manual_seed(0))
    shares = ALPHA_WEIGHTS["bernoulli"](torch.full((draws, 1), alpha), coins, m, m)[0].sum(1).numpy()
    # binomial standard error of the mean share: sqrt(a(1-a)/(m draws)) ~ 0.0026; allow 4 of them
    assert np.mean(shares) == pytest.approx(alpha, abs=4 * math.sqrt(alpha * (1 - alpha) / (m * draws)))
    assert np.std(shares) == pytest.approx(math.sqrt(alpha * (1 - alpha) / m), rel=0.15)


@pytest.mark.parametrize("loss", list(LOSSES))
def test_generator_loss_matches_formula(loss: str) -> None:
    assert g_loss(loss, t(FAKE)) == pytest.approx(ref_generator(loss, FAKE), rel=1e-6)


@pytest.mark.parametrize("loss", ["minimax", "non_saturating", "max_likelihood"])
def test_bce_terms_stay_finite_for_confident_logits(loss: str) -> None:
    logits = torch.tensor([-200.0, 200.0])
    terms = L.loss_terms(loss)
    assert all(torch.isfinite(x).all() for x in (terms.real_term(logits, 0.9), terms.d_fake(logits)))
    # -log sigmoid(-200) = 200 exactly in the stable form (log(sigmoid + eps) would cap it)
    assert terms.real_term(logits, 1.0)[0].item() == pytest.approx(200.0)


def test_smoothing_of_a_loss_without_its_own_is_the_mixture_of_its_terms() -> None:
    """A plugin's loss gets one-sided smoothing as s d_real + (1 - s) d_fake: for the BCE
    losses that is the cross-entropy against target s, which the built-ins' terms give."""

    class Plain:
        def d_real(self, logits):
            return torch.nn.functional.softplus(-logits)

        def d_fake(self, logits):
            return torch.nn.functional.softplus(logits)

        def g(self, logits):
            return -logits

    plain = L.terms_of(Plain(), "plain")
    for s in (0.9, torch.tensor([[0.8]], dtype=torch.float64)):
        smoothed = plain.real_term(t(REAL), s)
        torch.testing.assert_close(smoothed.reshape(-1), t(ref_real("non_saturating", REAL, float(s))))


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
    star = L.equilibrium(loss, alpha, s)
    to_logit = (lambda d: math.log(d / (1 - d))) if L.loss_terms(loss).probabilistic else (lambda d: d)

    def d_loss_at(output: float) -> float:
        x = torch.full((4,), to_logit(output), dtype=torch.float64)
        w_real, w_fake = ALPHA_WEIGHTS["weight"](alpha, torch.empty(0), 4, 4)
        return d_loss(loss, x, x, w_real, w_fake, s)

    assert d_loss_at(star.d_output) == pytest.approx(star.d_loss, rel=1e-6)
    assert d_loss_at(star.d_output * 0.95) > star.d_loss
    assert d_loss_at(star.d_output * 1.05) > star.d_loss
    g = g_loss(loss, torch.full((4,), to_logit(star.d_output), dtype=torch.float64))
    assert g == pytest.approx(star.g_loss, rel=1e-6)


def test_no_equilibrium_where_theory_gives_none() -> None:
    assert L.equilibrium("hinge", 0.5) is None
    assert L.equilibrium("wasserstein_gp", 0.5) is None


def test_every_loss_has_an_equilibrium_entry() -> None:
    """theory.EQUILIBRIA (torch-free, for the driver and the report) covers exactly the built-ins."""
    assert set(L.EQUILIBRIA) == set(LOSSES.names(built_in=True))
    with pytest.raises(ValueError, match="unknown loss 'hinged'"):
        L.equilibrium("hinged", 0.5)


def test_gradient_penalty_of_a_linear_critic() -> None:
    # D(x) = w.x has gradient w everywhere: the penalty is (||w|| - 1)^2 exactly
    w = torch.tensor([2.0, 1.0, 2.0])  # norm 3
    grads = w.expand(1, 5, 3)  # (P, n, *shape): the critic's gradient at 5 interpolates
    assert L.loss_terms("wasserstein_gp").d_input_gradient(grads).item() == pytest.approx(4.0)


def test_unknown_loss_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="non_saturating"):
        L.loss_terms("wgan")
