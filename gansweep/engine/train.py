"""Training to the end: the one epoch loop (`epochs`) of every runner: a lone trial
(train_gan, `gansweep train`), a pack of trials (train_pack) and a sweep's Tune unit
(service/worker.py); and the one best-evaluation tracker (`BestTracker`, objective.select:
best). The runners differ only in what they do with each epoch (report, checkpoint, keep the
best) and in which members they stop (pruned ones). This module knows nothing of Ray or
MLflow: a report is a plain callable, which may raise to stop (pruning).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from gansweep.config.schema import TrialConfig
from gansweep.engine import run
from gansweep.engine.data import Dataset
from gansweep.errors import TrialOutOfMemory, is_out_of_memory

Metrics = dict[str, float]
Key = TypeVar("Key")  # how a runner names its members: an index, an Optuna trial number
BEST_EPOCH = "best_epoch"  # reported with every result once a member has a best evaluation
BEST_PREFIX = "best_"  # best_<metric>: the kept metrics' values at that epoch


@dataclass
class Epoch(Generic[Key]):
    """One trained epoch of a unit: its members (`keys`, in row order) and their results
    (run.train_epoch's, one per row; a diverged member's has diverged = 1.0), `size` members
    shared its step. `unit` is the unit as it trained; `survivors` the one that goes on."""

    unit: run.Unit
    keys: list[Key]
    results: list[Metrics]
    size: int

    @property
    def number(self) -> int:
        return self.unit.epoch

    @cached_property
    def survivors(self) -> tuple[run.Unit, list[Key]]:
        """The unit and keys of the members that did not diverge (selected once: the worker
        checkpoints it, and the loop goes on with it)."""
        return select(self.unit, self.keys, run.healthy_rows(self.results))


def select(unit: run.Unit, keys: list[Key], rows: list[int]) -> tuple[run.Unit, list[Key]]:
    """The unit of only these rows, with their keys."""
    return run.keep_rows(unit, rows), [keys[row] for row in rows]


class EpochLoop(Generic[Key]):
    """The one epoch loop: iterating it trains each epoch of `unit` until its last, or until
    no member is left, and yields it (the caller reports). Before each epoch the members
    `stopped` names leave (pruned); after it, those whose loss turned NaN or infinite.
    `unit` and `keys` are always the members of the epoch being trained (a failure's report)."""

    def __init__(self, unit: run.Unit, keys: list[Key], stopped: Callable[[list[Key]], set[Key]] | None = None) -> None:
        self.unit, self.keys, self.stopped = unit, keys, stopped

    def __iter__(self) -> Iterator[Epoch[Key]]:
        while self.unit.size and self.unit.epoch < self.unit.trials[0].epochs:
            if self.stopped is not None:
                gone = self.stopped(self.keys)
                self.unit, self.keys = select(self.unit, self.keys, [r for r, k in enumerate(self.keys) if k not in gone])
                if not self.unit.size:
                    return
            epoch = Epoch(self.unit, self.keys, run.train_epoch(self.unit), self.unit.size)
            yield epoch
            self.unit, self.keys = epoch.survivors


@dataclass
class Best:
    """A member's best evaluation so far and its generator."""

    value: float
    epoch: int
    objectives: dict[str, float]  # the kept metrics at that epoch
    generator: dict[str, Any]  # its state_dict on the CPU
    model: Path | None = None  # its MLflow model folder, once the worker wrote one


@dataclass
class BestTracker:
    """objective.select: best: a member's best evaluation by `metric` in `direction`,
    keeping `kept` metrics of that epoch; every runner notes each result with it."""

    metric: str
    direction: str
    kept: tuple[str, ...] = ()
    best: Best | None = field(default=None)

    def note(self, metrics: Metrics, epoch: int, generator: Callable[[], dict[str, Any]]) -> bool:
        """Keep this epoch's generator when it is the best so far (True), and add best_epoch
        and best_<metric> of the best so far to `metrics` (reported with every result)."""
        value = metrics.get(self.metric)
        better = value is not None and improves(float(value), None if self.best is None else self.best.value,
                                                self.direction)
        if better:
            kept = {name: float(metrics[name]) for name in self.kept if name in metrics}
            self.best = Best(float(value), epoch, kept, generator())  # type: ignore[arg-type]
        if self.best is not None:
            metrics[BEST_EPOCH] = float(self.best.epoch)
            metrics.update({BEST_PREFIX + name: v for name, v in self.best.objectives.items()})
        return better


class Reporter(Protocol):
    def __call__(self, metrics: Metrics, epoch: int, state: Callable[[], dict[str, Any]]) -> None:
        """Receives each epoch's metrics; `state()` gives a checkpointable training state."""


class PackReporter(Protocol):
    def __call__(self, index: int, metrics: Metrics, epoch: int) -> None:
        """Receives trial `index`'s metrics for `epoch`; raising stops the whole pack."""


def train_gan(
    trial: TrialConfig,
    data: Dataset,
    report: Reporter | None = None,
    *,
    sample_dir: Path | None = None,
    resume_from: dict[str, Any] | None = None,
    execution: str | None = None,
) -> list[Metrics]:
    """Train one trial to `trial.epochs`, reporting after every epoch.

    `resume_from` is a `state()` given to an earlier report (or a checkpoint of an earlier
    release): training continues after its epoch with the same networks, optimiser moments
    and RNG state. Raises TrialDiverged on a NaN or infinite loss, TrialOutOfMemory when the
    networks or a step do not fit; exceptions raised by `report` propagate. `execution`: one
    of run.EXECUTIONS (default: eager, or compiled with `compile: true`).
    """
    unit: run.Unit | None = None
    try:
        unit = run.build_unit([trial], data, execution=execution)
        if resume_from is not None:
            run.load_unit_state(unit, resume_from)
        history: list[Metrics] = []

        def state() -> dict[str, Any]:
            saved = run.unit_state(unit)  # type: ignore[arg-type]
            saved["generator"] = run.member_generator_state(unit, 0)  # type: ignore[arg-type]
            return saved

        last = unit.last_metrics[0]
        if unit.epoch >= trial.epochs and last is not None and report is not None:
            # Resumed from the final checkpoint (its driver stopped before recording the end):
            # say the last epoch's metrics again so that the caller can close the trial.
            report(last, unit.epoch, state)
        for epoch in EpochLoop(unit, [0]):
            (metrics,) = epoch.results
            diverged = run.divergence(metrics, epoch.number)
            if diverged is not None:
                raise diverged
            if sample_dir is not None and run.is_sample_epoch(trial, epoch.number):
                run.save_member_samples(unit, 0, sample_dir)
            history.append(metrics)
            if report is not None:
                report(metrics, epoch.number, state)
    except (RuntimeError, MemoryError) as err:
        if not is_out_of_memory(err):
            raise
        raise out_of_memory(err, trial, unit) from err
    return history


def improves(value: float, best: float | None, direction: str) -> bool:
    """Whether `value` beats the best so far (None: nothing yet) in `direction` (maximize or
    minimize); a NaN or infinite value never does (objective.select: best)."""
    if not math.isfinite(value):
        return False
    return best is None or (value > best if direction == "maximize" else value < best)


def out_of_memory(err: BaseException, trial: TrialConfig, unit: run.Unit | None) -> TrialOutOfMemory:
    # the epoch being trained; 0: the networks themselves did not fit
    epoch = unit.epoch + 1 if unit is not None else 0
    device = str(unit.device) if unit is not None else str(run.resolve_device(trial.device))
    lines = str(err).strip().splitlines()
    return TrialOutOfMemory(epoch, device, lines[-1][:300] if lines else type(err).__name__)


def train_pack(
    trials: list[TrialConfig], data: Dataset, report: PackReporter | None = None, *, execution: str | None = None,
) -> list[list[Metrics]]:
    """Train `trials` (equal pack_key) together to their epochs; per trial, its per-epoch
    metrics with train_gan's names, plus pack_size. A trial whose loss turns NaN or infinite
    gets a last entry with diverged = 1.0 and leaves the pack; the others train on.
    Exceptions raised by `report` propagate and stop the pack."""
    unit = run.build_unit(trials, data, execution=execution or run.default_execution(trials, packed=True))
    histories: list[list[Metrics]] = [[] for _ in trials]
    for epoch in EpochLoop(unit, list(range(len(trials)))):  # keys: each member's index in `trials`
        for index, metrics in zip(epoch.keys, epoch.results, strict=True):
            metrics["pack_size"] = float(epoch.size)
            histories[index].append(metrics)
            if report is not None:
                report(index, metrics, epoch.number)
    return histories
