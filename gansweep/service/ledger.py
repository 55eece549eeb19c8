"""The driver's decisions, as plain classes that return actions.

The Optuna study is the book: a member is finished once Optuna was told, and a new `gansweep
run` of the same study hands its unfinished members out again. `Ledger` keeps it, and decides

    hand_out      what the next unit trains: first the units an interrupted sweep left
                  unfinished (same numbers, values and checkpoint), then new ones from Optuna
    judge         after each result, which members the pruner stops: they leave their unit,
                  and a unit with no member left stops
    record        what a result means for tracking: epochs to log, nodes to tag, members
                  settled now (pruned or failed) and when their run closes
    checkpointed  what a checkpoint means: recorded for a resume, samples to fetch, runs to close
    complete      how the rest of a unit ended (COMPLETE, FAIL, or interrupted: left RUNNING)
    errored       a unit whose worker failed past Tune's retries

The Tune adapters (searcher.py, pruner.py, callback.py) only translate Tune's calls
into these and carry out the actions; tests drive the ledger with plain result dicts and a
real Optuna study, without Ray (tests/test_ledger.py), as Ray Tune tests its schedulers.
Every unit, a lone trial or a pack, goes through the same steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from gansweep.service import protocol as p
from gansweep.service.search import OptunaStudy


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
    number: int
    metrics: dict[str, float]
    epoch: int


@dataclass(frozen=True)
class TagNodes:
    number: int
    nodes: str  # the node of each attempt, in order, comma-separated


@dataclass(frozen=True)
class FetchSamples:
    number: int  # copy members/<number>/samples out of the checkpoint into the run


@dataclass(frozen=True)
class Close:
    """End the member's run as Optuna has it: fetch its generator (from `checkpoint`, or the
    unit's latest), draw its losses figure, end the MLflow run."""

    number: int
    state: str  # COMPLETE, PRUNED, FAIL or INTERRUPTED
    pruned_at: int | None
    reason: str | None
    objective: float | None  # COMPLETE members only (Optuna gives a pruned one its last report)
    checkpoint: bool  # the checkpoint that carried this decision holds the member's last files


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


def closing_of(frozen: FrozenTrial, checkpoint: bool = False) -> Close:
    pruned_at = frozen.user_attrs.get(p.ATTR_PRUNED_AT)
    return Close(
        frozen.number, final_state(frozen), None if pruned_at is None else int(pruned_at),
        frozen.user_attrs.get(p.ATTR_FAILURE_REASON) or None,
        frozen.values[0] if frozen.values and frozen.state == TrialState.COMPLETE else None, checkpoint,
    )


def unit_of(frozen: FrozenTrial) -> list[int] | None:
    """The numbers the member was handed out with (None: a lone trial before the one protocol)."""
    numbers = frozen.user_attrs.get(p.ATTR_UNIT) or frozen.user_attrs.get(p.LEGACY_ATTR_PACK)
    return [int(n) for n in numbers] if numbers else None


