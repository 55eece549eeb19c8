"""`gansweep report`: a study's results at a glance, as one HTML page and its PNG figures.

Sources, each optional but the first:
    results.csv       one row per trial (state, swept values, objective, epochs, pruned at)
    MLflow            the study's parent run (tag gansweep.output = the output folder) and its
                      child runs: per-epoch losses and objective, trial fields, run names
    Optuna storage    parameter distributions and importances, intermediate objective values
    artifacts/        sample pictures per trial and epoch (else downloaded from MLflow)
    the dataset       the data-as-model Parzen baseline, cached in report/baseline.json
What is missing is said on the page instead of failing the report.

Writes OUTPUT/report/index.html (self-contained: the figures are embedded as data URIs) and
the PNG figures beside it; `log_report` logs them to the parent run under "report".
"""

from __future__ import annotations

import base64
import html
import json
import math
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from gansweep import plots
from gansweep.errors import GansweepError
from gansweep.storage import optuna_storage_url
from gansweep.config.names import TOY_DATASETS
from gansweep.config.schema import StudyConfig, TrialConfig
from gansweep.config.load import load_study
from gansweep.tracking import (
    PARENT_TAG, TAG_OUTPUT, TAG_ROLE, TAG_STUDY, TAG_TRIAL, MlflowClient, Tracker, mlflow_defaults,
    resolve_tracking_uri,
)

REPORT_DIR = "report"
FIGURES = {  # file -> caption; the page shows those that could be drawn, in this order
    "losses.png": "Losses of D and G per epoch, one panel per alpha; dashed: the equilibrium values (THEORY.md).",
    "objective_vs_params.png": "The objective against each swept parameter, with standard-error bars.",
    "objective_vs_epoch.png": "The objective per epoch of the best trials.",
    "samples.png": "Samples: trials as rows (best first), epochs as columns.",
    "importances.png": "Optuna's parameter importances (fANOVA).",
}
BEST_CURVES = 5  # trials in the objective-per-epoch figure
LOSS_CURVES_PER_ALPHA = 8  # trials per panel of the loss figure, best first
MOSAIC_ROWS, MOSAIC_COLS = 12, 6
MIN_COMPLETE_FOR_IMPORTANCE = 4


@dataclass
class TrialView:
    number: int
    state: str
    row: dict[str, Any]  # its row of results.csv
    label: str
    run_id: str | None = None
    config: TrialConfig | None = None
    history: dict[str, plots.Points] = field(default_factory=dict)
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
    optuna: Any = None  # optuna.Study
    notes: list[str] = field(default_factory=list)


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
    if (target / "results.csv").is_file():
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
        if folder is not None and folder.is_absolute() and (folder / "results.csv").is_file():
            return folder
    raise GansweepError(
        f"{target}: no such study output folder (give the --output folder of `gansweep run`, "
        f"or the name of an MLflow experiment at {uri} whose output folder is on this machine)"
    )


def study_file(client: MlflowClient, parent: Any, folder: Path) -> StudyConfig | None:
    """The study file logged with the parent run (overrides given with --set are not in it)."""
    try:
        names = [a.path for a in client.list_artifacts(parent.info.run_id, "study") if a.path.endswith((".yaml", ".yml"))]
        if not names:
            return None
        return load_study(client.download_artifacts(parent.info.run_id, names[0], str(folder)))
    except Exception:
        return None


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
    checkpoint = output / "artifacts" / str(number) / "checkpoint" / "generator.pt"
    if checkpoint.is_file():
        import torch

        try:
            return TrialConfig.model_validate(torch.load(checkpoint, map_location="cpu", weights_only=False)["trial"])
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
        if name and (candidates is None or name in candidates):
            return name
    return sorted(candidates)[0] if candidates else configured or "parzen_ll"


