"""Packs: P same-shaped 2D-toy trials trained together, one vectorised step for all of them.

A 2D toy trial (G 2-64-64-2, D 2-64-64-1) leaves a CPU core mostly idle: each step is a
few dozen tiny kernels, dominated by per-op overhead. A pack stacks the parameters of P
trials that share every shape-fixing field (`pack_key`) and runs torch.func's model-ensembling
recipe on them: `functional_call` of one structure under `vmap` over the stacked parameters,
so one step costs about as many kernels as one trial's, each P times larger.

Per trial, the maths are train_gan's with alpha_mode="weight": k discriminator updates, each on
m real and m generated samples weighted alpha/m and (1 - alpha)/m, then one generator update,
Adam (torch.optim.Adam's update) on each. Per-trial values live in (P, 1) tensors
(`PackHparams`): alpha, label smoothing, lr_d, lr_g, Adam betas, and the loss among
PACK_LOSSES, which differ only in the generator's term and are selected by a mask.
Initial weights, evaluation (Parzen, modes) and the theory gaps are gansweep's own: each trial
keeps a GanTrial built by GanTrial.create, whose networks get the pack's weights before its
evaluate() runs.

What differs from train_gan: the random draws. A pack draws all its trials' minibatches and
noise together from the global stream, in train_gan's order (per D update the indices, then
the noise; then G's noise), continuing it after the last trial's initialisation; a pack of one
trial therefore draws exactly train_gan's batches, and a trial's draws depend on the pack it
started in. All trials see the one `data` given (a sweep's pack: its first member's seed).
`select` drops trials that were pruned or diverged, so that they stop costing compute; the
others keep their slot in the draws, so their batches do not change. A checkpoint
(pack_state) holds the stacked state and the RNG: a resumed pack draws what it would have.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from gansweep.data import Dataset, minibatch
from gansweep.errors import ConfigError
from gansweep.losses import LOSSES, Term, discriminator_output
from gansweep.packrules import KEY_FIELDS, PACK_LOSSES, REQUIREMENTS, pack_key  # noqa: F401 (re-exported)
from gansweep.study import TOY_DATASETS, Choice, StudyConfig, TrialConfig
from gansweep.train import (
    ACCUMULATED,
    FastPaths,
    GanTrial,
    Metrics,
    divergence,
    is_eval_epoch,
    sample_noise,
    samples_per_second,
    steps_per_epoch,
    theory_metrics,
)

_BCE = LOSSES["non_saturating"]
L = TypeVar("L")  # a caller's label of a pack's row
ADAM_EPS = 1e-8  # torch.optim.Adam's default, which train_gan uses


def group_packs(trials: list[TrialConfig]) -> dict[tuple[tuple[str, object], ...], list[int]]:
    """Indices of `trials` grouped by pack_key, in order of first appearance."""
    groups: dict[tuple[tuple[str, object], ...], list[int]] = {}
    for index, trial in enumerate(trials):
        groups.setdefault(pack_key(trial), []).append(index)
    return groups


# ---------------------------------------------------------------------------- stacked nets


@dataclass(frozen=True)
class FlatSpec:
    """Where each named parameter lives in a flat (P, N) row: one Adam update per network."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> list[int]:
        return [math.prod(shape) for shape in self.shapes]


def unflatten(flat: Tensor, spec: FlatSpec) -> dict[str, Tensor]:
    """(..., N) -> name -> (..., *shape) views: one trial's row, or the stacked (P, N)."""
    parts = flat.split(spec.sizes, dim=-1)
    return {n: p.unflatten(-1, s) for n, p, s in zip(spec.names, parts, spec.shapes, strict=True)}


def stack_flat(modules: list[nn.Module]) -> tuple[Tensor, FlatSpec]:
    params, buffers = stack_module_state(modules)  # name -> (P, *shape)
    assert not buffers, "pack networks carry no buffers (no batch norm in an mlp)"
    spec = FlatSpec(tuple(params), tuple(tuple(v.shape[1:]) for v in params.values()))
    flat = torch.cat([v.detach().flatten(1) for v in params.values()], dim=1)  # (P, N)
    return flat, spec


