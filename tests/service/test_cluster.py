"""What a sweep survives, with real processes: a multi-node Ray cluster of `ray start`
processes, a node killed mid-sweep, an MLflow server that goes away and comes back, secrets in
the environment, an unwritable output folder, and a sweep of 200 trials.

Every process a test starts runs in its own process group and is stopped by that group's id,
never by name (`ray stop` would stop every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import MlflowServer, clean_env, free_port, gansweep, mlflow_runs, start_gansweep
from test_sweep import EPOCH_METRICS, check_consistent, children

RAY = Path(sys.executable).with_name("ray")

# 4 trials of 3 short epochs: the smoke study, written here so that edits to studies/ do not
# move these tests.
SHORT_STUDY = """\
name: NAME
trial: {dataset: circle, g_hidden: [32, 32], d_hidden: [32, 32], noise_dim: 4, batch_size: 64,
        epochs: 3, steps_per_epoch: 50, eval_samples: 1000, eval_valid: 500, eval_test: 1000,
        device: cpu}
search:
  alpha: [0.3, 0.7]
  loss: [non_saturating, minimax]
sampler: {name: grid, seed: 0}
budget: {max_concurrent: 2, cpus_per_trial: 1}
"""

# 4 trials of 6 epochs of about a second each (1,000 steps of a 32-unit MLP on 1 core),
# evaluated (so checkpointed) every epoch: long enough that a kill or an outage lands
# while trials are still training.
LONG_EPOCHS = 6
LONG_STUDY = """\
name: NAME
trial: {dataset: circle, g_hidden: [32], d_hidden: [32], noise_dim: 2, epochs: 6,
        steps_per_epoch: 1000, eval_samples: 300, eval_valid: 200, eval_test: 300, device: cpu}
search:
  alpha: [0.3, 0.4, 0.6, 0.7]
sampler: {name: grid, seed: 1}
budget: {max_concurrent: 2, cpus_per_trial: 1, max_failures: 3}
"""


def write_study(folder: Path, template: str, name: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(template.replace("NAME", name))
    return path


# -------------------------------------------------------------------- Optuna, read live

def optuna_rows(db: Path, query: str) -> list[tuple]:
    """Rows of the study's SQLite storage while a driver writes it ([] before it exists)."""
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=5) as connection:
            return connection.execute(query).fetchall()
    except sqlite3.OperationalError:
        return []  # tables not created yet, or locked for longer than the timeout


def live_trials(db: Path) -> dict[int, dict]:
    """Trial number -> {"state", "epochs" (evaluations reported), user attrs...}."""
    trials: dict[int, dict] = {}
    for number, state, trial_id in optuna_rows(db, "select number, state, trial_id from trials"):
        trials[number] = {"state": state, "id": trial_id, "epochs": 0}
    by_id = {t["id"]: t for t in trials.values()}
    for trial_id, key, value in optuna_rows(db, "select trial_id, key, value_json from trial_user_attributes"):
        if trial_id in by_id:
            by_id[trial_id][key] = json.loads(value)
    for trial_id, count in optuna_rows(
        db, "select trial_id, count(*) from trial_intermediate_values group by trial_id"
    ):
        if trial_id in by_id:
            by_id[trial_id]["epochs"] = count
    return trials


def wait_until(condition, what: str, driver: subprocess.Popen, log: Path, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        assert driver.poll() is None, f"driver exited before {what}:\n{log.read_text()[-5000:]}"
        time.sleep(0.3)
    raise TimeoutError(f"{what}: not within {timeout}s\n{log.read_text()[-5000:]}")


def worker_progress(output: Path, number: int) -> int:
    """Epochs a trial's worker has checkpointed (it writes checkpoint_<n-1> after epoch n)."""
    found = [int(p.name.rsplit("_", 1)[1]) for p in output.glob(f"tune/*/unit_{number:04d}_*/checkpoint_*")]
    return max(found, default=-1) + 1


def d_loss_steps(client: MlflowClient, run) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, "d_loss"))


# -------------------------------------------------------------------- a Ray cluster of processes