def load_view(output: Path, uri: str, client: MlflowClient | None, parent_run_id: str | None, scratch: Path) -> StudyView:
    try:
        table = pd.read_csv(output / "results.csv")
    except pd.errors.EmptyDataError:
        raise GansweepError(f"{output / 'results.csv'} lists no trials") from None
    columns = list(table.columns)
    search = columns[columns.index("state") + 1 : columns.index("objective")]
    table = table.astype(object).where(table.notna(), None)
    rows = table.to_dict("records")
    view = StudyView(output, output.name, table, search, [], "parzen_ll", "maximize", uri, client)
    for row in rows:
        number = int(row["trial"])
        view.trials.append(TrialView(number, str(row["state"]), row, run_name(number, row, search)))

    runs: dict[int, Any] = {}
    config: StudyConfig | None = None
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
                config = study_file(client, parent, scratch)
                children = client.search_runs([view.experiment_id], f"tags.`{PARENT_TAG}` = '{view.parent_run_id}'",
                                              max_results=10_000)
                runs = {int(r.data.tags[TAG_TRIAL]): r for r in children if TAG_TRIAL in r.data.tags}
        except Exception as err:
            view.notes.append(f"MLflow at {uri} could not be read ({_first_line(err)}): per-epoch histories are not shown.")
            runs = {}

    view.optuna = open_optuna(view, config)
    if view.optuna is not None:
        view.direction = view.optuna.directions[0].name.lower()
    elif config is not None:
        view.direction = config.objective.direction
    view.metric = infer_metric(view, runs, config.objective.metric if config else None)
    stderr_metric = "parzen_stderr" if view.metric == "parzen_ll" else None
    for trial in view.trials:
        run = runs.get(trial.number)
        if run is not None:
            trial.run_id = run.info.run_id
            trial.label = run.info.run_name or trial.label
        trial.config = trial_config(run.data.params if run else None, output, trial.number)
        if run is not None:
            names = ["d_loss", "g_loss", view.metric] + ([stderr_metric] if stderr_metric else [])
            try:
                trial.history = {n: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, n))
                                 for n in names}
            except Exception as err:
                view.notes.append(f"trial {trial.number}: MLflow history unreadable ({_first_line(err)})")
        if not trial.history.get(view.metric) and view.optuna is not None:
            frozen = _optuna_trial(view.optuna, trial.number)
            if frozen is not None and frozen.intermediate_values:
                trial.history[view.metric] = sorted(frozen.intermediate_values.items())
        trial.samples = sample_pictures(output, trial, client, scratch)
    return view


def open_optuna(view: StudyView, config: StudyConfig | None) -> Any:
    import optuna

    url = optuna_storage_url(config.storage if config else None, view.output)
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
        view.notes.append(f"Optuna storage {url} could not be read ({_first_line(err)}): no parameter importances.")
        return None


def _optuna_trial(study: Any, number: int) -> Any:
    trials = study.get_trials(deepcopy=False)
    return trials[number] if number < len(trials) else None


def sample_pictures(output: Path, trial: TrialView, client: MlflowClient | None, scratch: Path) -> dict[int, Path]:
    """epoch -> sample picture: the local copy the sweep kept, else the run's artifact."""
    def epoch_of(name: str) -> int | None:
        stem = Path(name).stem
        return int(stem[6:]) if stem.startswith("epoch_") and stem[6:].isdigit() else None

    local = output / "artifacts" / str(trial.number) / "samples"
    found = {epoch_of(p.name): p for p in local.glob("epoch_*.png")} if local.is_dir() else {}
    if not found and client is not None and trial.run_id is not None:
        try:
            for artifact in client.list_artifacts(trial.run_id, "samples"):
                if epoch_of(artifact.path) is not None and artifact.path.endswith(".png"):
                    found[epoch_of(artifact.path)] = Path(client.download_artifacts(
                        trial.run_id, artifact.path, str(scratch / f"samples-{trial.number}")))
        except Exception:
            pass  # no pictures for this row: the mosaic shows empty cells
    return {e: p for e, p in sorted(found.items()) if e is not None}


