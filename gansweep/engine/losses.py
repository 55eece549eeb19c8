"""GAN losses on discriminator outputs (logits), the alpha parametrisation and equilibria.

Every loss is three per-sample terms: the discriminator's cost on a real sample, its cost on a
fake sample, and the generator's cost on a fake sample. The discriminator loss of a minibatch
is a weighted sum of the first two, and the weights carry alpha (THEORY.md section 2):

    L_D = sum_i w_real[i] * real_term(l_real[i]) + sum_j w_fake[j] * fake_term(l_fake[j])

with the weights summing to alpha and 1 - alpha in expectation. The BCE-based terms use the
stable forms: -log sigmoid(l) = softplus(-l) and -log(1 - sigmoid(l)) = softplus(l).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The equilibria are pure arithmetic, kept apart so that the driver and the report draw them
# without importing torch; re-exported here beside the losses they belong to.
from gansweep.config.theory import EQUILIBRIA, Equilibrium, equilibrium  # noqa: F401

Term = Callable[[Tensor], Tensor]


def _bce_real(logits: Tensor, smoothing: float | Tensor) -> Tensor:
    # cross-entropy against target s: s * -log D + (1 - s) * -log(1 - D). s may be a (P, 1)
    # tensor (one per trial); s = 1 gives -log D exactly, the second term times 0 (a float 1,
    # the eager execution's unsmoothed trial, skips that term and its gradient).
    if isinstance(smoothing, float) and smoothing == 1.0:
        return F.softplus(-logits)
    return smoothing * F.softplus(-logits) + (1.0 - smoothing) * F.softplus(logits)


def _bce_fake(logits: Tensor) -> Tensor:
    return F.softplus(logits)  # -log(1 - D)


def _least_squares_real(scores: Tensor, smoothing: float | Tensor) -> Tensor:
    return (scores - smoothing) ** 2


def _least_squares_fake(scores: Tensor) -> Tensor:
    return scores**2


def _hinge_real(scores: Tensor, smoothing: float | Tensor) -> Tensor:
    del smoothing  # rejected by study validation for hinge
    return F.relu(1.0 - scores)


def _hinge_fake(scores: Tensor) -> Tensor:
    return F.relu(1.0 + scores)


def _critic_real(scores: Tensor, smoothing: float | Tensor) -> Tensor:
    del smoothing
    return -scores


def _critic_fake(scores: Tensor) -> Tensor:
    return scores


@dataclass(frozen=True)
class Loss:
    real_term: Callable[[Tensor, float | Tensor], Tensor]  # (logits, smoothing) -> per-sample cost
    fake_term: Term
    generator_term: Term
    probabilistic: bool  # D's output is a logit of a probability (report sigmoid of it)
    gradient_penalty: bool = False
    # G's cost is || E f(x) - E f(G(z)) ||^2 over D's features (iteration.feature_distance),
    # added to generator_term's, which is 0 for feature matching.
    feature_matching: bool = False


LOSSES: dict[str, Loss] = {
    # G minimises E[log(1 - D(G(z)))] = -softplus(l): the original zero-sum cost.
    "minimax": Loss(
        _bce_real,
        _bce_fake,
        lambda logits: -F.softplus(logits),
        probabilistic=True,
    ),
    # G minimises -E[log D(G(z))] = softplus(-l): same fixed point, strong early gradients.
    "non_saturating": Loss(
        _bce_real,
        _bce_fake,
        lambda logits: F.softplus(-logits),
        probabilistic=True,
    ),
    # G minimises -E[exp(logit D(G(z)))]: KL(p_data || p_g) when D is optimal (Goodfellow 2014b).
    "max_likelihood": Loss(
        _bce_real,
        _bce_fake,
        lambda logits: -torch.exp(logits),
        probabilistic=True,
    ),
    # LSGAN (Mao et al. 2017), targets real 1 (or s), fake 0; G aims at 1.
    "least_squares": Loss(
        _least_squares_real,
        _least_squares_fake,
        lambda scores: 0.5 * (scores - 1.0) ** 2,
        probabilistic=False,
    ),
    # Geometric GAN / SAGAN hinge loss (its equilibrium is not unique: theory.py gives none).
    "hinge": Loss(_hinge_real, _hinge_fake, lambda scores: -scores, probabilistic=False),
    # WGAN-GP (Gulrajani et al. 2017): critic scores, gradient penalty towards unit norm.
    "wasserstein_gp": Loss(
        _critic_real,
        _critic_fake,
        lambda scores: -scores,
        probabilistic=False,
        gradient_penalty=True,
    ),
    # Feature matching (Salimans et al. 2016): D keeps the (alpha-weighted, smoothable)
    # cross-entropy; G matches the mean of D's hidden features on real and generated samples,
    # a cost no logit carries (its per-logit term is 0).
    "feature_matching": Loss(
        _bce_real,
        _bce_fake,
        torch.zeros_like,
        probabilistic=True,
        feature_matching=True,
    ),
}


def get_loss(name: str) -> Loss:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}") from None


# ---------------------------------------------------------------------------- alpha


@dataclass(frozen=True)
class MinibatchPlan:
    """How many real and fake samples one discriminator step draws, and their loss weights."""

    n_real: int
    n_fake: int


def minibatch_plan(mode: str, alpha: float, batch_size: int) -> MinibatchPlan:
    """compose: round(alpha m) real + the rest fake; weight and bernoulli: m of each."""
    if mode == "compose":
        n_real = round(alpha * batch_size)
        return MinibatchPlan(n_real=n_real, n_fake=batch_size - n_real)
    return MinibatchPlan(n_real=batch_size, n_fake=batch_size)


def _compose_weights(alpha: float, n_real: int, n_fake: int, device: torch.device) -> tuple[Tensor, Tensor]:
    total = n_real + n_fake  # each sample counts once: shares round(alpha m)/m and the rest
    return (
        torch.full((n_real,), 1.0 / total, device=device),
        torch.full((n_fake,), 1.0 / total, device=device),
    )


def _weight_weights(alpha: float, n_real: int, n_fake: int, device: torch.device) -> tuple[Tensor, Tensor]:
    return (
        torch.full((n_real,), alpha / n_real, device=device),
        torch.full((n_fake,), (1.0 - alpha) / n_fake, device=device),
    )


def _bernoulli_weights(alpha: float, n_real: int, n_fake: int, device: torch.device) -> tuple[Tensor, Tensor]:
    # Slot i holds the real sample with probability alpha, else the fake one: the share of
    # real samples is random per minibatch (seed 003's future work). Drawn on the device,
    # so the step stays free of host syncs and shapes stay static.
    assert n_real == n_fake, "bernoulli mode pairs one real and one fake sample per slot"
    is_real = (torch.rand(n_real, device=device) < alpha).float()
    return is_real / n_real, (1.0 - is_real) / n_fake


ALPHA_MODES: dict[str, Callable[[float, int, int, torch.device], tuple[Tensor, Tensor]]] = {
    "compose": _compose_weights,
    "weight": _weight_weights,
    "bernoulli": _bernoulli_weights,
}


def alpha_weights(
    mode: str, alpha: float, plan: MinibatchPlan, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Per-sample weights (real (n_real,), fake (n_fake,)) of the discriminator loss."""
    return ALPHA_MODES[mode](alpha, plan.n_real, plan.n_fake, device)


