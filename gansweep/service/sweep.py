"""`gansweep run`: a study's units on Ray Tune, chosen and pruned by Optuna, tracked in MLflow.

    run_study    one driver per study (driverlock.py), then Ray, the Optuna study, the MLflow
                 tracker and Tune wired together: the ledger (service/ledger.py) decides, and
                 its thin Tune adapters carry the decisions out: LedgerSearcher (what a unit
                 trains), LedgerPruner (who is pruned), TrackingCallback (MLflow, checkpoints)

The Optuna study is the source of truth: a trial is finished once Optuna was told, and a
new `gansweep run` of the same study resumes the others from their last checkpoint.

A Tune trial is a unit (service/protocol.py) of one trial, or with budget.pack_size > 1 of up
to pack_size trials, its members: each has its own Optuna trial, MLflow run and artifacts. A
member that is pruned or diverges is settled at once while its mates train on; the rest are
settled when the unit ends. An interrupted unit resumes with its unfinished members together.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from gansweep.service.driverlock import DriverRunning, one_driver
from gansweep.errors import ConfigError, DiskFull
from gansweep.service.preflight import check_sweep_can_write
from gansweep.service.progress import SweepProgress
from gansweep.service.raystart import RayStart
from gansweep.service.results import write_results
from gansweep.service.search import OptunaStudy, requested_trials
from gansweep.service import protocol as p
from gansweep.service.callback import MemberFigure, TrackingCallback, reconcile
from gansweep.service.checkpoint_check import checkpoint_problem, refuse_bad_checkpoint
from gansweep.service.diskspace import DiskSpaceStopper, disk_full_error, min_free_bytes, prepare_output, short_of_space
from gansweep.service.ledger import Ledger, resumable_groups
from gansweep import extend
from gansweep.service import pruner  # noqa: F401 (registers the schedulers)
from gansweep.service.searcher import LedgerSearcher
from gansweep.service.storage import (
    local_optuna_storage_url, optuna_storage_url, storage_filesystem, strip_scheme, tune_storage_path,
)
from gansweep.config import plugins
from gansweep.config.schema import StudyConfig
from gansweep.config.space import scale_fields
from gansweep.service.tracking import Tracker, resolve_tracking_uri
from gansweep.service.trainable import PruneBoard, run_unit

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


def unit_name(trial: Trial) -> str:
    """A unit's Tune folder: its first member's number and Tune's id (Tune's default names
    folders after the whole config: far past 255 bytes for a study with many fields)."""
    first = int(trial.config["numbers"][0]) if trial.config.get("numbers") else 0
    return f"unit_{first:04d}_{trial.trial_id}"


# What the CLI hands run_study to follow a sweep: (output, tracker, status) -> anything.
AfterSweep = Callable[[Path, Tracker, str], Any]


@dataclass(frozen=True)
class HandedIn:
    """What the composition root (cli.py) hands the sweep: the service knows no reporting."""

    after: AfterSweep | None = None  # the report, once results.csv is written
    figure: MemberFigure | None = None  # each member's losses figure, logged with its run


def run_study(
    study: StudyConfig,
    *,
    study_path: Path,
    address: str | None = None,
    tracking_uri: str | None = None,
    output: Path | None = None,
    allow_changed: bool = False,
    ray_start: RayStart | None = None,
    after: AfterSweep | None = None,
    figure: MemberFigure | None = None,
) -> int:
    """`ray_start`: Ray already starting in the background (the CLI begins it before it
    imports this module); by default it begins here, beside the Optuna and MLflow set-up.
    `after(output, tracker, status)`: what follows the sweep once results.csv is written and
    before the parent run ends; `figure(history, trial, path)`: each member's figure. The CLI
    hands in the report's; the sweep knows no reporting."""
    ray_start = ray_start or RayStart.begin(address)
    try:
        code = run_study_on_ray(study, study_path, tracking_uri, output, ray_start, HandedIn(after, figure),
                                allow_changed)
    except BaseException:
        ray_start.stop()  # at once, even while Ray is still starting
        raise
    ray_start.stop(wait_for_start=True)
    return code