Forward = Callable[[Tensor, Tensor], Tensor]


def batched_forward(module: nn.Module, spec: FlatSpec) -> Forward:
    """(flat params (P, N), inputs (P, B, ...)) -> outputs (P, B, ...): `module` per trial."""
    structure = module.to("meta")  # shapes only: functional_call supplies every tensor

    def one_trial(flat: Tensor, x: Tensor) -> Tensor:  # flat (N,), x (B, ...)
        # Unflattened inside vmap: two tensors cross vmap's boundary, not a dict of them (7%
        # faster a step at P = 1); tie_weights=False: an mlp ties none, and the check is slow.
        return functional_call(structure, unflatten(flat, spec), (x,), tie_weights=False)

    return vmap(one_trial)


@dataclass(frozen=True, eq=False)
class Adam:
    """One network's stacked parameters and Adam moments, all (P, N); `step` is shared."""

    params: Tensor
    exp_avg: Tensor
    exp_avg_sq: Tensor
    step: int = 0


@dataclass(frozen=True, eq=False)
class PackState:
    g_forward: Forward
    d_forward: Forward
    g: Adam
    d: Adam


@dataclass(frozen=True, eq=False)
class PackHparams:
    """Per-trial values, each (P, 1) so that it broadcasts over samples or flat parameters."""

    w_real: Tensor  # alpha / m: the weight of each real sample in D's loss
    w_fake: Tensor  # (1 - alpha) / m
    smoothing: Tensor  # one-sided label smoothing s
    smoothing_rest: Tensor  # 1 - s
    lr_d: Tensor  # float64: Adam's step size is formed in double, as torch.optim's is
    lr_g: Tensor
    beta1: Tensor  # float64
    beta2: Tensor
    # float32 forms of the moment decays, rounded once here as torch.optim rounds its scalars
    decay1: Tensor  # 1 - beta1
    beta2_f32: Tensor
    decay2: Tensor  # 1 - beta2
    g_terms: tuple[Term, ...]  # the generator term of each distinct loss in the pack
    g_masks: Tensor  # (n_terms, P, 1) bool: trial p uses g_terms[i]


def make_hparams(trials: list[TrialConfig], device: torch.device) -> PackHparams:
    m = trials[0].batch_size

    def column(values: list[float], dtype: torch.dtype = torch.float32) -> Tensor:
        # values computed in Python floats first, as train_gan's scalars are, then rounded once
        return torch.tensor(values, dtype=dtype, device=device).unsqueeze(1)

    names = sorted({t.loss for t in trials})
    return PackHparams(
        w_real=column([t.alpha / m for t in trials]),
        w_fake=column([(1.0 - t.alpha) / m for t in trials]),
        smoothing=column([t.label_smoothing for t in trials]),
        smoothing_rest=column([1.0 - t.label_smoothing for t in trials]),
        lr_d=column([t.lr_d for t in trials], torch.float64),
        lr_g=column([t.effective_lr_g for t in trials], torch.float64),
        beta1=column([t.adam_beta1 for t in trials], torch.float64),
        beta2=column([t.adam_beta2 for t in trials], torch.float64),
        decay1=column([1.0 - t.adam_beta1 for t in trials]),
        beta2_f32=column([t.adam_beta2 for t in trials]),
        decay2=column([1.0 - t.adam_beta2 for t in trials]),
        g_terms=tuple(LOSSES[name].generator_term for name in names),
        g_masks=torch.stack([column([float(t.loss == n) for t in trials]) for n in names]) > 0,
    )


# ---------------------------------------------------------------------------- the step


