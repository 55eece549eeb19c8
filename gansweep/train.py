"""One GAN trial: Algorithm 1 of Goodfellow et al. (2014) with the alpha parametrisation.

Per iteration: k discriminator updates on fresh minibatches, then one generator update.
An epoch is `steps_per_epoch` iterations (default: as many as there are minibatches in the
training set). This module knows nothing of Ray or MLflow: it reports per-epoch metrics
through a plain callable, which may raise to stop the trial (pruning).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from gansweep.compiled import CompiledSteps
from gansweep.data import Dataset, minibatch
from gansweep.errors import TrialDiverged, TrialOutOfMemory, is_out_of_memory
from gansweep.losses import (
    Loss,
    alpha_weights,
    discriminator_loss,
    discriminator_output,
    equilibrium,
    generator_loss,
    get_loss,
    gradient_penalty,
    minibatch_plan,
)
from gansweep.metrics import mode_coverage, save_sample_grid, save_scatter
from gansweep.models import build_models
from gansweep.parzen import evaluate
from gansweep.study import TrialConfig

Metrics = dict[str, float]
# The loss sums each epoch accumulates on the device, read back once per epoch.
ACCUMULATED = ("d_loss", "g_loss", "d_real", "d_fake")


class Reporter(Protocol):
    def __call__(self, metrics: Metrics, epoch: int, state: Callable[[], dict[str, Any]]) -> None:
        """Receives each epoch's metrics; `state()` gives a checkpointable training state."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from gansweep.errors import ConfigError

        raise ConfigError("device: 'cuda' requested but no CUDA device is visible")
    return torch.device(name)


# Maps between the canonical data scale ([0,1] images, raw 2D points) and the generator's
# output range, so a tanh generator trains on [-1,1] and Parzen always sees [0,1] images.
TO_MODEL_SCALE: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": lambda x: x * 2.0 - 1.0,
    "sigmoid": lambda x: x,
    "identity": lambda x: x,
}
TO_DATA_SCALE: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": lambda x: ((x + 1.0) / 2.0).clamp(0.0, 1.0),
    "sigmoid": lambda x: x,
    "identity": lambda x: x,
}


def sample_noise(trial: TrialConfig, n: int, device: torch.device) -> Tensor:
    if trial.noise == "uniform":
        return torch.rand(n, trial.noise_dim, device=device) * 2.0 - 1.0  # U(-1, 1)
    return torch.randn(n, trial.noise_dim, device=device)


