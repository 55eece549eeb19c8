"""Tune's callback over the ledger: the driver's MLflow writer. Each Tune event is handed to
the ledger, and the actions it returns are carried out here: epochs logged, nodes tagged,
samples and generators copied out of checkpoints (local or S3), runs ended. With seed
replicates a configuration's run holds its replicates' means, and each replicate's run
(under it) its own samples, generator and figure (artifacts/<number>/replicate_<r>/)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.fs
from ray import tune
from ray.tune.experiment import Trial

from gansweep.service.progress import SweepProgress
from gansweep.service.search import OptunaStudy
from gansweep.service import protocol as p
from gansweep.service.ledger import Action, Close, FetchSamples, Ledger, LogEpoch, TagNodes, closing_of, replicate_closing
from gansweep.service.replicates import RunKey
from gansweep.service.storage import is_storage_outage, storage_filesystem, strip_scheme
from gansweep.config.schema import TrialConfig
from gansweep.service.tracking import (
    TAG_BEST_EPOCH, TAG_BLIND, TAG_EQUILIBRIUM, TAG_FEATURES, TAG_INTERRUPTED_BY, TAG_NODES, TAG_PRUNED_AT, TAG_REASON, Tracker,
    run_name,
)

# Draws a member's figure from its MLflow history (metric -> [(epoch, value)]) into a file;
# handed in by the CLI (the reporting's losses-vs-theory plot): the service draws nothing.
MemberFigure = Callable[[dict[str, list[tuple[int, float]]], TrialConfig, Path, str | None], Any]
FIGURE_METRICS = ("d_loss", "g_loss", "d_loss_star", "g_loss_star")


def quality_tags(epoch: LogEpoch) -> dict[str, str]:
    """The run's tags of an evaluation: its quality metrics' feature space, its equilibrium
    verdict and whether that was a blind discriminator (the last evaluation's wins)."""
    tags = {}
    if p.FEATURES in epoch.texts:
        tags[TAG_FEATURES] = epoch.texts[p.FEATURES]
    if p.EQUILIBRIUM in epoch.texts:
        tags[TAG_EQUILIBRIUM] = epoch.texts[p.EQUILIBRIUM]
    if p.BLIND_DISCRIMINATOR in epoch.metrics:
        tags[TAG_BLIND] = "true" if epoch.metrics[p.BLIND_DISCRIMINATOR] == 1.0 else "false"
    return tags


def close_tags(close: Close) -> dict[str, str]:
    tags = {}
    if close.pruned_at is not None:
        tags[TAG_PRUNED_AT] = str(close.pruned_at)
    if close.reason:  # an unfinished run's reason is no failure: it resumes
        tags[TAG_INTERRUPTED_BY if close.state == "INTERRUPTED" else TAG_REASON] = close.reason
    return tags


# While the S3 store is away the driver's copies out of checkpoints wait for it this long,
# with a back-off (1 s, doubling), then go on without the file; after a give-up the next copy
# tries once until the store has answered again.
FETCH_RETRY_S = 30.0


def error_text(trial: Trial) -> str:
    """The worker's traceback as Tune wrote it on the driver's disk (not read from the store,
    which may be the thing that is away)."""
    try:
        return Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:
        return ""


def reconcile(study: OptunaStudy, tracker: Tracker) -> None:
    """A driver killed between telling Optuna and ending the MLflow run leaves the run
    RUNNING for a finished trial: end it now, as Optuna (the source of truth) says."""
    replicates = study.config.budget.replicates
    for key, run_id in tracker.open_children().items():
        frozen = study.frozen(key.number)
        if frozen.state.is_finished():
            tracker.run_ids[key] = run_id
            if key.replicate is None:
                close = closing_of(frozen, replicates=replicates)
            else:
                close = replicate_closing(frozen, key.replicate, replicates, checkpoint=False)
            tracker.finish_child(key, close.state, close_tags(close))


def artifacts_of(layout: p.OutputLayout, key: RunKey) -> Path:
    """artifacts/<number>/ of a configuration, artifacts/<number>/replicate_<r>/ of a replicate."""
    if key.replicate is None:
        return layout.artifacts(key.number)
    return layout.artifacts(key.number) / f"replicate_{key.replicate}"


def replicate_run_name(key: RunKey, values: dict[str, Any], search_names: list[str]) -> str:
    """`003 alpha=0.3`, and a replicate's `003 alpha=0.3 replicate=1 seed=1`."""
    name = run_name(key.number, values, search_names)
    return name if key.replicate is None else f"{name} replicate={key.replicate} seed={values['seed']}"


def checkpoint_uri(checkpoint: tune.Checkpoint) -> str:
    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        return checkpoint.path
    return f"{checkpoint.filesystem.type_name}://{checkpoint.path}"


def read_histories(uri: str, members: list[int], s3: pyarrow.fs.FileSystem | None = None) -> dict[int, list[p.MemberResult]]:
    """Each member's history.json in the checkpoint at `uri` (local, or S3 through `s3`: the
    sweep's, built before the driver withheld its AWS variables); a member without one (a
    checkpoint written before it existed) or a store that does not answer: none."""
    if uri.startswith("s3://"):
        filesystem = s3 or storage_filesystem(uri)
    else:
        filesystem = pyarrow.fs.LocalFileSystem()
    folder = strip_scheme(uri)
    histories: dict[int, list[p.MemberResult]] = {}
    for member in members:
        try:
            with filesystem.open_input_stream(f"{folder}/{p.member_path(member, p.HISTORY_FILE)}") as stream:
                histories[member] = p.read_history(stream.read().decode())
        except (OSError, ValueError):
            continue
    return histories


def copy_out(checkpoint: tune.Checkpoint, source: str, target: Path, name: str) -> bool:
    """A checkpoint's file or folder into `target` (False: the checkpoint has none). A file
    is written beside its final name and renamed: a copy cut short is never read back."""
    info = checkpoint.filesystem.get_file_info(source)
    if info.type == pyarrow.fs.FileType.NotFound:
        return False
    target.mkdir(parents=True, exist_ok=True)
    if info.type == pyarrow.fs.FileType.File:
        partial = target / f".{name}.partial"
        pyarrow.fs.copy_files(source, str(partial), source_filesystem=checkpoint.filesystem)
        partial.replace(target / name)
    else:
        pyarrow.fs.copy_files(source, str(target), source_filesystem=checkpoint.filesystem)
    return True


class TrackingCallback(tune.Callback):
    def __init__(
        self, ledger: Ledger, tracker: Tracker, search_names: list[str], progress: SweepProgress,
        figure: MemberFigure | None = None, s3: pyarrow.fs.FileSystem | None = None,
    ) -> None:
        self.s3 = s3  # the sweep's S3 filesystem, when its checkpoints are there
        self.store_away = False  # the last copy out of a checkpoint gave up: the next tries once
        self.ledger = ledger
        self.tracker = tracker
        self.search_names = search_names
        self.progress = progress
        self.figure = figure
        self.layout = p.OutputLayout(tracker.output)

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its config for Tuner.restore, which gansweep does not use (resumes go
        # through the Optuna study); the live MLflow client and console cannot be pickled.
        return {}

    def on_trial_start(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        for key, values in self.ledger.runs_to_start(trial.trial_id):
            self.tracker.start_child(key, replicate_run_name(key, values, self.search_names), values)
            if not key.is_replicate:
                self.progress.started(key.number, values)
        resume = self.ledger.resumes.get(trial.trial_id)
        if resume is not None:
            self.carry_out(trial, self.ledger.replay(trial.trial_id, read_histories(resume, self.ledger.units[trial.trial_id], self.s3)))

    def on_trial_result(self, iteration: int, trials: list, trial: Trial, result: dict, **info: Any) -> None:
        follows = bool(result.get("should_checkpoint"))  # Tune's flag: this epoch's checkpoint follows
        self.carry_out(trial, self.ledger.record(trial.trial_id, result, follows))

    def on_checkpoint(self, iteration: int, trials: list, trial: Trial, checkpoint: tune.Checkpoint, **info: Any) -> None:
        self.carry_out(trial, self.ledger.checkpointed(trial.trial_id, checkpoint_uri(checkpoint)), checkpoint)

    def on_trial_complete(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self.carry_out(trial, self.ledger.closes(trial.trial_id))

    def on_trial_error(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        if is_storage_outage(error_text(trial)):
            reason = (f"the checkpoint store did not answer after {trial.num_failures} attempt(s) "
                      f"({trial.error_file}); the next run resumes from the last checkpoint")
            self.carry_out(trial, self.ledger.errored(trial.trial_id, reason, interrupted=True))
            return
        reason = f"worker error after {trial.num_failures} attempt(s): {trial.error_file or 'see Ray logs'}"
        self.carry_out(trial, self.ledger.errored(trial.trial_id, reason))

    def carry_out(self, trial: Trial, actions: list[Action], checkpoint: tune.Checkpoint | None = None) -> None:
        for action in actions:
            if isinstance(action, LogEpoch):
                self.tracker.log_epoch(action.number, action.metrics, action.epoch)
                tags = quality_tags(action)
                if tags:
                    self.tracker.set_child_tags(action.number, tags)
            elif isinstance(action, TagNodes):
                self.tracker.set_child_tags(action.number, {TAG_NODES: action.nodes})
            elif isinstance(action, FetchSamples) and checkpoint is not None:
                member = action.number.number if action.member is None else action.member
                target = artifacts_of(self.layout, action.number) / p.ARTIFACT_SAMPLES
                self.fetch(checkpoint, p.member_path(member, p.SAMPLES_DIR), target, action.number)
            elif isinstance(action, Close):
                self.close(action, checkpoint if action.checkpoint else trial.checkpoint)

    def close(self, close: Close, checkpoint: tune.Checkpoint | None) -> None:
        """A member's end as Optuna has it (told already, or still RUNNING when interrupted):
        its last checkpoint's generator and its figure logged, its MLflow run ended."""
        key = close.number
        member = key.number if close.member is None else close.member
        if checkpoint is not None and close.files:
            folder = artifacts_of(self.layout, key)
            self.fetch(checkpoint, p.member_path(member, p.GENERATOR_FILE), folder / p.ARTIFACT_CHECKPOINT, key)
            if close.best_epoch is not None:  # objective.select: best: that epoch's generator as a logged model
                model = folder / p.BEST_MODEL_DIR
                if self.fetch(checkpoint, p.member_path(member, p.BEST_MODEL_DIR), model, key, log=False):
                    self.tracker.log_model(key, model, p.BEST_MODEL_DIR, close.best_epoch)
                self.tracker.set_child_tags(key, {TAG_BEST_EPOCH: str(close.best_epoch)})
        self.log_figure(key, self.ledger.values_of_run(key), close.verdict)
        if close.verdict and not close.files:  # a configuration's run over replicates: theirs, counted
            self.tracker.set_child_tags(key, {TAG_EQUILIBRIUM: close.verdict})
        self.tracker.finish_child(key, close.state, close_tags(close))
        if not key.is_replicate:
            self.progress.finished(key.number, close.state, close.objective, close.stderr)

    def fetch(self, checkpoint: tune.Checkpoint, name: str, target: Path, number: RunKey, log: bool = True) -> bool:
        """Copy a file or folder out of a checkpoint (local or S3) and log it to the run's
        artifacts (unless not `log`); whether it was copied. A store that stays away
        (FETCH_RETRY_S) costs the run that file, never the sweep."""
        source = f"{checkpoint.path}/{name}"
        patience = 0.0 if self.store_away else FETCH_RETRY_S
        deadline, backoff = time.monotonic() + patience, 1.0
        while True:
            try:
                copied = copy_out(checkpoint, source, target, Path(name).name)
                break
            except OSError as err:
                if time.monotonic() + backoff > deadline:
                    self.store_away = True
                    print(f"gansweep: trial {number}: {name} not copied out of {checkpoint.path}: "
                          f"{str(err).splitlines()[0]}", file=sys.stderr)
                    return False
                time.sleep(backoff)
                backoff *= 2
        self.store_away = False
        if copied and log:
            self.tracker.log_artifacts(number, target, target.name)
        return copied

    def log_figure(self, number: RunKey, values: dict[str, Any], verdict: str | None = None) -> None:
        """The member's figure, drawn from the run's own history once it is delivered, with
        its last equilibrium verdict beside the equilibrium values."""
        if self.figure is None:
            return
        figure = self.figure
        folder = artifacts_of(self.layout, number) / p.ARTIFACT_PLOTS
        trial = TrialConfig.model_validate(values)

        def draw(history: dict[str, list[tuple[int, float]]]) -> Path | None:
            if not history.get("d_loss"):
                return None
            folder.mkdir(parents=True, exist_ok=True)
            figure(history, trial, folder / "losses_vs_theory.png", verdict)
            return folder

        self.tracker.log_from_history(number, FIGURE_METRICS, draw, p.ARTIFACT_PLOTS)
