"""A finished study read back from its output folder, MLflow and the Optuna storage.

Sources, each optional but the first:
    results.csv       one row per trial (state, swept values, objective, epochs, pruned at)
    MLflow            the study's parent run (tag gansweep.output = the output folder) and its
                      child runs: per-epoch losses and objective, trial fields, run names
    Optuna storage    parameter distributions and importances, intermediate objective values
    artifacts/        sample pictures per trial and epoch (else downloaded from MLflow)
What is missing becomes a note in StudyView.notes (said on the page) instead of an error.

Words: a TrialView is one row of results.csv (an Optuna trial) with what MLflow (its child
run) and the Optuna study (its FrozenTrial) say of it; StudyView.optuna_study is the Optuna study.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from gansweep.config import plugins
from gansweep.config.load import load_study
from gansweep.config.names import QUALITY_METRICS
from gansweep.config.schema import StudyConfig, TrialConfig
from gansweep.config.space import SCALE_FIELDS
from gansweep.errors import GansweepError
from gansweep.service.protocol import (
    ARTIFACT_CHECKPOINT, ARTIFACT_SAMPLES, BEST_PREFIX, GENERATOR_FILE, REPLICATE_COLUMN, REPLICATES_STDERR_SUFFIX,
    OutputLayout,
    optuna_storage_url,
)
from gansweep.service.tracking import (
    PARENT_TAG, TAG_BLIND, TAG_FEATURES, TAG_OUTPUT, TAG_ROLE, TAG_STUDY, TAG_TRIAL, MlflowClient, run_name,
)

Points = list[tuple[int, float]]  # (epoch, value), sorted by epoch
MIN_COMPLETE_FOR_IMPORTANCE = 4


REPORT_DIR = "report"  # in the output folder, and under the parent run
@dataclass
class TrialView:
    number: int
    state: str
    row: dict[str, Any]  # its row of results.csv
    label: str
    run_id: str | None = None
    config: TrialConfig | None = None
    history: dict[str, Points] = field(default_factory=dict)
    samples: dict[int, Path] = field(default_factory=dict)  # epoch -> picture


@dataclass
class StudyView:
    output: Path
    name: str
    table: pd.DataFrame
    search: list[str]
    trials: list[TrialView]  # as results.csv orders them: best first
    metric: str
    direction: str
    tracking_uri: str
    client: MlflowClient | None = None
    experiment_id: str | None = None
    parent_run_id: str | None = None
    optuna_study: Any = None  # optuna.Study: the sweep's record of its trials
    notes: list[str] = field(default_factory=list)
    # The searched fields that change the objective's scale (config.space.SCALE_FIELDS):
    # rankings and objective figures are per value of them, never on one axis.
    groups: list[str] = field(default_factory=list)
    stderr_metric: str | None = "parzen_stderr"  # the history of the objective's standard error

    def grouped(self) -> list[tuple[str, list[TrialView]]]:
        """(label, trials best first) per value of the scale fields; one ("", all) without."""
        if not self.groups:
            return [("", self.trials)]
        parts: dict[str, list[TrialView]] = {}
        for trial in self.trials:  # results.csv ranks within each group
            parts.setdefault(" ".join(f"{g}={trial.row.get(g)}" for g in self.groups), []).append(trial)
        return list(parts.items())


# ---------------------------------------------------------------------------- finding things


def open_client(uri: str) -> MlflowClient | None:
    """A client, or None for a SQLite store that does not exist (opening would create it)."""
    if uri.startswith("sqlite:///"):  # sqlite:///relative.db or sqlite:////absolute.db
        if not Path(uri[len("sqlite:///"):].split("?")[0]).exists():
            return None
    return MlflowClient(uri)


def find_parent(client: MlflowClient, output: Path) -> Any | None:
    """The study's parent run: the one tagged with this output folder, in any experiment."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    found = client.search_runs(
        experiments, f"tags.`{TAG_ROLE}` = 'study' and tags.`{TAG_OUTPUT}` = '{output}'",
        max_results=1, order_by=["attributes.start_time DESC"],
    )
    return found[0] if found else None


