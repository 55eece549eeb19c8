"""The epoch loop over a unit of P trials (a lone trial is a unit of one), whichever execution
runs its iterations: build the unit, train an epoch, evaluate a member, checkpoint and resume.

Members share every field that shapes the iteration (gansweep.config.rules.KEY_FIELDS) and differ
in the hyperparameters of iteration.Hyper and the loss. Each member's initial networks are
those of a lone trial with its seed (torch.manual_seed(seed), then build_models), and each
member's draws come from its own stream, which continues where its initialisation left the
global stream (draws.py): a member trains exactly as it would alone, whatever its mates. The toy data set is the one given (a sweep's pack: its
first member's seed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gansweep.config.rules import pack_key
from gansweep.config.schema import TrialConfig
from gansweep.engine import evaluate as evaluation
from gansweep.engine.data import Dataset, resolve_device
from gansweep.engine.draws import draw, draw_reference, member_stream
from gansweep.engine.epochs import (  # noqa: F401 (the worker reads them here too)
    divergence,
    has_batch_norm,
    is_eval_epoch,
    is_sample_epoch,
    momentum_at,
    native_bf16,
    samples_per_second,
    steps_per_epoch,
    theory_metrics,
)
from gansweep.engine.executions import Step, compiled_step, eager_step, packed_step
from gansweep.engine.iteration import STATS, Hyper, Spec, TrainState
from gansweep.engine.losses import loss_terms, minibatch_plan
from gansweep.engine.models import build_models, feature_end
from gansweep.engine.scoring import needs_discriminator, verdict_columns
from gansweep.engine.state import (
    Layout,
    alias_module,
    load_row,
    new_net_state,
    select_rows,
    state_dict,
    state_from_dict,
)
from gansweep.engine.upgrade import upgrade
from gansweep.errors import ConfigError

Metrics = dict[str, float]
CHECKPOINT_FORMAT = 2  # 1: before the one iteration (GanTrial / pack_state); upgraded on load
DROPOUT_SEED_OFFSET = 0x5EED  # the global stream's seed for dropout: the first seed plus this


# ---------------------------------------------------------------------------- the unit


def spec_of(trials: list[TrialConfig], discriminator: nn.Module, device: torch.device, autocast: bool) -> Spec:
    first = trials[0]
    plan = minibatch_plan(first.alpha_mode, first.alpha, first.batch_size)
    return Spec(
        k=first.k,
        n_real=plan.n_real,
        n_fake=plan.n_fake,
        alpha_mode=first.alpha_mode,
        losses=tuple(sorted({t.loss for t in trials})),
        optimizer=first.optimizer,
        joint_discriminator=not has_batch_norm(discriminator),
        autocast=autocast,
        device_type=device.type,
        feature_end=feature_end(discriminator, first.feature_layer) if reads_features(trials) else 0,
        historical_averaging=averaging(trials),
        minibatch_features=first.minibatch_discrimination > 0,
        regularisers=tuple(sorted({name for t in trials for name, weight in t.regularisers if weight > 0})),
    )


def reads_features(trials: list[TrialConfig]) -> bool:
    """Whether some member's loss declares a cost on D's features (losses.Terms.g_features)."""
    return any(loss_terms(t.loss).g_features is not None for t in trials)


def averaging(trials: list[TrialConfig]) -> bool:
    """Whether the unit keeps historical averaging's running means."""
    return any(t.historical_averaging > 0 for t in trials)


def hyper_of(trials: list[TrialConfig], spec: Spec, epoch: int, device: torch.device) -> Hyper:
    """The members' hyperparameters as (P, 1) columns, SGD's momentum at `epoch`."""

    def column(values: list[float]) -> Tensor:
        return torch.tensor(values, dtype=torch.float32, device=device).unsqueeze(1)

    return Hyper(
        alpha=column([t.alpha for t in trials]),
        smoothing=column([t.label_smoothing for t in trials]),
        lr_d=column([t.lr_d for t in trials]),
        lr_g=column([t.effective_lr_g for t in trials]),
        beta1=column([t.adam_beta1 for t in trials]),
        beta2=column([t.adam_beta2 for t in trials]),
        momentum=column([momentum_at(t, epoch) for t in trials]),
        gp_weight=column([t.gp_weight for t in trials]),
        historical_weight=column([t.historical_averaging for t in trials]),
        loss_masks=torch.stack([column([float(t.loss == name) for t in trials]) for name in spec.losses]) > 0,
        reg_weights=torch.stack([column([dict(t.regularisers).get(name, 0.0) for t in trials])
                                 for name in spec.regularisers]) if spec.regularisers else None,
    )


