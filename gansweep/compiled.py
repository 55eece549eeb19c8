"""A trial's whole training iteration as one compiled graph (the trial field `compile: true`).

Eager PyTorch pays a fixed cost for every op it runs (dispatch, autograd's bookkeeping, the
optimiser's loops): a 2D toy's iteration is a few hundred ops on 64 x 128 matrices, and that
cost is most of its time. Here one iteration of Algorithm 1, k discriminator updates and one
generator update, each with its forward, backward and optimiser step, is one function of
tensors (torch.func.grad over torch.func.functional_call), which torch.compile
turns into a few fused kernels called once per iteration.

What stays outside the graph, in eager mode: the random draws (minibatch indices, noise,
Bernoulli weights, gradient-penalty interpolation), made in the order the eager step loop
makes them, so that a compiled trial consumes the same random stream and reproduces the
eager trial's losses up to rounding. (Dropout inside D is the exception: its masks come from
inductor's own draws, with the same distribution.)

The trial's own parameters, buffers and optimiser state are the tensors the graph updates in
place, so checkpoints, evaluation and resume see an ordinary trial. Hyperparameters that vary
between the trials of a sweep (learning rates, Adam's betas, momentum, the alpha weights, the
gradient-penalty weight) enter as tensors rather than constants: one compiled graph serves
every trial whose networks, loss, k, label smoothing and minibatch shapes are the same, so an
actor reused across a sweep's trials compiles once (COMPILED caches the graphs per process,
and inductor's on-disk cache serves later processes).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, nn

from gansweep.data import minibatch
from gansweep.losses import (
    Loss,
    alpha_weights,
    discriminator_loss,
    discriminator_output,
    generator_loss,
    gradient_norm_penalty,
    interpolate,
    minibatch_plan,
    penalty_mix,
)

if TYPE_CHECKING:
    from gansweep.train import GanTrial

# How many graphs one code object may hold before dynamo silently falls back to eager (its
# default is 8): a long-lived actor of a sweep over shapes or losses can need more.
RECOMPILE_LIMIT = 64


@dataclass(frozen=True)
class GraphKey:
    """Everything a compiled iteration's code depends on that is not a tensor input."""

    generator: str  # repr of the network: its layers, their sizes and constants
    discriminator: str
    loss: str
    smoothing: float  # a branch of the BCE real term, so a constant of the graph
    k: int
    n_real: int
    n_fake: int
    joint_discriminator: bool
    autocast: bool
    device_type: str
    optimizer: str


@dataclass
class NetworkTensors:
    """One network's tensors as the graph sees them: detached aliases of the module's own
    parameters and buffers (in-place updates land in the module) and their names."""

    param_names: list[str]
    params: list[Tensor]
    buffer_names: list[str]
    buffers: list[Tensor]

    @classmethod
    def of(cls, module: nn.Module) -> NetworkTensors:
        named_params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        named_buffers = list(module.named_buffers())
        return cls(
            param_names=[n for n, _ in named_params],
            params=[p.detach() for _, p in named_params],
            buffer_names=[n for n, _ in named_buffers],
            buffers=list(b for _, b in named_buffers),
        )


def optimizer_state(opt: torch.optim.Optimizer) -> list[list[Tensor]]:
    """The per-parameter state tensors the graph updates, created in torch.optim's own layout
    where missing (so that a checkpoint loads into an eager trial and back): for Adam
    [steps, exp_avgs, exp_avg_sqs], for SGD [momentum buffers]."""
    group = opt.param_groups[0]
    on_device = bool(group.get("fused")) or bool(group.get("capturable"))
    steps: list[Tensor] = []
    firsts: list[Tensor] = []
    seconds: list[Tensor] = []
    for param in group["params"]:
        state = opt.state[param]
        if isinstance(opt, torch.optim.Adam):
            if "exp_avg" not in state:
                device = param.device if on_device else torch.device("cpu")
                state["step"] = torch.zeros((), dtype=torch.float32, device=device)
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            steps.append(state["step"])
            firsts.append(state["exp_avg"])
            seconds.append(state["exp_avg_sq"])
        else:
            if state.get("momentum_buffer") is None:
                # torch's SGD starts its buffer at the first gradient; a zero buffer times
                # momentum plus that gradient is the same number.
                state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            firsts.append(state["momentum_buffer"])
    return [steps, firsts, seconds] if isinstance(opt, torch.optim.Adam) else [firsts]