def resolve_output(target: Path, client: MlflowClient | None, uri: str) -> Path:
    """OUTPUT_DIR itself, or the output folder of the MLflow experiment named so."""
    if OutputLayout(target).results_csv.is_file():
        return target.resolve()
    if target.is_dir():
        raise GansweepError(f"{target}: not a study output folder (no results.csv); run `gansweep run` first")
    if client is not None and "/" not in str(target):
        try:
            experiment = client.get_experiment_by_name(str(target))
            runs = client.search_runs([experiment.experiment_id], f"tags.`{TAG_ROLE}` = 'study'",
                                      max_results=1, order_by=["attributes.start_time DESC"]) if experiment else []
        except Exception:  # an unreachable server: the plain message below says enough
            runs = []
        folder = Path(runs[0].data.tags.get(TAG_OUTPUT, "")) if runs else None
        if folder is not None and folder.is_absolute() and OutputLayout(folder).results_csv.is_file():
            return folder
    raise GansweepError(
        f"{target}: no such study output folder (give the --output folder of `gansweep run`, "
        f"or the name of an MLflow experiment at {uri} whose output folder is on this machine)"
    )


def logged_study_config(client: MlflowClient, parent: Any, folder: Path) -> StudyConfig | None:
    """The study file logged with the parent run (overrides given with --set are not in it),
    its plugins imported first from the run's copies (tracking.log_plugins), beside it: the
    trials' losses and architectures are then names the report can read back."""
    try:
        install_logged_plugins(client, parent, folder / "study")
        names = [a.path for a in client.list_artifacts(parent.info.run_id, "study") if a.path.endswith((".yaml", ".yml"))]
        if not names:
            return None
        return load_study(client.download_artifacts(parent.info.run_id, names[0], str(folder)))
    except Exception:
        return None


def install_logged_plugins(client: MlflowClient, parent: Any, folder: Path) -> None:
    """The study's plugin files as the sweep logged them, copied into `folder` and imported."""
    logged = [a.path for a in client.list_artifacts(parent.info.run_id, "plugins") if a.path.endswith(".py")]
    folder.mkdir(parents=True, exist_ok=True)
    for name in logged:
        path = Path(client.download_artifacts(parent.info.run_id, name, str(folder.parent)))
        copy = folder / path.name
        copy.write_bytes(path.read_bytes())
        plugins.install(plugins.read(str(copy), f"MLflow run {parent.info.run_id}: {name}"))


def parse_param(text: str) -> Any:
    """An MLflow param back to its value: 'None' -> None, '[32, 32]' -> [32, 32], '0.3' -> 0.3."""
    if text == "None":
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def trial_config(params: dict[str, str] | None, output: Path, number: int) -> TrialConfig | None:
    """All fields of one trial: its MLflow params, else its generator checkpoint's copy."""
    if params:
        try:
            return TrialConfig.model_validate({k: parse_param(v) for k, v in params.items() if k in TrialConfig.model_fields})
        except ValueError:
            pass
    checkpoint = OutputLayout(output).artifacts(number) / ARTIFACT_CHECKPOINT / GENERATOR_FILE
    if checkpoint.is_file():
        import torch

        try:
            # weights_only: a generator.pt holds tensors and the trial as plain values; a
            # pickled object in one written to the artifact store is refused, never run
            return TrialConfig.model_validate(torch.load(checkpoint, map_location="cpu", weights_only=True)["trial"])
        except Exception:
            return None
    return None


def infer_metric(view: StudyView, runs: dict[int, Any], configured: str | None) -> str:
    """The objective's metric: the one whose final value is each complete trial's objective
    (a --set may have changed the study file's), else the study file's, else parzen_ll."""
    candidates: set[str] | None = None
    for trial in view.trials:
        run, value = runs.get(trial.number), trial.row.get("objective")
        if trial.state != "COMPLETE" or run is None or value is None or not math.isfinite(value):
            continue
        matching = {k for k, v in run.data.metrics.items() if math.isclose(v, value, rel_tol=1e-12, abs_tol=1e-300)}
        candidates = matching if candidates is None else candidates & matching
    for name in (configured, "parzen_ll"):
        if name and (candidates is None or name in candidates or BEST_PREFIX + name in candidates):
            return name
    found = sorted(candidates)[0] if candidates else configured or "parzen_ll"
    return found.removeprefix(BEST_PREFIX)  # objective.select: best: the metric, not its running best


