"""`gansweep report`: a study's results at a glance, as one HTML page and its PNG figures.

Writes OUTPUT/report/index.html (self-contained: the figures are embedded as data URIs) and
the PNG figures beside it; `log_report` logs them to the study's parent run under "report".
`report_after_sweep` is what the CLI hands `gansweep run` to call once a sweep has finished.
"""

from __future__ import annotations

import base64
import html
import math
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

from gansweep.reporting import plots
from gansweep.reporting.baseline import data_baselines
from gansweep.reporting.figures import (
    FIGURES, figure_losses, figure_samples, final_stderr, grouped_figures,
)
from gansweep.reporting.view import (
    REPORT_DIR, StudyView, first_line, load_view, open_client, param_importances, resolve_output,
)
from gansweep.service.tracking import MlflowClient, Tracker, mlflow_defaults, resolve_tracking_uri


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
            **grouped_figures(view, baselines),
            "samples.png": figure_samples(view),
            "importances.png": plots.plot_importances(importances, f"importance for {view.metric}") if importances else None,
        }
        figures = {}
        for stale in folder.glob("objective_vs_*.png"):
            stale.unlink()  # no stale figure from an earlier report
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
            print(f"gansweep: warning: the report was not logged to MLflow run {view.parent_run_id}: {first_line(err)}")
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
        print(f"gansweep: warning: no report ({type(err).__name__}: {first_line(err)}); "
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
    for group, trials in view.grouped():  # one best per value of the scale fields
        best = next((t for t in trials if t.row.get("objective") is not None), None)
        if best is not None:
            stderr = final_stderr(best)
            parts.append(f"<p>Best{' of ' + e(group) if group else ''}: <b>{e(best.label)}</b> ({e(best.state.lower())}), "
                         f"{e(view.metric)} {_cell(best.row['objective'])}"
                         + (f" ± {_cell(stderr, 2)}" if stderr is not None else "") + ".</p>")
    link = _mlflow_url(view)
    if view.parent_run_id:
        where = f"<a href='{e(link)}'>{e(view.tracking_uri)}</a>" if link else f"<code>{e(view.tracking_uri)}</code>"
        parts.append(f"<p>MLflow: {where}, parent run <code>{e(view.parent_run_id)}</code>.</p>")
    if baselines:
        shown = ", ".join(f"{e(k)} {v:.4g}" for k, v in sorted(baselines.items()))
        what, unit = ("Parzen", " nats") if view.metric == "parzen_ll" else (view.metric, "")
        parts.append(f"<p>Data-as-model {e(what)} baseline (real training points as the model's samples, "
                     f"the study's evaluation sizes): {shown}{unit}.</p>")
    if view.notes:
        parts.append("<ul class='notes'>" + "".join(f"<li>{e(n)}</li>" for n in dict.fromkeys(view.notes)) + "</ul>")
    sections = [("figures", "Figures"), ("trials", "Trials")] + ([("importances", "Parameter importances")] if importances else [])
    parts.append("<nav>" + " · ".join(f"<a href='#{key}'>{title}</a>" for key, title in sections) + "</nav>")
    parts.append("<h2 id='figures'>Figures</h2>")
    for kind, caption in FIGURES.items():
        stem = kind.removesuffix(".png")
        for name in [n for n in figures if n == kind or (n.startswith(stem + ".") and n.endswith(".png"))]:
            group = name.removeprefix(stem).removesuffix(".png").lstrip(".").replace("_", " ")
            shown = f"{caption} ({group})" if group else caption
            parts.append(f"<figure><img src='{_data_uri(figures[name])}' alt='{e(name)}'>"
                         f"<figcaption>{e(shown)} <a href='{e(name)}'>{e(name)}</a></figcaption></figure>")
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
    head = ["trial", "run", "state", *view.search, view.metric, "± stderr", "equilibrium", "epochs", "pruned at",
            "failure reason"]
    lines = ["<table class='trials'><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"]
    for trial in view.trials:
        row = trial.row
        url = _mlflow_url(view, trial.run_id) if trial.run_id else None
        name = f"<a href='{e(url)}'>{e(trial.label)}</a>" if url else e(trial.label)
        cells = [f"<td>{trial.number}</td>", f"<td class='text'>{name}</td>", f"<td class='state text'>{e(trial.state)}</td>"]
        cells += [f"<td class='text'>{e(_cell(row.get(p)))}</td>" for p in view.search]
        cells += [f"<td>{_cell(row.get('objective'))}</td>", f"<td>{_cell(final_stderr(trial), 2)}</td>",
                  f"<td class='text'>{e(_cell(row.get('equilibrium')))}</td>",
                  f"<td>{_cell(row.get('epochs'))}</td>", f"<td>{_cell(row.get('pruned_at'))}</td>",
                  f"<td class='text'>{e(_cell(row.get('failure_reason')))}</td>"]
        lines.append(f"<tr class='trial {e(trial.state)}' data-trial='{trial.number}'>" + "".join(cells) + "</tr>")
    return "\n".join(lines) + "</table>"
