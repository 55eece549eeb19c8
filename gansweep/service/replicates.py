"""Seed replicates (budget.replicates = R): each configuration Optuna suggests trains with R
seeds, and what Optuna sees and the results rank is their mean. Plain data and pure functions.

Words: a *configuration* is one Optuna trial (its number); a *replicate* is one seed of it,
a member of a unit (protocol.py) under its own member id. Member ids are number * R + r, so
that R = 1 gives member id = trial number: the one-seed sweep is exactly as it was.

    seeds          replicate r trains with the configuration's seed + r (recorded in its run,
                   its Optuna record and its row of results.csv)
    records        each replicate's end, an Optuna user attr of its configuration
                   ("replicate_<r>"), written once it is settled: the Optuna study stays the one
                   source of truth, and a resumed sweep rewrites a record, never adds one
    outcome        once every replicate has a record: PRUNED when the configuration was pruned
                   (pruning is the configuration's, on the replicates' mean), else COMPLETE with
                   the mean over the replicates that completed (a diverged seed is recorded,
                   counted in `replicates_completed`, and left out of the mean), else FAIL
"""

from __future__ import annotations

import collections
import functools
import math
import statistics
from dataclasses import dataclass
from typing import Any

from gansweep.service.protocol import REPLICATES_STDERR_SUFFIX

@functools.total_ordering
@dataclass(frozen=True)
class RunKey:
    """An MLflow child run: a configuration's (its Optuna trial number), or one of its seed
    replicates' (the number and the replicate's index r). Sorted by number, the
    configuration's run before its replicates'."""

    number: int
    replicate: int | None = None

    @property
    def is_replicate(self) -> bool:
        return self.replicate is not None

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, RunKey):
            return NotImplemented
        return self._order() < other._order()

    def _order(self) -> tuple[int, int]:
        return self.number, -1 if self.replicate is None else self.replicate

    def __str__(self) -> str:
        return str(self.number) if self.replicate is None else f"{self.number} replicate {self.replicate}"


ATTR_REPLICATE = "replicate_{}"  # the Optuna attr of replicate r's record, on its configuration
ATTR_OBJECTIVE_STDERR = "objective_stderr"  # the standard error of the replicates' mean
ATTR_REPLICATES_COMPLETED = "replicates_completed"
ATTR_BEST_EPOCH = "best_epoch"  # objective.select: best: the epoch whose generator is kept
STDERR_SUFFIX = REPLICATES_STDERR_SUFFIX  # the configuration run's per-epoch stderr of a metric


def member_id(number: int, replicate: int, replicates: int) -> int:
    return number * replicates + replicate


def replicate_of(member: int, replicates: int) -> tuple[int, int]:
    """(configuration number, replicate index) of a member id."""
    return divmod(member, replicates)


def run_key(member: int, replicates: int) -> RunKey:
    """The MLflow run a member logs to: its trial's with one seed, else its replicate's."""
    number, replicate = replicate_of(member, replicates)
    return RunKey(number) if replicates == 1 else RunKey(number, replicate)


def replicate_values(values: dict[str, Any], replicate: int) -> dict[str, Any]:
    return {**values, "seed": int(values["seed"]) + replicate}


def mean_and_stderr(values: list[float]) -> tuple[float, float | None]:
    """The mean and its standard error (sample standard deviation / sqrt(n)); None for n < 2."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, statistics.stdev(values) / math.sqrt(len(values))


def mean_metrics(parts: list[dict[str, float]], stderr_of: tuple[str, ...]) -> dict[str, float]:
    """A configuration's epoch: the mean of each metric every replicate reported, and the
    standard error of the mean of `stderr_of` (the objectives) where there are two or more."""
    if not parts:
        return {}
    shared = set(parts[0]).intersection(*parts[1:])
    metrics = {name: statistics.fmean(part[name] for part in parts) for name in parts[0] if name in shared}
    for name in stderr_of:
        if name in shared and len(parts) > 1:
            metrics[name + STDERR_SUFFIX] = mean_and_stderr([part[name] for part in parts])[1]  # type: ignore[assignment]
    return metrics


def record_attr(replicate: int) -> str:
    return ATTR_REPLICATE.format(replicate)


def records_of(user_attrs: dict[str, Any], replicates: int) -> dict[int, dict[str, Any]]:
    """Replicate index -> its record, for the replicates settled so far."""
    return {r: user_attrs[record_attr(r)] for r in range(replicates) if record_attr(r) in user_attrs}


def verdict_summary(verdicts: list[str]) -> str:
    """The replicates' equilibrium verdicts: the one they share, else each with its count
    ("blind x2, settled x1"): a mean of verdicts would hide the disagreement."""
    counts = collections.Counter(verdicts)
    if len(counts) == 1:
        return verdicts[0]
    return ", ".join(f"{verdict} x{count}" for verdict, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def outcome(records: dict[int, dict[str, Any]], pruned: bool) -> tuple[str, list[float] | None, dict[str, Any]]:
    """The configuration's state, objective values and summary attrs from its replicates' records."""
    completed = [rec for rec in records.values() if rec["state"] == "COMPLETE" and rec.get("objective")]
    summary: dict[str, Any] = {ATTR_REPLICATES_COMPLETED: len(completed)}
    verdicts = [str(rec["equilibrium"]) for rec in records.values() if rec.get("equilibrium")]  # their last
    if verdicts:
        summary["equilibrium"] = verdict_summary(verdicts)
    if pruned:
        return "PRUNED", None, summary
    if not completed:
        reasons = sorted({str(rec.get("failure_reason")) for rec in records.values() if rec.get("failure_reason")})
        summary["failure_reason"] = "every replicate failed: " + ("; ".join(reasons) or "no objective")
        return "FAIL", None, summary
    columns = list(zip(*(rec["objective"] for rec in completed), strict=True))
    means = [mean_and_stderr(list(column)) for column in columns]
    summary[ATTR_OBJECTIVE_STDERR] = means[0][1]
    for name in ("d_loss", "g_loss", "wall_time"):
        found = [float(rec[name]) for rec in completed if rec.get(name) is not None]
        if found:
            summary[name] = statistics.fmean(found)
    summary["epoch"] = max(int(rec.get("epoch", 0)) for rec in records.values())
    return "COMPLETE", [mean for mean, _ in means], summary