def adam_update(state: Adam, grad: Tensor, lr: Tensor, hp: PackHparams) -> Adam:
    """torch.optim.Adam's single-tensor update (no weight decay, no amsgrad) with per-trial
    lr and betas (P, 1); the bias corrections in float64 as torch.optim forms them."""
    step = state.step + 1
    exp_avg = state.exp_avg.lerp(grad, hp.decay1)
    exp_avg_sq = state.exp_avg_sq * hp.beta2_f32 + hp.decay2 * grad * grad
    step_size = (lr / (1.0 - hp.beta1**step)).float()
    bias2_sqrt = torch.sqrt(1.0 - hp.beta2**step).float()
    denom = exp_avg_sq.sqrt() / bias2_sqrt + ADAM_EPS
    params = state.params - step_size * (exp_avg / denom)
    return Adam(params, exp_avg, exp_avg_sq, step)


def d_losses(real_logits: Tensor, fake_logits: Tensor, hp: PackHparams) -> Tensor:
    """(P, m) logits -> (P,) gansweep.losses.discriminator_loss of each trial."""
    bce_real, bce_fake = _BCE.real_term, _BCE.fake_term
    # = bce_real(l, s), written so that s can be a tensor; exact for s = 1 (0 * finite = 0)
    real_term = hp.smoothing * bce_real(real_logits, 1.0) + hp.smoothing_rest * bce_fake(
        real_logits
    )
    return (hp.w_real * real_term).sum(1) + (hp.w_fake * bce_fake(fake_logits)).sum(1)


def g_losses(logits: Tensor, hp: PackHparams) -> Tensor:
    """(P, m) logits -> (P,) generator_loss of each trial, its own loss's term selected."""
    if len(hp.g_terms) == 1:
        return hp.g_terms[0](logits).mean(1)
    chosen = torch.zeros_like(logits)
    for term, mask in zip(hp.g_terms, hp.g_masks, strict=True):
        # The inner where feeds another loss's slots a harmless 0: exp(large logit) there
        # would be inf, and the zero gradient the outer where gives it would become nan.
        chosen = torch.where(mask, term(torch.where(mask, logits, 0.0)), chosen)
    return chosen.mean(1)


def pack_step(
    state: PackState, real: Tensor, noise_d: Tensor, noise_g: Tensor, hp: PackHparams
) -> tuple[PackState, Tensor]:
    """k discriminator updates, then one generator update, for every trial of the pack.

    real (k, P, m, *shape), noise_d (k, P, m, noise_dim), noise_g (P, m, noise_dim).
    Returns the new state (the inputs are not modified) and (P, 4) statistics in ACCUMULATED
    order: d_loss, g_loss, d_real, d_fake, the D ones averaged over the k D updates.
    """
    k, m = real.shape[0], real.shape[2]
    d, stats_d = state.d, real.new_zeros(3, real.shape[1])
    with torch.enable_grad():
        for j in range(k):
            with torch.no_grad():
                fake = state.g_forward(state.g.params, noise_d[j])  # (P, m, *shape)
            leaf = d.params.detach().requires_grad_(True)
            # one D forward on real + fake: D has no batch norm, so the halves are independent
            logits = state.d_forward(leaf, torch.cat((real[j], fake), dim=1))  # (P, 2m)
            loss = d_losses(logits[:, :m], logits[:, m:], hp)  # (P,)
            (grad,) = torch.autograd.grad(loss.sum(), leaf)  # trial p's grad in row p
            with torch.no_grad():
                d = adam_update(d, grad, hp.lr_d, hp)
                probs = discriminator_output(_BCE, logits.detach())  # all pack losses: sigmoid
                parts = (loss.detach(), probs[:, :m].mean(1), probs[:, m:].mean(1))
                stats_d += torch.stack(parts) / k
        leaf = state.g.params.detach().requires_grad_(True)
        fake = state.g_forward(leaf, noise_g)
        g_loss = g_losses(state.d_forward(d.params, fake), hp)  # D's params need no gradient
        (grad,) = torch.autograd.grad(g_loss.sum(), leaf)
    with torch.no_grad():
        g = adam_update(state.g, grad, hp.lr_g, hp)
    stats = torch.stack((stats_d[0], g_loss.detach(), stats_d[1], stats_d[2]), dim=1)
    return replace(state, g=g, d=d), stats


