"""`gansweep run`: a study's trials on Ray Tune, chosen and pruned by Optuna, tracked in MLflow.

    OptunaSearcher      Tune asks it for the next trial; it asks Optuna (or hands back a trial
                        an interrupted sweep left unfinished) and tells Optuna how it ended.
    OptunaPruner        a Tune scheduler: each evaluation is reported to Optuna's pruner, and
                        its verdict stops the trial.
    TrackingCallback    the driver's MLflow writer (tracking.py) and the checkpoint recorder.

The Optuna study is the source of truth: a trial is finished once Optuna was told, and a
new `gansweep run` of the same study resumes the others from their last checkpoint.

With budget.pack_size > 1 a Tune trial is a pack (trainable.run_pack) of up to pack_size Optuna
trials, its members: each has its own Optuna trial, MLflow run and artifacts. A member that is
pruned or diverges is settled at once (`PackMembers`) while its mates train on; the rest are
settled when the pack ends. An interrupted pack resumes with its unfinished members together.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs
from optuna.trial import FrozenTrial, TrialState
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from gansweep.driverlock import DriverRunning, one_driver
from gansweep.errors import ConfigError, DiskFull
from gansweep.progress import SweepProgress
from gansweep.raystart import RayStart
from gansweep.results import write_results
from gansweep.search import OptunaStudy, requested_trials
from gansweep.storage import (
    local_optuna_storage_url, optuna_storage_url, storage_filesystem, strip_scheme, tune_storage_path,
)
from gansweep.config.schema import StudyConfig, TrialConfig
from gansweep.tracking import TAG_NODES, TAG_PRUNED_AT, TAG_REASON, Tracker, resolve_tracking_uri, run_name
from gansweep.trainable import (
    ATTEMPT_KEYS,
    GENERATOR_FILE,
    MEMBERS_DIR,
    SAMPLES_DIR,
    PruneBoard,
    run_pack,
    run_trial,
)

# Keys Tune adds to every result; they are not ours to log.
TUNE_KEYS = {
    "time_this_iter_s", "time_total_s", "timestamp", "training_iteration", "pid", "hostname",
    "node_ip", "time_since_restore", "iterations_since_restore", "checkpoint_dir_name",
    "done", "trial_id", "date", "config", "experiment_tag", "should_checkpoint",
}


def number_of(trial: Trial) -> int:
    """The Optuna number of a one-trial Tune trial, or of a pack's first member."""
    config = trial.config
    return int(config["numbers"][0]) if "numbers" in config else int(config["number"])


def is_pack(trial: Trial) -> bool:
    return "numbers" in trial.config


def members(trial: Trial) -> dict[int, dict[str, Any]]:
    """Optuna number -> trial values of each trial the Tune trial trains (one unless a pack)."""
    config = trial.config
    if "numbers" in config:
        return {int(n): v for n, v in zip(config["numbers"], config["values"], strict=True)}
    return {int(config["number"]): config["values"]}


def member_results(trial: Trial, result: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return split_result(list(members(trial)), result, is_pack(trial))


def split_result(numbers: list[int], result: dict[str, Any], pack: bool) -> dict[int, dict[str, Any]]:
    """Number -> that trial's part of a Tune result. A pack's result nests its members'
    metrics under "members" (Tune hands schedulers and searchers the flattened form,
    "members/<number>/<metric>"); a failure of the whole pack concerns every member."""
    if not pack:
        return {numbers[0]: result}
    if "failure_reason" in result:
        return {n: {"epoch": result.get("epoch", 0), "failure_reason": result["failure_reason"]} for n in numbers}
    nested: dict[str, dict[str, Any]] = {k: dict(v) for k, v in result.get("members", {}).items()}
    for key, value in result.items():
        if key.startswith("members/"):
            _, number, name = key.split("/", 2)
            nested.setdefault(number, {})[name] = value
    return {int(n): {"epoch": result.get("epoch", 0), **m} for n, m in nested.items()}


@dataclass
class PackMembers:
    """Pack members settled before their pack's Tune trial ends, shared by the searcher, the
    pruner and the tracking callback. `pruned`: the pruner's verdicts, which the callback
    tells Optuna once the epoch is logged; `closing`: told, their MLflow run closed once the
    epoch's checkpoint (their last generator and samples) is in; `ended`: told and closed."""

    board: Any = None  # the PruneBoard actor that packs read
    board_name: str | None = None
    pruned: set[int] = field(default_factory=set)
    closing: set[int] = field(default_factory=set)
    ended: set[int] = field(default_factory=set)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "board": None}  # Tune pickles its searcher; the actor stays here