@dataclass(frozen=True)
class FastPaths:
    """Optimisations of the step loop, each checked against the plain path
    (FastPaths.plain()) in tests/test_fast_paths.py and measured by benchmarks/train_bench.py.
    None changes the algorithm; most change only the rounding, bf16 the precision of the
    matrix products. None means "where it pays" (see `resolve`)."""

    # One fused kernel per optimiser step for all parameters (torch.optim fused=True) instead
    # of a dozen small ops per parameter tensor. Different rounding from the for-loop kernel.
    fused_optimizer: bool = True
    # Adam's fused kernel called on parameter lists built once, skipping torch.optim's
    # per-call bookkeeping (about 0.1 ms a step, as much as a toy net's whole update).
    # Same kernel, same numbers as opt.step(); needs fused_optimizer.
    direct_adam: bool = True
    # One discriminator forward on cat(real, fake) instead of two, where that cannot change
    # the result: D has no batch norm (which would pool the two batches' statistics).
    joint_discriminator: bool = True
    # Each step takes the gradients of the network it updates with torch.autograd.grad and
    # hands them to the optimiser: the G step skips the weight gradients of D that a plain
    # `backward()` computes and throws away, and no step needs a zero_grad pass.
    direct_grads: bool = True
    # The alpha weights of compose and weight modes are constants: built once per trial, not
    # as two torch.full tensors per discriminator step (bernoulli draws them every step).
    cached_weights: bool = True
    # The per-step statistics are stacked and added in one op per step, not three.
    stacked_sums: bool = True
    # Forward passes under torch.autocast(bfloat16): matrix products and convolutions in
    # bf16 with float32 accumulation; weights, optimiser state and losses stay float32.
    # None: on for image data where the device multiplies bf16 natively (CUDA with bf16,
    # CPUs with AVX512-BF16 or AMX), off for the 2D toys, whose small products gain nothing.
    bf16_autocast: bool | None = None
    # DCGAN's tensors in channels_last memory order. None: on for DCGAN on CUDA only (on
    # CPU it measured no faster).
    channels_last: bool | None = None
    # The whole iteration (k D steps, the G step, forward, backward and optimiser) compiled
    # into one graph by torch.compile (gansweep/compiled.py). None: the trial's `compile`
    # setting, off unless asked: it pays only for trials long enough to repay its compile
    # time (13 to 30 s on a cold cache; see the study field's comment).
    compile: bool | None = None

    @classmethod
    def plain(cls) -> FastPaths:
        """Every fast path off: the step loop as it was written first, the reference."""
        return cls(
            fused_optimizer=False,
            direct_adam=False,
            joint_discriminator=False,
            direct_grads=False,
            cached_weights=False,
            stacked_sums=False,
            bf16_autocast=False,
            channels_last=False,
            compile=False,
        )

    def resolve(self, trial: TrialConfig, data: Dataset, device: torch.device) -> FastPaths:
        """These paths with every None replaced by this trial's choice."""
        autocast = self.bf16_autocast
        if autocast is None:
            autocast = data.is_image and native_bf16(device)
        channels_last = self.channels_last
        if channels_last is None:
            channels_last = trial.architecture == "dcgan" and device.type == "cuda"
        fused = self.fused_optimizer and fused_supported(device)
        compile_step = trial.compile if self.compile is None else self.compile
        return replace(
            self,
            fused_optimizer=fused,
            direct_adam=self.direct_adam and fused,
            bf16_autocast=autocast,
            channels_last=channels_last and trial.architecture == "dcgan",
            compile=compile_step,
            # The compiled iteration accumulates the step statistics in the stacked order.
            stacked_sums=self.stacked_sums or compile_step,
        )


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 matrices in hardware (else bf16 is emulated)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
    return False


def samples_per_second(trial: TrialConfig, steps: int, elapsed: float) -> float:
    """Training throughput: each of `steps` iterations feeds m samples to each of k D steps
    and to the G step."""
    return steps * trial.batch_size * (trial.k + 1) / elapsed


def fused_supported(device: torch.device) -> bool:
    """torch.optim's fused Adam/SGD kernels exist for CPU and CUDA float tensors."""
    return device.type in ("cpu", "cuda")


def make_optimizer(
    trial: TrialConfig, params: Any, lr: float, *, fused: bool = False
) -> torch.optim.Optimizer:
    extra = {"fused": True} if fused else {}
    if trial.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=trial.momentum, **extra)
    return torch.optim.Adam(params, lr=lr, betas=(trial.adam_beta1, trial.adam_beta2), **extra)


