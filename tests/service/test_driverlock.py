"""One driver per study: the output folder's lock and the shared storage's lease, with real
processes holding them (and SIGKILLed), then two real `gansweep run` drivers of one study."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from conftest import clean_env, gansweep, kill_group, start_gansweep
from gansweep.service import driverlock
from gansweep.service.driverlock import LEASE_ATTR, LOCK_FILE, DriverRunning, OutputLock, one_driver
from test_sweep import check_consistent, optuna_states

HOLDER = """
import sys, time
from pathlib import Path
import optuna
from gansweep.service import driverlock
driverlock.HEARTBEAT_S = 0.2
output, url = Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None
shared = None
if url:
    storage = optuna.storages.RDBStorage(url)
    shared = (storage, storage.get_study_id_from_name("s"))
with driverlock.one_driver("s", output, shared):
    print("held", flush=True)
    time.sleep(600)
"""


def start_holder(output: Path, url: str | None = None) -> subprocess.Popen:
    output.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(output), *([url] if url else [])],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def lease(url: str) -> dict | None:
    storage = optuna.storages.RDBStorage(url)
    return storage.get_study_system_attrs(storage.get_study_id_from_name("s")).get(LEASE_ATTR)


def shared_study(tmp_path: Path) -> tuple[str, tuple]:
    """A study in a storage that drivers with their own output folders (one, two, out) share."""
    for name in ("one", "two", "out"):
        (tmp_path / name).mkdir()
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.create_study(study_name="s", storage=url)
    storage = optuna.storages.RDBStorage(url)
    return url, (storage, storage.get_study_id_from_name("s"))


def test_the_output_lock_refuses_while_held_and_a_killed_holder_does_not_block(tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = start_holder(out)
    try:
        record = json.loads((out / LOCK_FILE).read_text())
        assert (record["host"], record["pid"]) == (socket.gethostname(), holder.pid)
        for attempt in (lambda: OutputLock(out).refuse_if_held("s"), lambda: one_driver("s", out).__enter__()):
            with pytest.raises(DriverRunning) as refused:
                attempt()
            message = str(refused.value)
            assert f"pid {holder.pid} on host {socket.gethostname()}, running since {record['started']}" in message
            assert str(out / LOCK_FILE) in message and "run the same command to resume" in message
        assert os.listdir(out) == [LOCK_FILE] and json.loads((out / LOCK_FILE).read_text()) == record
    finally:
        kill_group(holder)  # SIGKILL: the stale lock file stays, the kernel's lock does not
    assert (out / LOCK_FILE).exists()
    with one_driver("s", out) as me:
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == me.pid == os.getpid()
    assert os.listdir(out) == []  # removed at the end


def test_the_lease_in_a_shared_storage_refuses_while_fresh(tmp_path: Path) -> None:
    url, shared = shared_study(tmp_path)
    holder = start_holder(tmp_path / "one", url)
    try:
        first = lease(url)
        assert (first["host"], first["pid"]) == (socket.gethostname(), holder.pid)
        time.sleep(1.0)
        assert lease(url)["heartbeat"] > first["heartbeat"]  # the holder's thread refreshes it
        with pytest.raises(DriverRunning) as refused:
            with one_driver("s", tmp_path / "two", shared):
                pass
        assert f"pid {holder.pid} on host {socket.gethostname()}" in str(refused.value)
        assert "shared Optuna storage" in str(refused.value)
        assert lease(url)["pid"] == holder.pid  # the refused driver changed nothing
    finally:
        kill_group(holder)
    # Its pid is dead on this host: taken over at once, not after the 60 s of staleness.
    with one_driver("s", tmp_path / "two", shared):
        assert lease(url)["pid"] == os.getpid()
    assert lease(url) is None  # released


@pytest.mark.parametrize("age_s, taken", [(5.0, False), (driverlock.STALE_S + 30, True)])
def test_a_lease_from_another_host_is_taken_over_once_stale(tmp_path: Path, age_s: float, taken: bool) -> None:
    url, (storage, study_id) = shared_study(tmp_path)
    other = {"host": "elsewhere", "pid": 1, "started": "2030-01-01T00:00:00Z", "token": "theirs",
             "heartbeat": time.time() - age_s}
    storage.set_study_system_attr(study_id, LEASE_ATTR, other)
    if taken:
        with one_driver("s", tmp_path / "out", (storage, study_id)):
            assert lease(url)["host"] == socket.gethostname()
    else:
        with pytest.raises(DriverRunning, match="pid 1 on host elsewhere, running since 2030-01-01T00:00:00Z"):
            with one_driver("s", tmp_path / "out", (storage, study_id)):
                pass
        assert lease(url) == other


TINY = """\
name: lock
trial: {dataset: circle, g_hidden: [16], d_hidden: [16], noise_dim: 2, epochs: 4, steps_per_epoch: 150,
        eval_samples: 300, eval_valid: 200, eval_test: 300, device: cpu}
