"""What the worker and the driver share: a unit's config, its results, its checkpoints, the
Optuna attributes the driver keeps, and the output folder's layout. Plain data and pure
functions: no Ray, no torch, nothing done at import.

A *unit* is one Ray Tune trial: one or more Optuna trials, its *members*, trained together
(budget.pack_size > 1 packs several; a lone trial is a unit of one). Every unit travels the
same way:

    UnitConfig     the Tune trial's config: the members' numbers and values, the checkpoint to
                   resume, whether to run packed
    UnitResult     each report: {"epoch", "members": {"<number>": MemberResult}, and on an
                   attempt's first report "node_id" and "resumed_from"}; a failure of the whole
                   unit (bad data, out of memory) is every member's failure
    checkpoint     state.pt (CheckpointState) and members/<number>/ (generator.pt, samples/,
                   history.json)

Tune hands schedulers and searchers results flattened ("members/<number>/<metric>"), and
callbacks the nested form: `member_results` reads both.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

# -- result keys ------------------------------------------------------------------------------
EPOCH = "epoch"
MEMBERS = "members"
FAILURE_REASON = "failure_reason"  # a member failed: diverged, out of memory, bad data
DIVERGED = "diverged"  # set by the engine on a NaN or infinite loss (not logged)
PACK_SIZE = "pack_size"  # how many members shared the epoch's step
# set by the engine at evaluations with trial.metrics (engine/scoring.py): the name of the
# feature space the quality metrics were computed in (text), and the blind-discriminator flag
FEATURES = "features"
BLIND_DISCRIMINATOR = "blind_discriminator"
EQUILIBRIUM = "equilibrium"  # the evaluation's equilibrium verdict (text; config.theory.VERDICTS)
TEXT_KEYS = (FEATURES, EQUILIBRIUM)  # the result's text values: run tags, not metrics
NODE_ID = "node_id"  # the attempt's Ray node (first report of an attempt)
RESUMED_FROM = "resumed_from"  # the epoch of the checkpoint the attempt loaded, 0 for none
ATTEMPT_KEYS = (NODE_ID, RESUMED_FROM)
# objective.select: best: each member's best evaluation so far, by the objective's direction
BEST_EPOCH = "best_epoch"  # its epoch
BEST_PREFIX = "best_"  # best_<metric>: the objectives' values at that epoch

# -- checkpoint files -------------------------------------------------------------------------
STATE_FILE = "state.pt"  # CheckpointState (torch.save)
MEMBERS_DIR = "members"  # members/<number>/ per member
GENERATOR_FILE = "generator.pt"  # a member's generator weights and trial config
SAMPLES_DIR = "samples"  # a member's sample image of the checkpoint's epoch
BEST_FILE = "best.pt"  # objective.select: best: the best epoch's generator weights, epoch, metrics
BEST_MODEL_DIR = "best_model"  # ... and that generator as an MLflow model (mlflow.pytorch.save_model)
# every result the member reported up to the checkpoint's epoch (JSON, a list of MemberResult):
# a driver stopped before MLflow had them logs them again when the member resumes from here
HISTORY_FILE = "history.json"
CHECKPOINT_PROTOCOL = 2  # 1 (absent): a lone trial's state at the top, or a pack's "pack" key

# -- Optuna user attributes (the study is the sweep's source of truth) --------------------------
ATTR_CHECKPOINT = "checkpoint"  # URI of the member's last checkpoint
ATTR_UNIT = "unit"  # the numbers of the unit the member was handed out in
LEGACY_ATTR_PACK = "pack"  # ATTR_UNIT before the one protocol: packs only
ATTR_TUNE_TRIAL_ID = "tune_trial_id"
ATTR_PRUNED_AT = "pruned_at"
ATTR_FAILURE_REASON = FAILURE_REASON
ATTR_ATTEMPTS = "attempts"  # [{"node", "resumed_from", "first_epoch"}] across driver restarts
ATTR_EPOCH = "epoch"  # the last epoch, once settled
ATTR_INTERRUPTED_BY = "interrupted_by"  # why a unit's worker stopped without an end (the store was away)
ATTR_EXCLUDED = "excluded"  # an invalid sampled combination, never run
SUMMARY_KEYS = ("d_loss", "g_loss", "wall_time", EQUILIBRIUM, FAILURE_REASON)  # copied to attrs when settled


class Selection(TypedDict):
    """objective.select: best, as the worker needs it: which metric, which way is better, and
    the metrics (the objectives) to report from the best epoch."""

    metric: str
    direction: str
    metrics: list[str]


class UnitConfig(TypedDict):
    numbers: list[int]  # Optuna trial numbers of the members, in row order
    values: list[dict[str, Any]]  # each member's trial fields
    resume: str | None  # checkpoint URI to continue from (recorded in the Optuna study)
    threads: int  # torch CPU threads
    packed: bool  # the packed execution (vmap), even for one member
    board: str | None  # name of the PruneBoard actor the unit reads, None when nothing prunes
    select: Selection | None  # objective.select: best (the worker keeps each member's best), else None
    # the study's plugin files (config.plugins.PluginFile.as_dict: path, sha256, source), which
    # the worker imports before it reads the values; None in configs from before plugins
    plugins: list[dict[str, str]] | None


class MemberResult(TypedDict, total=False):
    epoch: float
    failure_reason: str
    pack_size: float
    # ... and the engine's metrics: d_loss, g_loss, parzen_ll, ...


class CheckpointState(TypedDict):
    protocol: int
    epoch: int  # the unit's epoch
    numbers: list[int]  # the members the state holds, in row order
    data_seed: int  # the unit's data set: its first member's seed when it started
    unit: dict[str, Any]  # gansweep.engine.run.unit_state
    last: dict[str, Any]  # number -> last metrics, for a pack checkpoint of protocol 1 only


def unit_config(numbers: list[int], values: list[dict[str, Any]], *, resume: str | None, threads: int,
                packed: bool, board: str | None, select: Selection | None = None,
                plugins: list[dict[str, str]] | None = None) -> UnitConfig:
    return UnitConfig(numbers=[int(n) for n in numbers], values=values, resume=resume, threads=threads,
                      packed=packed, board=board, select=select, plugins=plugins or [])


class UnreadableConfig(ValueError):
    """A Tune trial config of neither layout (see read_unit_config)."""


def read_unit_config(config: dict[str, Any]) -> UnitConfig:
    """A UnitConfig, also from the two configs before the one protocol ({"number", "values":
    dict} for a lone trial, {"numbers", "values": list} for a pack), which a Tune retry
    in a mixed-version cluster may still hand a worker."""
    if "numbers" in config and "packed" in config:
        return UnitConfig(**{k: config.get(k) for k in UnitConfig.__annotations__})  # type: ignore[typeddict-item]
    if "numbers" in config:
        return unit_config(config["numbers"], list(config["values"]), resume=config.get("resume"),
                           threads=int(config.get("threads", 1)), packed=True, board=config.get("board"))
    if "number" in config:
        return unit_config([config["number"]], [config["values"]], resume=config.get("resume"),
                           threads=int(config.get("threads", 1)), packed=False, board=None)
    raise UnreadableConfig(f"a unit config needs 'numbers', got keys {sorted(config)}")


def member_results(numbers: list[int], result: dict[str, Any]) -> dict[int, MemberResult]:
    """Number -> that member's part of a Tune result, nested or flattened; a member missing
    from the result (it left the unit earlier) is missing here."""
    nested: dict[str, dict[str, Any]] = {str(k): dict(v) for k, v in result.get(MEMBERS, {}).items()}
    prefix = f"{MEMBERS}/"
    for key, value in result.items():
        if key.startswith(prefix):
            _, number, name = key.split("/", 2)
            nested.setdefault(number, {})[name] = value
    epoch = result.get(EPOCH, 0)
    wanted = {str(n) for n in numbers}
    return {int(n): MemberResult(**{EPOCH: epoch, **m}) for n, m in nested.items() if n in wanted}  # type: ignore[typeddict-item]


def unit_result(epoch: int, members: dict[int, MemberResult], attempt: dict[str, Any] | None = None) -> dict[str, Any]:
    return {EPOCH: float(epoch), MEMBERS: {str(n): m for n, m in members.items()}, **(attempt or {})}


def failed_unit(numbers: list[int], epoch: int, reason: str, attempt: dict[str, Any] | None = None) -> dict[str, Any]:
    """A failure of the whole unit, as every member's."""
    return unit_result(epoch, {n: MemberResult(epoch=float(epoch), failure_reason=reason) for n in numbers}, attempt)


