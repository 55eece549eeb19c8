"""`gansweep run` end to end: real CLI, real Ray, real Optuna storage, real MLflow stores."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import STUDIES, clean_env, gansweep, kill_group, mlflow_runs, start_gansweep

SMOKE = STUDIES / "smoke.yaml"
EPOCH_METRICS = {"d_loss", "g_loss", "d_real", "d_fake", "d_loss_gap", "g_loss_gap", "parzen_ll", "parzen_sigma"}


def children(runs: list) -> list:
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def check_consistent(output: Path, tracking_uri: str, experiment: str, expected: int) -> pd.DataFrame:
    """Optuna, results.csv and MLflow tell the same story, one run per trial, none RUNNING."""
    table = pd.read_csv(output / "results.csv")
    assert len(table) == expected and table["trial"].is_unique
    study = optuna.load_study(study_name=experiment, storage=f"sqlite:///{output / 'optuna.db'}")
    optuna_states = {t.number: t.state.name for t in study.trials if not t.user_attrs.get("excluded")}
    assert dict(zip(table["trial"], table["state"], strict=True)) == optuna_states
    runs = mlflow_runs(tracking_uri, experiment)
    parents = [r for r in runs if r.data.tags.get("gansweep.role") == "study"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    kids = children(runs)
    assert len(kids) == expected
    assert {r.data.tags["mlflow.parentRunId"] for r in kids} == {parents[0].info.run_id}
    mlflow_states = {int(r.data.tags["gansweep.trial"]): r.data.tags["gansweep.state"] for r in kids}
    assert mlflow_states == optuna_states
    status_of = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
    for run in kids:
        assert run.info.status == status_of[run.data.tags["gansweep.state"]]
    return table


def test_smoke_study_end_to_end_and_rerun_resumes(tmp_path: Path) -> None:
    done = gansweep("run", str(SMOKE), "--output", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    output, uri = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    table = check_consistent(output, uri, "smoke", expected=4)
    assert set(table["state"]) == {"COMPLETE"}
    assert sorted(zip(table["alpha"], table["loss"], strict=True)) == [
        (0.3, "minimax"), (0.3, "non_saturating"), (0.7, "minimax"), (0.7, "non_saturating")
    ]
    assert (table["epochs"] == 3).all() and table["objective"].notna().all()
    assert list(table["objective"]) == sorted(table["objective"], reverse=True)  # best first
    client = MlflowClient(uri)
    for run in children(mlflow_runs(uri, "smoke")):
        assert EPOCH_METRICS <= set(run.data.metrics)
        assert [m.step for m in client.get_metric_history(run.info.run_id, "d_loss")] == [1, 2, 3]
        assert run.data.params["alpha"] == str(table.set_index("trial").loc[int(run.data.tags["gansweep.trial"]), "alpha"])
        assert run.info.run_name.endswith(f"alpha={run.data.params['alpha']} loss={run.data.params['loss']}")
        artifacts = {a.path for folder in ("samples", "checkpoint", "plots") for a in client.list_artifacts(run.info.run_id, folder)}
        assert {"samples/epoch_0003.png", "checkpoint/generator.pt", "plots/losses_vs_theory.png"} <= artifacts
    parent = next(r for r in mlflow_runs(uri, "smoke") if r.data.tags.get("gansweep.role") == "study")
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"results.csv", "study"}
    assert "search.alpha" in parent.data.params
    # Tune's own per-trial records are kept, its TensorBoard files are not (sweep.tune_loggers)
    trial_folders = list((output / "tune").glob("*/unit_*"))
    assert len(trial_folders) == 4 and all((f / "result.json").is_file() for f in trial_folders)
    assert not list((output / "tune").rglob("events.out.tfevents*"))

    again = gansweep("run", str(SMOKE), "--output", "out", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    rerun = check_consistent(output, uri, "smoke", expected=4)  # resumed: nothing new
    pd.testing.assert_frame_equal(rerun, table)


def test_the_driver_leaves_torch_to_the_workers() -> None:
    """gansweep.service.trainable keeps the training code out of the driver: importing the sweep, the
    report and the CLI imports no torch (about 2 s on 2 cores; workers import it themselves)."""
    code = (
        "import sys, gansweep.cli, gansweep.service.sweep, gansweep.reporting.html; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorboardX')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


PRUNING_STUDY = """\
name: prune
trial:
  dataset: line
  g_hidden: [64, 64]
  d_hidden: [64, 64]
  noise_dim: 2
  alpha_mode: weight
  epochs: 6
  steps_per_epoch: 250
  batch_size: 128
  lr_d: 0.002
  eval_samples: 1000
  eval_valid: 300
  eval_test: 500
  device: cpu