def resumable_groups(study: OptunaStudy) -> list[list[int]]:
    """Members a stopped driver left RUNNING, grouped as they resume: those that share a unit
    and its last checkpoint together, in row order (they continue from that checkpoint)."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for frozen in study.unfinished():
        unit = unit_of(frozen)
        key = (tuple(unit), frozen.user_attrs.get(p.ATTR_CHECKPOINT)) if unit else (frozen.number,)
        groups.setdefault(key, []).append(frozen.number)
    return list(groups.values())


@dataclass
class Ledger:
    optuna: OptunaStudy
    resumable: list[list[int]] = field(init=False)
    fresh_left: int = 0  # new members still to ask Optuna for (set by plan)
    units: dict[str, list[int]] = field(default_factory=dict)  # Tune trial id -> numbers
    values: dict[int, dict[str, Any]] = field(default_factory=dict)
    pruned: set[int] = field(default_factory=set)  # judged, not yet settled
    closing: set[int] = field(default_factory=set)  # settled, run closed with the next checkpoint
    ended: set[int] = field(default_factory=set)  # settled and closed

    def __post_init__(self) -> None:
        self.resumable = resumable_groups(self.optuna)

    @property
    def pack_size(self) -> int:
        return self.optuna.config.budget.pack_size

    def plan(self, to_run: int) -> int:
        """The Tune trials (units) that run `to_run` members: the resumable, then new ones."""
        self.fresh_left = max(0, to_run - sum(len(group) for group in self.resumable))
        return len(self.resumable) + math.ceil(self.fresh_left / self.pack_size)

    def members(self, trial_id: str) -> dict[int, dict[str, Any]]:
        return {n: self.values[n] for n in self.units.get(trial_id, [])}

    # -- the searcher ------------------------------------------------------------------------
    def hand_out(self, trial_id: str) -> Assignment | None:
        if self.resumable:
            numbers = self.resumable.pop(0)
            values = [self.optuna.values_of(n) for n in numbers]
            resume = self.optuna.frozen(numbers[0]).user_attrs.get(p.ATTR_CHECKPOINT)
        elif self.fresh_left > 0:
            size = min(self.pack_size, self.fresh_left)  # the last unit takes what is left
            self.fresh_left -= size
            asked = [self.optuna.ask() for _ in range(size)]
            numbers, values = [n for n, _ in asked], [v for _, v in asked]
            resume = None
        else:
            return None
        for number, value in zip(numbers, values, strict=True):
            self.optuna.set_attrs(number, {p.ATTR_TUNE_TRIAL_ID: trial_id, p.ATTR_UNIT: numbers})
            self.values[number] = value
        self.units[trial_id] = numbers
        return Assignment(numbers, values, resume, packed=self.pack_size > 1 or len(numbers) > 1)

    # -- the pruner --------------------------------------------------------------------------
    def judge(self, trial_id: str, result: dict[str, Any]) -> Verdict:
        """Each member still training is reported to Optuna's pruner."""
        leaving, alive = [], 0
        for number, part in p.member_results(self.units.get(trial_id, []), result).items():
            if number in self.ended or number in self.pruned or p.FAILURE_REASON in part:
                continue
            if self.prunes(number, part):
                self.pruned.add(number)
                leaving.append(number)
            else:
                alive += 1
        return Verdict(tuple(leaving), stop=alive == 0)

    def prunes(self, number: int, part: dict[str, Any]) -> bool:
        value = part.get(self.optuna.config.objective.metric)
        if value is None or p.EPOCH not in part:
            return False
        epoch = int(part[p.EPOCH])
        if epoch < int(self.values[number]["epochs"]) and self.optuna.report(number, float(value), epoch):
            self.optuna.set_attrs(number, {p.ATTR_PRUNED_AT: epoch})
            return True
        return False

    # -- the callback ------------------------------------------------------------------------
    def record(self, trial_id: str, result: dict[str, Any], checkpoint_follows: bool) -> list[Action]:
        """A result's epochs to log and attempts to tag; a member pruned or failed is settled
        now (its mates train on) and closed now, or with the checkpoint that follows."""
        actions: list[Action] = []
        for number, part in p.member_results(self.units.get(trial_id, []), result).items():
            if number in self.ended or number in self.closing:
                continue
            if p.NODE_ID in result:
                actions.append(self.record_attempt(number, result))
            metrics = numeric_metrics(part)
            epoch = int(metrics.pop(p.EPOCH, result.get("training_iteration", 0)))
            if p.FAILURE_REASON not in part:
                actions.append(LogEpoch(number, metrics, epoch))
            if p.FAILURE_REASON in part or number in self.pruned:
                self.settle(number, part)
                self.pruned.discard(number)
                if checkpoint_follows:
                    self.closing.add(number)
                else:
                    actions.append(self.close(number, checkpoint=False))
        return actions

    def record_attempt(self, number: int, result: dict[str, Any]) -> TagNodes:
        """Where each attempt ran and which epoch it resumed from: the Optuna user attr
        `attempts` (kept across driver restarts) and the MLflow tag of the nodes."""
        attempts = list(self.optuna.frozen(number).user_attrs.get(p.ATTR_ATTEMPTS, []))
        attempts.append({
            "node": str(result[p.NODE_ID]),
            "resumed_from": int(result.get(p.RESUMED_FROM, 0)),
            "first_epoch": int(result.get(p.EPOCH, 0)),
        })
        self.optuna.set_attrs(number, {p.ATTR_ATTEMPTS: attempts})
        return TagNodes(number, ",".join(a["node"] for a in attempts))

    def checkpointed(self, trial_id: str, uri: str) -> list[Action]:
        actions: list[Action] = []
        for number in self.units.get(trial_id, []):
            if number in self.ended:
                continue
            if number not in self.closing:
                self.optuna.set_attrs(number, {p.ATTR_CHECKPOINT: uri})
            actions.append(FetchSamples(number))
            if number in self.closing:
                actions.append(self.close(number, checkpoint=True))
        return actions

    def close(self, number: int, checkpoint: bool) -> Close:
        frozen = self.optuna.frozen(number)
        self.closing.discard(number)
        if frozen.state.is_finished():
            self.ended.add(number)
        return closing_of(frozen, checkpoint)

    def complete(self, trial_id: str, result: dict[str, Any] | None) -> None:
        """The searcher's end of a unit: settle each member from its last result. No result:
        it never reported; it stays RUNNING and resumes."""
        numbers = self.units.get(trial_id, [])
        parts = p.member_results(numbers, result or {})
        for number in numbers:
            if number not in self.ended and number not in self.closing and number in parts:
                self.settle(number, parts[number])

    def closes(self, trial_id: str) -> list[Close]:
        """The callback's end of a unit: every member not closed yet."""
        return [self.close(n, checkpoint=False) for n in self.units.get(trial_id, []) if n not in self.ended]

    def errored(self, trial_id: str, reason: str) -> list[Close]:
        closes = []
        for number in self.units.get(trial_id, []):
            if number in self.ended:
                continue
            self.optuna.set_attrs(number, {p.ATTR_FAILURE_REASON: reason})
            self.optuna.tell(number, TrialState.FAIL)
            closes.append(self.close(number, checkpoint=False))
        return closes

    # -- telling Optuna ----------------------------------------------------------------------
    def state_of(self, number: int, part: dict[str, Any]) -> TrialState | None:
        """How a member ended; None when it was interrupted midway (Ctrl-C stops running
        trials the same way as completion), so it stays RUNNING for a resume."""
        if p.FAILURE_REASON in part:
            return TrialState.FAIL
        if self.optuna.frozen(number).user_attrs.get(p.ATTR_PRUNED_AT) is not None:
            return TrialState.PRUNED
        if int(part.get(p.EPOCH, 0)) >= int(self.values[number]["epochs"]):
            return TrialState.COMPLETE
        return None

    def objective_values(self, part: dict[str, Any]) -> list[float] | None:
        objective = self.optuna.config.objective
        specs = [objective] + ([objective.second] if objective.second else [])
        values = [part.get(spec.metric) for spec in specs]
        if any(v is None for v in values):
            return None
        return [float(v) for v in values]

    def settle(self, number: int, part: dict[str, Any]) -> bool:
        """Tell Optuna how a member ended, from its last result; False: interrupted midway."""
        state = self.state_of(number, part)
        if state is None:
            return False
        values = self.objective_values(part) if state == TrialState.COMPLETE else None
        if state == TrialState.COMPLETE and values is None:
            state = TrialState.FAIL  # finished without the objective: nothing to compare
            self.optuna.set_attrs(number, {p.ATTR_FAILURE_REASON: "objective metric missing from final result"})
        summary: dict[str, Any] = {k: part[k] for k in p.SUMMARY_KEYS if k in part}  # type: ignore[literal-required]
        summary[p.ATTR_EPOCH] = int(part.get(p.EPOCH, 0))
        self.optuna.set_attrs(number, summary)
        self.optuna.tell(number, state, values)
        return True