# ---------------------------------------------------------------------------- the loop


@dataclass
class Pack:
    """A pack being trained: the stacked state, and per trial a GanTrial that holds the
    trial's own initial networks (from GanTrial.create) and does its evaluation."""

    trials: list[TrialConfig]
    gans: list[GanTrial]
    state: PackState
    hparams: PackHparams
    specs: tuple[FlatSpec, FlatSpec]  # generator, discriminator
    train_data: Tensor  # (n_train, *shape) in the generator's output scale
    # Each trial's slot in the pack's draws. A pack draws for all the trials it started with
    # (n_slots), so a trial's minibatches and noise stay the same when mates leave it.
    slots: list[int]
    n_slots: int

    @property
    def size(self) -> int:
        return len(self.trials)


def check_packable(trials: list[TrialConfig], data: Dataset) -> None:
    if not trials:
        raise ConfigError("a pack needs at least one trial")
    first = dict(pack_key(trials[0]))
    for index, trial in enumerate(trials[1:], start=1):
        for name, value in pack_key(trial):
            if value != first[name]:
                raise ConfigError(
                    f"trials 0 and {index} cannot share a pack: {name}={first[name]!r} vs {value!r}"
                )
    if data.name != trials[0].dataset:
        raise ConfigError(f"data is {data.name!r} but the trials train on {trials[0].dataset!r}")


def build_pack(trials: list[TrialConfig], data: Dataset) -> Pack:
    """Each trial's networks as train_gan initialises them (seeded GanTrial.create), stacked."""
    check_packable(trials, data)
    gans = [GanTrial.create(trial, data, FastPaths.plain()) for trial in trials]
    g_flat, g_spec = stack_flat([gan.generator for gan in gans])
    d_flat, d_spec = stack_flat([gan.discriminator for gan in gans])
    state = PackState(  # the structures are copies: trial 0's networks stay real for evaluation
        g_forward=batched_forward(copy.deepcopy(gans[0].generator), g_spec),
        d_forward=batched_forward(copy.deepcopy(gans[0].discriminator), d_spec),
        g=Adam(g_flat, torch.zeros_like(g_flat), torch.zeros_like(g_flat)),
        d=Adam(d_flat, torch.zeros_like(d_flat), torch.zeros_like(d_flat)),
    )
    hparams = make_hparams(trials, gans[0].device)
    slots = list(range(len(trials)))
    return Pack(trials, gans, state, hparams, (g_spec, d_spec), gans[0].train_data, slots, len(slots))


def draw(pack: Pack) -> tuple[Tensor, Tensor, Tensor]:
    """One step's real minibatches and noise for every trial, from the global stream in
    train_gan's order (per D update: indices, then noise; then the G noise)."""
    trial, p, data = pack.trials[0], pack.n_slots, pack.train_data
    m = trial.batch_size
    reals, noises = [], []
    for _ in range(trial.k):
        reals.append(minibatch(data, p * m).view(p, m, *data.shape[1:]))
        noises.append(sample_noise(trial, p * m, data.device).view(p, m, -1))
    noise_g = sample_noise(trial, p * m, data.device).view(p, m, -1)
    real, noise_d = torch.stack(reals), torch.stack(noises)
    if pack.size == p:
        return real, noise_d, noise_g
    slots = torch.tensor(pack.slots, dtype=torch.long, device=data.device)
    return real[:, slots], noise_d[:, slots], noise_g[slots]


def run_steps(pack: Pack, steps: int) -> Tensor:
    """`steps` pack steps; returns the (P, 4) sums of their statistics (ACCUMULATED order)."""
    sums = torch.zeros(pack.size, len(ACCUMULATED), device=pack.train_data.device)
    for _ in range(steps):
        pack.state, stats = pack_step(pack.state, *draw(pack), pack.hparams)
        sums += stats
    return sums