@dataclass
class Unit:
    """P trials trained together (P = 1: a lone trial): the state the iteration updates, the
    networks that evaluate (member 0's, loaded with a member's row when it is evaluated), the
    step of the chosen execution, and each member's progress."""

    trials: list[TrialConfig]
    data: Dataset
    spec: Spec
    layouts: tuple[Layout, Layout]
    generator: nn.Module
    discriminator: nn.Module
    state: TrainState
    step: Step
    train_data: Tensor  # (n_train, *shape) in the generator's scale, on the device
    compiled: bool
    streams: list[torch.Generator]  # each member's draws (draws.py)
    epochs: list[int] = field(default_factory=list)
    wall_times: list[float] = field(default_factory=list)
    last_metrics: list[Metrics | None] = field(default_factory=list)
    last_samples: list[Tensor | None] = field(default_factory=list)
    first_call: bool = True  # a compiled unit's next iteration may compile

    @property
    def size(self) -> int:
        return len(self.trials)

    @property
    def device(self) -> torch.device:
        return self.train_data.device

    @property
    def epoch(self) -> int:
        return self.epochs[0]


def check_unit(trials: list[TrialConfig], data: Dataset) -> None:
    """Members must share every shape-fixing field, and the data must be theirs."""
    if not trials:
        raise ConfigError("a pack needs at least one trial")
    if len(trials) > 1:
        first = dict(pack_key(trials[0]))
        for index, trial in enumerate(trials[1:], start=1):
            for name, value in pack_key(trial):
                if value != first[name]:
                    raise ConfigError(f"trials 0 and {index} cannot share a pack: {name}={first[name]!r} vs {value!r}")
    if data.name != trials[0].dataset:
        raise ConfigError(f"data is {data.name!r} but the trials train on {trials[0].dataset!r}")


EXECUTIONS = ("eager", "packed", "compiled", "compiled_packed")


def default_execution(trials: list[TrialConfig], packed: bool | None = None) -> str:
    """A lone trial eagerly on its modules, a pack (even of one) under vmap; compiled when
    asked. packed: None means more than one trial."""
    packed = len(trials) > 1 if packed is None else packed
    if trials[0].compile:
        return "compiled_packed" if packed else "compiled"
    return "packed" if packed else "eager"


def build_unit(
    trials: list[TrialConfig], data: Dataset, *, execution: str | None = None, autocast: bool | None = None,
) -> Unit:
    """Each member's networks as a lone trial initialises them, stacked into one state, run
    by `execution` (one of EXECUTIONS; None: default_execution; "eager" needs one trial).
    autocast: None means bf16 on image data where the device multiplies bf16 natively."""
    check_unit(trials, data)
    first = trials[0]
    evaluation.check_output_range(first, data)
    device = resolve_device(first.device)
    if data.device.type != device.type:  # evaluation generates on the data's device
        raise ValueError(f"the data set is on {data.device}, the trial on {device}: load it on the trial's device")
    generators, discriminators, streams = [], [], []
    for trial in trials:
        torch.manual_seed(trial.seed)
        generator, discriminator = build_models(trial, data.shape)
        generators.append(generator.to(device))
        discriminators.append(discriminator.to(device))
        streams.append(member_stream(device))
        draw_reference(generator, trial.noise, streams[-1])  # virtual batch norm's, else nothing
    # The forwards' own randomness (dropout) from the global stream, set apart from the
    # members' streams: a lone trial's masks would otherwise repeat its draws' numbers.
    torch.manual_seed(first.seed + DROPOUT_SEED_OFFSET)
    layouts = (Layout.of(generators[0]), Layout.of(discriminators[0]))
    state = TrainState(
        new_net_state(generators, layouts[0], first.optimizer, averaging(trials)),
        new_net_state(discriminators, layouts[1], first.optimizer, averaging(trials)),
    )
    if autocast is None:
        autocast = data.is_image and native_bf16(device)
    spec = spec_of(trials, discriminators[0], device, autocast)
    execution = execution or default_execution(trials)
    if execution not in EXECUTIONS:
        raise ValueError(f"unknown execution {execution!r}; valid: {', '.join(EXECUTIONS)}")
    if execution == "eager" and len(trials) != 1:
        raise ValueError(f"the eager execution runs one trial, got {len(trials)}: use 'packed'")
    compiled = execution.startswith("compiled")
    generator, discriminator = generators[0], discriminators[0]
    if compiled:
        step = compiled_step(spec, generator, discriminator, layouts, vectorised=execution == "compiled_packed")
    elif execution == "eager":
        alias_module(generator, layouts[0], state.g)
        alias_module(discriminator, layouts[1], state.d)
        step = eager_step(spec, generator, discriminator, state, layouts)
    else:
        step = packed_step(spec, generator, discriminator, layouts)
    p = len(trials)
    return Unit(
        trials=list(trials), data=data, spec=spec, layouts=layouts,
        generator=generator, discriminator=discriminator, state=state, step=step,
        train_data=evaluation.to_model_scale(first, data, data.train.to(device)),
        compiled=compiled, streams=streams,
        epochs=[0] * p, wall_times=[0.0] * p, last_metrics=[None] * p, last_samples=[None] * p,
    )


