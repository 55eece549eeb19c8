"""Importing gansweep changes nothing: environment, warnings filters and logging are set where
a tracker, a report or an Optuna study is set up, and only there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import clean_env
from test_layout import read_modules

# The third-party modules gansweep's driver-side modules import, imported first so that what
# they do at import is not counted as gansweep's.
LIBRARIES = (
    "mlflow", "mlflow.entities", "mlflow.tracking", "optuna", "optuna.trial", "ray", "ray.tune",
    "ray.tune.search", "ray.tune.schedulers", "ray.tune.logger", "ray.tune.experiment", "pandas",
    "numpy", "yaml", "pydantic", "rich", "matplotlib", "pyarrow.fs",
    "sqlalchemy",  # sets its own logger's level when imported (the retrying Optuna storage)
)
# Every gansweep module but the training side (the engine and the worker, which import torch
# and run only in workers) and __main__ (which runs the CLI), wherever the layout puts it.
GANSWEEP = tuple(sorted(
    name.removeprefix("gansweep.") for name in read_modules()
    if name not in ("gansweep", "gansweep.__main__")
    and not name.startswith("gansweep.engine") and name.rpartition(".")[2] != "worker"
))


def run_python(code: str, cwd: Path) -> str:
    """`code` in a fresh interpreter, its last line. Without the MLflow settings a Tracker or
    report made earlier in this pytest process left in os.environ (they are set where a client
    is made, tracking.mlflow_defaults): the child must start from a user's environment."""
    from gansweep.service.tracking import MLFLOW_DEFAULTS

    env = {k: v for k, v in clean_env().items() if k not in MLFLOW_DEFAULTS}
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_importing_gansweep_has_no_side_effects(tmp_path: Path) -> None:
    code = f"""
import importlib, json, logging, os, warnings
for name in {LIBRARIES!r}:
    importlib.import_module(name)
import optuna
env, filters = dict(os.environ), list(warnings.filters)
verbosity = optuna.logging.get_verbosity()
levels = {{n: logging.getLogger(n).level for n in list(logging.root.manager.loggerDict)}}
for name in {GANSWEEP!r}:
    importlib.import_module("gansweep." + name)
print(json.dumps({{
    "env": sorted(k for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k)),
    "filters": [str(f) for f in warnings.filters if f not in filters],
    "optuna": [verbosity, optuna.logging.get_verbosity()],
    "loggers": sorted(n for n, level in levels.items() if logging.getLogger(n).level != level),
}}))
"""
    changed = json.loads(run_python(code, tmp_path))
    assert changed == {"env": [], "filters": [], "optuna": [changed["optuna"][0]] * 2, "loggers": []}


def test_the_settings_are_made_where_tracker_report_and_study_are_set_up(tmp_path: Path) -> None:
    """What the imports used to do still happens, at the edges: the Tracker and the report set
    MLflow's fail-fast and quiet defaults (unless the environment has its own), an Optuna
    study turns Optuna's INFO logging and ExperimentalWarning off."""
    (tmp_path / "s.yaml").write_text("name: s\npruner: {name: median, patience: 2}\n")
    code = f"""
import json, os, warnings
from pathlib import Path
os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "33"  # the user's own value wins
import optuna
from gansweep.errors import GansweepError
from gansweep.reporting.html import write_report
from gansweep.service.search import OptunaStudy
from gansweep.config.load import load_study
from gansweep.service.tracking import Tracker
names = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
seen = {{"imported": [os.environ.get(n) for n in names]}}
os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
Tracker("sqlite:///{tmp_path / 'mlflow.db'}", "s", "s", Path("out"))
seen["tracker"] = [os.environ.get(n) for n in names]
for n in names:
    os.environ.pop(n, None)
try:
    write_report(Path("nothing-here"), "sqlite:///{tmp_path / 'absent.db'}")
except GansweepError:
    pass
seen["report"] = [os.environ.get(n) for n in names]
verbosity = optuna.logging.get_verbosity()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("default")
    OptunaStudy(load_study("s.yaml"), "sqlite:///{tmp_path / 'optuna.db'}").study
seen["optuna"] = [verbosity, optuna.logging.get_verbosity()]
seen["experimental"] = [str(w.message) for w in caught if issubclass(w.category, optuna.exceptions.ExperimentalWarning)]
print(json.dumps(seen))
"""
    seen = json.loads(run_python(code, tmp_path))
    assert seen["imported"] == [None, "33", None]
    assert seen["tracker"] == ["0", "33", "false"]
    assert seen["report"] == ["0", "10", "false"]
    assert seen["optuna"] == [20, 30]  # INFO before, WARNING once a study is built
    assert seen["experimental"] == []  # PatientPruner is experimental in Optuna 5.0


def test_one_default_tracking_uri_for_sweep_and_report(tmp_path: Path) -> None:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else MLflow's own store in the working
    directory; the sweep and the report ask the same function."""
    code = """
import json, os
import gansweep.reporting.view, gansweep.reporting.html, gansweep.service.sweep
from gansweep.service.tracking import resolve_tracking_uri
seen = [resolve_tracking_uri(), resolve_tracking_uri("http://flag:5000")]
os.environ["MLFLOW_TRACKING_URI"] = "http://env:5000"
seen += [resolve_tracking_uri(), resolve_tracking_uri("http://flag:5000")]
seen.append(gansweep.reporting.html.resolve_tracking_uri is gansweep.service.sweep.resolve_tracking_uri is resolve_tracking_uri)
print(json.dumps(seen))
"""
    seen = json.loads(run_python(code, tmp_path))
    assert seen == [f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}", "http://flag:5000", "http://env:5000",
                    "http://flag:5000", True]