def kill_session(leader: int) -> None:
    """SIGKILL every process in the session a `start_new_session` child leads: the process
    groups Ray's workers make for themselves stay in it."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[3]) == leader:  # state, ppid, pgrp, session
            try:
                os.kill(int(stat.parent.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


class RayCluster:
    """A head and worker nodes, each a `ray start --block` process in its own process group,
    on this machine, with token authentication on as in the compose and k8s setups."""

    def __init__(self) -> None:
        # Ray puts Unix sockets under its temp dir: keep the path short (107-byte limit).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="gsr-", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.token = secrets.token_hex(16)
        self.env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        self.nodes: dict[str, subprocess.Popen] = {}

    def _start(self, name: str, *args: str) -> None:
        ports = {
            "node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
        }
        command = [
            str(RAY), "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
            "--object-store-memory=100000000", *(f"--{p}={free_port()}" for p in sorted(ports)), *args,
        ]
        log = self.temp_dir / f"{name}.log"
        self.nodes[name] = process = subprocess.Popen(
            command, env=self.env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        # One at a time, each once up: a node joining a head that is still starting times out.
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, f"node {name} did not start" + self.logs()
            time.sleep(0.3)

    def start(self, workers: tuple[str, ...]) -> dict[str, str]:
        """Head (no CPUs: trials run on workers only) and one-CPU workers, each with a custom
        resource of its name; returns name -> Ray node id once all are up."""
        self._start("head", "--head", f"--port={self.port}", "--num-cpus=0", f"--temp-dir={self.temp_dir}",
                    "--include-dashboard=false", f"--dashboard-port={free_port()}")
        for name in workers:
            self._start(name, f"--address={self.address}", "--num-cpus=1", f"--resources={json.dumps({name: 1})}")
        return self.node_ids(["head", *workers])

    def node_ids(self, names: list[str], timeout: float = 120) -> dict[str, str]:
        script = (
            "import json, sys, time, ray\n"
            f"ray.init(address={self.address!r}, log_to_driver=False, logging_level='ERROR')\n"
            f"names = {names[1:]!r}\n"
            f"deadline = time.monotonic() + {timeout}\n"
            "while time.monotonic() < deadline:\n"
            "    alive = [n for n in ray.nodes() if n['Alive']]\n"
            f"    if len(alive) == {len(names)}: break\n"
            "    time.sleep(0.5)\n"
            "found = {'head': n['NodeID'] for n in alive if 'node:__internal_head__' in n['Resources']}\n"
            "found.update({name: n['NodeID'] for n in alive for name in names if name in n['Resources']})\n"
            "print(json.dumps(found))\n"
        )
        done = subprocess.run([sys.executable, "-c", script], env=self.env, capture_output=True, text=True,
                              timeout=timeout + 60)
        assert done.returncode == 0, done.stderr[-3000:] + self.logs()
        found = json.loads(done.stdout.strip().splitlines()[-1])
        assert sorted(found) == sorted(names), f"nodes up: {found}\n{self.logs()}"
        return found

    def kill(self, name: str) -> None:
        """What a machine's death looks like: SIGKILL every process of the node at once, its
        raylet and the trials' worker processes (which Ray puts in process groups of their
        own, within the node's session)."""
        process = self.nodes.pop(name)
        kill_session(process.pid)
        process.wait(timeout=30)

    def logs(self) -> str:
        return "".join(f"\n--- {p.name}\n{p.read_text()[-2000:]}" for p in self.temp_dir.glob("*.log"))

    def stop(self) -> None:
        """SIGTERM every node's group, SIGKILL what remains after a few seconds: Ray's own
        graceful shutdown of a whole cluster takes half a minute, and nothing here needs it."""
        processes = list(self.nodes.values())
        self.nodes.clear()
        for process in processes:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 3
        for process in processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            kill_session(process.pid)  # the leader's children (workers too), or a stuck leader
            process.wait(timeout=30)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture
def ray_cluster() -> Iterator[RayCluster]:
    cluster = RayCluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MlflowServer]:
    folder = tmp_path / "mlflow-server"
    folder.mkdir()
    mlflow = MlflowServer(folder)
    mlflow.start()
    try:
        yield mlflow
    finally:
        mlflow.stop()


# -------------------------------------------------------------------- 1. multi-node rehearsal