def optimizer_hyper(opt: torch.optim.Optimizer, device: torch.device) -> Tensor:
    """The optimiser's settings as one tensor input: (lr, beta1, beta2, eps) for Adam,
    (lr, momentum) for SGD; read from its param group, so schedules (momentum_at) apply."""
    group = opt.param_groups[0]
    if isinstance(opt, torch.optim.Adam):
        beta1, beta2 = group["betas"]
        values = [group["lr"], beta1, beta2, group["eps"]]
    else:
        values = [group["lr"], group["momentum"]]
    return torch.tensor(values, dtype=torch.float32, device=device)


def adam_update(params: list[Tensor], grads: Sequence[Tensor], state: list[list[Tensor]], hyper: Tensor) -> None:
    """torch.optim.Adam's step (weight decay 0), in place, with tensor settings."""
    steps, exp_avgs, exp_avg_sqs = state
    lr, beta1, beta2, eps = hyper[0], hyper[1], hyper[2], hyper[3]
    for param, grad, step, exp_avg, exp_avg_sq in zip(params, grads, steps, exp_avgs, exp_avg_sqs, strict=True):
        step.add_(1)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).add_(grad * grad * (1 - beta2))
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step).sqrt()
        denom = exp_avg_sq.sqrt() / bias_correction2_sqrt + eps
        param.sub_(exp_avg / denom * (lr / bias_correction1))


def sgd_update(params: list[Tensor], grads: Sequence[Tensor], state: list[list[Tensor]], hyper: Tensor) -> None:
    """torch.optim.SGD's step with momentum (no dampening, no Nesterov), in place."""
    (buffers,) = state
    lr, momentum = hyper[0], hyper[1]
    for param, grad, buffer in zip(params, grads, buffers, strict=True):
        buffer.mul_(momentum).add_(grad)
        param.sub_(buffer * lr)


UPDATES: dict[str, Callable[[list[Tensor], Sequence[Tensor], list[list[Tensor]], Tensor], None]] = {
    "adam": adam_update,
    "sgd": sgd_update,
}


