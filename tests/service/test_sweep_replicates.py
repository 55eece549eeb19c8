"""`gansweep run` with seed replicates, objective.select: best and a search over data sets:
real CLI, Ray, Optuna and MLflow (slow: a Ray start and a few small sweeps, minutes on 2 cores)."""

from __future__ import annotations

import statistics
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import gansweep, mlflow_runs
from test_sweep import kill_midway, one_finished_one_midway, optuna_states

pytestmark = pytest.mark.slow

STUDY = """\
name: seeds
trial: {dataset: circle, g_hidden: [16], d_hidden: [16], noise_dim: 2, epochs: 3, steps_per_epoch: 20,
        eval_samples: 300, eval_valid: 200, eval_test: 300, device: cpu, seed: 5}
search:
  dataset: [circle, ring8]
sampler: {name: grid, seed: 0}
budget: {replicates: 2, max_concurrent: 2}
objective: {select: best}
"""


def history(client: MlflowClient, run_id: str, name: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, name)}


def test_replicates_nest_their_runs_rank_per_data_set_and_keep_the_best_generator(tmp_path: Path) -> None:
    import mlflow
    import mlflow.pytorch
    import torch

    (tmp_path / "seeds.yaml").write_text(STUDY)
    done = gansweep("run", "seeds.yaml", "--output", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    assert len(table) == 2 * (1 + 2)
    configurations = table[table["replicate"].isna()]
    assert list(configurations["dataset"]) == ["circle", "ring8"]  # ranked per data set, as listed
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    runs = mlflow_runs(uri, "seeds")
    (study_run,) = [r for r in runs if r.data.tags.get("gansweep.role") == "study"]
    config_runs = {int(r.data.tags["gansweep.trial"]): r for r in runs
                   if r.data.tags.get("mlflow.parentRunId") == study_run.info.run_id}
    assert sorted(config_runs) == sorted(configurations["trial"])
    mlflow.set_tracking_uri(uri)
    for _, row in configurations.iterrows():
        seeds = table[(table["trial"] == row["trial"]) & table["replicate"].notna()]
        assert list(seeds["seed"]) == [5, 6] and set(seeds["state"]) == {"COMPLETE"}
        assert row["objective"] == pytest.approx(seeds["objective"].mean())  # Optuna's value: the mean
        assert row["objective_stderr"] == pytest.approx(seeds["objective"].std(ddof=1) / 2 ** 0.5)
        parent = config_runs[int(row["trial"])]
        replicate_runs = {int(r.data.tags["gansweep.replicate"]): r for r in runs
                          if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
        assert sorted(replicate_runs) == [0, 1]
        # the configuration's verdict, in results.csv and on its run: its replicates' verdicts
        verdicts = [replicate_runs[r].data.tags["gansweep.equilibrium"] for r in (0, 1)]
        assert list(seeds["equilibrium"]) == verdicts
        want = verdicts[0] if verdicts[0] == verdicts[1] else ", ".join(f"{v} x1" for v in sorted(verdicts))
        assert row["equilibrium"] == parent.data.tags["gansweep.equilibrium"] == want
        curves = [history(client, replicate_runs[r].info.run_id, "parzen_ll") for r in (0, 1)]
        mean_curve = history(client, parent.info.run_id, "parzen_ll")
        assert mean_curve == pytest.approx({e: statistics.fmean(c[e] for c in curves) for e in (1, 2, 3)})
        for (_, seed_row), run, curve in zip(seeds.iterrows(), (replicate_runs[0], replicate_runs[1]), curves, strict=True):
            assert run.info.status == "FINISHED" and run.data.params["seed"] == str(seed_row["seed"])
            best_epoch = max(curve, key=curve.get)  # select: best, maximize
            assert seed_row["objective"] == pytest.approx(curve[best_epoch])
            assert int(run.data.tags["gansweep.best_epoch"]) == best_epoch == seed_row["best_epoch"]
            model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/best_model")
            assert model(torch.randn(64, 2)).shape == (64, 2)  # noise_dim 2 -> points in 2D
    report = tmp_path / "out" / "report"
    assert (report / "objective_vs_params.dataset=circle.png").is_file()
    assert (report / "objective_vs_params.dataset=ring8.png").is_file()
    assert not (report / "objective_vs_params.png").exists()  # never one axis for both


RESUME = """\
name: seeds-resume
trial: {dataset: circle, g_hidden: [32], d_hidden: [32], noise_dim: 2, epochs: 6, steps_per_epoch: 150,
        eval_samples: 300, eval_valid: 200, eval_test: 300, device: cpu}
search:
  alpha: [0.3, 0.5, 0.7]
sampler: {name: grid, seed: 1}
budget: {replicates: 2, max_concurrent: 2}
"""


def test_a_killed_sweep_with_replicates_resumes_every_replicate_exactly_once(tmp_path: Path) -> None:
    db = kill_midway(tmp_path, RESUME, one_finished_one_midway, settle=2.0)
    assert "RUNNING" in optuna_states(db)
    done = gansweep("run", "resume.yaml", "--output", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    assert len(table) == 3 * (1 + 2) and set(table["state"]) == {"COMPLETE"}
    assert sorted(zip(table["trial"], table["replicate"].fillna(-1))) == [
        (t, r) for t in range(3) for r in (-1, 0, 1)]  # each replicate exactly once
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    runs = mlflow_runs(uri, "seeds-resume")
    replicate_runs = [r for r in runs if "gansweep.replicate" in r.data.tags]
    assert len(replicate_runs) == 6 and {r.info.status for r in replicate_runs} == {"FINISHED"}
    assert len({(r.data.tags["gansweep.trial"], r.data.tags["gansweep.replicate"]) for r in replicate_runs}) == 6
    for run in replicate_runs:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "d_loss")] == [1, 2, 3, 4, 5, 6]
    for _, row in table[table["replicate"].isna()].iterrows():
        seeds = table[(table["trial"] == row["trial"]) & table["replicate"].notna()]
        assert row["objective"] == pytest.approx(seeds["objective"].mean())
