"""Issue 29, item 7: what a sweep needs (its output folder writable, its MLflow store
creatable or reachable) is checked before anything is written: one message, exit code 2, no
traceback, nothing left behind. Real folders and a real closed port, no mocks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import STUDIES, clean_env, free_port, gansweep

SMOKE = STUDIES / "smoke.yaml"


def gansweep_in_read_only_folder(folder: Path, *args: str, runs: Path | None = None) -> subprocess.CompletedProcess:
    """`gansweep ARGS` with `folder` (its working directory) read-only for real, and with
    `runs`, a writable folder, as its runs/ (a writable volume in a read-only project). chmod
    0o555 does not stop root, so as root the folder is bind-mounted read-only over itself in a
    mount namespace of the command's own (unshare), writes there failing with EROFS as on a
    read-only volume, and `runs` bind-mounted at runs/; other users get the chmod, and `runs`
    must then be folder/runs itself."""
    command = [sys.executable, "-m", "gansweep", *args]
    if runs is not None:
        (folder / "runs").mkdir(exist_ok=True)
    if os.geteuid() != 0:
        assert runs is None or runs == folder / "runs"
        folder.chmod(0o555)
        try:
            return subprocess.run(command, check=False, cwd=folder, env=clean_env(), capture_output=True, text=True, timeout=300)
        finally:
            folder.chmod(0o755)
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare: no way to make a folder read-only for this user")
    script = f'mount --bind "{folder}" "{folder}" && mount -o remount,bind,ro "{folder}"'
    if runs is not None:
        script += f' && mount --bind "{runs}" "{folder}/runs"'
    script += f' && cd "{folder}" && exec "$@"'
    done = subprocess.run(["unshare", "--mount", "sh", "-c", script, "sh", *command], check=False, cwd=folder, env=clean_env(),
                          capture_output=True, text=True, timeout=300)
    if "mount:" in done.stderr and "gansweep" not in done.stderr:
        pytest.skip(f"running as root, and a read-only bind mount is not permitted here: {done.stderr.strip()}")
    return done


def work_folder(tmp_path: Path) -> Path:
    """A working directory holding the smoke study."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(SMOKE, work / "smoke.yaml")
    return work


def test_a_read_only_working_directory_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    work = work_folder(tmp_path)
    done = gansweep_in_read_only_folder(work, "run", "smoke.yaml")  # default output and MLflow store
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert f"the output folder {work / 'runs' / 'smoke'} cannot be created or written ({work} is read-only)" in done.stderr
    assert f"the MLflow store sqlite:///{work / 'mlflow.db'} cannot be created or written ({work} is read-only)" in done.stderr
    assert sorted(p.name for p in work.iterdir()) == ["smoke.yaml"]  # no optuna.db, mlflow.db, runs/


def test_a_read_only_working_directory_with_a_writable_runs_folder_writes_no_optuna_db(tmp_path: Path) -> None:
    """The output folder can be made, the default MLflow store (mlflow.db beside it) cannot:
    before, a 192-line sqlite traceback and runs/smoke/optuna.db left behind."""
    work = work_folder(tmp_path)
    runs = work / "runs" if os.geteuid() != 0 else tmp_path / "volume"
    runs.mkdir()
    done = gansweep_in_read_only_folder(work, "run", "smoke.yaml", runs=runs)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert f"the MLflow store sqlite:///{work / 'mlflow.db'} cannot be created or written ({work} is read-only)" in done.stderr
    assert "the output folder" not in done.stderr  # it could be written: not named
    assert list(runs.iterdir()) == []


def test_a_file_where_the_output_folder_should_be_is_refused(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("not a folder")
    done = gansweep("run", str(SMOKE), "--output", "runs/smoke", cwd=tmp_path, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert f"({tmp_path / 'runs'} is a file where a folder is needed)" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # no mlflow.db either


def test_an_unreachable_tracking_server_is_refused_before_the_output_folder_is_made(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # bound and released: nobody listens there
    done = gansweep("run", str(SMOKE), "--tracking-uri", uri, cwd=tmp_path, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert f"MLflow tracking at {uri} is not usable" in done.stderr
    assert list(tmp_path.iterdir()) == []  # before: runs/smoke/optuna.db and driver.lock