search:
  lr_g: [1.0e-7, 0.002]    # a generator that cannot learn, and one that can
  seed: [0, 1, 2, 3]
sampler: {name: grid, seed: 0}
pruner: {name: PRUNER, startup_trials: 2, warmup_epochs: 1}
budget: {max_concurrent: 2}
"""


def run_pruning_study(tmp_path: Path, pruner: str) -> pd.DataFrame:
    folder = tmp_path / pruner
    folder.mkdir()
    (folder / "prune.yaml").write_text(PRUNING_STUDY.replace("PRUNER", pruner))
    done = gansweep("run", "prune.yaml", "--output", "out", cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    return check_consistent(folder / "out", f"sqlite:///{folder / 'mlflow.db'}", "prune", expected=8)


@pytest.mark.slow  # about a minute: 8 trials; the pack pruning test (default suite) prunes through the same ledger
def test_pruning_stops_poor_trials_and_saves_epochs(tmp_path: Path) -> None:
    full = run_pruning_study(tmp_path, "none")
    pruned = run_pruning_study(tmp_path, "median")
    assert set(full["state"]) == {"COMPLETE"} and full["epochs"].sum() == 48
    stopped = pruned[pruned["state"] == "PRUNED"]
    assert len(stopped) >= 2
    assert (stopped["pruned_at"] < 6).all() and (stopped["epochs"] == stopped["pruned_at"]).all()
    assert pruned["epochs"].sum() < full["epochs"].sum()
    # the poor trials are the ones stopped: most pruned trials had the frozen generator
    assert (stopped["lr_g"] == 1e-7).sum() > (stopped["lr_g"] == 0.002).sum()
    # comparable best value: within the epoch-to-epoch noise of Parzen on this set (~1 nat)
    assert pruned["objective"].max() == pytest.approx(full["objective"].max(), abs=0.5)
    client = MlflowClient(f"sqlite:///{tmp_path / 'median' / 'mlflow.db'}")
    for run in children(mlflow_runs(client.tracking_uri, "prune")):
        if run.data.tags["gansweep.state"] == "PRUNED":
            trial = int(run.data.tags["gansweep.trial"])
            at = int(run.data.tags["gansweep.pruned_at"])
            assert at == int(stopped.set_index("trial").loc[trial, "pruned_at"])
            assert max(m.step for m in client.get_metric_history(run.info.run_id, "d_loss")) == at


DIVERGING_STUDY = """\
name: diverge
trial: {dataset: circle, g_hidden: [16], d_hidden: [16], epochs: 2, steps_per_epoch: 20,
        optimizer: sgd, eval_samples: 200, eval_valid: 100, eval_test: 200, device: cpu}
search:
  lr_d: [0.01, 1.0e+12]
sampler: {name: grid}
"""


def test_a_diverging_trial_fails_with_its_reason_and_the_sweep_goes_on(tmp_path: Path) -> None:
    (tmp_path / "diverge.yaml").write_text(DIVERGING_STUDY)
    done = gansweep("run", "diverge.yaml", "--output", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    table = check_consistent(tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}", "diverge", expected=2)
    by_lr = table.set_index("lr_d")
    assert by_lr.loc[0.01, "state"] == "COMPLETE"
    assert by_lr.loc[1e12, "state"] == "FAIL"
    assert "diverged at epoch 1" in by_lr.loc[1e12, "failure_reason"]
    failed = [r for r in mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "diverge") if r.data.tags.get("gansweep.state") == "FAIL"]
    assert "diverged at epoch 1" in failed[0].data.tags["gansweep.failure_reason"]


OUT_OF_MEMORY_STUDY = """\
name: oom
trial: {dataset: circle, d_hidden: [16], epochs: 2, steps_per_epoch: 20,
        eval_samples: 200, eval_valid: 100, eval_test: 200, device: cpu}
search:
  g_hidden: [[16], [4000000000000]]  # the second: a weight matrix of tens of terabytes