def shown_value(value: Any) -> str:
    """A value as a run name shows it: floats to 4 significant digits (0.3, 1.245e-07)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def run_name(number: int, values: dict[str, Any], search_names: list[str]) -> str:
    """A trial's readable name, e.g. `003 alpha=0.3 loss=non_saturating`: its number and the
    swept values (the MLflow run name, and the report's label when MLflow is not there)."""
    shown = " ".join(f"{name}={shown_value(values[name])}" for name in search_names if values.get(name) is not None)
    return f"{number:03d} {shown}".strip()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ---------------------------------------------------------------------------- baseline


def baseline_key(trial: TrialConfig) -> str:
    """What the data-as-model score depends on (a toy set's points depend on the seed)."""
    return json.dumps({
        "dataset": trial.dataset, "data_dir": trial.data_dir, "n_train": trial.n_train,
        "seed": trial.seed if trial.dataset in TOY_DATASETS else 0,
        "eval_samples": trial.eval_samples, "eval_valid": trial.eval_valid, "eval_test": trial.eval_test,
        "sigmas": list(trial.parzen_sigmas) if trial.parzen_sigmas else None,
    }, sort_keys=True)


def compute_baseline(trial: TrialConfig) -> dict[str, float]:
    """parzen.data_as_model_baseline with the study's evaluation sizes: eval_samples real
    training points as the kernel centres, scored like a trial's samples."""
    from gansweep.engine.data import load_dataset
    from gansweep.engine.parzen import data_as_model_baseline

    data = load_dataset(trial.dataset, data_dir=trial.data_dir, seed=trial.seed, device="auto", n_train=trial.n_train)
    test = data.test if trial.eval_test is None else data.test[: trial.eval_test]
    result = data_as_model_baseline(data.train, data.valid[: trial.eval_valid], test,
                                    trial.parzen_sigmas or data.default_sigmas, n_samples=trial.eval_samples)
    return {"dataset": trial.dataset, "mean": result.mean, "stderr": result.stderr, "sigma": result.sigma,
            "n_samples": result.n_samples, "n_test": result.n_test}


def data_baselines(view: StudyView, cache: Path) -> dict[str, float]:
    """dataset -> data-as-model Parzen score (the mean over seeds of a toy set), cached."""
    if view.metric != "parzen_ll":
        view.notes.append(f"No data-as-model baseline: the objective is {view.metric}, not parzen_ll.")
        return {}
    configs = {baseline_key(t.config): t.config for t in view.trials if t.config is not None}
    if not configs:
        view.notes.append("No data-as-model baseline: the trials' fields are unknown (no MLflow params, no checkpoints).")
        return {}
    stored = json.loads(cache.read_text()) if cache.is_file() else {}
    scores: dict[str, list[float]] = {}
    for key, config in configs.items():
        if key not in stored:
            try:
                stored[key] = compute_baseline(config)
            except Exception as err:  # data not on this machine, out of memory, ...
                view.notes.append(f"No data-as-model baseline for {config.dataset}: {_first_line(err)}")
                continue
        scores.setdefault(config.dataset, []).append(stored[key]["mean"])
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(stored, indent=1, sort_keys=True))
    return {name: float(np.mean(values)) for name, values in scores.items()}


# ---------------------------------------------------------------------------- figures


def figure_losses(view: StudyView) -> Any:
    curves: list[plots.LossCurves] = []
    per_alpha: dict[float, int] = {}
    for t in view.trials:  # best first
        if t.config is None or not (t.history.get("d_loss") or t.history.get("g_loss")):
            continue
        per_alpha[t.config.alpha] = per_alpha.get(t.config.alpha, 0) + 1
        if per_alpha[t.config.alpha] <= LOSS_CURVES_PER_ALPHA:
            curves.append(plots.LossCurves(t.label, t.config.alpha, t.config.loss, t.config.label_smoothing,
                                           t.history.get("d_loss", []), t.history.get("g_loss", [])))
    if any(n > LOSS_CURVES_PER_ALPHA for n in per_alpha.values()):
        view.notes.append(f"The loss figure shows the best {LOSS_CURVES_PER_ALPHA} trials of each alpha.")
    return plots.plot_losses_by_alpha(curves) if curves else None