def run_iterations(unit: Unit, steps: int, hyper: Hyper) -> tuple[Tensor, float | None]:
    """`steps` iterations; the (P, 4) sums of their statistics, and the first iteration's
    time when it may have compiled the graph."""
    trial = unit.trials[0]
    sums = torch.zeros(unit.size, len(STATS), device=unit.device)
    first_call = None
    started = time.perf_counter()
    for index in range(steps):
        draws = draw(unit.spec, unit.train_data, trial.noise, trial.noise_dim, trial.batch_size, unit.streams)
        unit.state, stats = unit.step(unit.state, draws, hyper)
        sums += stats
        if index == 0 and unit.compiled and unit.first_call:
            unit.first_call = False
            first_call = time.perf_counter() - started
    return sums, first_call


def train_epoch(unit: Unit) -> list[Metrics]:
    """One epoch of every member: per member its mean losses and D outputs, throughput and
    theory gaps, evaluated on its evaluation epochs; a member whose loss turned NaN or
    infinite gets diverged = 1.0 and no evaluation. One host sync, after the iterations."""
    trial = unit.trials[0]
    epoch = unit.epoch + 1
    steps = steps_per_epoch(trial, unit.train_data.shape[0])
    hyper = hyper_of(unit.trials, unit.spec, epoch, unit.device)
    started = time.perf_counter()
    sums, first_call = run_iterations(unit, steps, hyper)
    rows = (sums / steps).tolist()
    elapsed = time.perf_counter() - started
    results = []
    for row, member in enumerate(unit.trials):
        unit.epochs[row] = epoch
        unit.wall_times[row] += elapsed
        metrics = dict(zip(STATS, rows[row], strict=True))
        metrics["epoch_time"] = elapsed  # the unit's: every member took that long
        metrics["wall_time"] = unit.wall_times[row]
        if first_call is not None and steps > 1:
            # a throughput, not a one-off cost: the iterations after the compiling one
            metrics["compile_time"] = first_call
            metrics["samples_per_second"] = samples_per_second(member, steps - 1, elapsed - first_call)
        else:
            metrics["samples_per_second"] = samples_per_second(member, steps, elapsed)
        unit.last_samples[row] = None
        if divergence(metrics, epoch) is not None:
            metrics["diverged"] = 1.0
        else:
            metrics.update(theory_metrics(member, metrics))
            if is_eval_epoch(member, epoch):
                metrics.update(evaluate_member(unit, row))
                metrics.update(verdict_columns(member, metrics))  # needs the theory gaps and the scores
        metrics["epoch"] = float(epoch)
        unit.last_metrics[row] = metrics
        results.append(metrics)
    return results


def member_generator(unit: Unit, row: int) -> nn.Module:
    """The generator module holding member `row`'s current weights."""
    return load_row(unit.generator, unit.layouts[0], unit.state.g, row)


def member_discriminator(unit: Unit, row: int) -> nn.Module:
    return load_row(unit.discriminator, unit.layouts[1], unit.state.d, row)


def evaluate_member(unit: Unit, row: int) -> Metrics:
    trial = unit.trials[row]
    discriminator = member_discriminator(unit, row) if needs_discriminator(trial) else None  # each member's own
    metrics, samples = evaluation.evaluate(trial, unit.data, member_generator(unit, row), unit.epochs[row], discriminator)
    unit.last_samples[row] = samples
    return metrics


def save_member_samples(unit: Unit, row: int, folder: Any) -> Any:
    return evaluation.save_samples(
        unit.trials[row], unit.data, member_generator(unit, row), unit.epochs[row], folder, unit.last_samples[row]
    )


