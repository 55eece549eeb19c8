"""Tune's checkpoints on S3-compatible object storage, as on the cluster (MinIO): a real S3 server
on loopback (moto's, in a subprocess, checking every request's signature like MinIO), the real
CLI, real Ray, real Optuna and MLflow stores.

    GANSWEEP_STORAGE_PATH=s3://<bucket>/tune  GANSWEEP_S3_ENDPOINT=http://127.0.0.1:<port>
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY   (a user the server knows; wrong keys are refused)

Every process a test starts runs in its own session and is stopped by its id, never by name.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pyarrow.fs
import pytest
import torch

from mlflow.tracking import MlflowClient

from conftest import clean_env, free_port, gansweep, kill_group, mlflow_runs, start_gansweep, wait_for_http
from gansweep.service import storage
from test_cluster import kill_session, live_trials, wait_until, write_study
from test_sweep import check_consistent, children

# moto answers the first N requests without checking credentials: the three that create the
# user below. From then on a request needs that user's keys, as with MinIO.
SETUP_REQUESTS = 3
S3_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


class S3Server:
    """moto's S3-compatible HTTP server on a free loopback port, in its own session, with one
    user allowed everything on S3 (access_key, secret_key)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.access_key = self.secret_key = ""

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            cwd=self.folder, stdout=(self.folder / "s3.log").open("a"), stderr=subprocess.STDOUT,
            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_REQUESTS)}, start_new_session=True,
        )
        wait_for_http(f"{self.endpoint}/moto-api/", timeout=60)
        import boto3

        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="gansweep")
        iam.put_user_policy(UserName="gansweep", PolicyName="s3", PolicyDocument=json.dumps(S3_POLICY))
        key = iam.create_access_key(UserName="gansweep")["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]

    def stop(self) -> None:
        if self.process is not None:
            kill_group(self.process, signal.SIGTERM)
            self.process = None

    def client(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
        )

    def keys(self, bucket: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def read(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket for each test."""
    name = f"gansweep-{secrets.token_hex(4)}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """This test's own Ray temp dir: its logs can be read, and `ray.init()` finds no other
    cluster started on this machine. Short: Ray's Unix sockets live under it."""
    folder = Path(tempfile.mkdtemp(prefix="gss-", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def s3_env(server: S3Server, bucket: str, ray_tmp: Path) -> dict[str, str]:
    env = clean_env(
        GANSWEEP_STORAGE_PATH=f"s3://{bucket}/tune", GANSWEEP_S3_ENDPOINT=server.endpoint,
        AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key, RAY_TMPDIR=str(ray_tmp),
    )
    for name in ("GANSWEEP_OPTUNA_STORAGE", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION"):
        env.pop(name, None)  # nothing from the caller's shell decides where state goes
    return env


def use_s3_server(monkeypatch: pytest.MonkeyPatch, server: S3Server) -> None:
    """This process's environment as a sweep's driver would have it."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
    monkeypatch.setenv(storage.S3_ENDPOINT_ENV, server.endpoint)
    for name in ("AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)


# -------------------------------------------------------------------- gansweep.service.storage


def test_storage_filesystem_for_s3_with_an_endpoint_writes_and_reads_the_bucket(
    s3_server: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_s3_server(monkeypatch, s3_server)
    uri = f"s3://{bucket}/tune"
    fs = storage.storage_filesystem(uri)
    assert isinstance(fs, pyarrow.fs.S3FileSystem) and fs.region == "us-east-1"
    # built now: the environment may change (sweep.withheld_from_ray), the filesystem works on
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    path = f"{storage.strip_scheme(uri)}/probe/hello.txt"
    with fs.open_output_stream(path) as stream:
        stream.write(b"hello, bucket")
    with fs.open_input_stream(path) as stream:
        assert stream.read() == b"hello, bucket"
    assert [k for k in s3_server.keys(bucket) if not k.endswith("/")] == ["tune/probe/hello.txt"]
    assert s3_server.read(bucket, "tune/probe/hello.txt") == b"hello, bucket"
    listed = fs.get_file_info(pyarrow.fs.FileSelector(f"{bucket}/tune", recursive=True))
    assert {i.path for i in listed if i.type == pyarrow.fs.FileType.File} == {f"{bucket}/tune/probe/hello.txt"}
    # the server checks credentials: the same request with a wrong secret key is refused
    wrong = pyarrow.fs.S3FileSystem(access_key=s3_server.access_key, secret_key="wrong", region="us-east-1",
                                    endpoint_override=s3_server.endpoint.removeprefix("http://"), scheme="http")
    with pytest.raises(OSError):
        wrong.open_input_stream(path).read()


def test_the_s3_filesystem_pickles_without_its_credentials(
    s3_server: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Tune pickles the storage filesystem into tuner.pkl and search_gen_state-*.json (on local
    disk and in the bucket) and ships it to every trial: the keys must not travel with it."""
    use_s3_server(monkeypatch, s3_server)
    fs = storage.storage_filesystem(f"s3://{bucket}/tune")
    with fs.open_output_stream(f"{bucket}/tune/probe.txt") as stream:
        stream.write(b"for a worker")
    blob = pickle.dumps(fs)
    assert s3_server.secret_key.encode() not in blob and s3_server.access_key.encode() not in blob
    assert pickle.loads(blob) is fs  # in the process that built it: the object itself, keys and all
    # another process (a Ray worker) rebuilds it with the credentials of its own environment;
    # the endpoint travels with it
    (tmp_path / "fs.pkl").write_bytes(blob)
    env = {k: v for k, v in os.environ.items() if k != storage.S3_ENDPOINT_ENV}
    script = ("import pickle, sys; fs = pickle.load(open(sys.argv[1], 'rb'))\n"
              f"print(fs.open_input_stream({bucket + '/tune/probe.txt'!r}).read().decode())")
    worker = subprocess.run([sys.executable, "-c", script, str(tmp_path / "fs.pkl")], env=env,
                            capture_output=True, text=True, timeout=120)
    assert worker.returncode == 0 and worker.stdout.strip() == "for a worker", worker.stderr[-3000:]


def test_storage_filesystem_for_local_paths_is_none() -> None:
    assert storage.storage_filesystem("/tmp/runs/alpha/tune") is None
    assert storage.storage_filesystem("runs/alpha/tune") is None


def test_strip_scheme() -> None:
    assert storage.strip_scheme("s3://gansweep/tune/alpha") == "gansweep/tune/alpha"
    assert storage.strip_scheme("/srv/runs/tune") == "/srv/runs/tune"


def test_storage_paths_honour_their_environment_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(storage.TUNE_STORAGE_ENV, raising=False)
    monkeypatch.delenv(storage.OPTUNA_STORAGE_ENV, raising=False)
    assert storage.tune_storage_path(tmp_path / "out") == str(tmp_path / "out" / "tune")
    assert storage.optuna_storage_url(None, tmp_path / "out") == f"sqlite:///{tmp_path / 'out' / 'optuna.db'}"

    monkeypatch.setenv(storage.TUNE_STORAGE_ENV, "s3://gansweep/tune")
    monkeypatch.setenv(storage.OPTUNA_STORAGE_ENV, "postgresql://optuna@db/optuna")
    assert storage.tune_storage_path(tmp_path / "out") == "s3://gansweep/tune"
    # a bare postgresql:// is read as psycopg2's (protocol.with_postgres_driver)
    assert storage.optuna_storage_url(None, tmp_path / "out") == "postgresql+psycopg2://optuna@db/optuna"
    # the study file's own `storage` wins over the environment
    assert storage.optuna_storage_url("sqlite:///study.db", tmp_path / "out") == "sqlite:///study.db"


# -------------------------------------------------------------------- a sweep on S3

# 2 trials of 3 short epochs, evaluated (so checkpointed) every epoch.
S3_STUDY = """\
name: NAME
trial: {dataset: circle, g_hidden: [32, 32], d_hidden: [32, 32], noise_dim: 4, batch_size: 64,
        epochs: 3, steps_per_epoch: 50, eval_every: 1, eval_samples: 1000, eval_valid: 500,
        eval_test: 1000, device: cpu}
search:
  alpha: [0.3, 0.7]
sampler: {name: grid, seed: 0}
pruner: {name: none}
budget: {max_concurrent: 2, cpus_per_trial: 1}
"""


def checkpoint_key(uri: str, bucket: str) -> str:
    """s3://bucket/tune/.../checkpoint_000002 -> tune/.../checkpoint_000002"""
    assert uri.startswith(f"s3://{bucket}/tune/"), uri
    return uri.removeprefix(f"s3://{bucket}/")


def files_holding(secret: str, *roots: Path) -> list[str]:
    return [
        str(path) for root in roots for path in root.rglob("*")
        if path.is_file() and not path.is_symlink() and secret.encode() in path.read_bytes()
    ]


def test_a_sweep_keeps_tune_checkpoints_in_s3(tmp_path: Path, s3_server: S3Server, bucket: str, ray_tmp: Path) -> None:
    write_study(tmp_path, S3_STUDY, "s3sweep")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    started = time.monotonic()
    done = gansweep("run", "s3sweep.yaml", "--output", "out", "--tracking-uri", uri, cwd=tmp_path,
                    env=s3_env(s3_server, bucket, ray_tmp), timeout=300)
    print(f"\n2 trials with checkpoints on S3 in {time.monotonic() - started:.0f}s")
    assert done.returncode == 0, done.stdout + done.stderr
    output = tmp_path / "out"
    table = check_consistent(output, uri, "s3sweep", expected=2)
    assert set(table["state"]) == {"COMPLETE"} and (table["epochs"] == 3).all()

    keys = s3_server.keys(bucket)
    study = optuna.load_study(study_name="s3sweep", storage=f"sqlite:///{output / 'optuna.db'}")
    experiments = set()
    for frozen in study.trials:
        # the study records where the trial's last checkpoint is: an S3 URI, the last epoch's
        recorded = frozen.user_attrs["checkpoint"]
        key = checkpoint_key(recorded, bucket)
        experiment, trial_dir, checkpoint_dir = key.split("/")[1:]
        experiments.add(experiment)
        assert trial_dir.startswith(f"unit_{frozen.number:04d}_") and checkpoint_dir == "checkpoint_000002"
        assert {f"{key}/state.pt", f"{key}/members/{frozen.number}/generator.pt", f"{key}/members/{frozen.number}/samples/epoch_0003.png"} <= set(keys), keys
        # num_to_keep=2: the last two of the three checkpoints stay
        kept = sorted({k.split("/")[3] for k in keys if k.startswith(f"tune/{experiment}/{trial_dir}/checkpoint_")})
        assert kept == ["checkpoint_000001", "checkpoint_000002"]
        generator = torch.load(io.BytesIO(s3_server.read(bucket, f"{key}/members/{frozen.number}/generator.pt")), weights_only=False)
        assert generator["trial"]["alpha"] == frozen.params["alpha"] and generator["generator"]
        state = torch.load(io.BytesIO(s3_server.read(bucket, f"{key}/state.pt")), weights_only=False)
        assert state["epoch"] == 3
    assert len(experiments) == 1, experiments
    experiment = experiments.pop()
    # (pyarrow also writes empty "folder/" marker objects)
    assert all(k.startswith(f"tune/{experiment}/") for k in keys if not k.endswith("/")), keys
    # the generator checkpoint was copied out of S3 into the run's artifacts
    assert all((output / "artifacts" / str(t.number) / "checkpoint" / "generator.pt").is_file() for t in study.trials)

    # nothing of Tune's on local disk: no output/tune/, no checkpoint file anywhere in the output
    assert not (output / "tune").exists(), sorted(p.name for p in (output / "tune").rglob("*"))
    assert not [p for p in output.rglob("*") if p.name in ("state.pt", "tune") or "checkpoint_0" in p.name]
    # and the secret key went to no file: not in the output folder, the MLflow store, Ray's
    # session folder (logs, Tune's driver staging files), nor the bucket (tuner.pkl...)
    assert not files_holding(s3_server.secret_key, tmp_path, ray_tmp)
    assert not [k for k in keys if s3_server.secret_key.encode() in s3_server.read(bucket, k)]


# -------------------------------------------------------------------- a resume reads S3

# 2 trials of 5 epochs of about a second each, evaluated every epoch: a kill lands midway.
RESUME_EPOCHS = 5
S3_RESUME_STUDY = """\
name: NAME
trial: {dataset: circle, g_hidden: [32], d_hidden: [32], noise_dim: 2, epochs: 5, eval_every: 1,
        steps_per_epoch: 800, eval_samples: 300, eval_valid: 200, eval_test: 300, device: cpu}
search:
  alpha: [0.3, 0.7]
sampler: {name: grid, seed: 1}
pruner: {name: none}
budget: {max_concurrent: 2, cpus_per_trial: 1}
"""


def epoch_of(checkpoint_uri: str) -> int:
    """Tune's checkpoint_<n> holds the state after epoch n + 1 (one checkpoint per epoch)."""
    return int(checkpoint_uri.rsplit("_", 1)[1]) + 1


@pytest.mark.slow  # a minute of sweeping: in CI's slow step, so the default suite stays under 15 min
def test_a_killed_sweep_resumes_from_its_checkpoints_in_s3(
    tmp_path: Path, s3_server: S3Server, bucket: str, ray_tmp: Path
) -> None:
    write_study(tmp_path, S3_RESUME_STUDY, "s3resume")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = s3_env(s3_server, bucket, ray_tmp)
    args = ("run", "s3resume.yaml", "--output", "out", "--tracking-uri", uri)
    db = tmp_path / "out" / "optuna.db"
    log = tmp_path / "first.log"
    started = time.monotonic()
    driver = start_gansweep(*args, cwd=tmp_path, env=env, log=log)
    try:
        def checkpointed_midway() -> bool:
            trials = live_trials(db).values()
            return any(
                t["state"] == "RUNNING" and str(t.get("checkpoint", "")).startswith("s3://")
                and epoch_of(t["checkpoint"]) < RESUME_EPOCHS - 1
                for t in trials
            )

        wait_until(checkpointed_midway, "a checkpoint in S3 recorded", driver, log, timeout=180)
    finally:
        kill_session(driver.pid)  # SIGKILL the driver and every Ray process it started, at once
        driver.wait(timeout=60)
    killed_at = time.monotonic()

    # trials the kill interrupted after a checkpoint and before their last epoch
    before = {
        n: t for n, t in live_trials(db).items()
        if t["state"] == "RUNNING" and "checkpoint" in t and epoch_of(t["checkpoint"]) < RESUME_EPOCHS
    }
    assert before, live_trials(db)
    keys = s3_server.keys(bucket)
    for trial in before.values():  # the checkpoints the rerun must read back are in the bucket
        assert f"{checkpoint_key(trial['checkpoint'], bucket)}/state.pt" in keys
        assert [a["resumed_from"] for a in trial.get("attempts", [])] in ([0], [])  # ([]: killed in between)

    done = gansweep(*args, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, log.read_text()[-3000:] + done.stdout + done.stderr
    print(f"\nkilled after {killed_at - started:.0f}s, with {len(before)} trial(s) checkpointed in S3; "
          f"the rerun finished in {time.monotonic() - killed_at:.0f}s")
    table = check_consistent(tmp_path / "out", uri, "s3resume", expected=2)
    assert set(table["state"]) == {"COMPLETE"} and (table["epochs"] == RESUME_EPOCHS).all()

    study = optuna.load_study(study_name="s3resume", storage=f"sqlite:///{db}")
    for number, trial in before.items():
        attempts = study.trials[number].user_attrs["attempts"]
        assert attempts[:-1] == trial.get("attempts", []), attempts  # one attempt more: the rerun's
        # it started from the checkpoint the study recorded before the kill, which only the
        # bucket holds: read back from S3 by the worker
        resumed = attempts[-1]
        assert resumed["resumed_from"] == epoch_of(trial["checkpoint"]) > 0, (trial["checkpoint"], attempts)
        assert resumed["first_epoch"] == resumed["resumed_from"] + 1
        # and went on checkpointing to S3, in the rerun's own Tune experiment
        final = study.trials[number].user_attrs["checkpoint"]
        final_key, resumed_key = checkpoint_key(final, bucket), checkpoint_key(trial["checkpoint"], bucket)
        assert final_key.split("/")[1] != resumed_key.split("/")[1]
        state = torch.load(io.BytesIO(s3_server.read(bucket, f"{final_key}/state.pt")), weights_only=False)
        assert state["epoch"] == RESUME_EPOCHS
    assert not (tmp_path / "out" / "tune").exists()


# -------------------------------------------------------------------- the store away a while

S3_AWAY_SECONDS = 20  # longer than Tune's retries of a trial (max_failures 1) take
S3_AWAY_EPOCHS = 30  # of about a second each, one checkpoint per epoch: the outage hits uploads


@pytest.mark.slow  # two sweeps and a 20 s outage: in CI's slow step
def test_the_s3_store_away_mid_sweep_interrupts_trials_that_resume_on_the_rerun(
    tmp_path: Path, s3_server: S3Server, bucket: str, ray_tmp: Path
) -> None:
    """The store cut off (every connection closed, new ones refused) for 20 s once a trial has
    checkpointed twice, then back with its objects. No trial FAILs and the driver never dies of
    it: a trial whose checkpoint upload or restore failed past Tune's retries stays RUNNING in
    Optuna, its MLflow run ends KILLED with the reason, the driver exits 1 (no traceback) saying
    to run again, and the rerun resumes it from its last checkpoint; every epoch logged once."""
    from faultproxy import CuttableProxy

    proxy = CuttableProxy(s3_server.port)
    write_study(tmp_path, S3_RESUME_STUDY.replace("epochs: 5", f"epochs: {S3_AWAY_EPOCHS}"), "s3away")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**s3_env(s3_server, bucket, ray_tmp), storage.S3_ENDPOINT_ENV: proxy.endpoint}
    args = ("run", "s3away.yaml", "--output", "out", "--tracking-uri", uri)
    db = tmp_path / "out" / "optuna.db"
    log = tmp_path / "first.log"
    driver = start_gansweep(*args, cwd=tmp_path, env=env, log=log)
    try:
        wait_until(lambda: any(str(t.get("checkpoint", "")).startswith("s3://") and epoch_of(t["checkpoint"]) >= 2
                               for t in live_trials(db).values()), "two checkpoints in S3", driver, log, timeout=180)
        proxy.cut()
        time.sleep(S3_AWAY_SECONDS)
        proxy.restore()
        first = driver.wait(timeout=300)
    finally:
        proxy.cut()
        if driver.poll() is None:
            kill_session(driver.pid)
    text = log.read_text()
    # Either way is right, and which one happens depends on what the cut hits: an upload in
    # flight rides it out on the S3 client's own retries (exit 0), a checkpoint's restore or
    # upload that fails past Tune's retries interrupts its trial (exit 1, resumed below).
    assert first in (0, 1), text[-3000:]
    assert "Traceback" not in text.split("gansweep: interrupted")[0][-2000:], text[-3000:]
    trials = live_trials(db)
    interrupted = {n: t for n, t in trials.items() if t["state"] == "RUNNING"}
    assert not [t for t in trials.values() if t["state"] == "FAIL"], trials
    assert bool(interrupted) == (first == 1), trials
    print(f"\nthe store away {S3_AWAY_SECONDS} s: {len(interrupted)} trial(s) interrupted, the rest rode it out")
    runs = {r.data.tags["gansweep.trial"]: r for r in children(mlflow_runs(uri, "s3away"))}
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]
    for number, trial in interrupted.items():
        assert "the checkpoint store did not answer" in trial["interrupted_by"]
        run = runs[str(number)]
        assert run.info.status == "KILLED" and run.data.tags["gansweep.state"] == "INTERRUPTED"
        assert run.data.tags["gansweep.interrupted_by"] == trial["interrupted_by"]
        assert "gansweep.failure_reason" not in run.data.tags
    if interrupted:
        assert "interrupted with" in text and "run the same command to resume" in text, text[-3000:]
        proxy.restore()
        done = gansweep(*args, cwd=tmp_path, env=env, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    table = check_consistent(tmp_path / "out", uri, "s3away", expected=2)
    assert set(table["state"]) == {"COMPLETE"} and (table["epochs"] == S3_AWAY_EPOCHS).all()
    study = optuna.load_study(study_name="s3away", storage=f"sqlite:///{db}")
    client = MlflowClient(uri)
    for number, trial in interrupted.items():
        # from the checkpoint Optuna recorded before the cut (only completed uploads are): the
        # wait above saw epoch 2 of one trial, and its mate may have had only epoch 1 then
        resumed = study.trials[number].user_attrs["attempts"][-1]
        assert resumed["resumed_from"] == epoch_of(trial["checkpoint"]) >= 1, (trial, resumed)
    for run in runs.values():
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "d_loss")]
        assert steps == list(range(1, S3_AWAY_EPOCHS + 1))