def final_stderr(trial: TrialView) -> float | None:
    points = trial.history.get("parzen_stderr")
    return points[-1][1] if points else None


def figure_objective_vs_params(view: StudyView, baselines: dict[str, float]) -> Any:
    points = [
        plots.ObjectivePoint(t.label, t.state, t.row, float(t.row["objective"]), final_stderr(t))
        for t in view.trials if t.row.get("objective") is not None
    ]
    if not points:
        return None
    axes = [plots.ParamAxis(name, log=_is_log(view, name)) for name in view.search]
    return plots.plot_objective_vs_params(points, axes, view.metric, baselines)


def _is_log(view: StudyView, name: str) -> bool:
    if view.optuna is None:
        return False
    for frozen in view.optuna.get_trials(deepcopy=False):
        if name in frozen.distributions:
            return bool(getattr(frozen.distributions[name], "log", False))
    return False


def figure_objective_vs_epoch(view: StudyView, baselines: dict[str, float]) -> Any:
    curves = []
    for trial in view.trials:  # best first
        points = trial.history.get(view.metric) or []
        if not points:
            continue
        stderr = dict(trial.history.get("parzen_stderr") or [])
        epochs = [e for e, _ in points]
        curves.append(plots.ObjectiveCurve(
            trial.label, epochs, [v for _, v in points],
            [stderr.get(e, 0.0) for e in epochs] if stderr else None,
        ))
        if len(curves) == BEST_CURVES:
            break
    return plots.plot_objective_vs_epoch(curves, view.metric, baselines) if curves else None


def mosaic_epochs(available: set[int], columns: int = MOSAIC_COLS) -> list[int]:
    """At most `columns` epochs spread evenly from the first to the last."""
    ordered = sorted(available)
    if len(ordered) <= columns:
        return ordered
    return [ordered[i] for i in np.unique(np.round(np.linspace(0, len(ordered) - 1, columns)).astype(int))]


def figure_samples(view: StudyView) -> Any:
    shown = [t for t in view.trials if t.samples][:MOSAIC_ROWS]
    if not shown:
        return None
    if len([t for t in view.trials if t.samples]) > MOSAIC_ROWS:
        view.notes.append(f"The sample mosaic shows the best {MOSAIC_ROWS} trials with pictures.")
    epochs = mosaic_epochs({e for t in shown for e in t.samples})
    return plots.plot_sample_mosaic([(t.label, [t.samples.get(e) for e in epochs]) for t in shown], epochs)


def param_importances(view: StudyView) -> dict[str, float] | None:
    """Optuna's importances over the params that vary among >= 4 complete trials, or None
    with a note saying why not."""
    if view.optuna is None:
        return None
    import optuna

    complete = view.optuna.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
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
            view.optuna, params=varying, target=lambda t: t.values[0],
            evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
        )
    except Exception as err:  # e.g. every objective equal: no variance to share out
        view.notes.append(f"No parameter importances: {_first_line(err)}")
        return None


# ---------------------------------------------------------------------------- the page


