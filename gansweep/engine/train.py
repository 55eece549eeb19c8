"""Training to the end: a lone trial (train_gan) or a pack of trials (train_pack), reporting
after every epoch. Both are the unit epoch loop of run.py; this module adds the reports, the
sample pictures, the replay of a finished checkpoint and the out-of-memory reason. It knows
nothing of Ray or MLflow: a report is a plain callable, which may raise to stop (pruning).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from gansweep.config.schema import TrialConfig
from gansweep.engine import run
from gansweep.engine.data import Dataset
from gansweep.errors import TrialOutOfMemory, is_out_of_memory

Metrics = dict[str, float]


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
        while unit.epoch < trial.epochs:
            (metrics,) = run.train_epoch(unit)
            diverged = run.divergence(metrics, unit.epoch)
            if diverged is not None:
                raise diverged
            if sample_dir is not None and run.is_sample_epoch(trial, unit.epoch):
                run.save_member_samples(unit, 0, sample_dir)
            history.append(metrics)
            if report is not None:
                report(metrics, unit.epoch, state)
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
    indices = list(range(len(trials)))  # the original index of each row still in the pack
    while unit.size and unit.epoch < trials[0].epochs:
        size = unit.size
        results = run.train_epoch(unit)
        for index, metrics in zip(indices, results, strict=True):
            metrics["pack_size"] = float(size)
            histories[index].append(metrics)
            if report is not None:
                report(index, metrics, int(metrics["epoch"]))
        rows = run.healthy_rows(results)
        unit, indices = run.keep_rows(unit, rows), [indices[r] for r in rows]
    return histories