class DirectAdamStep:
    """`opt.step()` for a fused torch.optim.Adam with one parameter group, without the
    per-call bookkeeping: torch._fused_adam_ (the kernel opt.step() itself ends in) on lists
    of parameters and state built once. The lists are rebuilt when the optimiser's state is
    replaced (load_state_dict); anything not covered goes to opt.step(): the first step
    (which creates the state), a missing gradient, amsgrad, maximize, AdamW, tensor lr."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.opt = opt
        self.state: Any = None  # the opt.state the lists below were built from
        self.params: list[Tensor] = []
        self.exp_avgs: list[Tensor] = []
        self.exp_avg_sqs: list[Tensor] = []
        self.steps: list[Tensor] = []

    @staticmethod
    def covers(opt: torch.optim.Optimizer) -> bool:
        if type(opt) is not torch.optim.Adam or len(opt.param_groups) != 1:
            return False
        if not hasattr(torch, "_fused_adam_"):
            return False
        group = opt.param_groups[0]
        return bool(group.get("fused")) and not any(
            group.get(flag) for flag in ("amsgrad", "maximize", "capturable", "differentiable",
                                         "decoupled_weight_decay")
        )

    def _lists_ready(self) -> bool:
        opt = self.opt
        if self.state is opt.state and self.params:
            return True
        params = opt.param_groups[0]["params"]
        states = [opt.state.get(p) for p in params]
        if any(not state or "exp_avg" not in state for state in states):
            return False
        self.params = list(params)
        self.exp_avgs = [state["exp_avg"] for state in states]
        self.exp_avg_sqs = [state["exp_avg_sq"] for state in states]
        self.steps = [state["step"] for state in states]
        self.state = opt.state
        return True

    def __call__(self) -> None:
        group = self.opt.param_groups[0]
        lr = group["lr"]
        if isinstance(lr, Tensor) or not self._lists_ready():
            self.opt.step()
            return
        grads = [p.grad for p in self.params]
        if any(g is None for g in grads):
            self.opt.step()
            return
        beta1, beta2 = group["betas"]
        torch._foreach_add_(self.steps, 1)
        torch._fused_adam_(
            self.params, grads, self.exp_avgs, self.exp_avg_sqs, [], self.steps,
            amsgrad=False, lr=lr, beta1=beta1, beta2=beta2,
            weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
        )


def set_grads(params: list[Tensor], loss: Tensor) -> None:
    """params' .grad = d loss / d param, computing no gradient that `params` do not need."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    for param, grad in zip(params, grads, strict=True):
        param.grad = grad


def stepper(opt: torch.optim.Optimizer, direct: bool) -> Callable[[], Any]:
    return DirectAdamStep(opt) if direct and DirectAdamStep.covers(opt) else opt.step


def has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def momentum_at(trial: TrialConfig, epoch: int) -> float:
    """Goodfellow's schedule: momentum ramps linearly from `momentum` to `momentum_final`."""
    if trial.momentum_final is None or trial.epochs == 1:
        return trial.momentum
    share = (epoch - 1) / (trial.epochs - 1)
    return trial.momentum + share * (trial.momentum_final - trial.momentum)


def is_eval_epoch(trial: TrialConfig, epoch: int) -> bool:
    return epoch % trial.eval_every == 0 or epoch == trial.epochs


def is_sample_epoch(trial: TrialConfig, epoch: int) -> bool:
    if trial.sample_epochs is None:
        return is_eval_epoch(trial, epoch)
    return epoch in trial.sample_epochs


