"""Algorithm 1's iteration, defined once: k discriminator updates, then one generator update.

`iteration(spec, nets, diff, state, draws, hyper)` is a function of tensors: the trial state
(flat parameters, buffers, optimiser moments), the iteration's random draws (draws.py) and the
per-trial hyperparameters as (P, 1) tensors, for P trials at once. It returns the new state and
the (P, 4) step statistics. Every execution is this function (run.py): eager (P = 1, the
trial's own modules), packed (P trials, the networks under vmap), compiled (torch.compile of
it), compiled packs (both). What differs between them is only how a network is called (`Nets`)
and how a gradient is taken (`Autodiff`), never the losses, the alpha weights, the penalty or
the optimiser's update: a loss, alpha mode or optimiser added here is in all four.

Shapes: P trials, m = batch size, n_real / n_fake the D minibatch's real and fake counts.
Every per-trial value is (P, 1) so that it broadcasts over samples and over flat parameters;
the losses are (P, 1) too (reduced over the samples with keepdim: no squeeze, and no unsqueeze
in their backward).
Batch-norm running statistics (buffers) are updated in place by the forward passes, as
nn.BatchNorm does; everything else is returned new. An objective takes the buffers it updates
as an input beside the parameters it is differentiated by: torch.func's transforms refuse an
in-place update of a tensor the function captured, and allow one of its inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from gansweep.engine.layers import minibatch_counts
from gansweep.engine.losses import ALPHA_WEIGHTS, Terms, Weight, loss_terms
from gansweep.engine.regularisers import Regulariser, penalty, regulariser, step_inputs

ADAM_EPS = 1e-8  # torch.optim.Adam's default
# The step statistics' columns, in the order iteration() returns them.
STATS = ("d_loss", "d_real", "d_fake", "g_loss")


@dataclass(frozen=True)
class Spec:
    """What the iteration's code depends on that is not a tensor: equal specs share a graph."""

    k: int
    n_real: int
    n_fake: int
    alpha_mode: str  # compose | weight | bernoulli
    losses: tuple[str, ...]  # the losses of the P trials, each trial picks one (Hyper.loss_masks)
    # by their registered names (gansweep.extend.LOSSES: built-ins and plugins alike)
    optimizer: str  # adam | sgd
    joint_discriminator: bool  # one D forward on cat(real, fake): D has no batch norm
    autocast: bool  # forwards under bf16 autocast
    device_type: str
    # D's Sequential index where the features a feature-matching G matches end (models.py
    # feature_end): the layers before it are D's body up to its chosen hidden layer.
    feature_end: int = 0
    historical_averaging: bool = False  # some member's historical_averaging lambda is > 0
    # D has a minibatch layer (layers.py): each D call gets its samples' counts in D's minibatch
    minibatch_features: bool = False
    # the regularisers some member weighs above 0 (regularisers.py), in Hyper.reg_weights' order
    regularisers: tuple[str, ...] = ()
    # Derived from `losses` once (the iteration reads them several times per call): each
    # loss's terms, and whether some loss declares a cost on D's features or on D's input
    # gradient (losses.Terms.g_features, d_input_gradient).
    terms: tuple[Terms, ...] = field(init=False, repr=False, compare=False)
    feature_matching: bool = field(init=False, repr=False, compare=False)
    gradient_penalty: bool = field(init=False, repr=False, compare=False)
    # each player's regularisers, with their index in `regularisers`
    d_regularisers: tuple[tuple[int, Regulariser], ...] = field(init=False, repr=False, compare=False)
    g_regularisers: tuple[tuple[int, Regulariser], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regs = [(index, regulariser(name)) for index, name in enumerate(self.regularisers)]
        object.__setattr__(self, "d_regularisers", tuple(r for r in regs if r[1].player == "d"))
        object.__setattr__(self, "g_regularisers", tuple(r for r in regs if r[1].player == "g"))
        terms = tuple(loss_terms(n) for n in self.losses)
        object.__setattr__(self, "terms", terms)
        object.__setattr__(self, "feature_matching", any(t.g_features is not None for t in terms))
        object.__setattr__(self, "gradient_penalty", any(t.d_input_gradient is not None for t in terms))

    @property
    def n_mix(self) -> int:
        """Real/fake pairs the gradient penalty interpolates."""
        return min(self.n_real, self.n_fake)


class Hyper(NamedTuple):
    """Per-trial hyperparameters, each (P, 1) float32; loss_masks (n_losses, P, 1) bool.
    The eager execution of one trial passes the numbers as Python floats instead (loss_masks
    stays a tensor): a float is the kernels' scalar argument, a (1, 1) tensor an op and an
    autograd node of its own in every term it scales (benchmarks/README.md, "The one
    iteration against the three"). The maths below takes either."""

    alpha: Tensor
    smoothing: Tensor  # one-sided label smoothing s
    lr_d: Tensor
    lr_g: Tensor
    beta1: Tensor  # Adam
    beta2: Tensor
    momentum: Tensor  # SGD, at the current epoch (the schedule is the runner's)
    gp_weight: Tensor
    loss_masks: Tensor
    historical_weight: Tensor | None = None  # lambda of historical averaging (Spec.historical_averaging)
    reg_weights: Tensor | None = None  # (R, P, 1) each member's weight of Spec.regularisers[r]


class NetState(NamedTuple):
    """One network of P trials: flat parameters (P, N), buffers (P, *shape) each, the
    optimiser's moments (P, N) (Adam's exp_avg and exp_avg_sq; SGD's momentum buffer and an
    empty (P, 0)) and the count of updates (P, 1); with historical averaging the mean of the
    parameters over the net's history (P, N), (P, 0) without."""

    params: Tensor
    buffers: tuple[Tensor, ...]
    moment1: Tensor
    moment2: Tensor
    steps: Tensor
    average: Tensor | None = None


class TrainState(NamedTuple):
    g: NetState
    d: NetState


class Draws(NamedTuple):
    """One iteration's random inputs for P trials (draws.py makes them, in one order), the
    first four one tensor per D update j < k: reals[j] (P, n_real, *shape), d_noise[j] (P,
    n_fake, noise_dim), coins[j] (P, m) the bernoulli mode's uniforms ((P, 0) otherwise),
    mixes[j] (P, n_mix, 1, ...) the penalty's interpolation weights ((P, 0) without one);
    g_noise (P, m, noise_dim). Tuples, not (k, P, ...) stacks: a lone trial's draws are then
    the tensors its stream gave, with no op to stack or index them."""

    reals: tuple[Tensor, ...]
    d_noise: tuple[Tensor, ...]
    coins: tuple[Tensor, ...]
    mixes: tuple[Tensor, ...]
    g_noise: Tensor


Forward = Callable[..., Tensor]  # (params, buffers, x, *counts) -> output


class Nets(NamedTuple):
    """How an execution calls the networks: (flat params (P, N), buffers, x (P, B, ...)) ->
    G's samples (P, B, *shape), D's logits (P, B), or D's activations at Spec.feature_end
    (P, B, ...): its first layers only, the features feature matching compares. With
    Spec.minibatch_features D takes a fourth input, the samples' counts (P, B)."""

    g: Forward
    d: Forward
    d_features: Forward


# (params, buffers) -> (scalar, aux): differentiated by params; buffers are the running
# statistics its forwards update in place, any pytree of tensors.
Objective = Callable[[Tensor, object], tuple[Tensor, object]]


class Autodiff(Protocol):
    """How an execution differentiates: autograd on leaves (eager) or torch.func (compiled)."""

    def grad(self, objective: Objective, params: Tensor, buffers: object) -> tuple[Tensor, object]:
        """(d objective / d params, its aux output) of objective(params, buffers) -> (scalar, aux)."""

    def input_grad(self, scalar_of: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """d scalar_of(x) / d x, differentiable again (the gradient penalty)."""

    def tracked(self, params: Tensor) -> Tensor:
        """The objective's params as a (P, N) tensor its gradient flows through (eager: the
        modules' own parameters, which are what it differentiates)."""


# ---------------------------------------------------------------------------- losses


def _select(masks: Tensor, values: list[Tensor]) -> Tensor:
    """Each trial's own loss's value: values[i] where masks[i] ((n_losses, P, 1) masks, (P, 1)
    values); one loss needs no mask."""
    if len(values) == 1:
        return values[0]
    chosen = torch.zeros_like(values[0])
    for mask, value in zip(masks, values, strict=True):
        chosen = torch.where(mask, value, chosen)
    return chosen


def d_losses(
    spec: Spec, real_logits: Tensor, fake_logits: Tensor, w_real: Weight, w_fake: Weight, hyper: Hyper
) -> Tensor:
    """(P, n_real), (P, n_fake) logits -> (P, 1) alpha-weighted D loss (losses.py's terms)."""
    values = []
    for loss in spec.terms:
        real = (w_real * loss.real_term(real_logits, hyper.smoothing)).sum(1, keepdim=True)
        fake = (w_fake * loss.d_fake(fake_logits)).sum(1, keepdim=True)
        values.append(real + fake)
    return _select(hyper.loss_masks, values)


def g_losses(spec: Spec, logits: Tensor, hyper: Hyper) -> Tensor:
    """(P, m) logits of G's samples -> (P, 1) each trial's generator cost."""
    if len(spec.terms) == 1:
        return spec.terms[0].g(logits).mean(1, keepdim=True)
    chosen = torch.zeros_like(logits)
    for loss, mask in zip(spec.terms, hyper.loss_masks, strict=True):
        # The inner where feeds another loss's slots a harmless 0: exp(large logit) there
        # would be inf, and the zero gradient the outer where gives it would become nan.
        chosen = torch.where(mask, loss.g(torch.where(mask, logits, 0.0)), chosen)
    return chosen.mean(1, keepdim=True)


def d_outputs(spec: Spec, logits: Tensor, hyper: Hyper) -> Tensor:
    """(P, B) logits -> (P, 1) mean 'D(x)': a probability for BCE losses, the score otherwise."""
    values = [loss.output(logits).mean(1, keepdim=True) for loss in spec.terms]
    return _select(hyper.loss_masks, values)


def feature_costs(spec: Spec, hyper: Hyper, real_features: Tensor, fake_features: Tensor) -> Tensor:
    """(P, 1) each trial's cost on D's features (losses.Terms.g_features, e.g. feature
    matching's || E f(x) - E f(G(z)) ||^2), 0 for the trials whose loss has none."""
    return declared_costs(spec, hyper, lambda loss: None if loss.g_features is None
                          else loss.g_features(real_features, fake_features).unsqueeze(1))


def declared_costs(spec: Spec, hyper: Hyper, cost_of: Callable[[Terms], Tensor | None]) -> Tensor:
    """(P, 1) the sum over the unit's losses of each one's declared extra cost (cost_of: (P,
    1), or None where the loss declares none), masked to the trials of that loss."""
    total = None
    for loss, mask in zip(spec.terms, hyper.loss_masks, strict=True):
        cost = cost_of(loss)
        if cost is not None:
            total = mask.float() * cost if total is None else total + mask.float() * cost
    assert total is not None, "called only when some loss of the unit declares that cost"
    return total


def historical_penalty(diff: Autodiff, net: NetState, params: Tensor, hyper: Hyper) -> Tensor:
    """Historical averaging's (P, 1) lambda || theta - (1/t) sum_i theta_i ||^2 (Salimans et al.
    2016), the mean held constant: its gradient is 2 lambda (theta - mean)."""
    gap = diff.tracked(params) - net.average
    return hyper.historical_weight * (gap * gap).sum(1, keepdim=True)


def average_update(net: NetState) -> NetState:
    """The running mean of the net's parameters after an update: theta_1 (the initial
    parameters) to theta_t, t = steps + 1."""
    return net._replace(average=net.average + (net.params - net.average) / (net.steps + 1.0))


def gradient_penalty(
    spec: Spec, hyper: Hyper, nets: Nets, diff: Autodiff, d: NetState, real: Tensor, fake: Tensor, mix: Tensor,
) -> Tensor:
    """(P, 1) each trial's cost on D's gradient at the interpolates of paired real/fake
    samples (losses.Terms.d_input_gradient, e.g. WGAN-GP's E[(||grad D(x_hat)|| - 1)^2]),
    0 for the trials whose loss has none. Each trial's interpolates feed only its own
    logits, so the gradient of their sum is each trial's own."""
    n = mix.shape[1]
    x_hat = mix * real[:, :n] + (1 - mix) * fake[:, :n]  # (P, n, *shape)
    grads = diff.input_grad(lambda x: nets.d(d.params, d.buffers, x).sum(), x_hat)
    return declared_costs(spec, hyper, lambda loss: None if loss.d_input_gradient is None else loss.d_input_gradient(grads))


# ---------------------------------------------------------------------------- optimisers


def adam_update(net: NetState, grad: Tensor, lr: Tensor, hyper: Hyper) -> NetState:
    """torch.optim.Adam's update (no weight decay, no amsgrad), per trial lr and betas."""
    steps = net.steps + 1
    moment1 = net.moment1.lerp(grad, 1.0 - hyper.beta1)
    moment2 = net.moment2 * hyper.beta2 + (1.0 - hyper.beta2) * grad * grad
    bias1 = 1.0 - hyper.beta1**steps
    bias2_sqrt = (1.0 - hyper.beta2**steps).sqrt()
    params = net.params - (lr / bias1) * (moment1 / (moment2.sqrt() / bias2_sqrt + ADAM_EPS))
    return net._replace(params=params, moment1=moment1, moment2=moment2, steps=steps)


def sgd_update(net: NetState, grad: Tensor, lr: Tensor, hyper: Hyper) -> NetState:
    """torch.optim.SGD's update with momentum (no dampening, no Nesterov)."""
    moment1 = net.moment1 * hyper.momentum + grad
    return net._replace(params=net.params - lr * moment1, moment1=moment1, steps=net.steps + 1)


UPDATES: dict[str, Callable[[NetState, Tensor, Tensor, Hyper], NetState]] = {
    "adam": adam_update,
    "sgd": sgd_update,
}
# The second moment each optimiser keeps: its width per flat parameter (0: none).
SECOND_MOMENT: dict[str, bool] = {"adam": True, "sgd": False}


# ---------------------------------------------------------------------------- the iteration


def iteration(
    spec: Spec, nets: Nets, diff: Autodiff, state: TrainState, draws: Draws, hyper: Hyper,
    update: Callable[[NetState, Tensor, Tensor, Hyper], NetState] | None = None,
) -> tuple[TrainState, Tensor]:
    """k D updates on draws' minibatches, then one G update. Returns the new state and the
    (P, 4) statistics in STATS order, the D ones averaged over the k updates. `update`
    replaces UPDATES[spec.optimizer] with an execution's own form of the same update."""
    update = update or UPDATES[spec.optimizer]
    autocast = _autocast(spec)
    g, d = state
    stats_d = []
    for j in range(spec.k):
        with torch.no_grad(), autocast():
            fake = nets.g(g.params, g.buffers, draws.d_noise[j]).float()  # (P, n_fake, *shape)
        real = draws.reals[j]
        w_real, w_fake = ALPHA_WEIGHTS[spec.alpha_mode](hyper.alpha, draws.coins[j], spec.n_real, spec.n_fake)
        mix = draws.mixes[j]
        # the minibatch layer's counts: the alpha weights of the samples of each D call
        counts = (minibatch_counts(*(_tensor(w, real) for w in (w_real, w_fake)), spec.joint_discriminator,
                                   real.shape[0], spec.n_real, spec.n_fake)
                  if spec.minibatch_features else ())

        def d_objective(params: Tensor, buffers: tuple[Tensor, ...], real: Tensor = real, fake: Tensor = fake,
                        w_real: Weight = w_real, w_fake: Weight = w_fake, mix: Tensor = mix,
                        counts: tuple = counts) -> tuple[Tensor, object]:
            current = d._replace(params=params, buffers=buffers)
            with autocast():
                if spec.joint_discriminator:
                    logits = nets.d(params, buffers, torch.cat((real, fake), dim=1), *counts[:1]).float()
                    real_logits, fake_logits = logits[:, : spec.n_real], logits[:, spec.n_real :]
                else:
                    real_logits = nets.d(params, buffers, real, *counts[:1]).float()
                    fake_logits = nets.d(params, buffers, fake, *counts[1:]).float()
            value = d_losses(spec, real_logits, fake_logits, w_real, w_fake, hyper)  # (P, 1)
            total = value
            if spec.gradient_penalty:  # in float32: it differentiates D's input gradient
                total = value + hyper.gp_weight * gradient_penalty(spec, hyper, nets, diff, current, real, fake, mix)
            if spec.historical_averaging:
                total = total + historical_penalty(diff, current, params, hyper)
            if spec.d_regularisers:  # in float32, as the gradient penalty
                inputs = step_inputs(lambda x: nets.d(params, buffers, x).float(), diff.input_grad,
                                     real, fake, real_logits, fake_logits)
                total = total + penalty(spec.d_regularisers, hyper.reg_weights, inputs, real.shape[0])
            with torch.no_grad():  # statistics only: no graph to record, none to detach
                stats = torch.cat((value, d_outputs(spec, real_logits, hyper), d_outputs(spec, fake_logits, hyper)), dim=1)
            return total.sum(), stats

        grad, stats = diff.grad(d_objective, d.params, d.buffers)
        d = update(d, grad, hyper.lr_d, hyper)
        if spec.historical_averaging:
            d = average_update(d)
        stats_d.append(stats)

    def g_objective(params: Tensor, buffers: tuple[tuple[Tensor, ...], tuple[Tensor, ...]]) -> tuple[Tensor, object]:
        g_buffers, d_buffers = buffers  # D's forward, in training mode, updates its statistics too
        with autocast():
            samples = nets.g(params, g_buffers, draws.g_noise)
            g_counts = (samples.new_ones(samples.shape[:2]),) if spec.minibatch_features else ()  # G's m samples
            logits = nets.d(d.params, d_buffers, samples, *g_counts).float()  # D's params need no gradient
            if spec.feature_matching:  # the reals of the last D update, as Salimans et al.'s code
                real_features = nets.d_features(d.params, d_buffers, draws.reals[-1]).float().detach()
                fake_features = nets.d_features(d.params, d_buffers, samples).float()
        value = g_losses(spec, logits, hyper)
        if spec.feature_matching:
            value = value + feature_costs(spec, hyper, real_features, fake_features)
        total = value + historical_penalty(diff, g, params, hyper) if spec.historical_averaging else value
        if spec.g_regularisers:
            inputs = step_inputs(lambda x: nets.d(d.params, d_buffers, x).float(), diff.input_grad,
                                 draws.reals[-1], samples.float(), None, logits)
            total = total + penalty(spec.g_regularisers, hyper.reg_weights, inputs, logits.shape[0])
        return total.sum(), value.detach()

    grad, g_value = diff.grad(g_objective, g.params, (g.buffers, d.buffers))
    g = update(g, grad, hyper.lr_g, hyper)
    if spec.historical_averaging:
        g = average_update(g)
    d_stats = stats_d[0] if spec.k == 1 else torch.stack(stats_d).mean(0)  # (P, 3)
    stats = torch.cat((d_stats, g_value), dim=1)  # type: ignore[arg-type]
    return TrainState(g, d), stats


def _tensor(weight: Weight, like: Tensor) -> Tensor:
    return weight if isinstance(weight, Tensor) else like.new_full((1, 1), weight)


def _autocast(spec: Spec) -> Callable[[], AbstractContextManager[object]]:
    if spec.autocast:
        return lambda: torch.autocast(device_type=spec.device_type, dtype=torch.bfloat16)
    return nullcontext
