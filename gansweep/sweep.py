"""`gansweep run`: a study's trials on Ray Tune, chosen and pruned by Optuna, tracked in MLflow.

    OptunaSearcher      Tune asks it for the next trial; it asks Optuna (or hands back a trial
                        an interrupted sweep left unfinished) and tells Optuna how it ended.
    OptunaPruner        a Tune scheduler: each evaluation is reported to Optuna's pruner, and
                        its verdict stops the trial.
    TrackingCallback    the driver's MLflow writer (tracking.py) and the checkpoint recorder.

The Optuna study is the source of truth: a trial is finished once Optuna was told, and a
new `gansweep run` of the same study resumes the others from their last checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs
from optuna.trial import FrozenTrial, TrialState
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from gansweep.errors import ConfigError, DiskFull
from gansweep.progress import SweepProgress
from gansweep.raystart import RayStart
from gansweep.report import report_after_sweep, run_name
from gansweep.results import write_results
from gansweep.search import OptunaStudy, requested_trials
from gansweep.storage import optuna_storage_url, storage_filesystem, strip_scheme, tune_storage_path
from gansweep.study import StudyConfig, TrialConfig
from gansweep.tracking import TAG_NODES, TAG_PRUNED_AT, TAG_REASON, Tracker, default_tracking_uri
from gansweep.worker import ATTEMPT_KEYS, GENERATOR_FILE, SAMPLES_DIR, run_trial

# Keys Tune adds to every result; they are not ours to log.
TUNE_KEYS = {
    "time_this_iter_s", "time_total_s", "timestamp", "training_iteration", "pid", "hostname",
    "node_ip", "time_since_restore", "iterations_since_restore", "checkpoint_dir_name",
    "done", "trial_id", "date", "config", "experiment_tag", "should_checkpoint",
}


def number_of(trial: Trial) -> int:
    return int(trial.config["number"])


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
    if study.study.trials[number].user_attrs.get("pruned_at") is not None:
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


class OptunaSearcher(Searcher):
    def __init__(self, study: OptunaStudy, threads: int) -> None:
        super().__init__()
        self.optuna = study
        self.threads = threads
        # Trials a killed driver left RUNNING: handed out again first, same number and values.
        self.resumable = [t.number for t in study.unfinished()]
        self.numbers: dict[str, int] = {}  # Tune trial id -> Optuna trial number

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.resumable:
            number = self.resumable.pop(0)
            values = self.optuna.values_of(number)
        else:
            number, values = self.optuna.ask()
        resume = self.optuna.study.trials[number].user_attrs.get("checkpoint")
        self.optuna.set_attrs(number, {"tune_trial_id": trial_id})
        self.numbers[trial_id] = number
        return {"number": number, "values": values, "resume": resume, "threads": self.threads}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        number = self.numbers.get(trial_id)
        if number is None or error or not result:
            return  # errors are recorded by TrackingCallback.on_trial_error; no result: resumable
        state = trial_state(self.optuna, number, result)
        if state is None:
            return
        values = objective_values(self.optuna.config, result) if state == TrialState.COMPLETE else None
        if state == TrialState.COMPLETE and values is None:
            state = TrialState.FAIL  # finished without the objective: nothing to compare
            self.optuna.set_attrs(number, {"failure_reason": "objective metric missing from final result"})
        summary = {k: result[k] for k in ("d_loss", "g_loss", "wall_time", "failure_reason") if k in result}
        summary["epoch"] = int(result.get("epoch", 0))
        self.optuna.set_attrs(number, summary)
        self.optuna.tell(number, state, values)

    def save(self, checkpoint_path: str) -> None:
        pass  # the Optuna storage holds everything; resumes read it, not this file

    def restore(self, checkpoint_path: str) -> None:
        pass


class OptunaPruner(FIFOScheduler):
    """Asks the study's Optuna pruner after each evaluation whether to stop the trial."""

    def __init__(self, study: OptunaStudy) -> None:
        super().__init__()
        self.optuna = study
        self.metric_name = study.config.objective.metric

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        value = result.get(self.metric_name)
        if value is None or "epoch" not in result:
            return TrialScheduler.CONTINUE
        number, epoch = number_of(trial), int(result["epoch"])
        if epoch < trial.config["values"]["epochs"] and self.optuna.report(number, float(value), epoch):
            self.optuna.set_attrs(number, {"pruned_at": epoch})
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


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
        frozen = study.study.trials[number]
        if frozen.state.is_finished():
            tracker.run_ids[number] = run_id
            tracker.finish_child(number, final_state(frozen), final_tags(frozen))