def steps_per_epoch(trial: TrialConfig, n_train: int) -> int:
    return trial.steps_per_epoch or max(1, n_train // trial.batch_size)


@dataclass
class GanTrial:
    """The mutable state of one trial: networks, optimisers, the epoch reached."""

    trial: TrialConfig
    data: Dataset
    device: torch.device
    generator: nn.Module
    discriminator: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    loss: Loss
    train_data: Tensor  # the training split in the generator's output scale, on the device
    epoch: int = 0
    wall_time: float = 0.0
    last_samples: Tensor | None = None  # the latest evaluation's samples, reused for plots
    last_metrics: Metrics | None = None  # kept in checkpoints: a finished trial can re-report
    fast: FastPaths = field(default_factory=FastPaths)  # resolved: no None left
    # Derived once in __post_init__ from `fast`, the trial and the networks.
    joint_d: bool = field(init=False, default=False)
    weights: tuple[Tensor, Tensor] | None = field(init=False, default=None)
    g_params: list[Tensor] = field(init=False, default_factory=list)
    d_params: list[Tensor] = field(init=False, default_factory=list)
    step_d: Callable[[], Any] = field(init=False, repr=False, default=None)  # type: ignore[assignment]
    step_g: Callable[[], Any] = field(init=False, repr=False, default=None)  # type: ignore[assignment]
    compiled: CompiledSteps | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        trial = self.trial
        self.fast = self.fast.resolve(trial, self.data, self.device)
        self.joint_d = self.fast.joint_discriminator and not has_batch_norm(self.discriminator)
        if self.fast.cached_weights and trial.alpha_mode != "bernoulli":
            plan = minibatch_plan(trial.alpha_mode, trial.alpha, trial.batch_size)
            self.weights = alpha_weights(trial.alpha_mode, trial.alpha, plan, self.device)
        self.g_params = [p for p in self.generator.parameters() if p.requires_grad]
        self.d_params = [p for p in self.discriminator.parameters() if p.requires_grad]
        self.step_d = stepper(self.opt_d, self.fast.direct_adam)
        self.step_g = stepper(self.opt_g, self.fast.direct_adam)
        if self.fast.compile:
            self.compiled = CompiledSteps(self)

    @classmethod
    def create(cls, trial: TrialConfig, data: Dataset, fast: FastPaths | None = None) -> GanTrial:
        device = resolve_device(trial.device)
        fast = (FastPaths() if fast is None else fast).resolve(trial, data, device)
        torch.manual_seed(trial.seed)
        generator, discriminator = build_models(trial, data.shape)
        generator, discriminator = generator.to(device), discriminator.to(device)
        scale = TO_MODEL_SCALE[trial.generator_output]
        train_data = scale(data.train.to(device))
        if fast.channels_last:
            generator = generator.to(memory_format=torch.channels_last)
            discriminator = discriminator.to(memory_format=torch.channels_last)
            train_data = train_data.contiguous(memory_format=torch.channels_last)
        return cls(
            trial=trial,
            data=data,
            device=device,
            generator=generator,
            discriminator=discriminator,
            opt_g=make_optimizer(
                trial, generator.parameters(), trial.effective_lr_g, fused=fast.fused_optimizer
            ),
            opt_d=make_optimizer(
                trial, discriminator.parameters(), trial.lr_d, fused=fast.fused_optimizer
            ),
            loss=get_loss(trial.loss),
            train_data=train_data,
            fast=fast,
        )

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The forward passes' precision context: bf16 autocast where `fast` says so."""
        if not self.fast.bf16_autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    # -- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {
            "epoch": self.epoch,
            "wall_time": self.wall_time,
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "metrics": self.last_metrics,
        }
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.wall_time = float(state["wall_time"])
        self.last_metrics = state.get("metrics")
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)

    # -- one epoch -----------------------------------------------------------------------
    def discriminator_step(self, sums: Tensor) -> None:
        trial, loss = self.trial, self.loss
        plan = minibatch_plan(trial.alpha_mode, trial.alpha, trial.batch_size)
        real = minibatch(self.train_data, plan.n_real)
        with self.autocast():
            with torch.no_grad():
                fake = self.generator(sample_noise(trial, plan.n_fake, self.device))
            if self.joint_d:
                logits = self.discriminator(torch.cat((real, fake))).float()
                real_logits, fake_logits = logits[: plan.n_real], logits[plan.n_real :]
            else:
                real_logits = self.discriminator(real).float()
                fake_logits = self.discriminator(fake).float()
        if self.weights is not None:
            w_real, w_fake = self.weights
        else:
            w_real, w_fake = alpha_weights(trial.alpha_mode, trial.alpha, plan, self.device)
        d_loss = discriminator_loss(
            loss, real_logits, fake_logits, w_real, w_fake, trial.label_smoothing
        )
        total = d_loss
        if loss.gradient_penalty:  # in float32: it differentiates D's input gradient
            total = d_loss + trial.gp_weight * gradient_penalty(self.discriminator, real, fake)
        if self.fast.direct_grads:
            set_grads(self.d_params, total)
        else:
            self.opt_d.zero_grad(set_to_none=True)
            total.backward()
        self.step_d()
        with torch.no_grad():
            if self.fast.stacked_sums:  # sums holds (d_loss, d_real, d_fake, g_loss) here
                stats = torch.stack(
                    (
                        d_loss,
                        discriminator_output(loss, real_logits).mean(),
                        discriminator_output(loss, fake_logits).mean(),
                    )
                )
                sums[:3] += stats if trial.k == 1 else stats / trial.k
                return
            sums[0] += d_loss.detach() / trial.k
            sums[2] += discriminator_output(loss, real_logits).mean() / trial.k
            sums[3] += discriminator_output(loss, fake_logits).mean() / trial.k

    def generator_step(self, sums: Tensor) -> None:
        with self.autocast():
            fake = self.generator(sample_noise(self.trial, self.trial.batch_size, self.device))
            logits = self.discriminator(fake).float()
        g_loss = generator_loss(self.loss, logits)
        if self.fast.direct_grads:
            set_grads(self.g_params, g_loss)  # not D's weight gradients: nothing uses them
        else:
            self.opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
        self.step_g()
        with torch.no_grad():
            sums[3 if self.fast.stacked_sums else 1] += g_loss

    def train_epoch(self) -> Metrics:
        """One epoch; returns the mean losses and D outputs. One host sync, at the end."""
        trial = self.trial
        self.epoch += 1
        if trial.optimizer == "sgd":
            for group in self.opt_d.param_groups + self.opt_g.param_groups:
                group["momentum"] = momentum_at(trial, self.epoch)
        self.generator.train()
        self.discriminator.train()
        steps = steps_per_epoch(trial, self.train_data.shape[0])
        sums = torch.zeros(len(ACCUMULATED), device=self.device)
        started = time.perf_counter()
        # A compiled trial's first iteration, timed apart: it compiles the graph, unless this
        # process compiled it already (an actor reused across a sweep's trials).
        first_call: float | None = None
        if self.compiled is not None:
            self.compiled.start_epoch()
            remaining = steps
            if self.compiled.first:
                self.compiled.iteration(sums)
                first_call, remaining = time.perf_counter() - started, steps - 1
            for _ in range(remaining):
                self.compiled.iteration(sums)
        else:
            for _ in range(steps):
                for _ in range(trial.k):
                    self.discriminator_step(sums)
                self.generator_step(sums)
        means = (sums / steps).tolist()
        elapsed = time.perf_counter() - started
        self.wall_time += elapsed
        if self.fast.stacked_sums:  # stacked order: d_loss, d_real, d_fake, g_loss
            means = [means[0], means[3], means[1], means[2]]
        metrics = dict(zip(ACCUMULATED, means, strict=True))
        diverged = divergence(metrics, self.epoch)
        if diverged is not None:
            raise diverged
        metrics["epoch_time"] = elapsed
        metrics["wall_time"] = self.wall_time
        if first_call is not None and steps > 1:
            # A throughput, not a one-off cost: the iterations after the first one, which is
            # logged on its own (wall_time and epoch_time include it).
            metrics["compile_time"] = first_call
            metrics["samples_per_second"] = samples_per_second(trial, steps - 1, elapsed - first_call)
        else:
            metrics["samples_per_second"] = samples_per_second(trial, steps, elapsed)
        return metrics

    # -- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, n: int, chunk: int = 2_000) -> Tensor:
        """n samples in the canonical data scale ([0,1] images, raw 2D points)."""
        self.generator.eval()
        to_data = TO_DATA_SCALE[self.trial.generator_output]
        parts = [
            to_data(self.generator(sample_noise(self.trial, min(chunk, n - start), self.device)))
            for start in range(0, n, chunk)
        ]
        self.generator.train()
        return torch.cat(parts)

    def evaluate(self) -> Metrics:
        trial, data = self.trial, self.data
        # Evaluation draws noise from its own seeded stream so that scoring does not shift
        # the training RNG: the same seed gives the same losses whatever eval_every is.
        rng_state = torch.get_rng_state()
        cuda_state = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        torch.manual_seed(trial.seed + 1_000_003 * self.epoch)
        samples = self.generate(trial.eval_samples)
        torch.set_rng_state(rng_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, self.device)
        self.last_samples = samples
        valid = data.valid[: trial.eval_valid].to(self.device)
        test = data.test if trial.eval_test is None else data.test[: trial.eval_test]
        sigmas = trial.parzen_sigmas or data.default_sigmas
        result = evaluate(samples, valid, test.to(self.device), sigmas)
        metrics = {
            "parzen_ll": result.mean,
            "parzen_stderr": result.stderr,
            "parzen_sigma": result.sigma,
        }
        if data.modes is not None and data.mode_std is not None:
            covered, quality = mode_coverage(samples, data.modes.to(self.device), data.mode_std)
            metrics["modes_covered"] = float(covered)
            metrics["high_quality_share"] = quality
        return metrics

    def save_samples(self, folder: Path) -> Path:
        """A sample grid (images) or a scatter over the real data (2D) for this epoch."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"epoch_{self.epoch:04d}.png"
        samples = self.last_samples
        if self.data.is_image:
            shown = (samples if samples is not None else self.generate(64))[:64]
            return save_sample_grid(shown.reshape(-1, *self.data.shape).cpu(), path)
        shown = (samples if samples is not None else self.generate(1_000))[:1_000]
        return save_scatter(
            shown.cpu(), self.data.test.cpu(), path, title=f"{self.trial.dataset}, epoch {self.epoch}"
        )


def divergence(metrics: Metrics, epoch: int) -> TrialDiverged | None:
    """The error of an epoch whose D or G loss is NaN or infinite, else None."""
    for name in ("d_loss", "g_loss"):
        if not math.isfinite(metrics[name]):
            return TrialDiverged(epoch, name, metrics[name])
    return None


def theory_metrics(trial: TrialConfig, metrics: Metrics) -> Metrics:
    """The equilibrium losses of THEORY.md and the gaps to them, where theory gives them."""
    star = equilibrium(trial.loss, trial.alpha, trial.label_smoothing)
    if star is None:
        return {}
    return {
        "d_loss_star": star.d_loss,
        "g_loss_star": star.g_loss,
        "d_loss_gap": abs(metrics["d_loss"] - star.d_loss),
        "g_loss_gap": abs(metrics["g_loss"] - star.g_loss),
    }


def train_gan(
    trial: TrialConfig,
    data: Dataset,
    report: Reporter | None = None,
    *,
    sample_dir: Path | None = None,
    resume_from: dict[str, Any] | None = None,
    fast: FastPaths | None = None,
) -> list[Metrics]:
    """Train one trial to `trial.epochs`, reporting after every epoch.

    `resume_from` is a `state()` given to an earlier report: training continues after its
    epoch with the same networks, optimiser moments and RNG state. Raises TrialDiverged on a
    NaN or infinite loss; exceptions raised by `report` (e.g. a pruning signal) propagate.
    `fast` picks the step loop's fast paths (default: all of them; FastPaths.plain(): none).
    Raises TrialOutOfMemory when the networks or a step do not fit in the device's memory.
    """
    gan: GanTrial | None = None
    try:
        gan = GanTrial.create(trial, data, fast)
        if resume_from is not None:
            gan.load_state_dict(resume_from)
        history: list[Metrics] = []
        if gan.epoch >= trial.epochs and gan.last_metrics is not None and report is not None:
            # Resumed from the final checkpoint (its driver stopped before recording the end):
            # say the last epoch's metrics again so that the caller can close the trial.
            report(gan.last_metrics, gan.epoch, gan.state_dict)
        while gan.epoch < trial.epochs:
            metrics = gan.train_epoch()
            metrics.update(theory_metrics(trial, metrics))
            gan.last_samples = None
            if is_eval_epoch(trial, gan.epoch):
                metrics.update(gan.evaluate())
            if sample_dir is not None and is_sample_epoch(trial, gan.epoch):
                gan.save_samples(sample_dir)
            metrics["epoch"] = float(gan.epoch)
            gan.last_metrics = metrics
            history.append(metrics)
            if report is not None:
                report(metrics, gan.epoch, gan.state_dict)
    except (RuntimeError, MemoryError) as err:
        if not is_out_of_memory(err):
            raise
        # train_epoch counts an epoch as it starts it; 0: the networks themselves did not fit
        epoch = gan.epoch if gan is not None else 0
        device = str(gan.device) if gan is not None else str(resolve_device(trial.device))
        lines = str(err).strip().splitlines()
        raise TrialOutOfMemory(epoch, device, lines[-1][:300] if lines else type(err).__name__) from err
    return history