sampler: {name: grid}
budget: {max_failures: 2}
"""


def test_a_trial_out_of_memory_fails_with_its_reason_and_the_sweep_goes_on(tmp_path: Path) -> None:
    (tmp_path / "oom.yaml").write_text(OUT_OF_MEMORY_STUDY)
    done = gansweep("run", "oom.yaml", "--output", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    table = check_consistent(tmp_path / "out", uri, "oom", expected=2)
    assert sorted(table["state"]) == ["COMPLETE", "FAIL"]
    failed = table[table["state"] == "FAIL"].iloc[0]
    assert "out of memory on cpu at epoch 0" in failed["failure_reason"]
    assert "can't allocate memory" in failed["failure_reason"]
    runs = [r for r in mlflow_runs(uri, "oom") if r.data.tags.get("gansweep.state") == "FAIL"]
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert runs[0].data.tags["gansweep.failure_reason"] == failed["failure_reason"]
    # reported by the trial itself, not a crashed worker that Tune retried max_failures times
    assert not failed["failure_reason"].startswith("worker error")


RESUME_STUDY = """\
name: resume
trial: {dataset: circle, g_hidden: [32], d_hidden: [32], noise_dim: 2, epochs: 6, steps_per_epoch: 150,
        eval_samples: 300, eval_valid: 200, eval_test: 300, device: cpu}
search:
  alpha: [0.3, 0.4, 0.5, 0.6, 0.7]
sampler: {name: grid, seed: 1}
budget: {max_concurrent: 2}
"""


def optuna_states(db: Path) -> list[str]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=5) as connection:
            return [row[0] for row in connection.execute("select state from trials")]
    except sqlite3.OperationalError:
        return []  # tables not created yet


def optuna_reports(db: Path) -> int:
    """Evaluations reported so far, over all trials."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as connection:
            return connection.execute("select count(*) from trial_intermediate_values").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def rerun_finishes_the_alpha_grid_once(tmp_path: Path, experiment: str) -> None:
    """The same command again ends a killed sweep of alphas 0.3 to 0.7, 6 epochs each
    (resume.yaml): each trial COMPLETE once, every epoch in MLflow exactly once."""
    done = gansweep("run", "resume.yaml", "--output", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    table = check_consistent(tmp_path / "out", uri, experiment, expected=5)
    assert sorted(table["alpha"]) == [0.3, 0.4, 0.5, 0.6, 0.7]
    assert set(table["state"]) == {"COMPLETE"} and (table["epochs"] == 6).all(), table.to_string()
    client = MlflowClient(uri)
    for run in children(mlflow_runs(uri, experiment)):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "d_loss")]
        assert steps == [1, 2, 3, 4, 5, 6]  # no epoch lost, none logged twice


def kill_midway(tmp_path: Path, study: str, killed_when: Callable[[Path], bool], settle: float = 0.0) -> Path:
    """`gansweep run` of `study` (as resume.yaml, output out/), SIGKILLed (no cleanup at all,
    MLflow runs left RUNNING) `settle` s after `killed_when(optuna.db)` holds; the database."""
    (tmp_path / "resume.yaml").write_text(study)
    driver = start_gansweep("run", "resume.yaml", "--output", "out", cwd=tmp_path, log=tmp_path / "first.log")
    db = tmp_path / "out" / "optuna.db"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not killed_when(db):
        assert driver.poll() is None, (tmp_path / "first.log").read_text()
        time.sleep(0.2)
    time.sleep(settle)
    kill_group(driver)
    return db


def one_finished_one_midway(db: Path) -> bool:
    return optuna_states(db).count("COMPLETE") >= 1 and optuna_states(db).count("RUNNING") >= 1


def one_finished_one_checkpointed(db: Path) -> bool:
    """A trial COMPLETE and a RUNNING one whose checkpoint Optuna has recorded (a fixed wait
    after the first COMPLETE could land before the next trial's first checkpoint)."""
    if optuna_states(db).count("COMPLETE") < 1:
        return False
    try:
        with sqlite3.connect(db, timeout=5) as connection:
            return connection.execute(
                "select count(*) from trials t join trial_user_attributes a on a.trial_id = t.trial_id "
                "where t.state = 'RUNNING' and a.key = 'checkpoint'"
            ).fetchone()[0] > 0
    except sqlite3.OperationalError:
        return False


