"""Tune's callback over the ledger: the driver's MLflow writer. Each Tune event is handed to
the ledger, and the actions it returns are carried out here: epochs logged, nodes tagged,
samples and generators copied out of checkpoints (local or S3), runs ended."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.fs
from ray import tune
from ray.tune.experiment import Trial

from gansweep.service.progress import SweepProgress
from gansweep.service.search import OptunaStudy
from gansweep.service import protocol as p
from gansweep.service.ledger import Action, Close, FetchSamples, Ledger, LogEpoch, TagNodes, closing_of
from gansweep.config.schema import TrialConfig
from gansweep.service.tracking import TAG_NODES, TAG_PRUNED_AT, TAG_REASON, Tracker, run_name

# Draws a member's figure from its MLflow history (metric -> [(epoch, value)]) into a file;
# handed in by the CLI (the reporting's losses-vs-theory plot): the service draws nothing.
MemberFigure = Callable[[dict[str, list[tuple[int, float]]], TrialConfig, Path], Any]
FIGURE_METRICS = ("d_loss", "g_loss", "d_loss_star", "g_loss_star")


def close_tags(close: Close) -> dict[str, str]:
    tags = {}
    if close.pruned_at is not None:
        tags[TAG_PRUNED_AT] = str(close.pruned_at)
    if close.reason:
        tags[TAG_REASON] = close.reason
    return tags


def reconcile(study: OptunaStudy, tracker: Tracker) -> None:
    """A driver killed between telling Optuna and ending the MLflow run leaves the run
    RUNNING for a finished trial: end it now, as Optuna (the source of truth) says."""
    for number, run_id in tracker.open_children().items():
        frozen = study.frozen(number)
        if frozen.state.is_finished():
            tracker.run_ids[number] = run_id
            close = closing_of(frozen)
            tracker.finish_child(number, close.state, close_tags(close))


def checkpoint_uri(checkpoint: tune.Checkpoint) -> str:
    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        return checkpoint.path
    return f"{checkpoint.filesystem.type_name}://{checkpoint.path}"


class TrackingCallback(tune.Callback):
    def __init__(
        self, ledger: Ledger, tracker: Tracker, search_names: list[str], progress: SweepProgress,
        figure: MemberFigure | None = None,
    ) -> None:
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
        for number, values in self.ledger.members(trial.trial_id).items():
            self.tracker.start_child(number, run_name(number, values, self.search_names), values)
            self.progress.started(number)

    def on_trial_result(self, iteration: int, trials: list, trial: Trial, result: dict, **info: Any) -> None:
        follows = bool(result.get("should_checkpoint"))  # Tune's flag: this epoch's checkpoint follows
        self.carry_out(trial, self.ledger.record(trial.trial_id, result, follows))

    def on_checkpoint(self, iteration: int, trials: list, trial: Trial, checkpoint: tune.Checkpoint, **info: Any) -> None:
        self.carry_out(trial, self.ledger.checkpointed(trial.trial_id, checkpoint_uri(checkpoint)), checkpoint)

    def on_trial_complete(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self.carry_out(trial, self.ledger.closes(trial.trial_id))

    def on_trial_error(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        reason = f"worker error after {trial.num_failures} attempt(s): {trial.error_file or 'see Ray logs'}"
        self.carry_out(trial, self.ledger.errored(trial.trial_id, reason))

    def carry_out(self, trial: Trial, actions: list[Action], checkpoint: tune.Checkpoint | None = None) -> None:
        for action in actions:
            if isinstance(action, LogEpoch):
                self.tracker.log_epoch(action.number, action.metrics, action.epoch)
            elif isinstance(action, TagNodes):
                self.tracker.set_child_tags(action.number, {TAG_NODES: action.nodes})
            elif isinstance(action, FetchSamples) and checkpoint is not None:
                target = self.layout.artifacts(action.number) / p.ARTIFACT_SAMPLES
                self.fetch(checkpoint, p.member_path(action.number, p.SAMPLES_DIR), target, action.number)
            elif isinstance(action, Close):
                self.close(action, checkpoint if action.checkpoint else trial.checkpoint)

    def close(self, close: Close, checkpoint: tune.Checkpoint | None) -> None:
        """A member's end as Optuna has it (told already, or still RUNNING when interrupted):
        its last checkpoint's generator and its figure logged, its MLflow run ended."""
        number = close.number
        if checkpoint is not None:
            target = self.layout.artifacts(number) / p.ARTIFACT_CHECKPOINT
            self.fetch(checkpoint, p.member_path(number, p.GENERATOR_FILE), target, number)
        self.log_figure(number, self.ledger.values[number])
        self.tracker.finish_child(number, close.state, close_tags(close))
        self.progress.finished(number, close.state, close.objective)

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

    def log_figure(self, number: int, values: dict[str, Any]) -> None:
        """The member's figure, drawn from the run's own history once it is delivered."""
        if self.figure is None:
            return
        figure = self.figure
        folder = self.layout.artifacts(number) / p.ARTIFACT_PLOTS
        trial = TrialConfig.model_validate(values)

        def draw(history: dict[str, list[tuple[int, float]]]) -> Path | None:
            if not history.get("d_loss"):
                return None
            folder.mkdir(parents=True, exist_ok=True)
            figure(history, trial, folder / "losses_vs_theory.png")
            return folder

        self.tracker.log_from_history(number, FIGURE_METRICS, draw, p.ARTIFACT_PLOTS)
