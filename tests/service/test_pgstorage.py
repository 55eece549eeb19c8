"""The Optuna study on a real PostgreSQL (a private cluster on loopback, tests/pgserver.py), as
on the cluster: the URL forms that work, a database restarted under the driver's storage calls
and mid-sweep, a database that does not answer at start or for too long."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import STUDIES, clean_env, free_port, gansweep, mlflow_runs, start_gansweep
from pgserver import PgServer, needs_postgres, started_pg_server
from test_cluster import kill_session
from test_sweep import children

from gansweep.config.load import load_study
from gansweep.service import optuna_storage
from gansweep.service.optuna_storage import RetryingRDBStorage, StorageUnreachable, redacted
from gansweep.service.protocol import with_postgres_driver
from gansweep.service.search import OptunaStudy

pytestmark = needs_postgres()


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    yield from started_pg_server()


@pytest.fixture
def database(pg: PgServer, request: pytest.FixtureRequest) -> str:
    """A fresh database for each test, named after it."""
    name = "t_" + request.node.name.lower()[5:40].replace("[", "_").replace("]", "")
    pg.create_database(name)
    return name


def test_bare_and_psycopg2_urls_name_the_same_study(pg: PgServer, database: str) -> None:
    config = load_study(STUDIES / "smoke.yaml")
    bare = pg.url(database, driver="postgresql")
    assert with_postgres_driver(bare) == pg.url(database)
    assert with_postgres_driver("postgres://u:p@h/db") == "postgresql+psycopg2://u:p@h/db"
    assert with_postgres_driver("sqlite:///x.db") == "sqlite:///x.db"
    first = OptunaStudy(config, with_postgres_driver(bare))
    number, values = first.ask()
    second = OptunaStudy(config, pg.url(database))
    assert second.values_of(number) == values
    assert [t.number for t in second.unfinished()] == [number]


def test_storage_calls_ride_out_a_database_restart(pg: PgServer, database: str) -> None:
    storage = RetryingRDBStorage(pg.url(database))
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "ride")
    trial_id = storage.create_new_trial(study_id)
    pg.stop_now()  # every connection cut; new ones refused for a while
    back = threading.Timer(3.0, pg.start_again)
    back.start()
    started = time.monotonic()
    try:
        storage.set_trial_user_attr(trial_id, "epoch", 3)  # waits for the database, then writes
        waited = time.monotonic() - started
        assert storage.get_trial(trial_id).user_attrs == {"epoch": 3}
        assert storage.get_study_id_from_name("ride") == study_id
    finally:
        back.join()
    assert 2.5 < waited < 30


def test_a_database_away_past_the_bound_is_a_clear_error_without_the_password(
    pg: PgServer, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(optuna_storage.RETRY_ENV, "2")
    storage = RetryingRDBStorage(pg.url(database))
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "away")
    pg.stop_now()
    try:
        started = time.monotonic()
        with pytest.raises(StorageUnreachable) as raised:
            storage.get_study_directions(study_id)
        assert 1.0 < time.monotonic() - started < 10
        message = str(raised.value)
        assert pg.password not in message
        assert redacted(pg.url(database)) in message and "***" in message
        assert "did not answer for 2 s" in message and "get_study_directions" in message
        started = time.monotonic()  # gone: the next call tries once, not for the whole bound again
        with pytest.raises(StorageUnreachable):
            storage.get_study_directions(study_id)
        assert time.monotonic() - started < 1.5
    finally:
        pg.start_again()
    assert storage.get_study_directions(study_id) == [optuna.study.StudyDirection.MAXIMIZE]


def test_errors_that_are_no_lost_connection_are_not_retried(pg: PgServer, database: str) -> None:
    storage = RetryingRDBStorage(pg.url(database))
    started = time.monotonic()
    with pytest.raises(KeyError):
        storage.get_study_id_from_name("no such study")
    assert time.monotonic() - started < 1.0


def test_a_database_unreachable_at_start_exits_2_before_anything_is_written(tmp_path: Path) -> None:
    password = "s3cret-" + "x" * 12
    url = f"postgresql://gansweep:{password}@127.0.0.1:{free_port()}/optuna"  # nothing listens
    env = clean_env(GANSWEEP_OPTUNA_STORAGE=url, GANSWEEP_STORAGE_CONNECT_S="2")
    done = gansweep("run", str(STUDIES / "smoke.yaml"), "--output", "out", cwd=tmp_path, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert f"the Optuna storage postgresql+psycopg2://gansweep:***@127.0.0.1:" in done.stderr
    assert password not in done.stdout + done.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


# -------------------------------------------------------------------- mid-sweep, end to end

# The smoke study with epochs long enough (about 1 s each on one core) that a restart lands
# while trials train, and evaluated every epoch: each result writes to Optuna.
RESTART_STUDY = """\
name: pgrestart
trial: {dataset: circle, g_hidden: [32], d_hidden: [32], noise_dim: 2, epochs: 5,
        steps_per_epoch: 600, eval_samples: 300, eval_valid: 200, eval_test: 300, device: cpu}
