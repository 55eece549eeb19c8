"""The equilibrium verdict (issue 30): the equilibrium values at the real share the minibatch
really has, checked by hand; the verdict's rule on each kind of evaluation; D's checks (AUC,
logit spread) against scikit-learn and numpy on a discriminator whose outputs are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from gansweep.config.schema import TrialConfig
from gansweep.config.theory import (
    BLIND,
    CONSTANT_LOGIT_STD,
    NO_VERDICT,
    NOT_APPLICABLE,
    SETTLED,
    UNSETTLED,
    equilibrium,
    equilibrium_verdict,
    realised_share,
)
from gansweep.engine.data import load_dataset
from gansweep.engine.epochs import theory_metrics
from gansweep.engine.losses import minibatch_plan
from gansweep.engine.scoring import discriminator_checks, verdict_columns

# round(alpha x 128) real samples in a compose-mode minibatch, counted by hand:
# 12.8 -> 13, 38.4 -> 38, 64, 89.6 -> 90, 115.2 -> 115
REAL_OF_128 = {0.1: 13, 0.3: 38, 0.5: 64, 0.7: 90, 0.9: 115}


def smoothed_bce_equilibrium(share: float, s: float) -> tuple[float, float]:
    """THEORY.md section 2 written out: D* = s q; L_D* = -q [s log(sq) + (1-s) log(1-sq)]
    - (1-q) log(1-sq); non-saturating L_G* = -log(sq)."""
    d = s * share
    d_loss = -share * (s * math.log(d) + (1 - s) * math.log(1 - d)) - (1 - share) * math.log(1 - d)
    return d_loss, -math.log(d)


@pytest.mark.parametrize("smoothing", [1.0, 0.9])
@pytest.mark.parametrize("alpha", sorted(REAL_OF_128))
def test_compose_equilibrium_sits_at_the_realised_share(alpha: float, smoothing: float) -> None:
    count = REAL_OF_128[alpha]
    assert minibatch_plan("compose", alpha, 128).n_real == count  # what the iteration really draws
    assert realised_share("compose", alpha, 128) == count / 128
    trial = TrialConfig(alpha=alpha, alpha_mode="compose", batch_size=128, label_smoothing=smoothing)
    d_star, g_star = smoothed_bce_equilibrium(count / 128, smoothing)
    logged = theory_metrics(trial, {"d_loss": 0.0, "g_loss": 0.0})
    assert (logged["d_loss_star"], logged["g_loss_star"]) == pytest.approx((d_star, g_star), rel=1e-12)
    if alpha != 0.5:  # the rounding moves the equilibrium off alpha's own values
        assert logged["d_loss_star"] != pytest.approx(equilibrium("non_saturating", alpha, smoothing).d_loss, rel=1e-6)


def test_seed_003s_gap_at_alpha_09_is_rounding_not_training() -> None:
    # A perfect compose trial at alpha 0.9 shows d_loss at H(115/128); logged against H(0.9)
    # the gap would be 0.0034 of rounding alone (the figure).
    h = lambda q: -q * math.log(q) - (1 - q) * math.log(1 - q)
    assert abs(h(0.9) - h(115 / 128)) == pytest.approx(0.0034, abs=5e-5)
    trial = TrialConfig(alpha=0.9, batch_size=128)
    assert theory_metrics(trial, {"d_loss": h(115 / 128), "g_loss": -math.log(115 / 128)})["d_loss_gap"] == pytest.approx(
        0.0, abs=1e-12
    )


@pytest.mark.parametrize("mode", ["weight", "bernoulli"])
def test_weighted_and_bernoulli_equilibria_use_alpha_itself(mode: str) -> None:
    trial = TrialConfig(alpha=0.9, alpha_mode=mode, batch_size=128, label_smoothing=0.9)
    d_star, g_star = smoothed_bce_equilibrium(0.9, 0.9)
    logged = theory_metrics(trial, {"d_loss": 0.0, "g_loss": 0.0})
    assert (logged["d_loss_star"], logged["g_loss_star"]) == pytest.approx((d_star, g_star), rel=1e-12)


# ---------------------------------------------------------------------------- the verdict's rule


def evaluation(**changes: float) -> dict[str, float]:
    """An evaluation at the equilibrium (gaps 1% of the stars), D blind, samples poor."""
    d_star, g_star = smoothed_bce_equilibrium(0.5, 1.0)
    metrics = {"d_loss_star": d_star, "g_loss_star": g_star, "d_loss_gap": 0.01 * d_star, "g_loss_gap": 0.01 * g_star,
               "d_auc": 0.5, "d_logit_std": 0.0, "c2st_accuracy": 0.95}
    return {**metrics, **changes}


@pytest.mark.parametrize(
    ("changes", "verdict"),
    [
        ({}, BLIND),  # seed 003's case: a constant D, a fresh classifier tells them apart
        ({"d_auc": 0.53, "d_logit_std": 0.2}, BLIND),  # D's scores vary but do not rank
        ({"d_auc": 0.9, "d_logit_std": CONSTANT_LOGIT_STD / 2}, BLIND),  # ranks, but by a hair
        ({"c2st_accuracy": 0.52, "d_auc": 0.51, "d_logit_std": 0.3}, SETTLED),  # p_g close to p_data
        ({"d_loss_gap": 0.2}, UNSETTLED),  # away from the equilibrium
        ({"g_loss_gap": 0.2}, UNSETTLED),
        ({"d_auc": 0.8, "d_logit_std": 0.4}, UNSETTLED),  # at the losses, but D still tells them apart
        ({"d_auc": 0.8, "d_logit_std": 0.4, "c2st_accuracy": 0.5}, UNSETTLED),
    ],
)
def test_the_verdict_of_each_kind_of_evaluation(changes: dict[str, float], verdict: str) -> None:
    assert equilibrium_verdict(evaluation(**changes)) == verdict


def test_a_loss_without_equilibrium_values_has_no_verdict_and_a_missing_check_is_an_error() -> None:
    assert equilibrium_verdict({"d_loss": 0.3}) == NOT_APPLICABLE
    partial = evaluation()
    del partial["d_logit_std"]
    with pytest.raises(ValueError, match="d_logit_std"):
        equilibrium_verdict(partial)


def test_without_a_classifier_test_only_what_the_losses_and_d_decide_is_said() -> None:
    # a held-out split too small for C2ST (engine/scoring.verdict_c2st gives none)
    for changes, verdict in (({}, NO_VERDICT), ({"d_loss_gap": 0.2}, UNSETTLED), ({"d_auc": 0.8, "d_logit_std": 0.4}, UNSETTLED)):
        metrics = evaluation(**changes)
        del metrics["c2st_accuracy"]
        assert equilibrium_verdict(metrics) == verdict


def test_verdict_columns_say_no_verdict_when_the_study_turns_the_check_off() -> None:
    on, off = TrialConfig(), TrialConfig(equilibrium_check=False)
    assert verdict_columns(on, evaluation()) == {"equilibrium": BLIND, "blind_discriminator": 1.0}
    assert verdict_columns(off, evaluation()) == {"equilibrium": NO_VERDICT}
    assert verdict_columns(on, {"d_loss": 0.3}) == {"equilibrium": NOT_APPLICABLE}  # hinge, wasserstein_gp


# ---------------------------------------------------------------------------- D's own checks


class Affine(nn.Module):
    """D(x) = x w + b on 2D points: its logits are known without running it."""

    def __init__(self, weight: tuple[float, float], bias: float) -> None:
        super().__init__()
        self.weight = torch.tensor(weight)
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight + self.bias


def test_discriminator_checks_against_sklearn_and_numpy() -> None:
    data = load_dataset("circle", seed=0)
    trial = TrialConfig(dataset="circle", eval_valid=300)
    fake = torch.randn(500, 2, generator=torch.Generator().manual_seed(1)) * 0.3
    checks = discriminator_checks(trial, data, Affine((1.5, -0.5), 0.2), fake)
    real_x, fake_x = data.valid[:300].double().numpy(), fake[:300].double().numpy()
    real_logits, fake_logits = (x @ np.array([1.5, -0.5]) + 0.2 for x in (real_x, fake_x))
    labels = np.r_[np.ones(300), np.zeros(300)]
    assert checks["d_auc"] == pytest.approx(roc_auc_score(labels, np.r_[real_logits, fake_logits]), abs=1e-9)
    assert checks["d_logit_std"] == pytest.approx(np.r_[real_logits, fake_logits].std(ddof=1), rel=1e-5)


def test_a_constant_discriminator_has_no_logit_spread() -> None:
    data = load_dataset("circle", seed=0)
    checks = discriminator_checks(TrialConfig(dataset="circle", eval_valid=200), data, Affine((0.0, 0.0), 1.3),
                                  torch.zeros(300, 2))
    assert checks == {"d_auc": pytest.approx(0.5), "d_logit_std": pytest.approx(0.0, abs=1e-6)}  # float32 rounding