def test_driver_killed_mid_sweep_then_rerun_finishes_exactly_once(tmp_path: Path) -> None:
    db = kill_midway(tmp_path, RESUME_STUDY, one_finished_one_checkpointed)
    states = optuna_states(db)
    assert "RUNNING" in states and len(states) < 5 + 2, states
    assert forget_checkpointed_epochs(tmp_path), "no trial was killed after a checkpoint"
    rerun_finishes_the_alpha_grid_once(tmp_path, "resume")


def forget_checkpointed_epochs(tmp_path: Path) -> int:
    """What a driver killed with its MLflow outbox still full leaves: each interrupted trial's
    run without the epochs from its last checkpoint's on, though Optuna has that checkpoint.
    The epochs are deleted from the MLflow store (SQLite) as if never delivered; the resumed
    trial must log them again from the checkpoint's history.json. Returns the trials so treated."""
    study = optuna.load_study(study_name="resume", storage=f"sqlite:///{tmp_path / 'out' / 'optuna.db'}")
    runs = {r.data.tags["gansweep.trial"]: r.info.run_id for r in children(mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "resume"))}
    forgotten = 0
    with sqlite3.connect(tmp_path / "mlflow.db") as connection:
        for trial in study.trials:
            checkpoint = trial.user_attrs.get("checkpoint")
            if trial.state.is_finished() or checkpoint is None:
                continue
            history = json.loads((Path(checkpoint) / "members" / str(trial.number) / "history.json").read_text())
            assert [part["epoch"] for part in history] == list(range(1, len(history) + 1))
            assert {"d_loss", "g_loss", "parzen_ll"} <= set(history[-1])
            for table in ("metrics", "latest_metrics"):
                connection.execute(f"delete from {table} where run_uuid = ? and step >= ?",
                                   (runs[str(trial.number)], history[-1]["epoch"]))
            forgotten += 1
    return forgotten


