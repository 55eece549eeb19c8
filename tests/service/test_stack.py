"""The compose stack rehearsed as plain processes on loopback (slow suite), from the compose
file's own settings: .env as deploy/make-env.sh writes it, each service's `environment:` and
`command:` read from docker-compose.yml (its ${VAR} substituted from that .env, service host
names pointed at the loopback ports), PostgreSQL initialised by deploy/postgres-init, MLflow
started by deploy/mlflow/entrypoint.sh (basic-auth app, auth database on PostgreSQL,
artifacts proxied to S3), a Ray head and two workers with token authentication, and the
driver with the environment of the compose `sweep` service.

Where the rehearsal departs from the containers, and why:
  - S3 is moto's server (tests/service/test_storage.py), not MinIO: moto makes the keys of the user it
    creates, so AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are moto's, not .env's; the buckets
    `mlflow` and `gansweep` are made as deploy/minio/init.sh makes them.
  - MLflow runs with --workers=1 (two shared cores), on 127.0.0.1 and a free port.
  - The driver is started directly: deploy/docker/driver.sh first joins the cluster as a node
    without CPUs because a container has no raylet of its own; here the head's raylet is local.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml

from conftest import ROOT, clean_env, free_port, gansweep, kill_group, wait_for_http
from pgserver import PgServer, needs_postgres
from test_cluster import SHORT_STUDY, RayCluster, write_study
from test_storage import S3Server

pytestmark = [needs_postgres(), pytest.mark.slow]

COMPOSE = ROOT / "docker-compose.yml"
VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a compose .env file (comments and blank lines skipped)."""
    found = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            found[key.strip()] = value.strip()
    return found