def write_report(
    output_dir: Path,
    tracking_uri: str | None = None,
    *,
    client: MlflowClient | None = None,
    parent_run_id: str | None = None,
    log_to_mlflow: bool = True,
) -> Path:
    """Write OUTPUT/report/index.html and its figures; log them to the parent run when one
    is found. Returns the page's path. Raises GansweepError for a folder that holds no study."""
    mlflow_defaults()  # downloads of study files and sample pictures without progress bars
    uri = resolve_tracking_uri(tracking_uri)
    if client is None:
        client = open_client(uri)
    output = resolve_output(Path(output_dir), client, uri)
    folder = output / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gansweep-report-") as scratch:
        view = load_view(output, uri, client, parent_run_id, Path(scratch))
        baselines = data_baselines(view, folder / "baseline.json")
        importances = param_importances(view)
        drawn = {
            "losses.png": figure_losses(view),
            "objective_vs_params.png": figure_objective_vs_params(view, baselines),
            "objective_vs_epoch.png": figure_objective_vs_epoch(view, baselines),
            "samples.png": figure_samples(view),
            "importances.png": plots.plot_importances(importances, f"importance for {view.metric}") if importances else None,
        }
        figures = {}
        for name, figure in drawn.items():
            (folder / name).unlink(missing_ok=True)  # no stale figure from an earlier report
            if figure is not None:
                figures[name] = plots.save_figure(figure, folder / name)
    page = folder / "index.html"
    page.write_text(render_html(view, figures, baselines, importances))
    if log_to_mlflow and client is not None and view.parent_run_id is not None:
        try:
            log_report(client, view.parent_run_id, folder)
        except Exception as err:
            print(f"gansweep: warning: the report was not logged to MLflow run {view.parent_run_id}: {_first_line(err)}")
    return page


def log_report(tracker_or_uri: Tracker | MlflowClient | str, parent_run_id: str, folder: Path) -> None:
    """Log the report folder (page, figures, baseline cache) to the parent run under
    "report". A Tracker queues the call like every other (delivered when the server is back)."""
    def log(client: MlflowClient) -> None:
        client.log_artifacts(parent_run_id, str(folder), REPORT_DIR)

    if isinstance(tracker_or_uri, Tracker):
        tracker_or_uri.call_later("log report", lambda: log(tracker_or_uri.client))
    else:
        log(tracker_or_uri if isinstance(tracker_or_uri, MlflowClient) else MlflowClient(tracker_or_uri))