def history_text(history: list[MemberResult]) -> str:
    return json.dumps(history)


def read_history(text: str) -> list[MemberResult]:
    """A member's history.json: its results in epoch order (an unreadable file: none)."""
    try:
        history = json.loads(text)
    except ValueError:
        return []
    if not isinstance(history, list):
        return []
    return [MemberResult(**part) for part in history if isinstance(part, dict) and EPOCH in part]  # type: ignore[typeddict-item]


def member_path(number: int, name: str) -> str:
    """Where a checkpoint keeps member `number`'s file or folder `name`."""
    return f"{MEMBERS_DIR}/{number}/{name}"


class UnknownCheckpoint(ValueError):
    """A state.pt of no layout this release reads."""


def read_checkpoint_state(saved: dict[str, Any], numbers: list[int], seed: int) -> CheckpointState:
    """A state.pt as CheckpointState, also one written before the one protocol: a pack's
    ({"epoch", "numbers", "data_seed", "pack", "last"}) or a lone trial's (the engine's unit
    state, or a format-1 trial state, at the top; `numbers` and `seed` are then the unit's).
    The engine reads the unit state of either format (gansweep.engine.upgrade)."""
    protocol = saved.get("protocol")
    if protocol == CHECKPOINT_PROTOCOL:
        return CheckpointState(**{k: saved[k] for k in CheckpointState.__annotations__})  # type: ignore[typeddict-item]
    if protocol is not None:
        raise UnknownCheckpoint(f"checkpoint protocol {protocol!r}; this release reads {CHECKPOINT_PROTOCOL} and older")
    if "pack" in saved and "numbers" in saved:
        return CheckpointState(protocol=CHECKPOINT_PROTOCOL, epoch=int(saved["epoch"]),
                               numbers=[int(n) for n in saved["numbers"]], data_seed=int(saved["data_seed"]),
                               unit=saved["pack"], last=dict(saved.get("last") or {}))
    if "epoch" in saved or "epochs" in saved:
        if len(numbers) != 1:
            raise UnknownCheckpoint(f"a lone trial's checkpoint cannot resume {len(numbers)} members")
        epoch = int(saved["epoch"]) if "epoch" in saved else int(saved["epochs"][0])
        return CheckpointState(protocol=CHECKPOINT_PROTOCOL, epoch=epoch, numbers=list(numbers), data_seed=seed,
                               unit=saved, last={})
    raise UnknownCheckpoint(f"unknown checkpoint layout with keys {sorted(saved)}")