def load_view(output: Path, uri: str, client: MlflowClient | None, parent_run_id: str | None, scratch: Path) -> StudyView:
    try:
        table = pd.read_csv(OutputLayout(output).results_csv)
    except pd.errors.EmptyDataError:
        raise GansweepError(f"{OutputLayout(output).results_csv} lists no trials") from None
    columns = list(table.columns)
    search = columns[columns.index("state") + 1 : columns.index("objective")]
    if REPLICATE_COLUMN in table.columns:  # seed replicates: the configurations' rows are the trials
        table = table[table[REPLICATE_COLUMN].isna()].reset_index(drop=True)
    table = table.astype(object).where(table.notna(), None)
    rows = table.to_dict("records")
    view = StudyView(output, output.name, table, search, [], "parzen_ll", "maximize", uri, client,
                     groups=[name for name in SCALE_FIELDS if name in search])
    for row in rows:
        number = int(row["trial"])
        view.trials.append(TrialView(number, str(row["state"]), row, run_name(number, row, search)))

    runs: dict[int, Any] = {}
    study_config: StudyConfig | None = None
    if client is None:
        view.notes.append(f"No MLflow store at {uri}: per-epoch losses and objective are not shown "
                          "(give --tracking-uri or MLFLOW_TRACKING_URI).")
    else:
        try:
            parent = client.get_run(parent_run_id) if parent_run_id else find_parent(client, output)
            if parent is None:
                view.notes.append(f"No MLflow parent run for {output} at {uri}: per-epoch histories are not shown.")
            else:
                view.parent_run_id, view.experiment_id = parent.info.run_id, parent.info.experiment_id
                view.name = parent.data.tags.get(TAG_STUDY, view.name)
                study_config = logged_study_config(client, parent, scratch)
                children = client.search_runs([view.experiment_id], f"tags.`{PARENT_TAG}` = '{view.parent_run_id}'",
                                              max_results=10_000)
                runs = {int(r.data.tags[TAG_TRIAL]): r for r in children if TAG_TRIAL in r.data.tags}
        except Exception as err:
            view.notes.append(f"MLflow at {uri} could not be read ({first_line(err)}): per-epoch histories are not shown.")
            runs = {}

    view.optuna_study = open_optuna(view, study_config)
    if view.optuna_study is not None:
        view.direction = view.optuna_study.directions[0].name.lower()
    elif study_config is not None:
        view.direction = study_config.objective.direction
    view.metric = infer_metric(view, runs, study_config.objective.metric if study_config else None)
    stderr_metric = "parzen_stderr" if view.metric == "parzen_ll" else None
    if REPLICATE_COLUMN in columns:  # seed replicates: the error bars are the replicates' spread
        stderr_metric = view.metric + REPLICATES_STDERR_SUFFIX
    view.stderr_metric = stderr_metric
    for trial in view.trials:
        run = runs.get(trial.number)
        if run is not None:
            trial.run_id = run.info.run_id
            trial.label = run.info.run_name or trial.label
            if run.data.tags.get(TAG_BLIND) == "true":
                view.notes.append(
                    f"trial {trial.number} ({trial.label}): blind discriminator equilibrium at its last evaluation: "
                    "its losses sit at the theory's equilibrium and its D's AUC is near 0.5 or its output constant, yet a fresh "
                    "classifier tells its samples from the data (c2st_accuracy); the equilibrium is not p_g = p_data."
                )
        trial.config = trial_config(run.data.params if run else None, output, trial.number)
        if run is not None:
            names = ["d_loss", "g_loss", view.metric] + ([stderr_metric] if stderr_metric else [])
            try:
                trial.history = {n: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, n))
                                 for n in names}
            except Exception as err:
                view.notes.append(f"trial {trial.number}: MLflow history unreadable ({first_line(err)})")
        if not trial.history.get(view.metric) and view.optuna_study is not None:
            frozen = _optuna_trial(view.optuna_study, trial.number)
            if frozen is not None and frozen.intermediate_values:
                trial.history[view.metric] = sorted(frozen.intermediate_values.items())
        trial.samples = sample_pictures(output, trial, client, scratch)
    if view.metric in QUALITY_METRICS:
        for settings, numbers in score_settings(runs).items():
            view.notes.append(f"{view.metric} computed in {settings} (trials {', '.join(map(str, numbers))}).")
    return view


