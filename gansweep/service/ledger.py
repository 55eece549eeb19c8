"""The driver's decisions, as plain classes that return actions.

The Optuna study is the book: a member is finished once Optuna was told, and a new `gansweep
run` of the same study hands its unfinished members out again. `Ledger` keeps it, and decides

    hand_out      what the next unit trains: first the units an interrupted sweep left
                  unfinished (same numbers, values and checkpoint), then new ones from Optuna
    judge         after each result, which members the pruner stops: they leave their unit,
                  and a unit with no member left stops
    record        what a result means for tracking: epochs to log, nodes to tag, members
                  settled now (pruned or failed) and when their run closes
    replay        a resumed unit's epochs up to its checkpoint, logged again where MLflow
                  lacks them (the driver that wrote them was stopped before delivering)
    checkpointed  what a checkpoint means: recorded for a resume, samples to fetch, runs to close
    complete      how the rest of a unit ended (COMPLETE, FAIL, or interrupted: left RUNNING)
    errored       a unit whose worker failed past Tune's retries

The Tune adapters (searcher.py, pruner.py, callback.py) only translate Tune's calls
into these and carry out the actions; tests drive the ledger with plain result dicts and a
real Optuna study, without Ray (tests/service/test_ledger.py), as Ray Tune tests its schedulers.
Every unit, a lone trial or a pack, goes through the same steps.

With budget.replicates = R > 1 (service/replicates.py) a unit's members are the R seeds of
each of its configurations (Optuna trials): the pruner hears the replicates' mean at each
evaluation, each replicate's end is recorded on its configuration, and Optuna is told the
configuration's outcome once every replicate has one. Actions then name MLflow runs by
RunKey: a configuration's run by its number, a replicate's by its number and r.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from gansweep.service import protocol as p
from gansweep.service import replicates as rep
from gansweep.service.actions import (  # noqa: F401 (the adapters and tests read them here)
    TUNE_KEYS, Action, Assignment, Close, FetchSamples, LogEpoch, TagNodes, Verdict, closing_of, final_state,
    numeric_metrics, replicate_closing,
)
from gansweep.service.replicates import RunKey
from gansweep.service.search import OptunaStudy


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
    resumes: dict[str, str] = field(default_factory=dict)  # Tune trial id -> the checkpoint it resumes
    values: dict[int, dict[str, Any]] = field(default_factory=dict)
    pruned: set[int] = field(default_factory=set)  # judged, not yet settled
    closing: set[int] = field(default_factory=set)  # settled, run closed with the next checkpoint
    ended: set[int] = field(default_factory=set)  # settled and closed
    configs_ended: set[int] = field(default_factory=set)  # replicates: configuration runs closed

    def __post_init__(self) -> None:
        self.resumable = resumable_groups(self.optuna)

    @property
    def pack_size(self) -> int:
        return self.optuna.config.budget.pack_size

    def plan(self, to_run: int) -> int:
        """The Tune trials (units) that run `to_run` members: the resumable, then new ones."""
        self.fresh_left = max(0, to_run - sum(len(group) for group in self.resumable))
        return len(self.resumable) + math.ceil(self.fresh_left / self.pack_size)

    @property
    def replicates(self) -> int:
        return self.optuna.config.budget.replicates

    def configuration(self, member: int) -> int:
        return rep.replicate_of(member, self.replicates)[0]

    def key(self, member: int) -> RunKey:
        return rep.run_key(member, self.replicates)

    def member_ref(self, member: int) -> int | None:
        """An action's member: None where it is the run's number (one seed)."""
        return None if self.replicates == 1 else member

    def members(self, trial_id: str) -> dict[int, dict[str, Any]]:
        return {n: self.values[n] for n in self.units.get(trial_id, [])}

    def runs_to_start(self, trial_id: str) -> list[tuple[RunKey, dict[str, Any]]]:
        """The MLflow runs a unit opens, parents first: each configuration's, then (with
        replicates) each replicate's under it."""
        runs: list[tuple[RunKey, dict[str, Any]]] = []
        for member in self.units.get(trial_id, []):
            number, replicate = rep.replicate_of(member, self.replicates)
            if self.replicates > 1 and replicate == 0:
                runs.append((RunKey(number), self.values[member]))  # replicate 0 has the configuration's seed
            runs.append((self.key(member), self.values[member]))
        return runs

    def values_of_run(self, key: RunKey) -> dict[str, Any]:
        number, replicate = key.number, key.replicate or 0
        return self.values[rep.member_id(number, replicate, self.replicates)]

    def selection(self) -> p.Selection | None:
        """What a worker needs for objective.select: best (None for last)."""
        objective = self.optuna.config.objective
        if objective.select != "best":
            return None
        return p.Selection(metric=objective.metric, direction=objective.direction, metrics=self.objective_names())

    def objective_names(self) -> list[str]:
        objective = self.optuna.config.objective
        return [objective.metric] + ([objective.second.metric] if objective.second else [])

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
        members, member_values = [], []
        for number, value in zip(numbers, values, strict=True):
            self.optuna.set_attrs(number, {p.ATTR_TUNE_TRIAL_ID: trial_id, p.ATTR_UNIT: numbers})
            for replicate in range(self.replicates):  # a configuration's seeds train as one pack
                member = rep.member_id(number, replicate, self.replicates)
                self.values[member] = rep.replicate_values(value, replicate)
                members.append(member)
                member_values.append(self.values[member])
        self.units[trial_id] = members
        if resume:
            self.resumes[trial_id] = resume
        return Assignment(members, member_values, resume, packed=self.pack_size > 1 or len(members) > 1)

    # -- the pruner --------------------------------------------------------------------------
    def judge(self, trial_id: str, result: dict[str, Any]) -> Verdict:
        """Each configuration still training is reported to Optuna's pruner: the mean of its
        replicates reported at this epoch (one seed: its value); pruned, they all leave."""
        leaving, alive = [], 0
        training: dict[int, dict[int, dict[str, Any]]] = {}
        for member, part in p.member_results(self.units.get(trial_id, []), result).items():
            if member in self.ended or member in self.pruned or p.FAILURE_REASON in part:
                continue
            training.setdefault(self.configuration(member), {})[member] = dict(part)
        for number, parts in training.items():
            if self.prunes(number, list(parts.values())):
                self.pruned.update(parts)
                leaving.extend(parts)
            else:
                alive += len(parts)
        return Verdict(tuple(leaving), stop=alive == 0)

    def prunes(self, number: int, parts: list[dict[str, Any]]) -> bool:
        metric = self.optuna.config.objective.metric
        reported = [float(part[metric]) for part in parts if part.get(metric) is not None]
        if not reported or p.EPOCH not in parts[0]:
            return False
        epoch = int(parts[0][p.EPOCH])
        epochs = int(self.values[rep.member_id(number, 0, self.replicates)]["epochs"])
        if epoch < epochs and self.optuna.report(number, statistics.fmean(reported), epoch):
            self.optuna.set_attrs(number, {p.ATTR_PRUNED_AT: epoch})
            return True
        return False

    # -- the callback ------------------------------------------------------------------------
    def record(self, trial_id: str, result: dict[str, Any], checkpoint_follows: bool) -> list[Action]:
        """A result's epochs to log and attempts to tag; a member pruned or failed is settled
        now (its mates train on) and closed now, or with the checkpoint that follows."""
        actions: list[Action] = []
        parts = {m: part for m, part in p.member_results(self.units.get(trial_id, []), result).items()
                 if m not in self.ended and m not in self.closing}
        if p.NODE_ID in result:  # an attempt is its configuration's
            for number in dict.fromkeys(self.configuration(m) for m in parts):
                actions.append(self.record_attempt(number, result))
        actions.extend(self.epoch_logs(parts))
        for member, part in parts.items():
            if p.FAILURE_REASON in part or member in self.pruned:
                self.settle(member, part)
                self.pruned.discard(member)
                if checkpoint_follows:
                    self.closing.add(member)
                else:
                    actions.extend(self.close(member, checkpoint=False))
        return actions

    def epoch_logs(self, parts: dict[int, p.MemberResult]) -> list[Action]:
        """One epoch's metrics of the members that did not fail, and with replicates each
        configuration's run: its replicates' means."""
        actions: list[Action] = []
        healthy: dict[int, list[dict[str, float]]] = {}  # configuration -> its replicates' epoch
        epochs: dict[int, int] = {}
        for member, part in parts.items():
            if p.FAILURE_REASON in part:
                continue
            number = self.configuration(member)
            metrics = numeric_metrics(part)
            epochs[number] = int(metrics.pop(p.EPOCH, 0))
            texts = {key: str(part[key]) for key in p.TEXT_KEYS if key in part}  # type: ignore[literal-required]
            actions.append(LogEpoch(self.key(member), metrics, epochs[number], texts))
            healthy.setdefault(number, []).append(metrics)
        if self.replicates > 1:
            for number, metrics in healthy.items():
                mean = rep.mean_metrics(metrics, tuple(self.objective_names()))
                actions.append(LogEpoch(RunKey(number), mean, epochs[number]))
        return actions

    def replay(self, trial_id: str, histories: dict[int, list[p.MemberResult]]) -> list[Action]:
        """A unit resumed from a checkpoint: the epochs its members reported up to it, to log
        again. The driver that recorded the checkpoint in Optuna may have been stopped before
        its outbox delivered them to MLflow; the tracker skips the epochs a run already has."""
        by_epoch: dict[int, dict[int, p.MemberResult]] = {}
        for member in self.units.get(trial_id, []):
            for part in histories.get(member, []):
                by_epoch.setdefault(int(part[p.EPOCH]), {})[member] = part
        return [action for epoch in sorted(by_epoch) for action in self.epoch_logs(by_epoch[epoch])]

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
        return TagNodes(RunKey(number), ",".join(a["node"] for a in attempts))

    def checkpointed(self, trial_id: str, uri: str) -> list[Action]:
        actions: list[Action] = []
        marked: set[int] = set()
        for member in self.units.get(trial_id, []):
            if member in self.ended:
                continue
            number = self.configuration(member)
            if member not in self.closing and number not in marked:
                self.optuna.set_attrs(number, {p.ATTR_CHECKPOINT: uri})
                marked.add(number)
            actions.append(FetchSamples(self.key(member), self.member_ref(member)))
            if member in self.closing:
                actions.extend(self.close(member, checkpoint=True))
        return actions

    def close(self, member: int, checkpoint: bool) -> list[Close]:
        """The member's run's close; with replicates, also its configuration's once told."""
        number, replicate = rep.replicate_of(member, self.replicates)
        frozen = self.optuna.frozen(number)
        self.closing.discard(member)
        if self.replicates == 1:
            if frozen.state.is_finished():
                self.ended.add(member)
            return [closing_of(frozen, checkpoint)]
        closes = [replicate_closing(frozen, replicate, self.replicates, checkpoint)]
        if closes[0].state != "INTERRUPTED":
            self.ended.add(member)
        every = all(rep.member_id(number, r, self.replicates) in self.ended for r in range(self.replicates))
        if frozen.state.is_finished() and every and number not in self.configs_ended:
            self.configs_ended.add(number)  # after the last of its replicates' runs
            closes.append(closing_of(frozen, replicates=self.replicates))
        return closes

    def complete(self, trial_id: str, result: dict[str, Any] | None) -> None:
        """The searcher's end of a unit: settle each member from its last result. No result:
        it never reported; it stays RUNNING and resumes."""
        numbers = self.units.get(trial_id, [])
        parts = p.member_results(numbers, result or {})
        for number in numbers:
            if number not in self.ended and number not in self.closing and number in parts:
                self.settle(number, parts[number])

    def closes(self, trial_id: str) -> list[Close]:
        """The callback's end of a unit: every member not closed yet (and, with replicates,
        each configuration left unfinished: interrupted)."""
        closes = [c for m in self.units.get(trial_id, []) if m not in self.ended for c in self.close(m, checkpoint=False)]
        if self.replicates > 1:
            for number in dict.fromkeys(self.configuration(m) for m in self.units.get(trial_id, [])):
                if number not in self.configs_ended:
                    closes.append(closing_of(self.optuna.frozen(number), replicates=self.replicates))
        return closes

    def errored(self, trial_id: str, reason: str, interrupted: bool = False) -> list[Close]:
        """A unit whose worker failed past Tune's retries: its members FAIL with the reason;
        interrupted (the checkpoint store was away), they stay RUNNING to resume next run."""
        closes = []
        for member in self.units.get(trial_id, []):
            if member in self.ended:
                continue
            if interrupted:
                self.optuna.set_attrs(self.configuration(member), {p.ATTR_INTERRUPTED_BY: reason})
                closes.extend(dataclasses.replace(c, reason=reason) for c in self.close(member, checkpoint=False))
                continue
            number, replicate = rep.replicate_of(member, self.replicates)
            if self.replicates > 1:
                record = {"state": "FAIL", "seed": int(self.values[member]["seed"]), "objective": None,
                          p.FAILURE_REASON: reason}
                self.optuna.set_attrs(number, {rep.record_attr(replicate): record})
            self.optuna.set_attrs(number, {p.ATTR_FAILURE_REASON: reason})
            self.optuna.tell(number, TrialState.FAIL)
            closes.extend(self.close(member, checkpoint=False))
        return closes

    # -- telling Optuna ----------------------------------------------------------------------
    def state_of(self, member: int, part: dict[str, Any]) -> TrialState | None:
        """How a member ended; None when it was interrupted midway (Ctrl-C stops running
        trials the same way as completion), so it stays RUNNING for a resume."""
        if p.FAILURE_REASON in part:
            return TrialState.FAIL
        if self.optuna.frozen(self.configuration(member)).user_attrs.get(p.ATTR_PRUNED_AT) is not None:
            return TrialState.PRUNED
        if int(part.get(p.EPOCH, 0)) >= int(self.values[member]["epochs"]):
            return TrialState.COMPLETE
        return None

    def objective_values(self, part: dict[str, Any]) -> list[float] | None:
        """The objectives of a member's last result: its last evaluation's, or with
        objective.select: best its best evaluation's (the worker's best_<metric>)."""
        best = self.optuna.config.objective.select == "best" and p.BEST_EPOCH in part
        names = [p.BEST_PREFIX + name if best else name for name in self.objective_names()]
        values = [part.get(name) for name in names]
        if any(v is None for v in values):
            return None
        return [float(v) for v in values]

    def settle(self, member: int, part: dict[str, Any]) -> bool:
        """Record how a member ended, from its last result, and tell Optuna once its
        configuration has ended (one seed: at once); False: interrupted midway."""
        state = self.state_of(member, part)
        if state is None:
            return False
        number, replicate = rep.replicate_of(member, self.replicates)
        values = self.objective_values(part) if state == TrialState.COMPLETE else None
        summary: dict[str, Any] = {k: part[k] for k in p.SUMMARY_KEYS if k in part}  # type: ignore[literal-required]
        if state == TrialState.COMPLETE and values is None:
            state = TrialState.FAIL  # finished without the objective: nothing to compare
            summary[p.FAILURE_REASON] = "objective metric missing from final result"
        summary[p.ATTR_EPOCH] = int(part.get(p.EPOCH, 0))
        if p.BEST_EPOCH in part and self.optuna.config.objective.select == "best":
            summary[rep.ATTR_BEST_EPOCH] = int(part[p.BEST_EPOCH])  # type: ignore[literal-required]
        if self.replicates == 1:
            self.optuna.set_attrs(number, summary)
            self.optuna.tell(number, state, values)
            return True
        record = {"state": state.name, "seed": int(self.values[member]["seed"]), "objective": values, **summary}
        self.optuna.set_attrs(number, {rep.record_attr(replicate): record})
        self.tell_if_settled(number)
        return True

    def tell_if_settled(self, number: int) -> None:
        """Tell Optuna the configuration's outcome once each replicate has its record."""
        frozen = self.optuna.frozen(number)
        records = rep.records_of(frozen.user_attrs, self.replicates)
        if frozen.state.is_finished() or len(records) < self.replicates:
            return
        state, values, summary = rep.outcome(records, pruned=frozen.user_attrs.get(p.ATTR_PRUNED_AT) is not None)
        self.optuna.set_attrs(number, summary)
        self.optuna.tell(number, TrialState[state], values)