search:
  alpha: [0.3, 0.4, 0.6, 0.7]
sampler: {name: grid, seed: 1}
budget: {max_concurrent: 2, cpus_per_trial: 1}
"""


def reported_epochs(url: str, name: str) -> int:
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except KeyError:
        return 0
    return sum(len(t.intermediate_values) for t in study.get_trials(deepcopy=False))


def check_accounted(output: Path, storage_url: str, tracking_uri: str, name: str, expected: int) -> pd.DataFrame:
    """Optuna (on PostgreSQL), results.csv and MLflow agree on every trial, none RUNNING."""
    table = pd.read_csv(output / "results.csv")
    study = optuna.load_study(study_name=name, storage=storage_url)
    states = {t.number: t.state.name for t in study.trials if not t.user_attrs.get("excluded")}
    assert len(states) == expected and "RUNNING" not in states.values()
    assert dict(zip(table["trial"], table["state"], strict=True)) == states
    runs = mlflow_runs(tracking_uri, name)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    kids = children(runs)
    assert {int(r.data.tags["gansweep.trial"]): r.data.tags["gansweep.state"] for r in kids} == states
    return table


@pytest.mark.slow
def test_postgres_restarted_mid_sweep_loses_nothing(tmp_path: Path, pg: PgServer, database: str) -> None:
    (tmp_path / "pgrestart.yaml").write_text(RESTART_STUDY)
    url = pg.url(database, driver="postgresql")  # the bare form, as a user writes it
    env = clean_env(GANSWEEP_OPTUNA_STORAGE=url)
    log = tmp_path / "driver.log"
    driver = start_gansweep("run", "pgrestart.yaml", "--output", "out", cwd=tmp_path, env=env, log=log)
    try:
        deadline = time.monotonic() + 300
        while reported_epochs(pg.url(database), "pgrestart") < 2:
            assert driver.poll() is None and time.monotonic() < deadline, log.read_text()[-5000:]
            time.sleep(0.3)
        before = reported_epochs(pg.url(database), "pgrestart")
        pg.restart()
        assert driver.wait(timeout=400) == 0, log.read_text()[-5000:]
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=60)
    text = log.read_text()
    assert "Traceback" not in text and "StorageInternalError" not in text, text[-5000:]
    print(f"restarted after {before} evaluations; driver log:\n{text[-1500:]}")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    table = check_accounted(tmp_path / "out", pg.url(database), uri, "pgrestart", expected=4)
    assert set(table["state"]) == {"COMPLETE"} and (table["epochs"] == 5).all()
    client = MlflowClient(uri)
    for run in children(mlflow_runs(uri, "pgrestart")):
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "d_loss"))
        assert steps == [1, 2, 3, 4, 5], (run.info.run_name, steps)


# -------------------------------------------------------------------- load
LOAD_TRIALS = 1_000
LOAD_MARK = 200  # the driver's peak when this many trials have finished is the reference
LOAD_STUDY = f"""\
name: load
trial: {{dataset: line, g_hidden: [8], d_hidden: [8], noise_dim: 1, batch_size: 32, epochs: 1,
        steps_per_epoch: 5, eval_samples: 100, eval_valid: 50, eval_test: 100, device: cpu}}