def run_study_on_ray(
    study: StudyConfig, study_path: Path, tracking_uri: str | None, output: Path | None,
    ray_start: RayStart, handed: HandedIn, allow_changed: bool = False,
) -> int:
    output = (output or study.output_dir).resolve()
    units_per_fit()  # a bad GANSWEEP_UNITS_PER_FIT is exit 2 before anything is written
    floor = min_free_bytes()
    short = short_of_space([output], floor)  # before anything is created or tracked
    if short is not None:
        raise disk_full_error(short, floor)
    check_sweep_can_write(output, resolve_tracking_uri(tracking_uri or study.tracking.tracking_uri))
    storage_url = optuna_storage_url(study.storage, output)
    optuna_study = OptunaStudy(study, storage_url, allow_changed=allow_changed)
    if storage_url != local_optuna_storage_url(output):
        _ = optuna_study.study  # a database: reached, or named (exit 2) before anything is written
    created = next((p for p in (*reversed(output.parents), output) if not p.exists()), None)
    prepare_output(output)
    # Drivers with other output folders reach a shared storage: a lease there, too.
    shared = lease_in(optuna_study) if storage_url != local_optuna_storage_url(output) else None
    try:
        with one_driver(study.name, output, shared):
            return run_as_the_driver(study, study_path, tracking_uri, output, ray_start, optuna_study, floor, handed)
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
    optuna_study: OptunaStudy, floor: int, handed: HandedIn,
) -> int:
    """The sweep, once this process holds the study (driverlock.one_driver)."""
    check_resumable(optuna_study, output)  # before anything is tracked
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
    tracker.log_plugins([(Path(f.path), f.sha256) for f in plugins.files(study.plugins)])
    total = requested_trials(study)
    to_run = total - optuna_study.finished_count()
    progress = SweepProgress(total=total, done=optuna_study.finished_count(), metric=study.objective.metric,
                             direction=study.objective.direction, groups=tuple(scale_fields(study)))
    status = "FINISHED"
    try:
        if to_run > 0:
            ray_start.wait()
            ray_start.take_sigterm()  # Ray is up: its SIGTERM handler replaced by Ctrl-C's
            run_tune(study, optuna_study, tracker, progress, to_run, output, floor, handed.figure)
    except (KeyboardInterrupt, DiskFull):
        status = "KILLED"
        raise
    finally:
        ray_start.stop_in_background()  # while the results and the report are written
        close_interrupted(optuna_study, tracker)
        layout = p.OutputLayout(output)
        results = write_results(optuna_study, layout.results_csv)
        progress.close(results)
        if handed.after is not None:
            handed.after(output, tracker, status)
        tracker.finish_study(status if not optuna_study.unfinished() else "KILLED", [layout.results_csv])
        tracker.flush_with_retries()
        print(f"MLflow runs: {tracker.ui_link(study.objective.metric, study.objective.direction == 'minimize')}")
    unfinished = len(optuna_study.unfinished())
    if unfinished:
        print(f"gansweep: interrupted with {unfinished} trial(s) unfinished; run the same command to resume")
        return 1
    return 0


def checkpoint_holds_state(uri: str) -> bool:
    """Whether the checkpoint folder at `uri` has its state.pt; True when it cannot be told
    (a store that does not answer now: the worker's own read decides then)."""
    try:
        filesystem = storage_filesystem(uri)
        if filesystem is None:
            filesystem, path = pyarrow.fs.FileSystem.from_uri(uri if "://" in uri else str(Path(uri).resolve()))
        else:
            path = strip_scheme(uri)
        return filesystem.get_file_info(f"{path}/{p.STATE_FILE}").type == pyarrow.fs.FileType.File
    except (OSError, ValueError):
        return True


def check_resumable(study: OptunaStudy, output: Path) -> None:
    """Each unfinished unit's recorded checkpoint must still be there (its state.pt, local or
    on S3), or the resume would retry it into a FAIL: refuse plainly instead, naming what to do.
    A state.pt that is there but damaged is refused with a warning (checkpoint_check.py)."""
    for group in resumable_groups(study):
        uri = study.frozen(group[0]).user_attrs.get(p.ATTR_CHECKPOINT)
        if not uri:
            continue  # interrupted before its first checkpoint: starts over
        if not checkpoint_holds_state(uri):
            trials = ", ".join(str(n) for n in group)
            raise ConfigError(
                f"cannot resume {study.config.name!r}: trial(s) {trials} stopped unfinished, and their "
                f"checkpoint {uri} has no {p.STATE_FILE} (moved or deleted?). Restore it there, or start "
                f"the study over in a new output folder (--output), or delete {output} first"
            )
        problem = checkpoint_problem(uri)
        if problem is not None:  # cut short or overwritten: the last intact one, or from scratch
            refuse_bad_checkpoint(study, group, uri, problem)


