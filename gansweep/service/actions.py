"""The ledger's answers (service/ledger.py), as plain data: what a unit trains, the pruner's
verdict, and the actions the Tune callback carries out (log an epoch, tag nodes, fetch
samples, close a run); and how a configuration's or a replicate's close reads from Optuna."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from gansweep.service import protocol as p
from gansweep.service import replicates as rep
from gansweep.service.replicates import RunKey


@dataclass(frozen=True)
class Assignment:
    """What a unit trains: suggest's answer."""

    numbers: list[int]
    values: list[dict[str, Any]]
    resume: str | None
    packed: bool


@dataclass(frozen=True)
class Verdict:
    """The pruner's answer to a result: members leaving their unit, and whether it stops."""

    leaving: tuple[int, ...]
    stop: bool


@dataclass(frozen=True)
class LogEpoch:
    number: RunKey
    metrics: dict[str, float]
    epoch: int
    texts: dict[str, str] = field(default_factory=dict)  # the result's text values the run tags (features)


@dataclass(frozen=True)
class TagNodes:
    number: RunKey
    nodes: str  # the node of each attempt, in order, comma-separated


@dataclass(frozen=True)
class FetchSamples:
    number: RunKey  # copy members/<member>/samples out of the checkpoint into this run
    member: int | None = None  # None: the member id is the number (one seed per configuration)


@dataclass(frozen=True)
class Close:
    """End the member's run as Optuna has it: fetch its generator (from `checkpoint`, or the
    unit's latest), draw its losses figure, end the MLflow run."""

    number: RunKey
    state: str  # COMPLETE, PRUNED, FAIL or INTERRUPTED
    pruned_at: int | None
    reason: str | None
    objective: float | None  # COMPLETE members only (Optuna gives a pruned one its last report)
    checkpoint: bool  # the checkpoint that carried this decision holds the member's last files
    member: int | None = None  # the member whose files to fetch; None: the number is the member
    files: bool = True  # False: a configuration's run over replicates (its files are theirs)
    stderr: float | None = None  # the standard error of the replicates' mean objective
    best_epoch: int | None = None  # objective.select: best: the epoch of the generator kept
    verdict: str | None = None  # its last equilibrium verdict, drawn on its losses figure


Action = LogEpoch | TagNodes | FetchSamples | Close

# Keys Tune adds to every result; they are not ours to log.
TUNE_KEYS = frozenset({
    "time_this_iter_s", "time_total_s", "timestamp", "training_iteration", "pid", "hostname",
    "node_ip", "time_since_restore", "iterations_since_restore", "checkpoint_dir_name",
    "done", "trial_id", "date", "config", "experiment_tag", "should_checkpoint",
})


def numeric_metrics(result: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v) for k, v in result.items()
        if k not in TUNE_KEYS and k not in p.ATTEMPT_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def final_state(frozen: FrozenTrial) -> str:
    return frozen.state.name if frozen.state.is_finished() else "INTERRUPTED"


def closing_of(frozen: FrozenTrial, checkpoint: bool = False, replicates: int = 1) -> Close:
    """A configuration's close; with replicates its run holds no files of its own."""
    pruned_at = frozen.user_attrs.get(p.ATTR_PRUNED_AT)
    best = frozen.user_attrs.get(rep.ATTR_BEST_EPOCH) if replicates == 1 else None
    return Close(
        RunKey(frozen.number), final_state(frozen), None if pruned_at is None else int(pruned_at),
        frozen.user_attrs.get(p.ATTR_FAILURE_REASON) or None,
        frozen.values[0] if frozen.values and frozen.state == TrialState.COMPLETE else None, checkpoint,
        files=replicates == 1, stderr=frozen.user_attrs.get(rep.ATTR_OBJECTIVE_STDERR),
        best_epoch=None if best is None else int(best), verdict=frozen.user_attrs.get(p.EQUILIBRIUM),
    )


def replicate_closing(frozen: FrozenTrial, replicate: int, replicates: int, checkpoint: bool) -> Close:
    """A replicate's close, from its record (none yet: interrupted, it resumes)."""
    record = rep.records_of(frozen.user_attrs, replicates).get(replicate)
    state = record["state"] if record else "INTERRUPTED"
    pruned_at = frozen.user_attrs.get(p.ATTR_PRUNED_AT) if state == "PRUNED" else None
    objective = record["objective"][0] if record and state == "COMPLETE" and record.get("objective") else None
    best = record.get(rep.ATTR_BEST_EPOCH) if record else None
    return Close(
        RunKey(frozen.number, replicate), state, None if pruned_at is None else int(pruned_at),
        (record or {}).get(p.FAILURE_REASON) or None, objective, checkpoint,
        member=rep.member_id(frozen.number, replicate, replicates), best_epoch=None if best is None else int(best),
        verdict=(record or {}).get(p.EQUILIBRIUM),
    )