# ---------------------------------------------------------------------------- losses


def discriminator_loss(
    loss: Loss,
    real_logits: Tensor,
    fake_logits: Tensor,
    real_weights: Tensor,
    fake_weights: Tensor,
    smoothing: float = 1.0,
) -> Tensor:
    """Weighted D loss (scalar) of one minibatch; see the module docstring."""
    real = (real_weights * loss.real_term(real_logits, smoothing)).sum()
    fake = (fake_weights * loss.fake_term(fake_logits)).sum()
    return real + fake


def generator_loss(loss: Loss, fake_logits: Tensor) -> Tensor:
    return loss.generator_term(fake_logits).mean()


def penalty_mix(n_real: int, n_fake: int, example_dims: int, device: torch.device) -> Tensor:
    """WGAN-GP's interpolation weights, one per real/fake pair: (min(n_real, n_fake), 1, ...)
    with a 1 for each of an example's `example_dims` dimensions."""
    return torch.rand((min(n_real, n_fake),) + (1,) * example_dims, device=device)


def interpolate(mix: Tensor, real: Tensor, fake: Tensor) -> Tensor:
    n = mix.shape[0]
    return mix * real[:n] + (1 - mix) * fake[:n]


def gradient_norm_penalty(input_grad: Tensor) -> Tensor:
    """E[(||grad D(x_hat)|| - 1)^2] from D's gradients at the interpolates, (n, ...)."""
    return ((input_grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()


def gradient_penalty(discriminator: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
    """WGAN-GP: E[(||grad D(x_hat)|| - 1)^2] on random interpolates of paired real/fake."""
    mix = penalty_mix(real.shape[0], fake.shape[0], real.dim() - 1, real.device)
    interpolates = interpolate(mix, real, fake).requires_grad_(True)
    scores = discriminator(interpolates)
    (grad,) = torch.autograd.grad(scores.sum(), interpolates, create_graph=True)
    return gradient_norm_penalty(grad)


def discriminator_output(loss: Loss, logits: Tensor) -> Tensor:
    """What 'D(x)' means for reporting: a probability for BCE losses, the raw score otherwise."""
    return torch.sigmoid(logits) if loss.probabilistic else logits
