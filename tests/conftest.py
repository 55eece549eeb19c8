"""Shared helpers: the real CLI in a subprocess, a real MLflow server on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STUDIES = ROOT / "studies"
# The per-epoch losses and D outputs a trial logs: what two ways of training must agree on.
LOGGED = ("d_loss", "g_loss", "d_real", "d_fake")


@pytest.fixture(scope="session")
def circle():
    from gansweep.engine.data import load_dataset  # torch: only for the tests that train

    return load_dataset("circle", seed=0)


@pytest.fixture(scope="session")
def digits():
    from gansweep.engine.data import load_dataset

    return load_dataset("digits", seed=0)


def assert_same_losses(
    mine: list[dict], reference: list[dict], rel: float, abs_: float, parzen_rel: float | None = None
) -> None:
    """Two trials' per-epoch LOGGED values, and parzen_ll where the reference was evaluated,
    agree within rel/abs_. `parzen_rel`: a looser bound for parzen_ll, where rounding
    differences have had epochs to move the few hundred samples that score it."""
    assert len(mine) == len(reference)
    for got, expected in zip(mine, reference, strict=True):
        for name in LOGGED:
            assert got[name] == pytest.approx(expected[name], rel=rel, abs=abs_), name
        if "parzen_ll" in expected:
            bound = rel if parzen_rel is None else parzen_rel
            assert got["parzen_ll"] == pytest.approx(expected["parzen_ll"], rel=bound, abs=abs_)


def losses_of(trials: list, data, execution: str) -> list[list[dict[str, float]]]:
    """Per member of a unit of `trials`, its per-epoch metrics, trained by `execution` (one
    of gansweep.engine.run.EXECUTIONS)."""
    from gansweep.engine import run  # torch: only for the tests that train

    unit = run.build_unit(trials, data, execution=execution)
    history: list[list[dict[str, float]]] = [[] for _ in trials]
    for _ in range(trials[0].epochs):
        for member, metrics in zip(history, run.train_epoch(unit), strict=True):
            member.append(metrics)
    return history


def plain(key) -> int | tuple[int, int]:
    """A service RunKey as plain numbers: a configuration's number, a replicate's (number, r)."""
    return key.number if key.replicate is None else (key.number, key.replicate)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment a user's shell would give: no inherited tracking URI or Ray address."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1", GANSWEEP_OFFLINE="1", **extra)
    return env


def gansweep(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gansweep", *args],
        cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=timeout,
    )


def start_gansweep(*args: str, cwd: Path, env: dict[str, str] | None = None, log: Path) -> subprocess.Popen:
    """The driver in its own process group, so that a test can kill it with the Ray
    processes it started, and only those."""
    return subprocess.Popen(
        [sys.executable, "-m", "gansweep", *args], cwd=cwd, env=env or clean_env(),
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )


def kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    process.wait(timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


class MlflowServer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
                "--artifacts-destination", str(self.folder / "artifacts"), "--workers", "1",
            ],
            cwd=self.folder, stdout=(self.folder / "server.log").open("a"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for_http(f"{self.uri}/health")

    def stop(self) -> None:
        if self.process is not None:
            kill_group(self.process, signal.SIGTERM)
            self.process = None


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    folder = tmp_path / "mlflow-server"
    folder.mkdir()
    server = MlflowServer(folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def mlflow_runs(uri: str, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r} at {uri}"
    return client.search_runs([found.experiment_id], max_results=1000)