def report_after_sweep(output: Path, tracker: Tracker, status: str = "FINISHED") -> Path | None:
    """The end of `gansweep run`: write the report from the tracker's store and queue it for
    the parent run. Only after a sweep that finished (a Ctrl-C must not wait for figures);
    a report that cannot be written warns and never fails the sweep."""
    if status != "FINISHED":
        return None
    try:
        if not tracker.flush():
            print(f"gansweep: no report: MLflow is unreachable; run `gansweep report {output}` later")
            return None
        page = write_report(output, tracker.tracking_uri, client=tracker.client,
                            parent_run_id=tracker.parent_id, log_to_mlflow=False)
        log_report(tracker, tracker.parent_id, page.parent)
        print(f"report written to {page}")
        return page
    except Exception as err:  # figures are a convenience: the sweep's results are safe
        print(f"gansweep: warning: no report ({type(err).__name__}: {_first_line(err)}); "
              f"try `gansweep report {output}`")
        return None


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1300px;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:0.9em;margin:1em 0}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f0} td.text{text-align:left}
tr.COMPLETE td.state{color:#1a7f37} tr.PRUNED td.state{color:#9a6700} tr.FAIL td.state{color:#cf222e}
figure{margin:1.5em 0} img{max-width:100%;border:1px solid #eee} .notes li{color:#6e5200}
"""


def _cell(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _mlflow_url(view: StudyView, run_id: str | None = None) -> str | None:
    if not view.tracking_uri.startswith(("http://", "https://")) or view.experiment_id is None:
        return None
    base = f"{view.tracking_uri.rstrip('/')}/#/experiments/{view.experiment_id}"
    if run_id:
        return f"{base}/runs/{run_id}"
    # Sorted by a metric, the runs table lists the trials flat instead of folded under the parent.
    order = urllib.parse.quote(f"metrics.`{view.metric}`")
    return f"{base}/runs?orderByKey={order}&orderByAsc={'true' if view.direction == 'minimize' else 'false'}"


def render_html(view: StudyView, figures: dict[str, Path], baselines: dict[str, float],
                importances: dict[str, float] | None) -> str:
    e = html.escape
    counts = view.table["state"].value_counts().to_dict()
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>gansweep report: {e(view.name)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Study {e(view.name)}</h1>",
        f"<p>Output folder <code>{e(str(view.output))}</code>; {len(view.trials)} trial(s): "
        + ", ".join(f"{n} {e(str(s)).lower()}" for s, n in sorted(counts.items()))
        + f". Objective: <b>{e(view.metric)}</b> ({e(view.direction)}).</p>",
    ]
    best = next((t for t in view.trials if t.row.get("objective") is not None), None)
    if best is not None:
        stderr = final_stderr(best)
        parts.append(f"<p>Best: <b>{e(best.label)}</b> ({e(best.state.lower())}), {e(view.metric)} "
                     f"{_cell(best.row['objective'])}" + (f" ± {_cell(stderr, 2)}" if stderr is not None else "") + ".</p>")
    link = _mlflow_url(view)
    if view.parent_run_id:
        where = f"<a href='{e(link)}'>{e(view.tracking_uri)}</a>" if link else f"<code>{e(view.tracking_uri)}</code>"
        parts.append(f"<p>MLflow: {where}, parent run <code>{e(view.parent_run_id)}</code>.</p>")
    if baselines:
        shown = ", ".join(f"{e(k)} {v:.4g}" for k, v in sorted(baselines.items()))
        parts.append(f"<p>Data-as-model Parzen baseline (real training points as the model's samples, "
                     f"the study's evaluation sizes): {shown} nats.</p>")
    if view.notes:
        parts.append("<ul class='notes'>" + "".join(f"<li>{e(n)}</li>" for n in dict.fromkeys(view.notes)) + "</ul>")
    sections = [("figures", "Figures"), ("trials", "Trials")] + ([("importances", "Parameter importances")] if importances else [])
    parts.append("<nav>" + " · ".join(f"<a href='#{key}'>{title}</a>" for key, title in sections) + "</nav>")
    parts.append("<h2 id='figures'>Figures</h2>")
    for name, caption in FIGURES.items():
        if name in figures:
            parts.append(f"<figure><img src='{_data_uri(figures[name])}' alt='{e(name)}'>"
                         f"<figcaption>{e(caption)} <a href='{e(name)}'>{e(name)}</a></figcaption></figure>")
    parts.append("<h2 id='trials'>Trials</h2>" + trial_table(view))
    if importances:
        parts.append("<h2 id='importances'>Parameter importances</h2>"
                     "<table class='importances'><tr><th>parameter</th><th>importance</th></tr>"
                     + "".join(f"<tr><td class='text'>{e(k)}</td><td>{v:.3f}</td></tr>" for k, v in importances.items())
                     + "</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def trial_table(view: StudyView) -> str:
    e = html.escape
    head = ["trial", "run", "state", *view.search, view.metric, "± stderr", "epochs", "pruned at", "failure reason"]
    lines = ["<table class='trials'><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"]
    for trial in view.trials:
        row = trial.row
        url = _mlflow_url(view, trial.run_id) if trial.run_id else None
        name = f"<a href='{e(url)}'>{e(trial.label)}</a>" if url else e(trial.label)
        cells = [f"<td>{trial.number}</td>", f"<td class='text'>{name}</td>", f"<td class='state text'>{e(trial.state)}</td>"]
        cells += [f"<td class='text'>{e(_cell(row.get(p)))}</td>" for p in view.search]
        cells += [f"<td>{_cell(row.get('objective'))}</td>", f"<td>{_cell(final_stderr(trial), 2)}</td>",
                  f"<td>{_cell(row.get('epochs'))}</td>", f"<td>{_cell(row.get('pruned_at'))}</td>",
                  f"<td class='text'>{e(_cell(row.get('failure_reason')))}</td>"]
        lines.append(f"<tr class='trial {e(trial.state)}' data-trial='{trial.number}'>" + "".join(cells) + "</tr>")
    return "\n".join(lines) + "</table>"