def member_generator_state(unit: Unit, row: int) -> dict[str, Tensor]:
    """Member `row`'s generator state_dict on the CPU: the artifact users keep."""
    return {k: v.detach().cpu().clone() for k, v in member_generator(unit, row).state_dict().items()}


def keep_rows(unit: Unit, rows: list[int]) -> Unit:
    """The unit of only these members, in this order: a pruned or diverged member stops
    costing compute. The step is the same: a packed or compiled step takes any P."""
    if len(rows) == unit.size:
        return unit
    index = torch.tensor(rows, dtype=torch.long, device=unit.device)
    return Unit(
        trials=[unit.trials[r] for r in rows], data=unit.data, spec=unit.spec, layouts=unit.layouts,
        generator=unit.generator, discriminator=unit.discriminator,
        state=select_rows(unit.state, index), step=unit.step,
        train_data=unit.train_data, compiled=unit.compiled,
        streams=[unit.streams[r] for r in rows],
        epochs=[unit.epochs[r] for r in rows], wall_times=[unit.wall_times[r] for r in rows],
        last_metrics=[unit.last_metrics[r] for r in rows], last_samples=[unit.last_samples[r] for r in rows],
        first_call=unit.first_call,
    )


def healthy_rows(results: list[Metrics]) -> list[int]:
    """The rows of train_epoch's results that did not diverge."""
    return [row for row, metrics in enumerate(results) if "diverged" not in metrics]


# ---------------------------------------------------------------------------- checkpoints


def unit_state(unit: Unit) -> dict[str, Any]:
    """What a checkpoint needs to continue the unit: the state's rows, each member's draws
    stream, the global RNG (dropout), each member's epoch, clock and last metrics."""
    saved: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "epoch": unit.epoch,  # the unit's (its members train in step)
        "state": state_dict(unit.state),
        "streams": [stream.get_state() for stream in unit.streams],
        "epochs": list(unit.epochs),
        "wall_times": list(unit.wall_times),
        "metrics": list(unit.last_metrics),
        "rng_cpu": torch.get_rng_state(),
    }
    if unit.device.type == "cuda":
        saved["rng_cuda"] = torch.cuda.get_rng_state(unit.device)
    return saved


@torch.no_grad()
def load_unit_state(unit: Unit, saved: dict[str, Any], rows: list[int] | None = None) -> None:
    """Continue `unit` from a unit_state whose rows `rows` are this unit's members, in order
    (a resumed pack may have lost members that were pruned or failed since)."""
    saved = upgrade(saved, unit.layouts)
    rows = list(range(unit.size)) if rows is None else rows
    loaded = state_from_dict(saved["state"], rows, unit.device)
    # Into the unit's own tensors: the eager unit's modules view them.
    for target, source in zip(unit.state, loaded, strict=True):
        target.params.copy_(source.params)
        target.moment1.copy_(source.moment1)
        target.moment2.copy_(source.moment2)
        target.steps.copy_(source.steps)
        if target.average.numel():  # a checkpoint from before historical averaging: restart the mean
            target.average.copy_(source.average if source.average is not None else source.params)
        for t, s in zip(target.buffers, source.buffers, strict=True):
            t.copy_(s)
    for stream, state in zip(unit.streams, saved_streams(saved, rows, unit.device), strict=True):
        stream.set_state(state)
    unit.epochs = [int(saved["epochs"][r]) for r in rows]
    unit.wall_times = [float(saved["wall_times"][r]) for r in rows]
    unit.last_metrics = [saved["metrics"][r] for r in rows]
    torch.set_rng_state(saved["rng_cpu"])
    if "rng_cuda" in saved and unit.device.type == "cuda":
        torch.cuda.set_rng_state(saved["rng_cuda"], unit.device)


def saved_streams(saved: dict[str, Any], rows: list[int], device: torch.device) -> list[Tensor]:
    """The members' stream states of a checkpoint. One written before the members had their
    own streams drew from the global stream: a lone trial's continues from it exactly; a
    pack's members, which shared it, get distinct streams derived from it."""
    if "streams" in saved:
        return [saved["streams"][r] for r in rows]
    if len(rows) == 1 and int(saved.get("n_slots", 1)) == 1:
        return [saved["rng_cuda"] if device.type == "cuda" and "rng_cuda" in saved else saved["rng_cpu"]]
    base = int.from_bytes(bytes(saved["rng_cpu"][-8:].tolist()), "little")
    return [torch.Generator().manual_seed((base + 7919 * int(saved["slots"][r])) % 2**63).get_state() for r in rows]
