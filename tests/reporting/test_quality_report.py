"""The report's reference lines for a quality objective: the data as its own model scores
fid near 0, c2st_accuracy near 0.5 (reporting/baseline.py), cached like Parzen's; d_auc has
none (no discriminator), and the report's notes say n/a."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from gansweep.config.schema import TrialConfig
from gansweep.reporting.baseline import data_baselines
from gansweep.reporting.view import StudyView, TrialView

TRIAL = TrialConfig(dataset="ring8", eval_samples=2_000, eval_test=2_000, device="cpu")


def view_of(metric: str, tmp_path: Path) -> StudyView:
    trials = [TrialView(number=0, state="COMPLETE", row={}, label="0", config=TRIAL)]
    return StudyView(tmp_path, "q", pd.DataFrame(), [], trials, metric, "minimize", "sqlite:///none.db")


@pytest.mark.parametrize(("metric", "expected", "tolerance"), [
    ("c2st_accuracy", 0.5, 0.04), ("fid", 0.0, 0.01),
])
def test_data_as_its_own_model_is_the_reference(metric: str, expected: float, tolerance: float, tmp_path: Path) -> None:
    cache = tmp_path / "baseline.json"
    baselines = data_baselines(view_of(metric, tmp_path), cache)
    assert baselines == {"ring8": pytest.approx(expected, abs=tolerance)}
    stored = json.loads(cache.read_text())
    assert [json.loads(key)["metric"] for key in stored] == [metric]
    cache.write_text(json.dumps({k: {**v, "mean": 42.0} for k, v in stored.items()}))
    assert data_baselines(view_of(metric, tmp_path), cache) == {"ring8": 42.0}  # read from the cache


def test_no_baseline_for_another_metric(tmp_path: Path) -> None:
    view = view_of("wall_time", tmp_path)
    assert data_baselines(view, tmp_path / "baseline.json") == {}
    assert "not parzen_ll or a quality metric" in view.notes[0]


def test_d_auc_has_no_baseline_the_report_says_not_applicable(tmp_path: Path) -> None:
    view = view_of("d_auc", tmp_path)
    cache = tmp_path / "baseline.json"
    assert data_baselines(view, cache) == {}
    assert view.notes == ["Data-as-model d_auc baseline: n/a (the data as its own model has no discriminator to score it)."]
    assert not cache.exists()  # nothing computed, nothing cached


def test_the_report_says_what_each_score_was_computed_with(tmp_path: Path) -> None:
    """Each trial's feature space and sizes, read back from its MLflow run (a real SQLite
    store), grouped: the report's notes name them beside the trials they hold for."""
    from gansweep.reporting.view import score_settings
    from gansweep.service.tracking import TAG_FEATURES, MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("q")
    logged = {0: ("domain:digits:0123abcd", 600, 300), 1: ("domain:digits:0123abcd", 600, 300),
              2: ("inception:0cc3c7bd", 600, 300), 3: ("points:circle", None, None)}
    runs = {}
    for number, (features, n_generated, n_real) in logged.items():
        run_id = client.create_run(experiment, tags={TAG_FEATURES: features}).info.run_id
        if n_generated is not None:
            client.log_metric(run_id, "n_generated", n_generated, step=1)
            client.log_metric(run_id, "n_real", n_real, step=1)
        runs[number] = client.get_run(run_id)
    runs[4] = client.get_run(client.create_run(experiment).info.run_id)  # Parzen only: no features
    assert score_settings(runs) == {
        "domain:digits:0123abcd, 600 generated against 300 real samples": [0, 1],
        "inception:0cc3c7bd, 600 generated against 300 real samples": [2],
        "points:circle": [3],
    }