search:
  alpha: {{uniform: [0.2, 0.8]}}
sampler: {{name: random, seed: 0}}
budget: {{trials: {LOAD_TRIALS}, max_concurrent: 2, cpus_per_trial: 1}}
"""


def peak_rss_kib(pid: int) -> int | None:
    """The kernel's high-water mark of the process's resident memory (VmHWM)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def finished_trials(pg: PgServer, database: str) -> int:
    """Trials Optuna was told the end of, read with psql (loading the study would copy them all)."""
    rows = pg.psql("SELECT count(*) FROM trials WHERE state <> 'RUNNING' AND state <> 'WAITING'"
                   if pg.psql("SELECT to_regclass('trials') IS NOT NULL", database) == [["t"]] else "SELECT 0", database)
    return int(rows[0][0])


@pytest.mark.slow
def test_a_thousand_trials_on_postgres_all_accounted_for_in_bounded_driver_memory(
    tmp_path: Path, pg: PgServer, database: str
) -> None:
    """1,000 short trials (one epoch of 5 steps) with the Optuna study on PostgreSQL. Every
    trial is accounted for in Optuna, results.csv and MLflow, and the driver's peak resident
    memory once all 1,000 have finished is at most 1.2x its peak when 200 had: Tune keeps every
    trial it ran until its fit returns, so the sweep runs as fits of sweep.UNITS_PER_FIT units."""
    (tmp_path / "load.yaml").write_text(LOAD_STUDY)
    url = pg.url(database)
    log = tmp_path / "driver.log"
    started = time.monotonic()
    driver = start_gansweep("run", "load.yaml", "--output", "out", cwd=tmp_path,
                            env=clean_env(GANSWEEP_OPTUNA_STORAGE=url), log=log)
    samples: list[tuple[float, int, int]] = []  # (seconds, trials finished, VmHWM KiB)
    try:
        while driver.poll() is None and time.monotonic() - started < 2400:
            rss = peak_rss_kib(driver.pid)
            if rss is not None:
                samples.append((time.monotonic() - started, finished_trials(pg, database), rss))
            time.sleep(1.0)
        assert driver.wait(timeout=60) == 0, log.read_text()[-5000:]
    finally:
        if driver.poll() is None:
            kill_session(driver.pid)
            driver.wait(timeout=60)
    wall = time.monotonic() - started
    at_mark = next(rss for _, done, rss in samples if done >= LOAD_MARK)
    at_end = next((rss for _, done, rss in samples if done >= LOAD_TRIALS), samples[-1][2])
    final = samples[-1][2]
    print(f"\n{LOAD_TRIALS} trials in {wall:.0f} s; driver peak RSS {at_mark / 1024:.0f} MiB at {LOAD_MARK} "
          f"trials, {at_end / 1024:.0f} MiB at {LOAD_TRIALS} ({at_end / at_mark:.2f}x), "
          f"{final / 1024:.0f} MiB with results and report")
    assert at_end <= 1.2 * at_mark

    table = check_accounted(tmp_path / "out", url, f"sqlite:///{tmp_path / 'mlflow.db'}", "load", expected=LOAD_TRIALS)
    assert set(table["state"]) == {"COMPLETE"} and sorted(table["trial"]) == list(range(LOAD_TRIALS))
    assert table["alpha"].between(0.2, 0.8).all() and table["alpha"].nunique() == LOAD_TRIALS
    assert table["objective"].notna().all() and (table["epochs"] == 1).all()