# -- the output folder -------------------------------------------------------------------------
@dataclass(frozen=True)
class OutputLayout:
    """runs/<name>/: what a sweep writes there (README, "What a sweep writes")."""

    root: Path

    @property
    def results_csv(self) -> Path:
        return self.root / "results.csv"

    @property
    def optuna_db(self) -> Path:
        return self.root / "optuna.db"

    @property
    def driver_lock(self) -> Path:
        return self.root / "driver.lock"

    @property
    def tune(self) -> Path:
        return self.root / "tune"  # Tune's experiments, unless GANSWEEP_STORAGE_PATH

    @property
    def tune_tmp(self) -> Path:
        return self.root / "tune-tmp"

    @property
    def undelivered(self) -> Path:
        return self.root / "mlflow-undelivered.jsonl"

    def artifacts(self, number: int | None = None) -> Path:
        """artifacts/<number>/: a member's samples/, checkpoint/generator.pt, plots/."""
        folder = self.root / "artifacts"
        return folder if number is None else folder / str(number)


REPLICATE_COLUMN = "replicate"  # results.csv: r on a seed replicate's row, empty on its configuration's
REPLICATES_STDERR_SUFFIX = "_replicates_stderr"  # a configuration run's per-epoch stderr of an objective

ARTIFACT_SAMPLES = "samples"
ARTIFACT_CHECKPOINT = "checkpoint"
ARTIFACT_PLOTS = "plots"


OPTUNA_STORAGE_ENV = "GANSWEEP_OPTUNA_STORAGE"


def optuna_storage_url(configured: str | None, output: Path) -> str:
    """The study file's `storage`, else GANSWEEP_OPTUNA_STORAGE, else SQLite in output/."""
    return with_postgres_driver(configured or os.environ.get(OPTUNA_STORAGE_ENV) or local_optuna_storage_url(output))


# A URL naming no driver: SQLAlchemy 2.1 maps bare postgresql:// to psycopg (3), which the
# cluster extras do not install; they install psycopg2, which the compose and k8s URLs name.
BARE_POSTGRES = ("postgresql://", "postgres://")


def with_postgres_driver(url: str) -> str:
    """postgresql:// (and postgres://) as postgresql+psycopg2://; any other URL as it is."""
    for bare in BARE_POSTGRES:
        if url.startswith(bare):
            return "postgresql+psycopg2://" + url.removeprefix(bare)
    return url


def local_optuna_storage_url(output: Path) -> str:
    """The default: a SQLite study in the output folder, which only that folder's driver uses."""
    return f"sqlite:///{OutputLayout(output.resolve()).optuna_db}"
