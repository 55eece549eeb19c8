"""The example plugin (examples/my_gan.py) through a real packed sweep: Ray workers import it
from the unit's config, MLflow keeps the file and its hash, its metric is the objective, and a
sweep killed midway and started again finishes every trial exactly once."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import optuna
import pytest
from conftest import gansweep
from mlflow.tracking import MlflowClient
from test_sweep import check_consistent, children, kill_midway, mlflow_runs, optuna_reports, optuna_states

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
STUDY = """\
name: plugged
plugins: [my_gan.py]
trial: {dataset: circle, architecture: my_mlp, g_hidden: [32], d_hidden: [32], noise_dim: 2, loss: my_least_squares,
        alpha_mode: weight, epochs: 5, steps_per_epoch: 300, eval_samples: 300, eval_valid: 200, eval_test: 300,
        metrics: [radius_error], device: cpu}
search:
  loss: [my_least_squares, least_squares]
  lr_d: [0.001, 0.0003]
sampler: {name: grid, seed: 1}
budget: {max_concurrent: 1, pack_size: 2}
objective: {metric: radius_error}
"""


@pytest.mark.slow  # about a minute: two sweeps, the first killed midway
def test_a_plugin_sweep_killed_midway_then_rerun_finishes_exactly_once(tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "my_gan.py", tmp_path / "my_gan.py")
    # killed once the first pack has finished (2 x 5 evaluations) and the second has reported two epochs
    db = kill_midway(tmp_path, STUDY, lambda db: optuna_states(db).count("COMPLETE") >= 2 and optuna_reports(db) >= 14)
    assert optuna_states(db).count("RUNNING") >= 1, optuna_states(db)
    done = gansweep("run", "resume.yaml", "--output", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    table = check_consistent(tmp_path / "out", uri, "plugged", expected=4)
    assert set(table["state"]) == {"COMPLETE"} and (table["epochs"] == 5).all(), table.to_string()
    assert sorted(table["loss"]) == ["least_squares", "least_squares", "my_least_squares", "my_least_squares"]
    client = MlflowClient(uri)
    runs = mlflow_runs(uri, "plugged")
    for run in children(runs):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "d_loss")]
        assert steps == [1, 2, 3, 4, 5]  # no epoch lost, none logged twice
        radius = client.get_metric_history(run.info.run_id, "radius_error")
        assert [m.step for m in radius] == [1, 2, 3, 4, 5]
        # the objective is the plugin metric's last value, minimised (its declared direction)
        trial = table.set_index("trial").loc[int(run.data.tags["gansweep.trial"])]
        assert trial["objective"] == radius[-1].value
    study = optuna.load_study(study_name="plugged", storage=f"sqlite:///{db}")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    resumed = [a for t in study.trials for a in t.user_attrs.get("attempts", []) if a["resumed_from"] > 0]
    assert resumed, "the interrupted pack restarted from scratch instead of its checkpoint"
    (parent,) = [r for r in runs if r.data.tags.get("gansweep.role") == "study"]
    digest = hashlib.sha256((tmp_path / "my_gan.py").read_bytes()).hexdigest()
    assert parent.data.tags["gansweep.plugin.my_gan.py"] == digest
    logged = client.download_artifacts(parent.info.run_id, "plugins/my_gan.py", str(tmp_path / "logged"))
    assert Path(logged).read_bytes() == (tmp_path / "my_gan.py").read_bytes()
    # the report imports the logged copy of the plugin: the trials' losses are drawn
    reported = gansweep("report", "out", cwd=tmp_path)
    assert reported.returncode == 0, reported.stdout + reported.stderr
    assert (tmp_path / "out" / "report" / "losses.png").is_file()