search:
  alpha: [0.3, 0.5, 0.7]
sampler: {name: grid}
budget: {max_concurrent: 1}
"""


def wait_for_running_trial(db: Path, driver: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 300
    while "RUNNING" not in optuna_states(db):
        assert driver.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)


def test_a_second_driver_exits_2_naming_the_first_and_the_rerun_after_a_kill_resumes(tmp_path: Path) -> None:
    (tmp_path / "lock.yaml").write_text(TINY)
    log = tmp_path / "first.log"
    first = start_gansweep("run", "lock.yaml", "--output", "out", cwd=tmp_path, log=log)
    try:
        wait_for_running_trial(tmp_path / "out" / "optuna.db", first, log)
        started = time.monotonic()
        second = gansweep("run", "lock.yaml", "--output", "out", cwd=tmp_path, timeout=120)
        assert second.returncode == 2, second.stdout + second.stderr
        assert time.monotonic() - started < 60  # refused before Ray starts
        assert f"study 'lock' is already running: pid {first.pid} on host {socket.gethostname()}" in second.stderr
        assert "Traceback" not in second.stderr and "UpdateFinishedTrialError" not in second.stderr
        assert first.poll() is None  # the first driver goes on
    finally:
        kill_group(first, signal.SIGKILL)  # no cleanup: a stale lock file, MLflow runs left RUNNING
    assert (tmp_path / "out" / LOCK_FILE).exists()
    rerun = gansweep("run", "lock.yaml", "--output", "out", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    table = check_consistent(tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}", "lock", expected=3)
    assert set(table["state"]) == {"COMPLETE"}  # one parent run, one child run per trial
    assert not (tmp_path / "out" / LOCK_FILE).exists()


@pytest.mark.slow  # half a minute: two sweeps; the local-folder lock test stays in the default suite
def test_a_second_driver_on_a_shared_optuna_storage_exits_2_then_joins_the_finished_study(tmp_path: Path) -> None:
    (tmp_path / "lock.yaml").write_text(TINY.replace("alpha: [0.3, 0.5, 0.7]", "alpha: [0.3, 0.7]"))
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    env = clean_env(GANSWEEP_OPTUNA_STORAGE=url)
    log = tmp_path / "first.log"
    first = start_gansweep("run", "lock.yaml", "--output", "one", cwd=tmp_path, env=env, log=log)
    try:
        wait_for_running_trial(tmp_path / "shared.db", first, log)
        second = gansweep("run", "lock.yaml", "--output", "two", cwd=tmp_path, env=env, timeout=300)
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"pid {first.pid} on host {socket.gethostname()}" in second.stderr
        assert "shared Optuna storage" in second.stderr and "Traceback" not in second.stderr
        assert not (tmp_path / "two").exists()  # nothing written
        assert first.wait(timeout=600) == 0, log.read_text()
    finally:
        kill_group(first)
    storage = optuna.storages.RDBStorage(url)
    assert storage.get_study_system_attrs(storage.get_study_id_from_name("lock")).get(LEASE_ATTR) is None
    again = gansweep("run", "lock.yaml", "--output", "two", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    one, two = pd.read_csv(tmp_path / "one" / "results.csv"), pd.read_csv(tmp_path / "two" / "results.csv")
    assert set(two["state"]) == {"COMPLETE"} and sorted(two["trial"]) == sorted(one["trial"]) == [0, 1]
