"""MLflow: one parent run per study, one child run per trial, written by the driver alone.
With seed replicates (budget.replicates > 1) three levels: the study's run, a run per
configuration (the Optuna trial: its replicates' mean per epoch) and under it a run per
replicate (its own seed's epochs, samples and generator). Child runs are named by RunKey:
a configuration's by its trial number, a replicate's by (number, r).

Workers never talk to MLflow: the driver receives every result through Ray Tune and logs it
here. One writer means no lock contention on a SQLite store, credentials only on the driver,
and one place that buffers while the tracking server is away.

Every call is queued in an Outbox (outbox.py), in order, and delivered by one thread of its
own, so the driver's event loop (and with it training) never waits for MLflow; this module is
the MLflow vocabulary: which runs, params, metrics, tags and artifacts a study has.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gansweep.errors import tracking_unusable
from gansweep.service.mlflow_data import data_params, dataset_input
from gansweep.service.outbox import Outbox
from gansweep.service.protocol import OutputLayout
from gansweep.service.replicates import RunKey

import mlflow
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric, Param, RunTag
from mlflow.models import Model
from mlflow.models.model import MLMODEL_FILE_NAME
from mlflow.tracking import MlflowClient

TAG_ROLE = "gansweep.role"
TAG_STUDY = "gansweep.study"
TAG_OUTPUT = "gansweep.output"
TAG_TRIAL = "gansweep.trial"
TAG_STATE = "gansweep.state"
TAG_PRUNED_AT = "gansweep.pruned_at"
TAG_REASON = "gansweep.failure_reason"
TAG_INTERRUPTED_BY = "gansweep.interrupted_by"  # why an attempt stopped unfinished (it resumes)
TAG_NODES = "gansweep.nodes"  # the Ray node of each attempt, in order, comma-separated
TAG_FEATURES = "gansweep.features"  # the feature space of the quality metrics (domain:<set>:<sha8>, ...)
# "true" when the last evaluation showed a blind-discriminator equilibrium (config.theory)
TAG_BLIND = "gansweep.blind_discriminator"
TAG_EQUILIBRIUM = "gansweep.equilibrium"  # the last evaluation's verdict: settled, blind, unsettled, n/a, no verdict
TAG_REPLICATE = "gansweep.replicate"  # a replicate run's index r (its seed is the param `seed`)
TAG_PLUGIN = "gansweep.plugin"  # + ".<file name>": the sha256 of a plugin file the study loaded
TAG_STUDY_RUN = "gansweep.study_run"  # a replicate run's study run (its parent is its configuration's)
TAG_BEST_EPOCH = "gansweep.best_epoch"  # objective.select: best: the epoch of the model logged
MODEL_EPOCH = "epoch"  # a logged model's param: the epoch its generator is from
MODEL_TYPE = "gan-generator"  # a logged model's model_type
MODEL_TAGS = (TAG_STUDY, TAG_TRIAL, TAG_REPLICATE)  # the run's tags its logged models carry too
PARENT_TAG = "mlflow.parentRunId"
# The experiment's kind as MLflow 3 records it (ExperimentKind.CUSTOM_MODEL_DEVELOPMENT in
# its UI bundle, shown as "Machine learning"): without it MLflow guesses from the runs' traces,
# and UIs that open an experiment by its kind open this one on the runs table.
EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = {EXPERIMENT_KIND: "custom_model_development"}
# MLflow 3.17's UI takes the view from its GenAI / Model training switch (remembered in the
# browser, GenAI until switched) rather than from the tag; this query opens model training.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value


# MLflow's settings gansweep chooses, unless the environment sets them: fail fast and let the
# Tracker's queue retry, instead of MLflow's own minutes-long backoff blocking the driver's
# event loop; and no progress bars for the study files and pictures the report downloads.
# MLflow reads them at each request, so they are set where a client is made (mlflow_defaults).
MLFLOW_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def mlflow_defaults() -> None:
    """Set MLFLOW_DEFAULTS in os.environ where the environment does not: called by the Tracker
    and by the report before they make a client (never at import)."""
    for name, value in MLFLOW_DEFAULTS.items():
        os.environ.setdefault(name, value)


def resolve_tracking_uri(configured: str | None = None) -> str:
    """`configured` (--tracking-uri, the study's tracking.tracking_uri), else MLFLOW_TRACKING_URI,
    else MLflow's own default: sqlite:///mlflow.db in the working directory."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()


def shown_value(value: Any) -> str:
    """A value as a run name shows it: floats to 4 significant digits (0.3, 1.245e-07)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str) and os.sep in value:  # a data file's path: its name says enough
        return Path(value).name
    return str(value)


def run_name(number: int, values: dict[str, Any], search_names: list[str]) -> str:
    """A trial's readable MLflow run name, e.g. `003 alpha=0.3 loss=non_saturating`: its
    number and the swept values (the report uses it as a label when MLflow is not there)."""
    shown = " ".join(f"{name}={shown_value(values[name])}" for name in search_names if values.get(name) is not None)
    return f"{number:03d} {shown}".strip()


def param_text(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return text[:MAX_PARAM_LENGTH]


@dataclass
class Tracker:
    tracking_uri: str
    experiment: str
    study_name: str
    output: Path
    client: MlflowClient = field(init=False)
    experiment_id: str = field(init=False)
    parent_id: str = field(init=False)
    last_step: dict[RunKey, int] = field(default_factory=dict, init=False)  # run -> epoch logged
    run_ids: dict[RunKey, str] = field(default_factory=dict, init=False)  # run -> MLflow run id
    closed: set[RunKey] = field(default_factory=set, init=False)  # runs that were ended
    started: set[RunKey] = field(default_factory=set, init=False)  # runs that were asked for
    outbox: Outbox = field(init=False)

    def __post_init__(self) -> None:
        self.outbox = Outbox(OutputLayout(self.output).undelivered, self.tracking_uri)
        mlflow_defaults()
        try:
            self.client = MlflowClient(self.tracking_uri)  # a SQLite store is created here
            found = self.client.get_experiment_by_name(self.experiment)
            self.experiment_id = (
                found.experiment_id if found
                else self.client.create_experiment(self.experiment, tags=MODEL_TRAINING)
            )
            if found and EXPERIMENT_KIND not in found.tags:  # made before gansweep tagged it
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING[EXPERIMENT_KIND])
            self.parent_id = self._find_or_create_parent()
        except Exception as err:  # any failure here: we have not started a single trial yet
            raise tracking_unusable(self.tracking_uri, err) from None

    def ui_link(self, metric: str | None = None, ascending: bool = False) -> str:
        """Where the experiment's runs table is, on the tracking server or on `mlflow ui`
        started on a local store; sorted by `metric` (the objective), which also lists the
        trials flat instead of folded under the study's run."""
        page = f"#/experiments/{self.experiment_id}/runs?{MODEL_TRAINING_VIEW}"
        if metric:
            page += f"&orderByKey={quote(f'metrics.`{metric}`')}&orderByAsc={str(ascending).lower()}"
        if self.tracking_uri.startswith(("http://", "https://")):
            return f"{self.tracking_uri.rstrip('/')}/{page}"
        return f"mlflow ui --backend-store-uri {self.tracking_uri}, then {LOCAL_UI}/{page}"

    # -- delivery (outbox.py) ----------------------------------------------------------------
    def call_later(self, what: str, fn: Callable[[], Any]) -> None:
        """Queue fn for the delivery thread and return at once; calls run in queue order."""
        self.outbox.call_later(what, fn)

    def flush(self) -> bool:
        return self.outbox.flush()

    def flush_with_retries(self, seconds: float = 60.0) -> None:
        self.outbox.flush_with_retries(seconds)

    # -- parent ---------------------------------------------------------------------------
    def _find_or_create_parent(self) -> str:
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.`{TAG_ROLE}` = 'study' and tags.`{TAG_STUDY}` = '{self.study_name}' "
                f"and tags.`{TAG_OUTPUT}` = '{self.output.resolve()}'"
            ),
            max_results=1,
        )
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(
            self.experiment_id,
            run_name=self.study_name,
            tags={TAG_ROLE: "study", TAG_STUDY: self.study_name, TAG_OUTPUT: str(self.output.resolve())},
        )
        return run.info.run_id

    def log_study(self, params: dict[str, Any], study_file: Path) -> None:
        existing = self.client.get_run(self.parent_id).data.params
        fresh = [Param(k, param_text(v)) for k, v in params.items() if k not in existing]
        if fresh:
            self.call_later("log_batch parent params", lambda: self.client.log_batch(self.parent_id, params=fresh))
        self.call_later("log study file", lambda: self.client.log_artifact(self.parent_id, str(study_file), "study"))

    def log_plugins(self, files: list[tuple[Path, str]]) -> None:
        """The study's plugin files (path, sha256) as artifacts under plugins/, each hash as
        the tag gansweep.plugin.<file name> (a tag, not a param: an edited plugin's new hash
        replaces the old one on a resume)."""
        for path, sha256 in files:
            self.call_later(f"log plugin {path.name}",
                            lambda p=path: self.client.log_artifact(self.parent_id, str(p), "plugins"))
            self.call_later(f"tag plugin {path.name}",
                            lambda p=path, h=sha256: self.client.set_tag(self.parent_id, f"{TAG_PLUGIN}.{p.name}", h))

    def finish_study(self, status: str, artifacts: list[Path]) -> None:
        for path in artifacts:
            self.call_later(f"log {path.name}", lambda p=path: self.client.log_artifact(self.parent_id, str(p)))
        self.call_later("end parent", lambda: self.client.set_terminated(self.parent_id, status))

    # -- children -------------------------------------------------------------------------
    # Child operations are keyed by trial number and resolve the run id when they run, so
    # that even a run's creation can wait in the queue while the server is away.
    def start_child(self, number: RunKey, run_name: str, params: dict[str, Any]) -> None:
        """A configuration's run, or a replicate's after its configuration's."""
        self.started.add(number)
        self.call_later(f"start trial {number}", lambda: self._open_child(number, run_name, params))

    def _run_tags(self, key: RunKey) -> dict[str, str]:
        if key.replicate is None:
            return {PARENT_TAG: self.parent_id, TAG_TRIAL: str(key.number)}
        return {PARENT_TAG: self.run_ids[RunKey(key.number)], TAG_TRIAL: str(key.number),
                TAG_REPLICATE: str(key.replicate), TAG_STUDY_RUN: self.parent_id}

    def _open_child(self, number: RunKey, run_name: str, params: dict[str, Any]) -> None:
        """The trial's run: found again when a trial resumes, created otherwise."""
        tags = self._run_tags(number)
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=" and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items() if k != TAG_STUDY_RUN),
            max_results=1,
        )
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, TAG_STATE, "RUNNING")
            history = self.client.get_metric_history(run_id, "d_loss")
            self.last_step[number] = max((m.step for m in history), default=0)
            self.run_ids[number] = run_id
            self.closed.discard(number)
            return
        run = self.client.create_run(
            self.experiment_id,
            run_name=run_name,
            tags={**tags, TAG_STUDY: self.study_name, TAG_STATE: "RUNNING"},
        )
        batch = [Param(k, param_text(v)) for k, v in {**params, **data_params(params)}.items()]
        for start in range(0, len(batch), 100):  # MLflow takes 100 params per batch
            self.client.log_batch(run.info.run_id, params=batch[start : start + 100])
        data = dataset_input(params)
        if data is not None:
            self.client.log_inputs(run.info.run_id, datasets=[data])
        self.last_step[number] = 0
        self.run_ids[number] = run.info.run_id

    def log_epoch(self, number: RunKey, metrics: dict[str, float], epoch: int) -> None:
        """Metrics with step = epoch; an epoch already logged (a resumed trial) is skipped."""
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items()]

        def log() -> None:
            if epoch <= self.last_step[number]:
                return
            self.client.log_batch(self.run_ids[number], metrics=batch)
            self.last_step[number] = epoch

        self.call_later(f"trial {number} epoch {epoch} metrics", log)

    def set_child_tags(self, number: RunKey, tags: dict[str, str]) -> None:
        batch = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        self.call_later(f"trial {number} tags", lambda: self.client.log_batch(self.run_ids[number], tags=batch))

    def log_artifacts(self, number: RunKey, folder: Path, artifact_path: str | None = None) -> None:
        """Log a folder's files; the folder must stay until the queue has delivered them."""
        self.call_later(
            f"trial {number} artifacts {artifact_path}",
            lambda: self.client.log_artifacts(self.run_ids[number], str(folder), artifact_path),
        )

    def log_model(self, number: RunKey, folder: Path, name: str, epoch: int) -> None:
        """Log a model folder (written by mlflow.pytorch.save_model on a worker) as the run's
        MLflow logged model `name` from `epoch`; the folder must stay until it is delivered."""
        self.call_later(
            f"trial {number} model {name} epoch {epoch}",
            lambda: log_saved_model(self.client, self.run_ids[number], folder, name, epoch),
        )

    def log_from_history(
        self, number: RunKey, names: tuple[str, ...], draw: Callable[[dict[str, list[tuple[int, float]]]], Path | None],
        artifact_path: str,
    ) -> None:
        """Queue: read the run's metric history back (so after every queued epoch has been
        delivered), let `draw` write a folder from it, and log that folder."""
        def log() -> None:
            run_id = self.run_ids[number]
            history = {
                name: sorted((m.step, m.value) for m in self.client.get_metric_history(run_id, name))
                for name in names
            }
            folder = draw(history)
            if folder is not None:
                self.client.log_artifacts(run_id, str(folder), artifact_path)

        self.call_later(f"trial {number} {artifact_path} from history", log)

    def finish_child(self, number: RunKey, state: str, tags: dict[str, str]) -> None:
        """state: COMPLETE, PRUNED, FAIL or INTERRUPTED -> MLflow FINISHED, KILLED, FAILED, KILLED."""
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}.get(state, "KILLED")
        all_tags = [RunTag(TAG_STATE, state)] + [RunTag(k, str(v)[:5000]) for k, v in tags.items()]

        def finish() -> None:
            self.client.log_batch(self.run_ids[number], tags=all_tags)
            self.client.set_terminated(self.run_ids[number], status)

        self.closed.add(number)
        self.call_later(f"trial {number} end {state}", finish)

    def open_children(self) -> dict[RunKey, str]:
        """RunKey -> run id of this study's child runs (configurations', replicates') still
        marked RUNNING."""
        open_runs: dict[RunKey, str] = {}
        for tag in (PARENT_TAG, TAG_STUDY_RUN):
            runs = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{tag}` = '{self.parent_id}' and attributes.status = 'RUNNING'",
                max_results=10_000,
            )
            for run in runs:
                number, replicate = int(run.data.tags[TAG_TRIAL]), run.data.tags.get(TAG_REPLICATE)
                open_runs[RunKey(number, None if replicate is None else int(replicate))] = run.info.run_id
        return open_runs


def log_saved_model(client: MlflowClient, run_id: str, folder: Path, name: str, epoch: int) -> str:
    """What mlflow.pytorch.log_model(name=..., step=epoch) does after its save_model, done
    through the client for a folder saved elsewhere (a worker; the driver imports no torch and
    has no active run): a logged model `name` with source run `run_id`, the run's params and
    `epoch` as params, the run's metrics at step `epoch` as its metrics, a run output at step
    `epoch`, the folder as its artifacts, status READY. models:/<model id> and
    runs:/<run id>/<name> load it. Safe to call again after a failure midway (the outbox
    retries): a READY model of that epoch is kept, one left PENDING is completed, and the run's
    models of that name from other epochs (an earlier attempt's best) are deleted."""
    run = client.get_run(run_id)
    experiment_id = run.info.experiment_id
    found = list(client.search_logged_models(
        [experiment_id], filter_string=f"name = '{name}' AND source_run_id = '{run_id}'", max_results=100))
    model = next((m for m in found if m.params.get(MODEL_EPOCH) == str(epoch)), None)
    if model is None:
        model = client.create_logged_model(
            experiment_id, name=name, source_run_id=run_id, model_type=MODEL_TYPE,
            params={**run.data.params, MODEL_EPOCH: str(epoch)},
            tags={TAG_BEST_EPOCH: str(epoch), **{k: v for k, v in run.data.tags.items() if k in MODEL_TAGS}},
        )
    if model.status != LoggedModelStatus.READY:
        if model.model_id not in {o.model_id for o in (run.outputs.model_outputs if run.outputs else [])}:
            client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=epoch)])
        saved = Model.load(str(folder))  # the model file names its logged model, as log_model's does
        saved.model_id = saved.model_uuid = model.model_id
        saved.run_id, saved.artifact_path = run_id, model.artifact_location
        saved.save(str(folder / MLMODEL_FILE_NAME))
        client.log_model_artifacts(model.model_id, str(folder))
        metrics = [
            Metric(m.key, m.value, m.timestamp, m.step, model_id=model.model_id, run_id=run_id)
            for key in run.data.metrics for m in client.get_metric_history(run_id, key) if m.step == epoch
        ]
        for start in range(0, len(metrics), 1000):  # MLflow takes 1000 metrics per batch
            client.log_batch(run_id, metrics=metrics[start : start + 1000])
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    for other in found:
        if other.model_id != model.model_id:
            client.delete_logged_model(other.model_id)
    return model.model_id
