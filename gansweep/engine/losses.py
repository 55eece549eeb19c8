"""GAN losses as registry entries: three per-sample costs of D's logits (gansweep.extend.loss).

Every loss is a class with d_real(logits) (D's cost on a real sample), d_fake(logits) (D's
cost on a generated one) and g(logits) (G's cost on a generated one), each per sample. The
iteration weights the first two with alpha (THEORY.md section 2):

    L_D = sum_i w_real[i] * real_term(l_real[i]) + sum_j w_fake[j] * d_fake(l_fake[j])

where real_term is d_real, or with one-sided label smoothing (real target s) the mixture
s * d_real + (1 - s) * d_fake: the cross-entropy against target s for the BCE losses. A loss
whose smoothed cost is another (least squares: (l - s)^2) says so in smoothed_d_real. What a
cost needs beyond the logits is declared as a method the iteration calls when it is there:
g_features (G's cost on D's features: feature matching) and d_input_gradient (D's cost on
its gradient at interpolates of real and generated samples, weighted by gp_weight: WGAN-GP).
The built-ins below are registered with the decorator a plugin uses; their names,
descriptions and needs are declared torch-free in gansweep.config.names. The BCE-based terms
use the stable forms: -log sigmoid(l) = softplus(-l) and -log(1 - sigmoid(l)) = softplus(l).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

# The equilibria are pure arithmetic, kept apart so that the driver and the report draw them
# without importing torch; re-exported here beside the losses they belong to.
from gansweep.config.theory import EQUILIBRIA, Equilibrium, compose_real_count, equilibrium  # noqa: F401
from gansweep.config.names import LOSSES  # the registry, with the built-ins declared
from gansweep.extend import loss

Term = Callable[[Tensor], Tensor]


class _CrossEntropy:
    """D's binary cross-entropy: -log D(x) on real samples, -log(1 - D(G(z))) on generated."""

    probabilistic = True

    def d_real(self, logits: Tensor) -> Tensor:
        return F.softplus(-logits)

    def d_fake(self, logits: Tensor) -> Tensor:
        return F.softplus(logits)


@loss("minimax")
class Minimax(_CrossEntropy):
    def g(self, logits: Tensor) -> Tensor:
        return -F.softplus(logits)  # E[log(1 - D(G(z)))]: the zero-sum cost


@loss("non_saturating")
class NonSaturating(_CrossEntropy):
    def g(self, logits: Tensor) -> Tensor:
        return F.softplus(-logits)  # -E[log D(G(z))]: same fixed point, strong early gradients


@loss("max_likelihood")
class MaxLikelihood(_CrossEntropy):
    def g(self, logits: Tensor) -> Tensor:
        return -torch.exp(logits)  # -E[D / (1 - D)]: KL(p_data || p_g) at the optimal D


@loss("least_squares")
class LeastSquares:
    """LSGAN (Mao et al. 2017): targets real 1 (or s), fake 0; G aims at 1."""

    def d_real(self, scores: Tensor) -> Tensor:
        return (scores - 1.0) ** 2

    def smoothed_d_real(self, scores: Tensor, smoothing: float | Tensor) -> Tensor:
        return (scores - smoothing) ** 2  # the real target moves to s (config.theory's D* = alpha s)

    def d_fake(self, scores: Tensor) -> Tensor:
        return scores**2

    def g(self, scores: Tensor) -> Tensor:
        return 0.5 * (scores - 1.0) ** 2


@loss("hinge")
class Hinge:
    def d_real(self, scores: Tensor) -> Tensor:
        return F.relu(1.0 - scores)

    def d_fake(self, scores: Tensor) -> Tensor:
        return F.relu(1.0 + scores)

    def g(self, scores: Tensor) -> Tensor:
        return -scores


@loss("wasserstein_gp")
class WassersteinGP:
    """Critic scores; the penalty pulls the critic's gradient norm at interpolates towards 1."""

    def d_real(self, scores: Tensor) -> Tensor:
        return -scores

    def d_fake(self, scores: Tensor) -> Tensor:
        return scores

    def g(self, scores: Tensor) -> Tensor:
        return -scores

    def d_input_gradient(self, grads: Tensor) -> Tensor:
        """(P, n, *shape) gradients at the interpolates -> (P, 1) E[(||grad|| - 1)^2]."""
        return ((grads.flatten(2).norm(dim=2) - 1.0) ** 2).mean(1, keepdim=True)


@loss("feature_matching")
class FeatureMatching(_CrossEntropy):
    """D keeps the cross-entropy; G matches the mean of D's hidden features on real and
    generated samples, a cost no logit carries (its per-logit term is 0)."""

    def g(self, logits: Tensor) -> Tensor:
        return torch.zeros_like(logits)

    def g_features(self, real_features: Tensor, fake_features: Tensor) -> Tensor:
        """(P, B, ...) each -> (P,) || E f(x) - E f(G(z)) ||^2 (Salimans et al. 2016)."""
        gap = real_features.flatten(2).mean(1) - fake_features.flatten(2).mean(1)
        return (gap * gap).sum(1)