def close_interrupted(study: OptunaStudy, tracker: Tracker) -> None:
    """Trials still RUNNING in Optuna after Tune stopped (Ctrl-C) are resumed by the next
    run; their MLflow runs (and their replicates') end KILLED meanwhile, never left RUNNING."""
    unfinished = {frozen.number for frozen in study.unfinished()}
    for key in sorted(tracker.started - tracker.closed):
        if key.number in unfinished:
            tracker.finish_child(key, "INTERRUPTED", {})


def tune_loggers() -> list[tune.Callback]:
    """Tune's per-trial result.json and progress.csv (its experiment analysis reads them), and
    not its TensorBoard logger: MLflow holds every metric, and tensorboardX imports torch,
    2 s of the driver's start-up that nothing else on the driver needs (gansweep.service.trainable)."""
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # read when Tuner.fit starts
    return [CSVLoggerCallback(), JsonLoggerCallback()]


# Units per Tuner.fit. Tune keeps every trial it ran (its record, results, checkpoint
# bookkeeping) until fit returns, so one fit of a whole study grows the driver with the study;
# a study of more units runs as successive fits, each a fresh Tune experiment over the same
# ledger (the Optuna study), so that the driver's memory is bounded by one fit's. Measured in
# the README's "What gansweep survives" table (1,000 trials).
UNITS_PER_FIT_VARIABLE = "GANSWEEP_UNITS_PER_FIT"
UNITS_PER_FIT = 100


def units_per_fit() -> int:
    value = os.environ.get(UNITS_PER_FIT_VARIABLE, "")
    if not value:
        return UNITS_PER_FIT
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{UNITS_PER_FIT_VARIABLE}={value!r}: a whole number of units per Tune fit, 1 or more")
    return int(value)


def run_tune(
    study: StudyConfig, optuna_study: OptunaStudy, tracker: Tracker, progress: SweepProgress,
    to_run: int, output: Path, min_free: int, figure: MemberFigure | None,
) -> None:
    """The units that train `to_run` more trials, in Tune fits of at most units_per_fit()
    units; a fit that leaves a trial unfinished (interrupted) ends the sweep there, as it
    would end a single fit. `min_free`: the bytes the sweep keeps free on the folders it
    writes (DiskSpaceStopper)."""
    budget = study.budget
    per_fit = units_per_fit()
    storage_path = tune_storage_path(output)
    local_tune = [] if "://" in storage_path else [Path(storage_path)]  # S3: not our disk
    disk_guard = DiskSpaceStopper([output, *local_tune], min_free)
    ledger = Ledger(optuna_study)
    board, board_name = None, None
    if budget.pack_size > 1 or any(len(group) > 1 for group in ledger.resumable):
        board_name = f"gansweep-prune-board-{uuid.uuid4().hex}"
        board = PruneBoard.options(name=board_name).remote()  # one for every fit
    filesystem = storage_filesystem(storage_path)
    trainable = tune.with_resources(run_unit, {"cpu": budget.cpus_per_trial, "gpu": budget.gpus_per_trial})
    experiment = f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}"

    def fit(ledger: Ledger, units: int, name: str) -> None:
        """One Tune experiment of `units` units handed out by the ledger."""
        tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=LedgerSearcher(ledger, threads=max(1, int(budget.cpus_per_trial)), board=board_name,
                                          plugins=[p.as_dict() for p in plugins.files(study.plugins)]),
                scheduler=extend.SCHEDULERS.get(study.scheduler.name).code(ledger, board),
                num_samples=units,
                max_concurrent_trials=budget.max_concurrent,
                reuse_actors=True,
                trial_name_creator=unit_name,
                trial_dirname_creator=unit_name,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=strip_scheme(storage_path),
                storage_filesystem=filesystem,
                failure_config=tune.FailureConfig(max_failures=budget.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                stop=disk_guard,
                callbacks=[TrackingCallback(ledger, tracker, list(study.search), progress, figure, filesystem),
                           *tune_loggers()],
                verbose=0,
            ),
        ).fit()

    with progress.live(), withheld_from_ray(RAY_PROPAGATED_SECRETS):
        for index in itertools.count():
            units = ledger.plan(to_run)
            fit(ledger, min(units, per_fit), experiment if index == 0 else f"{experiment}-{index + 1}")
            gc.collect()  # the fit's trial records, before the next fit makes its own
            to_run = requested_trials(study) - optuna_study.finished_count()
            if units <= per_fit or to_run <= 0 or disk_guard.short is not None or optuna_study.unfinished():
                break
            ledger = Ledger(optuna_study)
    if disk_guard.short is not None:
        raise disk_full_error(disk_guard.short, min_free, len(optuna_study.unfinished()))
    shutil.rmtree(p.OutputLayout(output).tune_tmp, ignore_errors=True)