@pytest.mark.slow
def test_multi_node_cluster_runs_trials_on_several_nodes(tmp_path: Path, ray_cluster: RayCluster, server: MlflowServer) -> None:
    nodes = ray_cluster.start(workers=("wa", "wb"))
    write_study(tmp_path, SHORT_STUDY, "cluster")
    env = {**ray_cluster.env, "RAY_ADDRESS": ray_cluster.address}
    started = time.monotonic()
    done = gansweep("run", "cluster.yaml", "--output", "out", "--tracking-uri", server.uri, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr + ray_cluster.logs()
    print(f"4 trials on a 3-node cluster in {time.monotonic() - started:.0f}s")
    assert not (tmp_path / "mlflow.db").exists()  # everything went to the server
    table = check_consistent(tmp_path / "out", server.uri, "cluster", expected=4)
    assert set(table["state"]) == {"COMPLETE"}

    study = optuna.load_study(study_name="cluster", storage=f"sqlite:///{tmp_path / 'out' / 'optuna.db'}")
    client = MlflowClient(server.uri)
    used = set()
    for run in children(mlflow_runs(server.uri, "cluster")):
        frozen = study.trials[int(run.data.tags["gansweep.trial"])]
        attempts = frozen.user_attrs["attempts"]
        assert [a["resumed_from"] for a in attempts] == [0] and attempts[0]["first_epoch"] == 1
        assert run.data.tags["gansweep.nodes"] == attempts[0]["node"]
        assert d_loss_steps(client, run) == [1, 2, 3]
        used.add(attempts[0]["node"])
    # the head has no CPU for trials; two one-CPU workers and two trials at a time use both
    assert used == {nodes["wa"], nodes["wb"]}


# -------------------------------------------------------------------- 2. a worker node dies

@pytest.mark.slow
def test_a_worker_node_killed_mid_sweep_its_trial_resumes_on_the_other(
    tmp_path: Path, ray_cluster: RayCluster, server: MlflowServer
) -> None:
    nodes = ray_cluster.start(workers=("wa", "wb"))
    write_study(tmp_path, LONG_STUDY, "nodeloss")
    env = {**ray_cluster.env, "RAY_ADDRESS": ray_cluster.address}
    log = tmp_path / "driver.log"
    driver = start_gansweep("run", "nodeloss.yaml", "--output", "out", "--tracking-uri", server.uri,
                            cwd=tmp_path, env=env, log=log)
    db = tmp_path / "out" / "optuna.db"
    try:
        def checkpointed_on_wa() -> tuple[int, int] | None:
            """A trial running on wa whose worker has written 2 to 4 of its 6 checkpoints.
            Progress is read from the checkpoint folders the worker writes, not from the
            driver's records, which may lag a few results behind."""
            for number, trial in live_trials(db).items():
                attempts = trial.get("attempts") or [{}]
                done = worker_progress(tmp_path / "out", number)
                if trial["state"] == "RUNNING" and attempts[-1].get("node") == nodes["wa"] and 2 <= done <= LONG_EPOCHS - 2:
                    return number, done
            return None

        victim, epochs_before = wait_until(checkpointed_on_wa, "a trial checkpointed on node wa", driver, log)
        ray_cluster.kill("wa")
        killed_at = time.monotonic()
        assert driver.wait(timeout=400) == 0, log.read_text()[-5000:] + ray_cluster.logs()
        print(f"trial {victim} lost node wa after {epochs_before} epochs; sweep ended "
              f"{time.monotonic() - killed_at:.0f}s later")
    finally:
        if driver.poll() is None:
            kill_session(driver.pid)
            driver.wait(timeout=60)

    table = check_consistent(tmp_path / "out", server.uri, "nodeloss", expected=4)
    assert set(table["state"]) == {"COMPLETE"} and (table["epochs"] == LONG_EPOCHS).all()
    study = optuna.load_study(study_name="nodeloss", storage=f"sqlite:///{db}")
    attempts = study.trials[victim].user_attrs["attempts"]
    assert attempts[0] == {"node": nodes["wa"], "resumed_from": 0, "first_epoch": 1}
    retry = attempts[-1]
    assert len(attempts) >= 2 and retry["node"] == nodes["wb"]
    # resumed from its last checkpoint (one more may have landed as the node died), not from
    # scratch, and trained the remaining epochs on wb
    assert epochs_before <= retry["resumed_from"] <= epochs_before + 1 < LONG_EPOCHS
    assert retry["first_epoch"] == retry["resumed_from"] + 1
    client = MlflowClient(server.uri)
    runs = children(mlflow_runs(server.uri, "nodeloss"))
    assert sorted(int(r.data.tags["gansweep.trial"]) for r in runs) == [0, 1, 2, 3]  # none duplicated
    for run in runs:
        assert run.info.status == "FINISHED"
        assert d_loss_steps(client, run) == list(range(1, LONG_EPOCHS + 1))  # each epoch exactly once
        if int(run.data.tags["gansweep.trial"]) == victim:
            assert run.data.tags["gansweep.nodes"] == ",".join(a["node"] for a in attempts)


# -------------------------------------------------------------------- 3. MLflow server away

OUTAGE_S = 10
OUTAGE_MAX_S = 120


@pytest.mark.slow  # a minute of sweeping: in CI's slow step, so the default suite stays under 15 min
def test_mlflow_server_down_mid_sweep_then_back_loses_no_metric(tmp_path: Path, server: MlflowServer) -> None:
    write_study(tmp_path, LONG_STUDY, "outage")
    log = tmp_path / "driver.log"
    driver = start_gansweep("run", "outage.yaml", "--output", "out", "--tracking-uri", server.uri,
                            cwd=tmp_path, log=log)
    db = tmp_path / "out" / "optuna.db"
    try:
        wait_until(lambda: any(t["epochs"] >= 1 for t in live_trials(db).values()),
                   "a first evaluation", driver, log)
        server.stop()
        down_at = time.monotonic()
        evaluations_before = sum(t["epochs"] for t in live_trials(db).values())
        # away OUTAGE_S at least, and until two evaluations went on without it (a loaded
        # machine's epoch can outlast OUTAGE_S; a sweep that waited for tracking gives none)
        time.sleep(OUTAGE_S)
        deadline = down_at + OUTAGE_MAX_S
        while (evaluations_during := sum(t["epochs"] for t in live_trials(db).values()) - evaluations_before) < 2 \
                and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.5)
        assert driver.poll() is None, "the sweep ended before the server came back"
        server.start()  # a new server process: same port, same database and artifact folder
        outage = time.monotonic() - down_at
        assert driver.wait(timeout=400) == 0, log.read_text()[-5000:]
    finally:
        if driver.poll() is None:
            kill_session(driver.pid)
            driver.wait(timeout=60)
    print(f"server away {outage:.0f}s; {evaluations_during} evaluations went on meanwhile")
    assert evaluations_during >= 2  # training did not wait for tracking
    assert not (tmp_path / "out" / "mlflow-undelivered.jsonl").exists()

    table = check_consistent(tmp_path / "out", server.uri, "outage", expected=4)
    assert set(table["state"]) == {"COMPLETE"}
    client = MlflowClient(server.uri)
    runs = mlflow_runs(server.uri, "outage")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    for run in children(runs):
        for name in EPOCH_METRICS:
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, name))
            assert steps == list(range(1, LONG_EPOCHS + 1)), (run.info.run_name, name, steps)
        artifacts = {a.path for folder in ("checkpoint", "plots") for a in client.list_artifacts(run.info.run_id, folder)}
        assert {"checkpoint/generator.pt", "plots/losses_vs_theory.png"} <= artifacts, artifacts