def checkpoint_uri(checkpoint: tune.Checkpoint) -> str:
    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        return checkpoint.path
    return f"{checkpoint.filesystem.type_name}://{checkpoint.path}"


class TrackingCallback(tune.Callback):
    def __init__(self, study: OptunaStudy, tracker: Tracker, search_names: list[str], progress: SweepProgress) -> None:
        self.optuna = study
        self.tracker = tracker
        self.search_names = search_names
        self.progress = progress
        self.artifacts = tracker.output / "artifacts"

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its config for Tuner.restore, which gansweep does not use (resumes go
        # through the Optuna study); the live MLflow client and console cannot be pickled.
        return {}

    def run_name(self, number: int, values: dict[str, Any]) -> str:
        return run_name(number, values, self.search_names)

    def on_trial_start(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        number, values = number_of(trial), trial.config["values"]
        self.tracker.start_child(number, self.run_name(number, values), values)
        self.progress.started(number)

    def on_trial_result(self, iteration: int, trials: list, trial: Trial, result: dict, **info: Any) -> None:
        if "node_id" in result:
            self.record_attempt(number_of(trial), result)
        metrics = numeric_metrics(result)
        epoch = int(metrics.pop("epoch", result.get("training_iteration", 0)))
        if "failure_reason" not in result:
            self.tracker.log_epoch(number_of(trial), metrics, epoch)

    def record_attempt(self, number: int, result: dict[str, Any]) -> None:
        """Where each attempt of a trial ran and which epoch it resumed from: the Optuna user
        attr `attempts` (kept across driver restarts) and the MLflow tag gansweep.nodes."""
        attempts = list(self.optuna.study.trials[number].user_attrs.get("attempts", []))
        attempts.append({
            "node": str(result["node_id"]),
            "resumed_from": int(result.get("resumed_from", 0)),
            "first_epoch": int(result.get("epoch", 0)),
        })
        self.optuna.set_attrs(number, {"attempts": attempts})
        self.tracker.set_child_tags(number, {TAG_NODES: ",".join(a["node"] for a in attempts)})

    def on_checkpoint(self, iteration: int, trials: list, trial: Trial, checkpoint: tune.Checkpoint, **info: Any) -> None:
        number = number_of(trial)
        self.optuna.set_attrs(number, {"checkpoint": checkpoint_uri(checkpoint)})
        self.fetch(checkpoint, SAMPLES_DIR, self.artifacts / str(number) / SAMPLES_DIR, number)

    def fetch(self, checkpoint: tune.Checkpoint, name: str, target: Path, number: int) -> None:
        """Copy a file or folder out of a checkpoint (local or S3) and log it to the run."""
        source = f"{checkpoint.path}/{name}"
        info = checkpoint.filesystem.get_file_info(source)
        if info.type == pyarrow.fs.FileType.NotFound:
            return
        target.mkdir(parents=True, exist_ok=True)
        if info.type == pyarrow.fs.FileType.File:
            pyarrow.fs.copy_files(source, str(target / name), source_filesystem=checkpoint.filesystem)
        else:
            pyarrow.fs.copy_files(source, str(target), source_filesystem=checkpoint.filesystem)
        self.tracker.log_artifacts(number, target, target.name if target.name != str(number) else None)

    def on_trial_complete(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        number = number_of(trial)
        frozen = self.optuna.study.trials[number]
        if trial.checkpoint is not None:
            self.fetch(trial.checkpoint, GENERATOR_FILE, self.artifacts / str(number) / "checkpoint", number)
        self.log_theory_plot(number, trial.config["values"])
        self.tracker.finish_child(number, final_state(frozen), final_tags(frozen))
        self.progress.finished(number, final_state(frozen), frozen.values[0] if frozen.values else None)

    def on_trial_error(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        number = number_of(trial)
        reason = f"worker error after {trial.num_failures} attempt(s): {trial.error_file or 'see Ray logs'}"
        self.optuna.set_attrs(number, {"failure_reason": reason})
        self.optuna.tell(number, TrialState.FAIL)
        self.tracker.finish_child(number, "FAIL", {TAG_REASON: reason})
        self.progress.finished(number, "FAIL")

    def log_theory_plot(self, number: int, values: dict[str, Any]) -> None:
        """The losses-vs-theory figure, drawn from the run's own history once it is delivered."""
        from gansweep.plots import plot_losses_vs_theory

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
    return f"trial_{number_of(trial):04d}_{trial.trial_id}"


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


def run_study(
    study: StudyConfig,
    *,
    study_path: Path,
    address: str | None = None,
    tracking_uri: str | None = None,
    output: Path | None = None,
    ray_start: RayStart | None = None,
) -> int:
    """`ray_start`: Ray already starting in the background (the CLI begins it before it
    imports this module); by default it begins here, beside the Optuna and MLflow set-up."""
    ray_start = ray_start or RayStart.begin(address)
    try:
        code = run_study_on_ray(study, study_path, tracking_uri, output, ray_start)
    except BaseException:
        ray_start.stop()  # at once, even while Ray is still starting
        raise
    ray_start.stop(wait_for_start=True)
    return code


def run_study_on_ray(
    study: StudyConfig, study_path: Path, tracking_uri: str | None, output: Path | None,
    ray_start: RayStart,
) -> int:
    output = (output or study.output_dir).resolve()
    floor = min_free_bytes()
    short = short_of_space([output], floor)  # before anything is created or tracked
    if short is not None:
        raise disk_full_error(short, floor)
    prepare_output(output)
    optuna_study = OptunaStudy(study, optuna_storage_url(study.storage, output))
    tracker = Tracker(
        tracking_uri or study.tracking.tracking_uri or default_tracking_uri(),
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
        report_after_sweep(output, tracker, status)
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


def run_tune(
    study: StudyConfig, optuna_study: OptunaStudy, tracker: Tracker, progress: SweepProgress,
    to_run: int, output: Path, min_free: int,
) -> None:
    """`min_free`: the bytes the sweep keeps free on the folders it writes (DiskSpaceStopper)."""
    budget = study.budget
    storage_path = tune_storage_path(output)
    local_tune = [] if "://" in storage_path else [Path(storage_path)]  # S3: not our disk
    disk_guard = DiskSpaceStopper([output, *local_tune], min_free)
    trainable = tune.with_resources(run_trial, {"cpu": budget.cpus_per_trial, "gpu": budget.gpus_per_trial})
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearcher(optuna_study, threads=max(1, int(budget.cpus_per_trial))),
            scheduler=OptunaPruner(optuna_study),
            num_samples=to_run,
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
            callbacks=[TrackingCallback(optuna_study, tracker, list(study.search), progress)],
            verbose=0,
        ),
    )
    with progress.live(), withheld_from_ray(RAY_PROPAGATED_SECRETS):
        tuner.fit()
    if disk_guard.short is not None:
        raise disk_full_error(disk_guard.short, min_free, len(optuna_study.unfinished()))
    shutil.rmtree(output / "tune-tmp", ignore_errors=True)