@dataclass(frozen=True)
class Terms:
    """What the iteration reads of a loss entry: its per-sample costs and its declared extras."""

    name: str
    d_real: Term
    d_fake: Term
    g: Term
    smoothed_d_real: Callable[[Tensor, float | Tensor], Tensor]
    probabilistic: bool  # D's output is a logit of a probability (report its sigmoid)
    g_features: Callable[[Tensor, Tensor], Tensor] | None = None
    d_input_gradient: Callable[[Tensor], Tensor] | None = None

    def real_term(self, logits: Tensor, smoothing: float | Tensor) -> Tensor:
        """D's cost on real samples against the real target s: a float 1 (an unsmoothed
        eager trial) is d_real itself, with no second term and no gradient through it."""
        if isinstance(smoothing, float) and smoothing == 1.0:
            return self.d_real(logits)
        return self.smoothed_d_real(logits, smoothing)

    def output(self, logits: Tensor) -> Tensor:
        """What 'D(x)' means for reporting: a probability for BCE losses, the raw score otherwise."""
        return torch.sigmoid(logits) if self.probabilistic else logits


def _mixture(instance: object) -> Callable[[Tensor, float | Tensor], Tensor]:
    d_real, d_fake = instance.d_real, instance.d_fake  # type: ignore[attr-defined]

    def smoothed(logits: Tensor, smoothing: float | Tensor) -> Tensor:
        return smoothing * d_real(logits) + (1.0 - smoothing) * d_fake(logits)

    return smoothed


def terms_of(instance: object, name: str) -> Terms:
    """A loss class's instance as the iteration reads it."""
    smoothed = getattr(instance, "smoothed_d_real", None) or _mixture(instance)
    return Terms(
        name=name, d_real=instance.d_real, d_fake=instance.d_fake, g=instance.g,  # type: ignore[attr-defined]
        smoothed_d_real=smoothed,
        probabilistic=bool(getattr(instance, "probabilistic", False)),
        g_features=getattr(instance, "g_features", None),
        d_input_gradient=getattr(instance, "d_input_gradient", None),
    )


@lru_cache(maxsize=None)
def _cached_terms(name: str, code: type) -> Terms:
    return terms_of(code(), name)


def loss_terms(name: str) -> Terms:
    """The registered loss `name` (a built-in or a plugin's); an unknown name's error lists
    the valid ones. Keyed by the class too: a plugin file loaded again gives its new code."""
    entry = LOSSES.get(name)
    if entry.code is None:
        raise ValueError(f"loss {name!r} is declared but its code was never registered")
    return _cached_terms(name, entry.code)


# ---------------------------------------------------------------------------- alpha


@dataclass(frozen=True)
class MinibatchPlan:
    """How many real and fake samples one discriminator step draws."""

    n_real: int
    n_fake: int


def minibatch_plan(mode: str, alpha: float, batch_size: int) -> MinibatchPlan:
    """compose: round(alpha m) real + the rest fake; weight and bernoulli: m of each."""
    if mode == "compose":
        n_real = compose_real_count(alpha, batch_size)
        return MinibatchPlan(n_real=n_real, n_fake=batch_size - n_real)
    return MinibatchPlan(n_real=batch_size, n_fake=batch_size)


# The iteration's alpha weights: per-sample weights of D's real and fake costs.
Weight = Tensor | float  # a sample weight: (P or 1, n) tensor, or one number for all


def _compose_weights(alpha: Tensor | float, coins: Tensor, n_real: int, n_fake: int) -> tuple[Weight, Weight]:
    del coins  # round(alpha m) real samples, each sample counts once
    share = 1.0 / (n_real + n_fake)
    if isinstance(alpha, float):
        return share, share
    return alpha.new_full((1, n_real), share), alpha.new_full((1, n_fake), share)


def _weight_weights(alpha: Tensor | float, coins: Tensor, n_real: int, n_fake: int) -> tuple[Weight, Weight]:
    del coins  # m of each, the terms weighted alpha and 1 - alpha
    return alpha / n_real, (1.0 - alpha) / n_fake


def _bernoulli_weights(alpha: Tensor | float, coins: Tensor, n_real: int, n_fake: int) -> tuple[Weight, Weight]:
    # Slot i holds the real sample with probability alpha, else the fake one (seed 003's
    # future work): the share of real samples is random per minibatch.
    is_real = (coins < alpha).float()  # (P, m)
    return is_real / n_real, (1.0 - is_real) / n_fake


ALPHA_WEIGHTS: dict[str, Callable[[Tensor | float, Tensor, int, int], tuple[Weight, Weight]]] = {
    "compose": _compose_weights,
    "weight": _weight_weights,
    "bernoulli": _bernoulli_weights,
}