def score_settings(runs: dict[int, Any]) -> dict[str, list[int]]:
    """What the trials' quality scores were computed with -> the trials: the feature space
    (tag gansweep.features) and the rows compared at the last evaluation (metrics n_generated,
    n_real). Scores with different settings are not comparable (config/comparable.py)."""
    settings: dict[str, list[int]] = {}
    for number, run in sorted(runs.items()):
        features, logged = run.data.tags.get(TAG_FEATURES), run.data.metrics
        if features is None:
            continue
        if "n_generated" in logged and "n_real" in logged:
            features += f", {int(logged['n_generated'])} generated against {int(logged['n_real'])} real samples"
        settings.setdefault(features, []).append(number)
    return settings


def open_optuna(view: StudyView, study_config: StudyConfig | None) -> Any:
    import optuna

    url = optuna_storage_url(study_config.storage if study_config else None, view.output)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        view.notes.append(f"No Optuna storage at {url}: no parameter importances.")
        return None
    try:
        names = optuna.get_all_study_names(url)
        name = view.name if view.name in names else (names[0] if len(names) == 1 else None)
        if name is None:
            view.notes.append(f"Optuna storage {url} holds no study named {view.name!r}: no parameter importances.")
            return None
        view.name = name
        return optuna.load_study(study_name=name, storage=url)
    except Exception as err:
        view.notes.append(f"Optuna storage {url} could not be read ({first_line(err)}): no parameter importances.")
        return None


def _optuna_trial(optuna_study: Any, number: int) -> Any:
    trials = optuna_study.get_trials(deepcopy=False)
    return trials[number] if number < len(trials) else None


def sample_pictures(output: Path, trial: TrialView, client: MlflowClient | None, scratch: Path) -> dict[int, Path]:
    """epoch -> sample picture: the local copy the sweep kept, else the run's artifact."""
    def epoch_of(name: str) -> int | None:
        stem = Path(name).stem
        return int(stem[6:]) if stem.startswith("epoch_") and stem[6:].isdigit() else None

    local = OutputLayout(output).artifacts(trial.number) / ARTIFACT_SAMPLES
    found = {epoch_of(p.name): p for p in local.glob("epoch_*.png")} if local.is_dir() else {}
    if not found and client is not None and trial.run_id is not None:
        try:
            for artifact in client.list_artifacts(trial.run_id, ARTIFACT_SAMPLES):
                if epoch_of(artifact.path) is not None and artifact.path.endswith(".png"):
                    found[epoch_of(artifact.path)] = Path(client.download_artifacts(
                        trial.run_id, artifact.path, str(scratch / f"samples-{trial.number}")))
        except Exception:
            pass  # no pictures for this row: the mosaic shows empty cells
    return {e: p for e, p in sorted(found.items()) if e is not None}


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def param_importances(view: StudyView) -> dict[str, float] | None:
    """Optuna's importances over the params that vary among >= 4 complete trials, or None
    with a note saying why not."""
    if view.optuna_study is None:
        return None
    import optuna

    complete = view.optuna_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    varying = [name for name in sorted({n for t in complete for n in t.params})
               if len({repr(t.params.get(name)) for t in complete if name in t.params}) >= 2]
    if len(complete) < MIN_COMPLETE_FOR_IMPORTANCE or not varying:
        view.notes.append(
            f"No parameter importances: they need at least {MIN_COMPLETE_FOR_IMPORTANCE} complete trials "
            f"and a parameter with two values among them (have {len(complete)} complete, "
            f"{len(varying)} varying parameter(s))."
        )
        return None
    try:
        return optuna.importance.get_param_importances(
            view.optuna_study, params=varying, target=lambda t: t.values[0],
            evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
        )
    except Exception as err:  # e.g. every objective equal: no variance to share out
        view.notes.append(f"No parameter importances: {first_line(err)}")
        return None