def build_iteration(
    key: GraphKey, generator: nn.Module, discriminator: nn.Module, loss: Loss
) -> Callable[..., None]:
    """The uncompiled iteration over `generator` and `discriminator`, used as templates:
    every tensor they hold is replaced by the caller's through functional_call."""
    update = UPDATES[key.optimizer]
    autocast = (
        (lambda: torch.autocast(device_type=key.device_type, dtype=torch.bfloat16))
        if key.autocast
        else contextlib.nullcontext
    )

    g_names, d_names = NetworkTensors.of(generator), NetworkTensors.of(discriminator)

    def call(module: nn.Module, net: NetworkTensors, params: Sequence[Tensor], buffers: Sequence[Tensor], x: Tensor) -> Tensor:
        tensors = dict(zip(net.param_names, params, strict=True))
        tensors.update(zip(net.buffer_names, buffers, strict=True))
        return torch.func.functional_call(module, tensors, (x,))

    def run_g(params: Sequence[Tensor], buffers: Sequence[Tensor], x: Tensor) -> Tensor:
        return call(generator, g_names, params, buffers, x)

    def run_d(params: Sequence[Tensor], buffers: Sequence[Tensor], x: Tensor) -> Tensor:
        return call(discriminator, d_names, params, buffers, x)

    def d_loss_of(
        d_params: list[Tensor], d_buffers: list[Tensor],
        real: Tensor, fake: Tensor, w_real: Tensor, w_fake: Tensor, mix: Tensor | None,
        gp_weight: Tensor,
    ) -> tuple[Tensor, Tensor]:
        with autocast():
            if key.joint_discriminator:
                logits = run_d(d_params, d_buffers, torch.cat((real, fake))).float()
                real_logits, fake_logits = logits[: key.n_real], logits[key.n_real :]
            else:
                real_logits = run_d(d_params, d_buffers, real).float()
                fake_logits = run_d(d_params, d_buffers, fake).float()
        value = discriminator_loss(loss, real_logits, fake_logits, w_real, w_fake, key.smoothing)
        stats = torch.stack(
            (value, discriminator_output(loss, real_logits).mean(), discriminator_output(loss, fake_logits).mean())
        )
        total = value
        if mix is not None:  # in float32, as the eager loop: it differentiates D's input gradient

            def score_sum(x: Tensor) -> Tensor:
                return run_d(d_params, d_buffers, x).sum()

            input_grad = torch.func.grad(score_sum)(interpolate(mix, real, fake))
            total = value + gp_weight * gradient_norm_penalty(input_grad)
        return total, stats.detach()

    def g_loss_of(
        g_params: list[Tensor], g_buffers: list[Tensor],
        d_params: list[Tensor], d_buffers: list[Tensor], noise: Tensor,
    ) -> tuple[Tensor, Tensor]:
        with autocast():
            fake = run_g(g_params, g_buffers, noise)
            logits = run_d(d_params, d_buffers, fake).float()
        value = generator_loss(loss, logits)
        return value, value.detach()

    d_grad = torch.func.grad(d_loss_of, argnums=0, has_aux=True)
    g_grad = torch.func.grad(g_loss_of, argnums=0, has_aux=True)

    def iteration(
        g_params: list[Tensor], g_buffers: list[Tensor], d_params: list[Tensor], d_buffers: list[Tensor],
        g_state: list[list[Tensor]], d_state: list[list[Tensor]], g_hyper: Tensor, d_hyper: Tensor,
        gp_weight: Tensor, reals: list[Tensor], d_noises: list[Tensor], w_reals: list[Tensor],
        w_fakes: list[Tensor], mixes: list[Tensor], g_noise: Tensor, sums: Tensor,
    ) -> None:
        """In place: the networks, their buffers and optimiser states, and `sums`. The draws
        come as Draws' fields, flat: dynamo guards plain lists of tensors cheaply."""
        for i in range(key.k):
            with torch.no_grad(), autocast():
                fake = run_g(g_params, g_buffers, d_noises[i])
            mix = mixes[i] if mixes else None
            grads, stats = d_grad(
                d_params, d_buffers, reals[i], fake, w_reals[i], w_fakes[i], mix, gp_weight,
            )
            with torch.no_grad():
                update(d_params, grads, d_state, d_hyper)
                sums[:3] += stats if key.k == 1 else stats / key.k
        grads, g_value = g_grad(g_params, g_buffers, d_params, d_buffers, g_noise)
        with torch.no_grad():
            update(g_params, grads, g_state, g_hyper)
            sums[3] += g_value

    return iteration


class Draws(NamedTuple):
    """One iteration's random inputs, per D step i: reals[i] (n_real, *shape), d_noises[i]
    (n_fake, noise_dim), w_reals[i] (n_real,), w_fakes[i] (n_fake,), mixes[i] the penalty's
    interpolation weights (empty without a penalty); g_noise (batch_size, noise_dim)."""

    reals: list[Tensor]
    d_noises: list[Tensor]
    w_reals: list[Tensor]
    w_fakes: list[Tensor]
    mixes: list[Tensor]
    g_noise: Tensor


# One compiled iteration per GraphKey in this process (the templates live with it).
COMPILED: dict[GraphKey, Callable[..., None]] = {}