@torch.no_grad()
def load_trial(pack: Pack, index: int) -> GanTrial:
    """Trial `index`'s GanTrial with the pack's current weights in its networks."""
    gan, state = pack.gans[index], pack.state
    for module, flat, spec in ((gan.generator, state.g.params, pack.specs[0]),
                               (gan.discriminator, state.d.params, pack.specs[1])):
        weights = unflatten(flat[index], spec)  # name -> shape
        for name, param in module.named_parameters():
            param.copy_(weights[name])
    return gan


class PackReporter(Protocol):
    def __call__(self, index: int, metrics: Metrics, epoch: int) -> None:
        """Receives trial `index`'s metrics for `epoch`; raising stops the whole pack."""


def epoch_metrics(pack: Pack, index: int, means: list[float], elapsed: float) -> Metrics:
    """train_gan's per-epoch metrics of one trial but the evaluation; `means` in
    ACCUMULATED order."""
    trial = pack.trials[index]
    metrics = dict(zip(ACCUMULATED, means, strict=True))
    metrics["epoch_time"] = elapsed  # the pack's: every trial took that long
    metrics["wall_time"] = pack.gans[index].wall_time
    steps = steps_per_epoch(trial, pack.train_data.shape[0])
    metrics["samples_per_second"] = samples_per_second(trial, steps, elapsed)
    metrics["pack_size"] = float(pack.size)
    if divergence(metrics, pack.gans[index].epoch) is not None:
        metrics["diverged"] = 1.0  # train_gan raises TrialDiverged; a pack goes on without it
        return metrics
    metrics.update(theory_metrics(trial, metrics))
    return metrics


def select(pack: Pack, rows: list[int]) -> Pack:
    """The pack of only these rows (trials), in this order: a pruned or diverged trial stops
    costing compute. Every stacked tensor keeps one row per trial; the step's code does not
    depend on the pack's size."""
    index = torch.tensor(rows, dtype=torch.long, device=pack.train_data.device)

    def adam_rows(adam: Adam) -> Adam:
        return Adam(adam.params[index], adam.exp_avg[index], adam.exp_avg_sq[index], adam.step)

    hp = pack.hparams
    columns = {
        name: getattr(hp, name)[index]
        for name in ("w_real", "w_fake", "smoothing", "smoothing_rest", "lr_d", "lr_g", "beta1",
                     "beta2", "decay1", "beta2_f32", "decay2")
    }
    hparams = replace(hp, **columns, g_masks=hp.g_masks[:, index])
    state = replace(pack.state, g=adam_rows(pack.state.g), d=adam_rows(pack.state.d))
    return replace(
        pack, trials=[pack.trials[r] for r in rows], gans=[pack.gans[r] for r in rows],
        state=state, hparams=hparams, slots=[pack.slots[r] for r in rows],
    )


def keep(pack: Pack, labels: list[L], rows: list[int]) -> tuple[Pack, list[L]]:
    """`select(pack, rows)` with the caller's label of each row (its original index, its Optuna
    number) kept in step; the same pack when every row stays."""
    if len(rows) == pack.size:
        return pack, labels
    return select(pack, rows), [labels[row] for row in rows]


def healthy_rows(epoch_results: list[Metrics]) -> list[int]:
    """The rows of train_epoch's results that did not diverge."""
    return [row for row, metrics in enumerate(epoch_results) if "diverged" not in metrics]


