"""Quality metrics through `gansweep run`: each trial's MLflow run holds them per evaluation,
tagged with their feature space and the blind-discriminator verdict, and one of them is the
objective Optuna is told, in its direction (slow: real Ray, Optuna and MLflow)."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import STUDIES, gansweep, mlflow_runs


@pytest.mark.slow
def test_quality_metrics_reach_mlflow_and_optuna(tmp_path: Path) -> None:
    done = gansweep(
        "run", str(STUDIES / "smoke.yaml"), "--output", "out", "--set", "budget.trials=2",
        "--set", "trial.metrics=[c2st_accuracy, d_auc, fid]", "--set", "objective.metric=c2st_accuracy",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{tmp_path / 'out' / 'optuna.db'}")
    assert [d.name for d in study.directions] == ["MINIMIZE"]  # c2st_accuracy's own direction
    client = MlflowClient(uri)
    runs = [r for r in mlflow_runs(uri, "smoke") if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 2
    by_number = {t.number: t for t in study.trials}
    for run in runs:
        assert {"c2st_accuracy", "d_auc", "fid", "blind_discriminator"} <= set(run.data.metrics)
        assert run.data.tags["gansweep.features"] == "points:circle"
        assert run.data.tags["gansweep.blind_discriminator"] in ("true", "false")
        assert run.data.tags["gansweep.equilibrium"] in ("settled", "blind", "unsettled")  # smoke: non_saturating
        assert "d_logit_std" in run.data.metrics
        history = client.get_metric_history(run.info.run_id, "c2st_accuracy")
        assert sorted(m.step for m in history) == [1, 2, 3]
        last = max(history, key=lambda m: m.step).value
        assert 0.0 <= last <= 1.0
        assert by_number[int(run.data.tags["gansweep.trial"])].values[0] == pytest.approx(last)

    # results.csv: each trial's last verdict beside its losses, as its run's tag says
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    tagged = {int(r.data.tags["gansweep.trial"]): r.data.tags["gansweep.equilibrium"] for r in runs}
    assert dict(zip(results["trial"], results["equilibrium"], strict=True)) == tagged

    # the report: the data as its own model as the reference, a blind discriminator flagged
    flagged = next(r for r in runs if r.data.tags["gansweep.trial"] == "0")
    client.set_tag(flagged.info.run_id, "gansweep.blind_discriminator", "true")  # as an evaluation would
    report = gansweep("report", str(tmp_path / "out"), "--tracking-uri", uri, cwd=tmp_path)
    assert report.returncode == 0, report.stdout + report.stderr
    page = (tmp_path / "out" / "report" / "index.html").read_text()
    assert "Data-as-model c2st_accuracy baseline" in page
    assert re.search(r"baseline \(real training points[^<]*\): circle 0\.[45]\d*\.</p>", page)  # near 0.5
    assert "trial 0 (" in page and "blind discriminator equilibrium" in page
    assert page.count("blind discriminator equilibrium") == 1  # trial 1 is not flagged
    assert "<th>equilibrium</th>" in page
    # what each score was computed with, read back from the runs (reporting/view.py score_settings)
    assert "c2st_accuracy computed in points:circle, 1000 generated against 1000 real samples (trials 0, 1)." in page
    for verdict in tagged.values():
        assert f"<td class='text'>{verdict}</td>" in page