def compiled_iteration(key: GraphKey, generator: nn.Module, discriminator: nn.Module, loss: Loss) -> Callable[..., None]:
    if key not in COMPILED:
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        templates = copy.deepcopy(generator).train(), copy.deepcopy(discriminator).train()
        COMPILED[key] = torch.compile(build_iteration(key, *templates, loss), fullgraph=True, dynamic=False)
    return COMPILED[key]


class CompiledSteps:
    """Runs a GanTrial's iterations through its compiled graph (GanTrial.train_epoch)."""

    def __init__(self, gan: GanTrial) -> None:
        trial = gan.trial
        self.gan = gan
        self.plan = minibatch_plan(trial.alpha_mode, trial.alpha, trial.batch_size)
        self.key = GraphKey(
            generator=repr(gan.generator),
            discriminator=repr(gan.discriminator),
            loss=trial.loss,
            smoothing=trial.label_smoothing,
            k=trial.k,
            n_real=self.plan.n_real,
            n_fake=self.plan.n_fake,
            joint_discriminator=gan.joint_d,
            autocast=bool(gan.fast.bf16_autocast),
            device_type=gan.device.type,
            optimizer=trial.optimizer,
        )
        self.g_net = NetworkTensors.of(gan.generator)
        self.d_net = NetworkTensors.of(gan.discriminator)
        self.gp_weight = torch.tensor(trial.gp_weight, dtype=torch.float32, device=gan.device)
        self.run: Callable[..., None] = compiled_iteration(self.key, gan.generator, gan.discriminator, gan.loss)
        self.states: tuple[Any, Any] | None = None  # the opt.state objects the lists below are of
        self.g_state: list[list[Tensor]] = []
        self.d_state: list[list[Tensor]] = []
        self.g_hyper = self.d_hyper = torch.empty(0)
        self.first = True  # no iteration run yet: the next call may compile
        self.start_epoch()

    def start_epoch(self) -> None:
        """Read the optimisers' settings (momentum changes per epoch) and state (replaced by
        load_state_dict on resume) before an epoch's iterations."""
        gan = self.gan
        if self.states != (gan.opt_g.state, gan.opt_d.state):
            self.g_state = optimizer_state(gan.opt_g)
            self.d_state = optimizer_state(gan.opt_d)
            self.states = (gan.opt_g.state, gan.opt_d.state)
        self.g_hyper = optimizer_hyper(gan.opt_g, gan.device)
        self.d_hyper = optimizer_hyper(gan.opt_d, gan.device)

    def draws(self) -> Draws:
        """This iteration's random inputs, drawn in the eager loop's order: per D step the
        real minibatch, the noise, the Bernoulli weights, the penalty's mix; then the G
        step's noise. Fixed alpha weights are the trial's own (GanTrial.weights)."""
        from gansweep.train import sample_noise

        gan, trial, plan = self.gan, self.gan.trial, self.plan
        draws = Draws([], [], [], [], [], g_noise=torch.empty(0))
        for _ in range(trial.k):
            real = minibatch(gan.train_data, plan.n_real)
            noise = sample_noise(trial, plan.n_fake, gan.device)
            w_real, w_fake = gan.weights or alpha_weights(trial.alpha_mode, trial.alpha, plan, gan.device)
            draws.reals.append(real)
            draws.d_noises.append(noise)
            draws.w_reals.append(w_real)
            draws.w_fakes.append(w_fake)
            if gan.loss.gradient_penalty:
                draws.mixes.append(penalty_mix(plan.n_real, plan.n_fake, real.dim() - 1, gan.device))
        return draws._replace(g_noise=sample_noise(trial, trial.batch_size, gan.device))

    def iteration(self, sums: Tensor) -> None:
        """One iteration of Algorithm 1; adds (d_loss, d_real, d_fake, g_loss) into `sums`."""
        self.first = False
        g, d = self.g_net, self.d_net
        self.run(
            g.params, g.buffers, d.params, d.buffers, self.g_state, self.d_state, self.g_hyper,
            self.d_hyper, self.gp_weight, *self.draws(), sums,
        )