def pack_state(pack: Pack) -> dict[str, object]:
    """What a checkpoint needs to continue the pack: the stacked networks and Adam moments,
    the RNG (the pack draws from the global stream), and per trial its epoch and clock."""
    device = pack.train_data.device
    state: dict[str, object] = {
        name: {"params": adam.params, "exp_avg": adam.exp_avg, "exp_avg_sq": adam.exp_avg_sq,
               "step": adam.step}
        for name, adam in (("g", pack.state.g), ("d", pack.state.d))
    }
    state["slots"], state["n_slots"] = list(pack.slots), pack.n_slots
    state["epochs"] = [gan.epoch for gan in pack.gans]
    state["wall_times"] = [gan.wall_time for gan in pack.gans]
    state["rng_cpu"] = torch.get_rng_state()
    if device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state(device)
    return state


def load_pack_state(pack: Pack, state: dict[str, object], rows: list[int]) -> None:
    """Continue `pack` from a pack_state whose rows `rows` are this pack's trials, in order
    (a resumed pack may have lost trials that were pruned or failed since)."""
    device = pack.train_data.device
    index = torch.tensor(rows, dtype=torch.long)

    def adam_of(saved: dict[str, object]) -> Adam:
        def part(name: str) -> Tensor:
            return saved[name][index].to(device)  # type: ignore[index]

        return Adam(part("params"), part("exp_avg"), part("exp_avg_sq"), int(saved["step"]))  # type: ignore[arg-type]

    pack.state = replace(pack.state, g=adam_of(state["g"]), d=adam_of(state["d"]))  # type: ignore[arg-type]
    pack.slots = [int(state["slots"][row]) for row in rows]  # type: ignore[index]
    pack.n_slots = int(state["n_slots"])  # type: ignore[arg-type]
    for gan, row in zip(pack.gans, rows, strict=True):
        gan.epoch = int(state["epochs"][row])  # type: ignore[index]
        gan.wall_time = float(state["wall_times"][row])  # type: ignore[index]
    torch.set_rng_state(state["rng_cpu"])  # type: ignore[arg-type]
    if "rng_cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["rng_cuda"], device)  # type: ignore[arg-type]


def train_epoch(pack: Pack) -> list[Metrics]:
    """One epoch of every trial in the pack; per trial, train_gan's epoch metrics (evaluated
    on its evaluation epochs) plus pack_size, or diverged = 1.0 without evaluation."""
    trial = pack.trials[0]
    steps = steps_per_epoch(trial, pack.train_data.shape[0])
    started = time.perf_counter()
    rows = (run_steps(pack, steps) / steps).tolist()  # the epoch's one host sync
    elapsed = time.perf_counter() - started
    epoch_of_all = []
    for index, gan in enumerate(pack.gans):
        gan.epoch, gan.wall_time = gan.epoch + 1, gan.wall_time + elapsed
        metrics = epoch_metrics(pack, index, rows[index], elapsed)
        gan.last_samples = None
        if "diverged" not in metrics and is_eval_epoch(pack.trials[index], gan.epoch):
            metrics.update(load_trial(pack, index).evaluate())
        metrics["epoch"] = float(gan.epoch)
        gan.last_metrics = metrics
        epoch_of_all.append(metrics)
    return epoch_of_all


def train_pack(
    trials: list[TrialConfig], data: Dataset, report: PackReporter | None = None
) -> list[list[Metrics]]:
    """Train `trials` (equal pack_key) together to their epochs; per trial, its per-epoch
    metrics with train_gan's names, plus pack_size. A trial whose loss turns NaN or infinite
    gets a last entry with diverged = 1.0 and leaves the pack; the others train on.
    Exceptions raised by `report` propagate and stop the pack."""
    pack = build_pack(trials, data)
    histories: list[list[Metrics]] = [[] for _ in trials]
    indices = list(range(len(trials)))  # the original index of each row still in the pack
    while pack.size and pack.gans[0].epoch < trials[0].epochs:
        epoch_results = train_epoch(pack)
        for index, metrics in zip(indices, epoch_results, strict=True):
            histories[index].append(metrics)
            if report is not None:
                report(index, metrics, int(metrics["epoch"]))
        pack, indices = keep(pack, indices, healthy_rows(epoch_results))
    return histories