def substitute(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR:?error} (which must be set)."""

    def value(match: re.Match) -> str:
        name, kind, rest = match.groups()
        if kind in (":?", "?"):
            assert env.get(name), f"compose would refuse: {rest}"
        if kind in (":-", "-") and not env.get(name):
            return rest
        return env.get(name, "")

    return VARIABLE.sub(value, text).replace("$$", "$")


class Stack:
    """The compose services as processes; `hosts` maps their in-network addresses to loopback."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        made = subprocess.run(["sh", str(ROOT / "deploy" / "make-env.sh"), str(folder / ".env")],
                              capture_output=True, text=True, cwd=ROOT)
        assert made.returncode == 0, made.stderr
        self.dotenv = read_env_file(folder / ".env")
        self.compose = yaml.safe_load(COMPOSE.read_text())["services"]
        self.pg = PgServer(user=self.dotenv["POSTGRES_USER"], password=self.dotenv["POSTGRES_PASSWORD"])
        self.s3 = S3Server(folder)
        self.ray = RayCluster()
        self.mlflow_port = free_port()
        self.mlflow_uri = f"http://127.0.0.1:{self.mlflow_port}"
        self.mlflow: subprocess.Popen | None = None

    @property
    def hosts(self) -> dict[str, str]:
        return {
            "postgres:5432": f"127.0.0.1:{self.pg.port}",
            "http://minio:9000": self.s3.endpoint,
            "http://mlflow:5000": self.mlflow_uri,
            "ray-head:6379": self.ray.address,
        }

    def service_env(self, service: str) -> dict[str, str]:
        """The `environment:` compose gives `service`, on loopback."""
        values = {**self.dotenv, "AWS_ACCESS_KEY_ID": self.s3.access_key, "AWS_SECRET_ACCESS_KEY": self.s3.secret_key}
        env = {}
        for key, raw in self.compose[service].get("environment", {}).items():
            text = substitute(str(raw), values)
            for inside, outside in self.hosts.items():
                text = text.replace(inside, outside)
            env[key] = text
        if "AWS_ACCESS_KEY_ID" in env:
            env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = self.s3.access_key, self.s3.secret_key
        env.pop("GANSWEEP_CACHE", None)  # /data/cache, a volume in the containers
        return env

    def start(self) -> None:
        self.pg.start()
        self.pg.init_like_compose()
        self.s3.start()
        for bucket in ("mlflow", "gansweep"):  # as deploy/minio/init.sh
            self.s3.client().create_bucket(Bucket=bucket)
        self.start_mlflow()
        self.ray.token = self.dotenv["RAY_AUTH_TOKEN"]
        self.ray.env = {**clean_env(), **self.service_env("ray-worker")}
        self.ray.start(workers=("wa", "wb"))

    def start_mlflow(self) -> None:
        command = []
        for raw in self.compose["mlflow"]["command"]:
            arg = substitute(str(raw), {**self.dotenv, "MLFLOW_PORT": str(self.mlflow_port)})
            arg = {"--host=0.0.0.0": "--host=127.0.0.1", "--port=5000": f"--port={self.mlflow_port}"}.get(arg, arg)
            command.append(arg)
        env = {**os.environ, **self.service_env("mlflow"), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               "MLFLOW_AUTH_CONFIG_DIR": str(self.folder / "mlflow-auth")}
        self.mlflow = subprocess.Popen(
            ["sh", str(ROOT / "deploy" / "mlflow" / "entrypoint.sh"), *command, "--workers=1"],
            cwd=self.folder, env=env, stdout=(self.folder / "mlflow.log").open("w"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for_http(f"{self.mlflow_uri}/health", timeout=180)

    def driver_env(self, **changes: str) -> dict[str, str]:
        env = {**clean_env(), **self.service_env("sweep")}
        env.update(changes)
        return env

    def stop(self) -> None:
        self.ray.stop()
        if self.mlflow is not None:
            kill_group(self.mlflow)
        self.s3.stop()
        self.pg.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("stack"))
    try:
        running.start()
        yield running
    finally:
        running.stop()


def authenticated(stack: Stack, monkeypatch: pytest.MonkeyPatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", stack.dotenv["MLFLOW_ADMIN_USERNAME"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack.dotenv["MLFLOW_ADMIN_PASSWORD"])
    return MlflowClient(stack.mlflow_uri)


def test_a_sweep_lands_in_every_service_of_the_stack(tmp_path: Path, stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    write_study(tmp_path, SHORT_STUDY, "stack")
    env = stack.driver_env()
    assert env["GANSWEEP_OPTUNA_STORAGE"].startswith("postgresql+psycopg2://") and env["RAY_AUTH_MODE"] == "token"
    done = gansweep("run", "stack.yaml", "--output", "out", "--set", "budget.trials=2", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + stack.ray.logs()
    for secret in ("POSTGRES_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "RAY_AUTH_TOKEN"):
        assert stack.dotenv[secret] not in done.stdout + done.stderr, secret

    study = optuna.load_study(study_name="stack", storage=env["GANSWEEP_OPTUNA_STORAGE"])
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert stack.pg.psql("select count(*) from trials", "optuna") == [["2"]]

    client = authenticated(stack, monkeypatch)
    experiment = client.get_experiment_by_name("stack")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3  # the study's run and two trials
    assert stack.pg.psql("select count(*) from runs", "mlflow") == [["3"]]
    users = stack.pg.psql("select username, is_admin from users", "mlflow_auth")
    assert users == [[stack.dotenv["MLFLOW_ADMIN_USERNAME"], "t"]]

    artifacts = stack.s3.keys("mlflow")  # proxied by the server into the bucket
    assert sum(k.endswith("checkpoint/generator.pt") for k in artifacts) == 2, artifacts[:20]
    checkpoints = stack.s3.keys("gansweep")
    assert any(k.startswith("tune/") and k.endswith("state.pt") for k in checkpoints), checkpoints[:20]
    assert not (tmp_path / "out" / "tune").exists()  # Tune's state went to the bucket

    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as refused:  # the server asks for a login
        urllib.request.urlopen(f"{stack.mlflow_uri}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
    assert refused.value.code == 401


def test_a_wrong_mlflow_password_exits_2_before_any_trial(tmp_path: Path, stack: Stack) -> None:
    write_study(tmp_path, SHORT_STUDY, "wrongpw")
    wrong = "not-the-" + stack.dotenv["MLFLOW_ADMIN_PASSWORD"][:12]
    env = stack.driver_env(MLFLOW_TRACKING_PASSWORD=wrong)
    done = gansweep("run", "wrongpw.yaml", "--output", "out", cwd=tmp_path, env=env)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "MLflow tracking at" in done.stderr
    for secret in (wrong, stack.dotenv["MLFLOW_ADMIN_PASSWORD"]):
        assert secret not in done.stdout + done.stderr
    rows = stack.pg.psql("select count(*) from trials t join studies s using (study_id) "
                         "where s.study_name = 'wrongpw'", "optuna")
    assert rows == [["0"]]  # no trial was asked
    assert not (tmp_path / "out" / "results.csv").exists()


def test_a_ray_node_with_the_wrong_token_is_refused_saying_so(stack: Stack) -> None:
    env = {**stack.ray.env, "RAY_AUTH_TOKEN": "0" * 32}
    log = stack.folder / "intruder.log"
    node = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--block", f"--address={stack.ray.address}",
         "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        code = node.wait(timeout=120)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        if node.poll() is None:
            kill_group(node)
    text = log.read_text()
    print(text[-2000:])
    assert code not in (None, 0), text[-3000:]
    assert re.search(r"(?i)token|unauthenticated|authentication", text), text[-3000:]
    assert "0" * 32 not in text
    nodes = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address={stack.ray.address!r}, "
                            "logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"],
                           env=stack.ray.env, capture_output=True, text=True, timeout=120)
    assert nodes.stdout.strip().splitlines()[-1] == "3", nodes.stderr[-2000:]  # head and two workers only


def test_postgres_restarted_mid_sweep_under_optuna_and_the_mlflow_server(
    tmp_path: Path, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both of PostgreSQL's clients ride it out: the driver's Optuna storage (retried) and the
    MLflow server's stores (the server's failed requests retried by the driver's outbox)."""
    from test_pgstorage import RESTART_STUDY, check_accounted, reported_epochs

    (tmp_path / "pgrestart.yaml").write_text(RESTART_STUDY.replace("pgrestart", "stackrestart"))
    env = stack.driver_env()
    url = env["GANSWEEP_OPTUNA_STORAGE"]
    log = tmp_path / "driver.log"
    driver = subprocess.Popen(
        [sys.executable, "-m", "gansweep", "run", "pgrestart.yaml", "--output", "out", "--set", "budget.trials=2"],
        cwd=tmp_path, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while reported_epochs(url, "stackrestart") < 2:
            assert driver.poll() is None and time.monotonic() < deadline, log.read_text()[-5000:]
            time.sleep(0.3)
        started = time.monotonic()
        stack.pg.restart()
        restart_s = time.monotonic() - started
        assert driver.wait(timeout=400) == 0, log.read_text()[-5000:]
    finally:
        if driver.poll() is None:
            kill_group(driver)
    text = log.read_text()
    assert "Traceback" not in text and "StorageInternalError" not in text, text[-5000:]
    print(f"PostgreSQL restart took {restart_s:.1f} s; retries seen: "
          f"{[line for line in text.splitlines() if 'answers again' in line]}")
    authenticated(stack, monkeypatch)
    table = check_accounted(tmp_path / "out", url, stack.mlflow_uri, "stackrestart", expected=2)
    assert set(table["state"]) == {"COMPLETE"} and (table["epochs"] == 5).all()
    assert not (tmp_path / "out" / "mlflow-undelivered.jsonl").exists()