# -------------------------------------------------------------------- 4. secrets stay secret

def test_credentials_in_the_environment_never_leak(tmp_path: Path, server: MlflowServer) -> None:
    password, aws_secret = secrets.token_hex(20), secrets.token_hex(20)
    ray_tmp = Path(tempfile.mkdtemp(prefix="gsr-", dir="/tmp"))  # this sweep's own Ray logs
    env = clean_env(
        MLFLOW_TRACKING_USERNAME="gansweep", MLFLOW_TRACKING_PASSWORD=password,
        AWS_ACCESS_KEY_ID="gansweep-test", AWS_SECRET_ACCESS_KEY=aws_secret, RAY_TMPDIR=str(ray_tmp),
    )
    write_study(tmp_path, SHORT_STUDY, "secret")
    try:
        done = gansweep("run", "secret.yaml", "--output", "out", "--set", "budget.trials=2",
                        "--tracking-uri", server.uri, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        check_consistent(tmp_path / "out", server.uri, "secret", expected=2)
        places: dict[str, bytes] = {"stdout": done.stdout.encode(), "stderr": done.stderr.encode()}
        client = MlflowClient(server.uri)
        for run in mlflow_runs(server.uri, "secret"):
            data = run.data
            places[f"run {run.info.run_name}"] = json.dumps(
                [data.params, data.tags, data.metrics, run.info.run_name]
            ).encode()
            for name in data.metrics:
                places[f"run {run.info.run_name} {name}"] = repr(client.get_metric_history(run.info.run_id, name)).encode()
        # every file: the output folder (results.csv, Optuna, Tune's state and checkpoints),
        # the server's database and artifacts, Ray's session logs
        for root in (tmp_path, ray_tmp):
            for path in root.rglob("*"):
                if path.is_file() and not path.is_symlink():
                    places[str(path)] = path.read_bytes()
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert any("results.csv" in p for p in places) and any("/artifacts/" in p for p in places)
    assert any("session_" in p and p.endswith(".log") or ".out" in p for p in places)  # Ray logs read
    assert len(places) > 50
    for secret in (password, aws_secret):
        leaks = [where for where, text in places.items() if secret.encode() in text]
        assert not leaks, f"secret found in {leaks}"


# -------------------------------------------------------------------- 5. unwritable output

def test_an_output_folder_that_cannot_be_created_is_a_clear_error(tmp_path: Path, server: MlflowServer) -> None:
    write_study(tmp_path, SHORT_STUDY, "nowrite")
    (tmp_path / "afile").write_text("a file, not a folder\n")
    # (tests run as root, which ignores permission bits: a path below a file fails for anyone)
    target = tmp_path / "afile" / "out"
    done = gansweep("run", "nowrite.yaml", "--output", str(target), "--tracking-uri", server.uri,
                    cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert str(target) in done.stderr and "output" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert MlflowClient(server.uri).get_experiment_by_name("nowrite") is None  # nothing tracked
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "mlflow-server", "nowrite.yaml"]


MIB = 2**20


@pytest.mark.slow  # a minute of sweeping: in CI's slow step, so the default suite stays under 15 min
def test_a_disk_running_short_stops_the_sweep_cleanly_and_the_rerun_finishes(tmp_path: Path) -> None:
    """The free-space floor is set 300 MiB below what is free now; once the first evaluation
    is in, a 600 MiB ballast file takes the disk below it, as a filling disk would."""
    write_study(tmp_path, LONG_STUDY, "diskfull")
    floor_mib = (shutil.disk_usage(tmp_path).free - 300 * MIB) / MIB
    env = clean_env(GANSWEEP_MIN_FREE_MB=f"{floor_mib:.0f}")
    log, db, ballast = tmp_path / "driver.log", tmp_path / "out" / "optuna.db", tmp_path / "ballast"
    driver = start_gansweep("run", "diskfull.yaml", "--output", "out", cwd=tmp_path, env=env, log=log)
    try:
        wait_until(lambda: any(t["epochs"] >= 1 for t in live_trials(db).values()), "a first evaluation", driver, log)
        with ballast.open("wb") as file:
            os.posix_fallocate(file.fileno(), 0, 600 * MIB)
        assert driver.wait(timeout=300) == 2, log.read_text()[-5000:]
    finally:
        if driver.poll() is None:
            kill_session(driver.pid)
            driver.wait(timeout=60)
    text = log.read_text()
    assert f"{tmp_path / 'out'} has " in text and "MiB free, below the" in text, text[-3000:]
    assert "GANSWEEP_MIN_FREE_MB" in text and "run the same command to resume" in text
    assert "Traceback" not in text
    states = [t["state"] for t in live_trials(db).values()]
    assert "RUNNING" in states  # stopped mid-sweep: unfinished trials kept for the rerun
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert not [r for r in mlflow_runs(uri, "diskfull") if r.info.status == "RUNNING"]
    first = pd.read_csv(tmp_path / "out" / "results.csv")  # written whole, not cut off
    assert len(first) == len(states)

    ballast.unlink()
    done = gansweep("run", "diskfull.yaml", "--output", "out", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    table = check_consistent(tmp_path / "out", uri, "diskfull", expected=4)
    assert set(table["state"]) == {"COMPLETE"} and (table["epochs"] == LONG_EPOCHS).all()
    client = MlflowClient(uri)
    for run in children(mlflow_runs(uri, "diskfull")):
        assert d_loss_steps(client, run) == list(range(1, LONG_EPOCHS + 1))  # each epoch once


def test_a_disk_already_short_is_a_clear_error_before_anything_starts(tmp_path: Path) -> None:
    write_study(tmp_path, SHORT_STUDY, "nospace")
    floor_mib = (shutil.disk_usage(tmp_path).free + 100 * MIB) / MIB  # more than there is
    done = gansweep("run", "nospace.yaml", "--output", "out", cwd=tmp_path,
                    env=clean_env(GANSWEEP_MIN_FREE_MB=f"{floor_mib:.0f}"), timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "MiB free, below the" in done.stderr and "Traceback" not in done.stderr + done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nospace.yaml"]  # nothing created


# -------------------------------------------------------------------- 6. load
# On the stack's own parts: tests/service/test_pgstorage.py, 1,000 trials on PostgreSQL.
