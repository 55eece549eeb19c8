"""`gansweep report` and the MLflow UI, after one real small sweep logged to a real MLflow server.

The sweep (studies/smoke.yaml: 4 trials, 2 alphas x 2 losses, 3 epochs) runs once for the
module; the browser test looks at the same server with headless Chromium (Debian's
`chromium` package). Screenshots are kept in tests/artifacts/ (git-ignored).
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from browser import chromium
from conftest import ROOT, STUDIES, MlflowServer, clean_env, gansweep
from gansweep.reporting import plots
from gansweep.engine.data import load_dataset
from gansweep.engine.losses import equilibrium
from gansweep.engine.parzen import data_as_model_baseline
from gansweep.reporting.figures import FIGURES, mosaic_epochs
from gansweep.reporting.html import report_after_sweep
from gansweep.reporting.view import StudyView, param_importances
from gansweep.service.tracking import Tracker, run_name

optuna.logging.set_verbosity(optuna.logging.WARNING)

SMOKE = STUDIES / "smoke.yaml"
EPOCH_METRICS = {"d_loss", "g_loss", "d_real", "d_fake", "d_loss_star", "g_loss_star", "d_loss_gap",
                 "g_loss_gap", "parzen_ll", "parzen_stderr", "parzen_sigma", "wall_time"}
ARTIFACTS = ROOT / "tests" / "artifacts"
IMAGE = re.compile(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    running = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, server: MlflowServer) -> Path:
    """The folder `gansweep run` ran in; its output is folder/out."""
    folder = tmp_path_factory.mktemp("sweep")
    done = gansweep("run", str(SMOKE), "--output", "out", "--tracking-uri", server.uri, cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    return folder


def embedded_pngs(page: str) -> list[Image.Image]:
    images = []
    for data in IMAGE.findall(page):
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()
        images.append(image)
    return images


def parent_run(uri: str, output: Path):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke")
    [parent] = client.search_runs([experiment.experiment_id], f"tags.`gansweep.output` = '{output}'")
    return client, experiment, parent


def test_report_has_every_trial_and_its_figures(sweep: Path, server: MlflowServer) -> None:
    output = sweep / "out"
    done = gansweep("report", str(output), "--tracking-uri", server.uri, cwd=sweep)
    assert done.returncode == 0, done.stdout + done.stderr
    page_path = output / "report" / "index.html"
    assert f"report written to {page_path}" in done.stdout
    page = page_path.read_text()
    table = pd.read_csv(output / "results.csv")
    rows = [int(n) for n in re.findall(r"<tr class='trial [A-Z]+' data-trial='(\d+)'>", page)]
    assert sorted(rows) == sorted(table["trial"]) and len(rows) == 4
    for name in ("000 alpha=0.7 loss=non_saturating", "003 alpha=0.3 loss=non_saturating"):
        assert name in page  # the MLflow run names label the trials
    images = embedded_pngs(page)
    assert len(images) == len(FIGURES) == 5  # losses, objective x2, samples, importances
    assert all(image.format == "PNG" and min(image.size) > 100 for image in images)
    assert {p.name for p in (output / "report").glob("*.png")} == set(FIGURES)
    assert "Parameter importances" in page and "<td class='text'>alpha</td>" in page

    # The baseline line: data_as_model_baseline with the study's evaluation sizes, cached.
    [cached] = json.loads((output / "report" / "baseline.json").read_text()).values()
    data = load_dataset("circle", seed=0)
    want = data_as_model_baseline(data.train, data.valid[:500], data.test[:1000], data.default_sigmas, n_samples=1000)
    assert cached["mean"] == pytest.approx(want.mean, abs=1e-6) and cached["n_samples"] == 1000
    assert f"circle {want.mean:.4g} nats" in page

    # The same figures are logged to the study's parent run.
    client, _, parent = parent_run(server.uri, output)
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {f"report/{name}" for name in FIGURES} | {"report/index.html"} <= logged


def test_report_without_mlflow_shows_what_is_local(sweep: Path, tmp_path: Path) -> None:
    """No tracking URI and no mlflow.db here: the page says so and keeps the rest."""
    done = gansweep("report", str(sweep / "out"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    page = (sweep / "out" / "report" / "index.html").read_text()
    # MLflow's default store: mlflow.db in the working directory, named by its absolute path
    assert f"No MLflow store at sqlite:///{tmp_path.resolve() / 'mlflow.db'}:" in page
    assert not (tmp_path / "mlflow.db").exists()  # looking did not create a store
    assert len(re.findall(r"data-trial='\d+'", page)) == 4
    # No loss histories without MLflow; the objective per epoch comes from Optuna's
    # intermediate values, the samples from artifacts/, the trial fields from checkpoints.
    assert len(embedded_pngs(page)) == 4 and "alt='losses.png'" not in page
    assert "Data-as-model Parzen baseline" in page  # cached, for the trial fields read from checkpoints


def test_report_by_experiment_name_with_the_uri_from_the_environment(sweep: Path, server: MlflowServer, tmp_path: Path) -> None:
    done = gansweep("report", "smoke", cwd=tmp_path, env=clean_env(MLFLOW_TRACKING_URI=server.uri))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"report written to {sweep / 'out' / 'report' / 'index.html'}" in done.stdout


def test_report_on_a_missing_folder_exits_2(tmp_path: Path) -> None:
    done = gansweep("report", "nowhere", cwd=tmp_path)
    assert done.returncode == 2
    assert "nowhere: no such study output folder" in done.stderr and "Traceback" not in done.stderr
    (tmp_path / "empty").mkdir()
    done = gansweep("report", "empty", cwd=tmp_path)
    assert done.returncode == 2 and "not a study output folder (no results.csv)" in done.stderr


def test_report_after_sweep_logs_through_the_tracker(sweep: Path, server: MlflowServer) -> None:
    """What `gansweep run` calls at its end: the report written and queued to the parent run."""
    output = sweep / "out"
    tracker = Tracker(server.uri, "smoke", "smoke", output)  # finds the study's parent run
    shutil.rmtree(output / "report")
    page = report_after_sweep(output, tracker)
    tracker.flush_with_retries(10)
    tracker.client.set_terminated(tracker.parent_id, "FINISHED")
    assert page == output / "report" / "index.html" and page.is_file()
    client, _, parent = parent_run(server.uri, output)
    assert "report/losses.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}


# ---------------------------------------------------------------------------- figures


def dashed_levels(axes) -> set[float]:
    levels = set()
    for line in axes.get_lines():
        if line.get_linestyle() == "--":
            ys = set(float(y) for y in line.get_ydata())
            assert len(ys) == 1  # a horizontal line
            levels |= ys
    return levels


def test_loss_figure_dashes_the_equilibrium_values_one_panel_per_alpha() -> None:
    curve = [(1, 0.9), (2, 0.7), (3, 0.65)]
    curves = [
        plots.LossCurves("a", 0.3, "non_saturating", 1.0, curve, curve),
        plots.LossCurves("b", 0.3, "minimax", 1.0, curve, curve),
        plots.LossCurves("c", 0.7, "least_squares", 0.9, curve, curve),
        plots.LossCurves("d", 0.7, "hinge", 1.0, curve, curve),  # no unique equilibrium
    ]
    figure = plots.plot_losses_by_alpha(curves)
    panels = [a for a in figure.axes if a.get_title()]
    assert [a.get_title() for a in panels] == ["alpha = 0.3", "alpha = 0.7"]
    for axes, members in zip(panels, (curves[:2], curves[2:]), strict=True):
        want = set()
        for c in members:
            star = equilibrium(c.loss, c.alpha, c.label_smoothing)
            if star is not None:
                want |= {star.d_loss, star.g_loss}
        got = dashed_levels(axes)
        assert len(got) == len(want)
        for value in want:
            assert min(got, key=lambda y: abs(y - value)) == pytest.approx(value, rel=1e-9, abs=1e-12)
        # one solid D and one dash-dot G line per trial, in the trial's colour
        solid = [l for l in axes.get_lines() if l.get_linestyle() == "-"]
        dash_dot = [l for l in axes.get_lines() if l.get_linestyle() == "-."]
        assert len(solid) == len(dash_dot) == len(members)
    # seed 003's setting: H(0.3) for D, -log 0.3 (non-saturating) and log 0.7 (minimax) for G
    assert sorted(dashed_levels(panels[0])) == pytest.approx(
        sorted({equilibrium("non_saturating", 0.3).d_loss, equilibrium("non_saturating", 0.3).g_loss,
                equilibrium("minimax", 0.3).g_loss}), rel=1e-12)


def test_loss_figure_dashes_a_compose_trials_equilibrium_at_its_realised_share() -> None:
    # alpha 0.9 in compose mode with m = 128: 115 real samples, D* = 115/128, not 0.9
    curve = [(1, 0.4), (2, 0.33)]
    figure = plots.plot_losses_by_alpha([plots.LossCurves("a", 0.9, "non_saturating", 1.0, curve, curve, 115 / 128)])
    (panel,) = [a for a in figure.axes if a.get_title()]
    h = -(115 / 128) * math.log(115 / 128) - (13 / 128) * math.log(13 / 128)
    assert sorted(dashed_levels(panel)) == pytest.approx(sorted([h, -math.log(115 / 128)]), rel=1e-12)


def test_a_trials_losses_figure_names_its_verdict_beside_the_equilibrium_lines() -> None:
    from gansweep.config.schema import TrialConfig

    history = {"d_loss": [(1, 0.5), (2, 0.49)], "d_loss_star": [(1, 0.4882), (2, 0.4882)], "g_loss": [(1, 0.3), (2, 0.2)]}
    figure = plots.losses_vs_theory_figure(history, TrialConfig(alpha=0.9), "blind")
    (axes,) = figure.axes
    assert axes.get_title().endswith("; equilibrium: blind")
    assert dashed_levels(axes) == {0.4882}
    assert "equilibrium:" not in plots.losses_vs_theory_figure(history, TrialConfig()).axes[0].get_title()


def test_mosaic_epochs_spread_from_first_to_last() -> None:
    assert mosaic_epochs({1, 2, 3}) == [1, 2, 3]
    assert mosaic_epochs(set(range(1, 101))) == [1, 21, 41, 60, 80, 100]


def test_run_names_are_short_and_readable() -> None:
    values = {"alpha": 0.3, "loss": "non_saturating", "lr_g": 1.2445307827707308e-07, "g_hidden": [64, 64], "k": 1}
    assert run_name(3, values, ["alpha", "loss"]) == "003 alpha=0.3 loss=non_saturating"
    assert run_name(12, values, ["lr_g", "g_hidden", "k", "absent"]) == "012 lr_g=1.245e-07 g_hidden=[64, 64] k=1"


def importance_view(values: list[tuple[float, float]]) -> StudyView:
    study = optuna.create_study(direction="maximize")
    for alpha, objective in values:
        study.add_trial(optuna.trial.create_trial(
            params={"alpha": alpha}, distributions={"alpha": optuna.distributions.CategoricalDistribution([0.3, 0.7])},
            value=objective,
        ))
    return StudyView(Path("."), "s", pd.DataFrame(), ["alpha"], [], "parzen_ll", "maximize", "", optuna_study=study)


def test_importances_need_four_complete_trials_with_two_values() -> None:
    few = importance_view([(0.3, -1.0), (0.7, -2.0), (0.3, -1.1)])
    assert param_importances(few) is None and "at least 4 complete trials" in few.notes[0]
    constant = importance_view([(0.3, -1.0), (0.3, -2.0), (0.3, -1.1), (0.3, -1.5)])
    assert param_importances(constant) is None and "0 varying" in constant.notes[0]
    enough = importance_view([(0.3, -1.0), (0.7, -2.0), (0.3, -1.1), (0.7, -2.2)])
    assert param_importances(enough) == pytest.approx({"alpha": 1.0})


# ---------------------------------------------------------------------------- the MLflow UI


def test_mlflow_ui_shows_the_trials_and_their_metrics(sweep: Path, server: MlflowServer, tmp_path: Path) -> None:
    client, experiment, parent = parent_run(server.uri, sweep / "out")
    trials = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    names = {run.info.run_name for run in trials}
    assert len(names) == 4 and all(re.fullmatch(r"\d{3} alpha=0\.[37] loss=(minimax|non_saturating)", n) for n in names)

    # The REST call the runs page makes: every trial with the same metric and param names.
    request = urllib.request.Request(
        f"{server.uri}/ajax-api/2.0/mlflow/runs/search", method="POST",
        data=json.dumps({"experiment_ids": [experiment.experiment_id], "max_results": 100}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        found = json.load(response)["runs"]
    by_name = {r["info"]["run_name"]: r for r in found}
    assert names | {"smoke"} == set(by_name)
    for name in names:
        assert EPOCH_METRICS <= {m["key"] for m in by_name[name]["data"]["metrics"]}
        assert {"alpha", "loss", "dataset", "epochs"} <= {p["key"] for p in by_name[name]["data"]["params"]}
    metric_names = {m["key"] for r in found for m in r["data"].get("metrics", [])}

    ARTIFACTS.mkdir(exist_ok=True)
    # The runs page sorted by the objective lists the trials flat (unsorted, they fold under
    # the parent), in chart mode: a chart per metric. Whether the charts themselves are drawn
    # within the virtual time depends on when Plotly's chunk loads, so only the section
    # heading, which counts the metrics, is checked.
    order = urllib.parse.quote("metrics.`parzen_ll`")
    runs_page = chromium(
        f"{server.uri}/#/experiments/{experiment.experiment_id}/runs?orderByKey={order}&orderByAsc=false&compareRunsMode=CHART",
        ARTIFACTS / "mlflow-ui-runs.png", tmp_path / "profile-runs",
    )
    assert "Training runs" in runs_page, runs_page[:2000]
    assert all(name in runs_page for name in names), runs_page[:4000]
    assert "5 matching runs" in runs_page
    # MLflow files the metrics under system/ (the workers' CPU and memory) in their own section
    system = {m for m in metric_names if m.startswith("system/")}
    assert system, metric_names
    assert f"Model metrics ({len(metric_names - system)})" in runs_page, runs_page[:4000]
    assert f"System metrics ({len(system)})" in runs_page, runs_page[:4000]
    # The compare view: the trials side by side, every param and metric, parallel coordinates.
    ids = urllib.parse.quote(json.dumps([run.info.run_id for run in trials]))
    compare = chromium(
        f"{server.uri}/#/compare-runs?runs={ids}&experiments={urllib.parse.quote(json.dumps([experiment.experiment_id]))}",
        ARTIFACTS / "mlflow-ui-compare.png", tmp_path / "profile-compare",
    )
    assert "Comparing 4 Runs" in compare and "Parallel Coordinates Plot" in compare, compare[:2000]
    assert all(name in compare for name in names)
    # Its metric rows are a virtualised table in name order: it renders the rows its window
    # holds (17 at 1400x900), so what it shows is a prefix of the runs' metrics, sorted.
    model_metrics = sorted({m["key"] for name in names for m in by_name[name]["data"]["metrics"]} - system)
    shown = [m for m in model_metrics if re.search(rf"\b{m}\b", compare)]
    assert len(shown) >= 10 and shown == model_metrics[: len(shown)], (shown, compare[:4000])
    for shot in ("mlflow-ui-runs.png", "mlflow-ui-compare.png"):
        with Image.open(ARTIFACTS / shot) as image:
            assert image.size == (1400, 900)
        print(f"screenshot: {ARTIFACTS / shot}")


def test_the_loss_figure_shows_the_alphas_of_the_best_trials_only() -> None:
    """alpha searched over a range gives each trial its own panel: the figure keeps the
    alphas of the best LOSS_PANELS trials and says so (1,000 panels took minutes and 3 GiB)."""
    from gansweep.config.schema import TrialConfig
    from gansweep.reporting import figures
    from gansweep.reporting.view import StudyView, TrialView

    history = {"d_loss": [(1, 0.69), (2, 0.68)], "g_loss": [(1, 0.7), (2, 0.71)]}
    trials = [
        TrialView(number=n, state="COMPLETE", row={}, label=str(n),
                  config=TrialConfig(dataset="circle", alpha=round(0.2 + 0.01 * n, 2)), history=history)
        for n in range(30)
    ]
    view = StudyView(Path("."), "s", pd.DataFrame(), ["alpha"], trials, "parzen_ll", "maximize", "")
    figure = figures.figure_losses(view)
    panels = [a for a in figure.axes if a.get_lines()]
    assert len(panels) == figures.LOSS_PANELS
    assert any(f"{figures.LOSS_PANELS} alphas of the best trials, of 30" in note for note in view.notes)