@pytest.mark.slow  # 40 s with the server; the stack rehearsal and the report tests also use a server
def test_a_real_mlflow_server_as_tracking_uri(tmp_path: Path, mlflow_server) -> None:
    done = gansweep("run", str(SMOKE), "--output", "out", "--set", "budget.trials=2",
                    "--tracking-uri", mlflow_server.uri, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to the local default store
    check_consistent(tmp_path / "out", mlflow_server.uri, "smoke", expected=2)
    client = MlflowClient(mlflow_server.uri)
    run = children(mlflow_runs(mlflow_server.uri, "smoke"))[0]
    assert "checkpoint/generator.pt" in {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}


def test_tracking_server_down_at_start_is_a_clear_error(tmp_path: Path) -> None:
    from conftest import free_port

    done = gansweep("run", str(SMOKE), "--output", "out", "--tracking-uri", f"http://127.0.0.1:{free_port()}",
                    cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert "MLflow tracking at http://127.0.0.1" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "tune").exists()  # no trial started


def test_ctrl_c_ends_runs_as_killed_and_the_rerun_resumes(tmp_path: Path) -> None:
    import signal

    (tmp_path / "resume.yaml").write_text(RESUME_STUDY)
    driver = start_gansweep("run", "resume.yaml", "--output", "out", cwd=tmp_path, log=tmp_path / "first.log")
    db = tmp_path / "out" / "optuna.db"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and optuna_reports(db) < 3:  # trials midway, checkpointed
        assert driver.poll() is None, (tmp_path / "first.log").read_text()
        time.sleep(0.5)
    os.killpg(driver.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's process group
    assert driver.wait(timeout=120) != 0
    log = (tmp_path / "first.log").read_text()
    assert "run the same command to resume" in log
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = mlflow_runs(uri, "resume")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    interrupted = [r for r in children(runs) if r.data.tags["gansweep.state"] == "INTERRUPTED"]
    assert interrupted and all(r.info.status == "KILLED" for r in interrupted)
    parent = next(r for r in runs if r.data.tags.get("gansweep.role") == "study")
    assert parent.info.status == "KILLED"

    done = gansweep("run", "resume.yaml", "--output", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    table = check_consistent(tmp_path / "out", uri, "resume", expected=5)
    assert set(table["state"]) == {"COMPLETE"}
    client = MlflowClient(uri)
    for run in interrupted:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "d_loss")]
        assert steps == [1, 2, 3, 4, 5, 6]  # continued in the same run, no epoch twice


def test_a_second_objective_makes_a_multi_objective_study(tmp_path: Path) -> None:
    done = gansweep("run", str(SMOKE), "--output", "out", "--set", "budget.trials=2",
                    "--set", "objective.second.metric=wall_time", "--set", "objective.second.direction=minimize",
                    cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    table = check_consistent(tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}", "smoke", expected=2)
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{tmp_path / 'out' / 'optuna.db'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    by_trial = table.set_index("trial")
    for trial in study.trials:
        assert by_trial.loc[trial.number, "objective"] == pytest.approx(trial.values[0])
        assert by_trial.loc[trial.number, "objective_2"] == pytest.approx(trial.values[1])
        assert trial.values[1] == pytest.approx(trial.user_attrs["wall_time"])


LEGACY_STUDY = """\
name: legacy
trial: {dataset: circle, g_hidden: [16], d_hidden: [16], noise_dim: 2, epochs: 2, steps_per_epoch: 40,
        eval_samples: 300, eval_valid: 200, eval_test: 300, device: cpu}
search:
  lr_d: [0.001, 0.002, 0.0005]
sampler: {name: grid, seed: 0}
budget: {trials: 3, pack_size: 2, max_concurrent: 2}
"""


def write_legacy_folder(tmp_path: Path) -> dict[int, float]:
    """An output folder as the release before the one trial protocol left it when its driver
    was killed after epoch 1 of 2: trials 0 and 1 a pack (Optuna attr "pack", state.pt with
    "numbers", "data_seed", "pack", "last"), trial 2 a lone trial (Optuna attr "checkpoint"
    only, the unit state and "generator" at the top of state.pt, generator.pt beside it), and
    Tune trial configs with "numbers" / "number". Returns each trial's epoch-2 d_loss as an
    uninterrupted run trains it."""
    import json

    import torch

    from gansweep.config.load import load_study
    from gansweep.config.schema import TrialConfig
    from gansweep.engine import run
    from gansweep.engine.data import load_dataset
    from gansweep.service.search import OptunaStudy

    torch.set_num_threads(1)  # as the worker (budget.cpus_per_trial 1)
    (tmp_path / "legacy.yaml").write_text(LEGACY_STUDY)
    output = tmp_path / "out"
    output.mkdir()
    study = OptunaStudy(load_study(tmp_path / "legacy.yaml"), f"sqlite:///{output / 'optuna.db'}")
    asked = [study.ask() for _ in range(3)]
    trials = [TrialConfig.model_validate(values) for _, values in asked]
    data = load_dataset("circle", seed=trials[0].seed, device="cpu")
    experiment = output / "tune" / "legacy-20250101-000000"
    expected = {}
    for numbers, execution in (([0, 1], "packed"), ([2], "eager")):
        members = [trials[n] for n in numbers]
        straight = run.build_unit(members, data, execution=execution)
        run.train_epoch(straight)
        expected.update({n: m["d_loss"] for n, m in zip(numbers, run.train_epoch(straight), strict=True)})
        unit = run.build_unit(members, data, execution=execution)
        last = run.train_epoch(unit)
        kind = "pack" if len(numbers) > 1 else "trial"
        folder = experiment / f"{kind}_{numbers[0]:04d}_old{numbers[0]}" / "checkpoint_000000"
        folder.mkdir(parents=True)
        if len(numbers) > 1:
            torch.save({"epoch": 1, "numbers": numbers, "data_seed": trials[0].seed, "pack": run.unit_state(unit),
                        "last": {str(n): m for n, m in zip(numbers, last, strict=True)}}, folder / "state.pt")
            config = {"numbers": numbers, "values": [asked[n][1] for n in numbers], "resume": None, "threads": 1}
        else:
            saved = run.unit_state(unit)
            saved["generator"] = run.member_generator_state(unit, 0)
            torch.save(saved, folder / "state.pt")
            torch.save({"generator": saved["generator"], "trial": members[0].model_dump(mode="json")},
                       folder / "generator.pt")
            config = {"number": numbers[0], "values": asked[numbers[0]][1], "resume": None, "threads": 1}
        (folder.parent / "params.json").write_text(json.dumps(config))
        for number in numbers:
            attrs = {"tune_trial_id": f"old{numbers[0]}", "checkpoint": str(folder)}
            study.set_attrs(number, {**attrs, "pack": numbers} if len(numbers) > 1 else attrs)
    return expected


def test_an_output_folder_from_before_the_one_protocol_resumes(tmp_path: Path) -> None:
    expected = write_legacy_folder(tmp_path)
    study = optuna.load_study(study_name="legacy", storage=f"sqlite:///{tmp_path / 'out' / 'optuna.db'}")
    lone = Path(study.trials[2].user_attrs["checkpoint"])
    # a checkpoint gone: said plainly, exit 2, nothing tracked or trained
    lone.rename(lone.with_name("moved"))
    refused = gansweep("run", "legacy.yaml", "--output", "out", cwd=tmp_path)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"cannot resume 'legacy': trial(s) 2 stopped unfinished, and their checkpoint {lone} has no state.pt" in refused.stderr
    assert "--output" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "mlflow.db").exists()
    assert [t.state.name for t in optuna.load_study(study_name="legacy", storage=f"sqlite:///{tmp_path / 'out' / 'optuna.db'}").trials] == ["RUNNING"] * 3

    lone.with_name("moved").rename(lone)
    done = gansweep("run", "legacy.yaml", "--output", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    table = check_consistent(tmp_path / "out", uri, "legacy", expected=3)
    assert set(table["state"]) == {"COMPLETE"} and (table["epochs"] == 2).all()
    study = optuna.load_study(study_name="legacy", storage=f"sqlite:///{tmp_path / 'out' / 'optuna.db'}")
    client = MlflowClient(uri)
    for run in children(mlflow_runs(uri, "legacy")):
        number = int(run.data.tags["gansweep.trial"])
        assert [a["resumed_from"] for a in study.trials[number].user_attrs["attempts"]] == [1]
        (logged,) = client.get_metric_history(run.info.run_id, "d_loss")  # epoch 2 only: resumed
        # the same networks, moments and draws as an uninterrupted run (the lone trial resumes
        # packed, as its study now packs: the same iteration, up to rounding)
        assert logged.step == 2 and logged.value == pytest.approx(expected[number], rel=1e-5)


FITS_STUDY = """\
name: fits
trial: {dataset: line, g_hidden: [8], d_hidden: [8], noise_dim: 1, batch_size: 32, epochs: 2, alpha_mode: weight,
        steps_per_epoch: 5, eval_samples: 100, eval_valid: 50, eval_test: 100, device: cpu}
search:
  alpha: {uniform: [0.2, 0.8]}
sampler: {name: random, seed: 0}
budget: {trials: 5, max_concurrent: 2, pack_size: 2}
"""


def test_a_study_of_more_units_than_one_fit_runs_as_successive_fits(tmp_path: Path) -> None:
    """Tune keeps every trial it ran until its fit returns (sweep.UNITS_PER_FIT): with 2
    units per fit, 5 trials in packs of 2 are 3 units, run as a fit of 2 and a fit of 1, over
    one Optuna study and one MLflow parent run; every trial once, each epoch logged once."""
    (tmp_path / "fits.yaml").write_text(FITS_STUDY)
    env = {**clean_env(), "GANSWEEP_UNITS_PER_FIT": "2"}
    done = gansweep("run", "fits.yaml", "--output", "out", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    table = check_consistent(tmp_path / "out", uri, "fits", expected=5)
    assert set(table["state"]) == {"COMPLETE"} and (table["epochs"] == 2).all()
    experiments = sorted(f.name for f in (tmp_path / "out" / "tune").iterdir() if f.is_dir() and f.name.startswith("fits-"))
    assert len(experiments) == 2 and experiments[1].endswith("-2"), experiments
    units = {e: len(list((tmp_path / "out" / "tune" / e).glob("unit_*"))) for e in experiments}
    assert sorted(units.values()) == [1, 2], units
    client = MlflowClient(uri)
    for run in children(mlflow_runs(uri, "fits")):
        assert [m.step for m in client.get_metric_history(run.info.run_id, "d_loss")] == [1, 2]

    refused = gansweep("run", "fits.yaml", "--output", "out2", cwd=tmp_path,
                       env={**clean_env(), "GANSWEEP_UNITS_PER_FIT": "0"})
    assert refused.returncode == 2 and "GANSWEEP_UNITS_PER_FIT='0'" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "out2").exists()