def numeric_metrics(result: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in result.items()
        if k not in TUNE_KEYS and k not in ATTEMPT_KEYS
        and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def trial_state(study: OptunaStudy, number: int, result: dict[str, Any]) -> TrialState | None:
    """How a trial that Tune stopped ended; None when it was interrupted midway (Ctrl-C
    stops running trials the same way as completion), so it stays RUNNING for a resume."""
    if "failure_reason" in result:
        return TrialState.FAIL
    if study.frozen(number).user_attrs.get("pruned_at") is not None:
        return TrialState.PRUNED
    if int(result.get("epoch", 0)) >= int(study.values_of(number)["epochs"]):
        return TrialState.COMPLETE
    return None


def objective_values(config: StudyConfig, result: dict[str, Any]) -> list[float] | None:
    specs = [config.objective] + ([config.objective.second] if config.objective.second else [])
    values = [result.get(spec.metric) for spec in specs]
    if any(v is None for v in values):
        return None
    return [float(v) for v in values]


def settle(study: OptunaStudy, number: int, result: dict[str, Any]) -> bool:
    """Tell Optuna how a trial ended, from its last result; False: it was interrupted midway
    and stays RUNNING for a resume."""
    state = trial_state(study, number, result)
    if state is None:
        return False
    values = objective_values(study.config, result) if state == TrialState.COMPLETE else None
    if state == TrialState.COMPLETE and values is None:
        state = TrialState.FAIL  # finished without the objective: nothing to compare
        study.set_attrs(number, {"failure_reason": "objective metric missing from final result"})
    summary = {k: result[k] for k in ("d_loss", "g_loss", "wall_time", "failure_reason") if k in result}
    summary["epoch"] = int(result.get("epoch", 0))
    study.set_attrs(number, summary)
    study.tell(number, state, values)
    return True


def resumable_groups(study: OptunaStudy, pack_size: int) -> list[list[int]]:
    """Trials a killed driver left RUNNING, grouped as they will run again: a pack's
    unfinished members together (they share its checkpoint), every other trial alone."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for frozen in study.unfinished():
        pack = frozen.user_attrs.get("pack")
        key = (tuple(pack), frozen.user_attrs.get("checkpoint")) if pack and pack_size > 1 else (frozen.number,)
        groups.setdefault(key, []).append(frozen.number)
    return list(groups.values())


class OptunaSearcher(Searcher):
    def __init__(self, study: OptunaStudy, threads: int, packs: PackMembers | None = None) -> None:
        super().__init__()
        self.optuna = study
        self.threads = threads
        self.pack_size = study.config.budget.pack_size
        self.packs = packs or PackMembers()
        # Trials a killed driver left RUNNING: handed out again first, same number and values.
        self.resumable = resumable_groups(study, self.pack_size)
        self.numbers: dict[str, list[int]] = {}  # Tune trial id -> Optuna trial numbers
        self.fresh_left = 0  # new trials still to ask for packs (set by tune_trials)

    def tune_trials(self, to_run: int) -> int:
        """Tune trials that run `to_run` Optuna trials: the resumable groups, then new packs."""
        self.fresh_left = max(0, to_run - sum(len(group) for group in self.resumable))
        return len(self.resumable) + math.ceil(self.fresh_left / self.pack_size)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.pack_size > 1:
            return self.suggest_pack(trial_id)
        if self.resumable:
            (number,) = self.resumable.pop(0)
            values = self.optuna.values_of(number)
        else:
            number, values = self.optuna.ask()
        attrs = self.optuna.frozen(number).user_attrs
        # a pack's checkpoint (the study ran with pack_size > 1 before) does not resume one trial
        resume = None if attrs.get("pack") else attrs.get("checkpoint")
        self.optuna.set_attrs(number, {"tune_trial_id": trial_id})
        self.numbers[trial_id] = [number]
        return {"number": number, "values": values, "resume": resume, "threads": self.threads}

    def suggest_pack(self, trial_id: str) -> dict[str, Any]:
        if self.resumable:
            numbers = self.resumable.pop(0)
            values = [self.optuna.values_of(n) for n in numbers]
            attrs = self.optuna.frozen(numbers[0]).user_attrs
            resume = attrs.get("checkpoint") if attrs.get("pack") else None
        else:
            size = min(self.pack_size, self.fresh_left)  # the last pack takes what is left
            self.fresh_left -= size
            asked = [self.optuna.ask() for _ in range(size)]
            numbers, values = [n for n, _ in asked], [v for _, v in asked]
            resume = None
        for number in numbers:
            self.optuna.set_attrs(number, {"tune_trial_id": trial_id, "pack": numbers})
        self.numbers[trial_id] = numbers
        return {"numbers": numbers, "values": values, "resume": resume, "threads": self.threads,
                "board": self.packs.board_name}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        numbers = self.numbers.get(trial_id)
        if numbers is None or error or not result:
            return  # errors are recorded by TrackingCallback.on_trial_error; no result: resumable
        parts = split_result(numbers, result, self.pack_size > 1)
        for number in numbers:
            if number not in self.packs.ended and number in parts:
                settle(self.optuna, number, parts[number])

    def save(self, checkpoint_path: str) -> None:
        pass  # the Optuna storage holds everything; resumes read it, not this file

    def restore(self, checkpoint_path: str) -> None:
        pass


class OptunaPruner(FIFOScheduler):
    """Asks the study's Optuna pruner after each evaluation whether to stop the trial. In a
    pack each member is asked: a pruned member leaves the pack (PruneBoard), and the pack
    stops once none is left."""

    def __init__(self, study: OptunaStudy, packs: PackMembers | None = None) -> None:
        super().__init__()
        self.optuna = study
        self.metric_name = study.config.objective.metric
        self.packs = packs or PackMembers()

    def prunes(self, number: int, epochs: int, result: dict[str, Any]) -> bool:
        value = result.get(self.metric_name)
        if value is None or "epoch" not in result or "failure_reason" in result:
            return False
        epoch = int(result["epoch"])
        if epoch < epochs and self.optuna.report(number, float(value), epoch):
            self.optuna.set_attrs(number, {"pruned_at": epoch})
            return True
        return False

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        values = members(trial)
        if not is_pack(trial):
            (number,) = values
            pruned = self.prunes(number, int(values[number]["epochs"]), result)
            return TrialScheduler.STOP if pruned else TrialScheduler.CONTINUE
        alive = 0
        for number, part in member_results(trial, result).items():
            if number in self.packs.ended or "failure_reason" in part:
                continue
            if self.prunes(number, int(values[number]["epochs"]), part):
                self.packs.pruned.add(number)
                self.packs.board.prune.remote(number)
            else:
                alive += 1
        return TrialScheduler.CONTINUE if alive else TrialScheduler.STOP


def final_state(frozen: FrozenTrial) -> str:
    return frozen.state.name if frozen.state.is_finished() else "INTERRUPTED"


def final_tags(frozen: FrozenTrial) -> dict[str, str]:
    tags = {}
    if frozen.user_attrs.get("pruned_at") is not None:
        tags[TAG_PRUNED_AT] = str(frozen.user_attrs["pruned_at"])
    if frozen.user_attrs.get("failure_reason"):
        tags[TAG_REASON] = frozen.user_attrs["failure_reason"]
    return tags


def reconcile(study: OptunaStudy, tracker: Tracker) -> None:
    """A driver killed between telling Optuna and ending the MLflow run leaves the run
    RUNNING for a finished trial: end it now, as Optuna (the source of truth) says."""
    for number, run_id in tracker.open_children().items():
        frozen = study.frozen(number)
        if frozen.state.is_finished():
            tracker.run_ids[number] = run_id
            tracker.finish_child(number, final_state(frozen), final_tags(frozen))


def in_checkpoint(trial: Trial, number: int, name: str) -> str:
    """Where a checkpoint of `trial` keeps trial `number`'s file or folder `name`: at its top,
    or under members/<number>/ for a pack (worker.write_pack_checkpoint)."""
    return f"{MEMBERS_DIR}/{number}/{name}" if is_pack(trial) else name


def checkpoint_uri(checkpoint: tune.Checkpoint) -> str:
    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        return checkpoint.path
    return f"{checkpoint.filesystem.type_name}://{checkpoint.path}"


class TrackingCallback(tune.Callback):
    def __init__(
        self, study: OptunaStudy, tracker: Tracker, search_names: list[str], progress: SweepProgress,
        packs: PackMembers | None = None,
    ) -> None:
        self.optuna = study
        self.tracker = tracker
        self.search_names = search_names
        self.progress = progress
        self.artifacts = tracker.output / "artifacts"
        self.packs = packs or PackMembers()

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its config for Tuner.restore, which gansweep does not use (resumes go
        # through the Optuna study); the live MLflow client and console cannot be pickled.
        return {}

    def run_name(self, number: int, values: dict[str, Any]) -> str:
        return run_name(number, values, self.search_names)

    def on_trial_start(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        for number, values in members(trial).items():
            self.tracker.start_child(number, self.run_name(number, values), values)
            self.progress.started(number)

    def on_trial_result(self, iteration: int, trials: list, trial: Trial, result: dict, **info: Any) -> None:
        for number, part in member_results(trial, result).items():
            if number in self.packs.ended:
                continue
            if "node_id" in result:
                self.record_attempt(number, result)
            metrics = numeric_metrics(part)
            epoch = int(metrics.pop("epoch", result.get("training_iteration", 0)))
            if "failure_reason" not in part:
                self.tracker.log_epoch(number, metrics, epoch)
            if is_pack(trial) and number not in self.packs.closing and (
                "failure_reason" in part or number in self.packs.pruned
            ):
                # settled now: its pack trains on without it
                settle(self.optuna, number, part)
                if result.get("should_checkpoint"):  # Tune's flag: this epoch's checkpoint follows
                    self.packs.closing.add(number)
                else:
                    self.close(trial, number)

    def record_attempt(self, number: int, result: dict[str, Any]) -> None:
        """Where each attempt of a trial ran and which epoch it resumed from: the Optuna user
        attr `attempts` (kept across driver restarts) and the MLflow tag gansweep.nodes."""
        attempts = list(self.optuna.frozen(number).user_attrs.get("attempts", []))
        attempts.append({
            "node": str(result["node_id"]),
            "resumed_from": int(result.get("resumed_from", 0)),
            "first_epoch": int(result.get("epoch", 0)),
        })
        self.optuna.set_attrs(number, {"attempts": attempts})
        self.tracker.set_child_tags(number, {TAG_NODES: ",".join(a["node"] for a in attempts)})

    def on_checkpoint(self, iteration: int, trials: list, trial: Trial, checkpoint: tune.Checkpoint, **info: Any) -> None:
        for number in members(trial):
            if number in self.packs.ended:
                continue
            if number not in self.packs.closing:
                self.optuna.set_attrs(number, {"checkpoint": checkpoint_uri(checkpoint)})
            samples = in_checkpoint(trial, number, SAMPLES_DIR)
            self.fetch(checkpoint, samples, self.artifacts / str(number) / SAMPLES_DIR, number)
            if number in self.packs.closing:
                self.close(trial, number, checkpoint)

    def fetch(self, checkpoint: tune.Checkpoint, name: str, target: Path, number: int) -> None:
        """Copy a file or folder out of a checkpoint (local or S3) and log it to the run."""
        source = f"{checkpoint.path}/{name}"
        info = checkpoint.filesystem.get_file_info(source)
        if info.type == pyarrow.fs.FileType.NotFound:
            return
        target.mkdir(parents=True, exist_ok=True)
        if info.type == pyarrow.fs.FileType.File:
            pyarrow.fs.copy_files(source, str(target / Path(name).name), source_filesystem=checkpoint.filesystem)
        else:
            pyarrow.fs.copy_files(source, str(target), source_filesystem=checkpoint.filesystem)
        self.tracker.log_artifacts(number, target, target.name if target.name != str(number) else None)

    def on_trial_complete(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        for number in members(trial):
            if number not in self.packs.ended:
                self.close(trial, number)

    def close(self, trial: Trial, number: int, checkpoint: tune.Checkpoint | None = None) -> None:
        """A trial's end as Optuna has it (told already, or still RUNNING when interrupted):
        its last checkpoint's generator and the losses figure logged, its MLflow run ended."""
        frozen = self.optuna.frozen(number)
        checkpoint = checkpoint or trial.checkpoint
        if checkpoint is not None:
            generator = in_checkpoint(trial, number, GENERATOR_FILE)
            self.fetch(checkpoint, generator, self.artifacts / str(number) / "checkpoint", number)
        self.log_theory_plot(number, members(trial)[number])
        self.tracker.finish_child(number, final_state(frozen), final_tags(frozen))
        self.progress.finished(number, final_state(frozen), frozen.values[0] if frozen.values else None)
        self.packs.closing.discard(number)
        if frozen.state.is_finished():
            self.packs.ended.add(number)

    def on_trial_error(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        reason = f"worker error after {trial.num_failures} attempt(s): {trial.error_file or 'see Ray logs'}"
        for number in members(trial):
            if number in self.packs.ended:
                continue
            self.optuna.set_attrs(number, {"failure_reason": reason})
            self.optuna.tell(number, TrialState.FAIL)
            self.tracker.finish_child(number, "FAIL", {TAG_REASON: reason})
            self.progress.finished(number, "FAIL")
            self.packs.ended.add(number)

    def log_theory_plot(self, number: int, values: dict[str, Any]) -> None:
        """The losses-vs-theory figure, drawn from the run's own history once it is delivered."""
        from gansweep.reporting.plots import plot_losses_vs_theory

        folder = self.artifacts / str(number) / "plots"
        trial = TrialConfig.model_validate(values)

        def draw(history: dict[str, list[tuple[int, float]]]) -> Path | None:
            if not history.get("d_loss"):
                return None
            folder.mkdir(parents=True, exist_ok=True)
            plot_losses_vs_theory(history, trial, folder / "losses_vs_theory.png")
            return folder

        self.tracker.log_from_history(number, ("d_loss", "g_loss", "d_loss_star", "g_loss_star"), draw, "plots")


# Ray Tune copies these from the driver's environment into every trainable's runtime_env,
# and Ray's runtime-env agent logs a runtime_env in full, at INFO, in the session's logs.
# Workers never need them from the driver: the S3 filesystem handed to Tune is built before
# they are withheld and pickles without them (storage.S3Storage), and every node takes its
# credentials from its own environment (docker-compose.yml, k8s/ray).
RAY_PROPAGATED_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")


@contextlib.contextmanager
def withheld_from_ray(names: tuple[str, ...]) -> Iterator[None]:
    """These environment variables out of os.environ while Tune starts trials, then back."""
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def trial_name(trial: Trial) -> str:
    kind = "pack" if is_pack(trial) else "trial"
    return f"{kind}_{number_of(trial):04d}_{trial.trial_id}"


MIN_FREE_ENV = "GANSWEEP_MIN_FREE_MB"
DEFAULT_MIN_FREE_MB = 256  # a few checkpoints of the largest shipped nets, with room to spare


def min_free_bytes() -> int:
    text = os.environ.get(MIN_FREE_ENV, str(DEFAULT_MIN_FREE_MB))
    try:
        return int(float(text) * 2**20)
    except ValueError:
        raise ConfigError(f"{MIN_FREE_ENV} must be a number of MiB, got {text!r}") from None


def short_of_space(folders: list[Path], floor: int) -> tuple[Path, int] | None:
    """The first folder whose file system has less than `floor` bytes free, and its free bytes.
    A folder not created yet is measured at its nearest existing parent, where it will be."""
    for folder in folders:
        existing = next((p for p in (folder, *folder.parents) if p.is_dir()), Path("/"))
        free = shutil.disk_usage(existing).free
        if free < floor:
            return folder, free
    return None


def disk_full_error(short: tuple[Path, int], floor: int, unfinished: int | None = None) -> DiskFull:
    folder, free = short
    stopped = f"the sweep stopped with {unfinished} trial(s) unfinished, their state saved; " if unfinished else ""
    return DiskFull(
        f"{folder} has {free / 2**20:.0f} MiB free, below the {floor / 2**20:.0f} MiB the sweep "
        f"keeps in reserve ({MIN_FREE_ENV}); {stopped}free some space and run the same command "
        "to resume"
    )


class DiskSpaceStopper(tune.Stopper):
    """Stops every trial, as Ctrl-C does (they stay resumable), once a folder the sweep writes
    to runs short of space: better a clean stop than a checkpoint or database write that
    fails halfway. Checked at most once a second (statvfs is cheap; results come often)."""

    def __init__(self, folders: list[Path], floor: int) -> None:
        self.folders = folders
        self.floor = floor
        self.short: tuple[Path, int] | None = None
        self.checked_at = 0.0

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        if self.short is None and time.monotonic() - self.checked_at >= 1.0:
            self.checked_at = time.monotonic()
            self.short = short_of_space(self.folders, self.floor)
        return self.short is not None


def prepare_output(output: Path) -> None:
    """Create the output folder and prove it writable before anything is tracked or started."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".gansweep-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"output folder {output} is not writable: {err.strerror or err}") from None


# What the CLI hands run_study to follow a sweep: (output, tracker, status) -> anything.
AfterSweep = Callable[[Path, Tracker, str], Any]


def run_study(
    study: StudyConfig,
    *,
    study_path: Path,
    address: str | None = None,
    tracking_uri: str | None = None,
    output: Path | None = None,
    ray_start: RayStart | None = None,
    after: AfterSweep | None = None,
) -> int:
    """`ray_start`: Ray already starting in the background (the CLI begins it before it
    imports this module); by default it begins here, beside the Optuna and MLflow set-up.
    `after(output, tracker, status)`: what follows the sweep once results.csv is written and
    before the parent run ends (the CLI hands in the report; the sweep knows no reporting)."""
    ray_start = ray_start or RayStart.begin(address)
    try:
        code = run_study_on_ray(study, study_path, tracking_uri, output, ray_start, after)
    except BaseException:
        ray_start.stop()  # at once, even while Ray is still starting
        raise
    ray_start.stop(wait_for_start=True)
    return code


def run_study_on_ray(
    study: StudyConfig, study_path: Path, tracking_uri: str | None, output: Path | None,
    ray_start: RayStart, after: AfterSweep | None,
) -> int:
    output = (output or study.output_dir).resolve()
    floor = min_free_bytes()
    short = short_of_space([output], floor)  # before anything is created or tracked
    if short is not None:
        raise disk_full_error(short, floor)
    created = next((p for p in (*reversed(output.parents), output) if not p.exists()), None)
    prepare_output(output)
    storage_url = optuna_storage_url(study.storage, output)
    optuna_study = OptunaStudy(study, storage_url)
    # Drivers with other output folders reach a shared storage: a lease there, too.
    shared = lease_in(optuna_study) if storage_url != local_optuna_storage_url(output) else None
    try:
        with one_driver(study.name, output, shared):
            return run_as_the_driver(study, study_path, tracking_uri, output, ray_start, optuna_study, floor, after)
    except DriverRunning:
        remove_empty_folders(output, created)  # the refused driver leaves nothing behind
        raise


def lease_in(optuna_study: OptunaStudy) -> tuple[Any, int]:
    """The shared Optuna storage and the study's id there, for the driver's lease."""
    _ = optuna_study.study  # created, or loaded (nothing written) when it exists
    storage = optuna_study.storage
    return storage, storage.get_study_id_from_name(optuna_study.config.name)


def remove_empty_folders(output: Path, created: Path | None) -> None:
    """Remove `output` and its parents up to `created` (the first that did not exist), while empty."""
    if created is None:
        return
    for folder in (output, *output.parents):
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == created:
            return


def run_as_the_driver(
    study: StudyConfig, study_path: Path, tracking_uri: str | None, output: Path, ray_start: RayStart,
    optuna_study: OptunaStudy, floor: int, after: AfterSweep | None,
) -> int:
    """The sweep, once this process holds the study (driverlock.one_driver)."""
    tracker = Tracker(
        resolve_tracking_uri(tracking_uri or study.tracking.tracking_uri),
        study.experiment_name,
        study.name,
        output,
    )
    reconcile(optuna_study, tracker)
    tracker.log_study(
        {"study_file": str(study_path), **{f"search.{k}": v.model_dump(exclude_none=True) for k, v in study.search.items()}},
        study_path,
    )
    total = requested_trials(study)
    to_run = total - optuna_study.finished_count()
    progress = SweepProgress(total=total, done=optuna_study.finished_count(), metric=study.objective.metric, direction=study.objective.direction)
    status = "FINISHED"
    try:
        if to_run > 0:
            ray_start.wait()
            run_tune(study, optuna_study, tracker, progress, to_run, output, floor)
    except (KeyboardInterrupt, DiskFull):
        status = "KILLED"
        raise
    finally:
        ray_start.stop_in_background()  # while the results and the report are written
        close_interrupted(optuna_study, tracker)
        results = write_results(optuna_study, output / "results.csv")
        progress.close(results)
        if after is not None:
            after(output, tracker, status)
        tracker.finish_study(status if not optuna_study.unfinished() else "KILLED", [output / "results.csv"])
        tracker.flush_with_retries()
    unfinished = len(optuna_study.unfinished())
    if unfinished:
        print(f"gansweep: interrupted with {unfinished} trial(s) unfinished; run the same command to resume")
        return 1
    return 0


def close_interrupted(study: OptunaStudy, tracker: Tracker) -> None:
    """Trials still RUNNING in Optuna after Tune stopped (Ctrl-C) are resumed by the next
    run; their MLflow runs end KILLED meanwhile, never left RUNNING."""
    for frozen in study.unfinished():
        if frozen.number in tracker.started and frozen.number not in tracker.closed:
            tracker.finish_child(frozen.number, "INTERRUPTED", {})


def tune_loggers() -> list[tune.Callback]:
    """Tune's per-trial result.json and progress.csv (its experiment analysis reads them), and
    not its TensorBoard logger: MLflow holds every metric, and tensorboardX imports torch,
    2 s of the driver's start-up that nothing else on the driver needs (gansweep.trainable)."""
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # read when Tuner.fit starts
    return [CSVLoggerCallback(), JsonLoggerCallback()]


def run_tune(
    study: StudyConfig, optuna_study: OptunaStudy, tracker: Tracker, progress: SweepProgress,
    to_run: int, output: Path, min_free: int,
) -> None:
    """`min_free`: the bytes the sweep keeps free on the folders it writes (DiskSpaceStopper)."""
    budget = study.budget
    storage_path = tune_storage_path(output)
    local_tune = [] if "://" in storage_path else [Path(storage_path)]  # S3: not our disk
    disk_guard = DiskSpaceStopper([output, *local_tune], min_free)
    packs = PackMembers()
    if budget.pack_size > 1:
        packs.board_name = f"gansweep-prune-board-{uuid.uuid4().hex}"
        packs.board = PruneBoard.options(name=packs.board_name).remote()
    trainable = tune.with_resources(
        run_pack if budget.pack_size > 1 else run_trial, {"cpu": budget.cpus_per_trial, "gpu": budget.gpus_per_trial}
    )
    searcher = OptunaSearcher(optuna_study, threads=max(1, int(budget.cpus_per_trial)), packs=packs)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=OptunaPruner(optuna_study, packs),
            num_samples=searcher.tune_trials(to_run),
            max_concurrent_trials=budget.max_concurrent,
            reuse_actors=True,
            # Tune names trial folders after the whole config by default: far past 255 bytes
            # for a study with many fields.
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name=f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=strip_scheme(storage_path),
            storage_filesystem=storage_filesystem(storage_path),
            failure_config=tune.FailureConfig(max_failures=budget.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            stop=disk_guard,
            callbacks=[
                TrackingCallback(optuna_study, tracker, list(study.search), progress, packs),
                *tune_loggers(),
            ],
            verbose=0,
        ),
    )
    with progress.live(), withheld_from_ray(RAY_PROPAGATED_SECRETS):
        tuner.fit()
    if disk_guard.short is not None:
        raise disk_full_error(disk_guard.short, min_free, len(optuna_study.unfinished()))
    shutil.rmtree(output / "tune-tmp", ignore_errors=True)
