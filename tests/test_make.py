"""The two commands of the quick start (Makefile): `make run` sweeps studies/alpha.yaml and
`make test` runs the default then the slow suite, each after setting up .venv if needed;
CI (.ci/run) calls `make test`. Checked with make's dry run: nothing is installed or run."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT


def dry_run(target: str, folder: Path) -> list[str]:
    # Under `make test` (CI) this runs inside make: a child make would read the parent's
    # MAKELEVEL and MAKEFLAGS and print "Entering directory" lines around its own.
    env = {k: v for k, v in os.environ.items() if k not in {"MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES"}}
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", target],
        cwd=folder, env=env, capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.fixture
def fresh_clone(tmp_path: Path) -> Path:
    """The files make reads, without a .venv: a fresh machine."""
    for name in ("Makefile", "pyproject.toml", "scripts/setup.sh"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def test_make_run_sets_up_then_sweeps_alpha_on_its_defaults(fresh_clone: Path) -> None:
    assert shutil.which("make"), "make is needed (scripts/setup.sh's apt list, .ci/run installs it)"
    lines = dry_run("run", fresh_clone)
    assert lines[0] == "bash scripts/setup.sh"
    assert lines[-1] == ".venv/bin/gansweep run studies/alpha.yaml"  # no --set: the study's own values


def test_make_test_runs_the_default_then_the_slow_suite(fresh_clone: Path) -> None:
    text = "\n".join(dry_run("test", fresh_clone))
    assert text.startswith("bash scripts/setup.sh")
    default, slow = text.index(".venv/bin/python -m pytest &&"), text.index(".venv/bin/python -m pytest -m slow")
    assert default < slow


def test_setup_runs_again_only_when_its_inputs_change(fresh_clone: Path) -> None:
    (fresh_clone / ".venv").mkdir()
    (fresh_clone / ".venv" / ".gansweep-installed").touch()
    assert "bash scripts/setup.sh" not in dry_run("run", fresh_clone)
    pyproject = fresh_clone / "pyproject.toml"
    stamp = fresh_clone / ".venv" / ".gansweep-installed"
    later = stamp.stat().st_mtime + 10
    os.utime(pyproject, (later, later))
    assert dry_run("run", fresh_clone)[0] == "bash scripts/setup.sh"


def test_ci_calls_make_test() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert "\nmake test\n" in script and "\nmake setup\n" in script
    assert subprocess.run(["bash", "-n", str(ROOT / ".ci" / "run")]).returncode == 0
