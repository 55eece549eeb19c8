"""SIGTERM (docker stop, Kubernetes, a batch scheduler) to `gansweep run` ends the sweep as
Ctrl-C does (issue 29, item 1). Before, Ray's C++ handler printed a stack and its 3-second
alarm aborted the driver (exit 134) midway through its cleanup, the parent MLflow run left
RUNNING. A real driver, a real SIGTERM to its pid alone (as `docker stop` sends it)."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import gansweep, kill_group, mlflow_runs, start_gansweep

STUDY = """\
name: term
trial: {dataset: circle, g_hidden: [32], d_hidden: [32], noise_dim: 2, epochs: 6, steps_per_epoch: 150,
        eval_samples: 300, eval_valid: 200, eval_test: 300, device: cpu}
search:
  alpha: [0.3, 0.5, 0.7]
sampler: {name: grid, seed: 1}
budget: {max_concurrent: 2}
"""
GRACE_S = 30  # Kubernetes' default terminationGracePeriodSeconds (docker stop gives 10)


def evaluations(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as connection:
            return connection.execute("select count(*) from trial_intermediate_values").fetchone()[0]
    except sqlite3.OperationalError:
        return 0  # not created yet


@pytest.mark.slow  # two sweeps of a few trials: about a minute and a half
def test_sigterm_ends_the_sweep_as_ctrl_c_and_the_rerun_resumes(tmp_path: Path) -> None:
    (tmp_path / "term.yaml").write_text(STUDY)
    log = tmp_path / "first.log"
    driver = start_gansweep("run", "term.yaml", "--output", "out", cwd=tmp_path, log=log)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and evaluations(tmp_path / "out" / "optuna.db") < 2:
            assert driver.poll() is None, log.read_text()
            time.sleep(0.5)
        sent = time.monotonic()
        os.kill(driver.pid, signal.SIGTERM)  # the driver alone, not its process group
        code = driver.wait(timeout=120)
        took = time.monotonic() - sent
    finally:
        kill_group(driver)
    text = log.read_text()
    assert code == 143, text
    assert "gansweep: stopped by SIGTERM; resume with: gansweep run term.yaml --output out" in text
    assert "*** SIGTERM received" not in text and "Traceback" not in text, text
    assert took < GRACE_S, took
    runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "term")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert next(r for r in runs if r.data.tags.get("gansweep.role") == "study").info.status == "KILLED"
    interrupted = [r for r in runs if r.data.tags.get("gansweep.state") == "INTERRUPTED"]
    assert interrupted and all(r.info.status == "KILLED" for r in interrupted)

    again = gansweep("run", "term.yaml", "--output", "out", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "term")
    finished = [r for r in runs if r.data.tags.get("gansweep.state") == "COMPLETE"]
    assert sorted(float(r.data.params["alpha"]) for r in finished) == [0.3, 0.5, 0.7]
