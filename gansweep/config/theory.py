"""The equilibrium losses of THEORY.md sections 2 and 3: plain arithmetic, no torch.

At p_g = p_data with an optimal discriminator, each loss (by its name in the engine's
losses.LOSSES) has known values of L_D, L_G and D's output, as functions of alpha and the
one-sided label smoothing s. The driver logs them beside every trial's losses and the report
draws them, neither of which needs torch: hence this module in the config, apart from the
engine's losses.py (which re-exports it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from gansweep.config.names import LOSSES


@dataclass(frozen=True)
class Equilibrium:
    """Loss values at p_g = p_data with an optimal discriminator."""

    d_loss: float
    g_loss: float
    # D(x) = D(G(z)) there (a probability for BCE losses, a score otherwise); None for a
    # plugin's loss, which gives only the two losses (d_star, g_star)
    d_output: float | None


Rule = Callable[[float, float], Equilibrium]  # (alpha, smoothing) -> the equilibrium


def _bce_equilibrium(g_loss_at: Callable[[float], float]) -> Rule:
    """D* = s alpha at p_g = p_data; L_D* is the smoothed binary cross-entropy there."""

    def equilibrium(alpha: float, smoothing: float) -> Equilibrium:
        d = smoothing * alpha
        d_loss = -alpha * (smoothing * math.log(d) + (1 - smoothing) * math.log1p(-d)) - (
            1 - alpha
        ) * math.log1p(-d)
        return Equilibrium(d_loss=d_loss, g_loss=g_loss_at(d), d_output=d)

    return equilibrium


def _least_squares_equilibrium(alpha: float, smoothing: float) -> Equilibrium:
    # D minimises alpha (D - s)^2 + (1 - alpha) D^2 pointwise -> D* = alpha s,
    # L_D* = alpha (1 - alpha) s^2, and G pays 1/2 (D* - 1)^2.
    d = alpha * smoothing
    return Equilibrium(
        d_loss=alpha * (1 - alpha) * smoothing**2, g_loss=0.5 * (d - 1.0) ** 2, d_output=d
    )


# Every loss of losses.LOSSES, with None where theory gives no unique value.
EQUILIBRIA: dict[str, Rule | None] = {
    "minimax": _bce_equilibrium(lambda d: math.log1p(-d)),  # G: E[log(1 - D)]
    "non_saturating": _bce_equilibrium(lambda d: -math.log(d)),  # G: -E[log D]
    "max_likelihood": _bce_equilibrium(lambda d: -d / (1.0 - d)),  # G: -E[D / (1 - D)]
    "least_squares": _least_squares_equilibrium,
    # D's cross-entropy as the BCE losses'; G's feature distance is 0 at p_g = p_data
    "feature_matching": _bce_equilibrium(lambda d: 0.0),
    "hinge": None,  # not unique: at alpha = 1/2 any score in [-1, 1] is optimal
    "wasserstein_gp": None,  # the critic's scores are defined up to a constant
}


def equilibrium(loss: str, alpha: float, smoothing: float = 1.0) -> Equilibrium | None:
    """Theoretical (L_D*, L_G*) at p_g = p_data, or None where theory gives no unique value:
    a built-in's from EQUILIBRIA, a plugin loss's from its d_star and g_star where it has them."""
    if loss in EQUILIBRIA:
        rule = EQUILIBRIA[loss]
        return None if rule is None else rule(alpha, smoothing)
    entry = LOSSES.get(loss)  # an unknown name's error lists the valid ones
    if not entry.meta.get("equilibrium") or entry.code is None:
        return None
    rules = entry.code()
    return Equilibrium(float(rules.d_star(alpha, smoothing)), float(rules.g_star(alpha, smoothing)), None)


# A blind-discriminator equilibrium (THEORY.md; issue 15): the losses sit at the theory's
# equilibrium, yet only because D stopped telling real from generated (its AUC near 0.5),
# while a fresh classifier still tells them apart well (C2ST accuracy well above 0.5).
EQUILIBRIUM_RELATIVE_GAP = 0.05  # |L - L*| within 5% of |L*| counts as "at equilibrium"
BLIND_AUC_MARGIN = 0.05  # |d_auc - 0.5| within this: D cannot tell
SEEN_C2ST_ACCURACY = 0.6  # a fresh classifier this accurate (or more) can


def blind_discriminator(
    metrics: dict[str, float],
    *,
    relative_gap: float = EQUILIBRIUM_RELATIVE_GAP,
    auc_margin: float = BLIND_AUC_MARGIN,
    c2st_seen: float = SEEN_C2ST_ACCURACY,
) -> bool | None:
    """Whether an evaluation's metrics show a blind-discriminator equilibrium: both loss gaps
    small relative to the equilibrium losses, d_auc near 0.5, c2st_accuracy at least
    `c2st_seen`. None when a metric it needs is missing (no equilibrium for the loss, or
    d_auc / c2st_accuracy not among the trial's metrics)."""
    needed = ("d_loss_gap", "g_loss_gap", "d_loss_star", "g_loss_star", "d_auc", "c2st_accuracy")
    if any(name not in metrics for name in needed):
        return None
    at_equilibrium = all(
        metrics[f"{net}_loss_gap"] <= relative_gap * abs(metrics[f"{net}_loss_star"]) for net in ("d", "g")
    )
    blind = abs(metrics["d_auc"] - 0.5) <= auc_margin
    return at_equilibrium and blind and metrics["c2st_accuracy"] >= c2st_seen
