"""Optuna's own dashboard (the optuna-dashboard package) on the storage a sweep writes,
runs/<name>/optuna.db: after a real sweep with a median pruner, the dashboard's JSON API
has every trial with its state and intermediate values (the pruned ones too), and its
study page, in headless Chromium, lists the trials. Screenshot in tests/artifacts/.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from PIL import Image

from browser import chromium
from conftest import ROOT, free_port, gansweep, kill_group, wait_for_http

ARTIFACTS = ROOT / "tests" / "artifacts"
DASHBOARD = Path(shutil.which("optuna-dashboard") or (ROOT / ".venv" / "bin" / "optuna-dashboard"))

PRUNING_STUDY = """\
name: board
trial:
  dataset: line
  g_hidden: [32, 32]
  d_hidden: [32, 32]
  noise_dim: 2
  alpha_mode: weight
  epochs: 4
  steps_per_epoch: 60
  batch_size: 64
  lr_d: 0.002
  eval_samples: 400
  eval_valid: 200
  eval_test: 300
  device: cpu
search:
  lr_g: [1.0e-7, 0.002]    # a generator that cannot learn, and one that can
  seed: [0, 1, 2]
sampler: {name: grid, seed: 0}
pruner: {name: median, startup_trials: 2, warmup_epochs: 1}
budget: {max_concurrent: 1}  # one at a time: the grid's order, and so the pruning, is the same each run
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder a finished sweep (with pruned trials) ran in: its storage is runs/board/optuna.db."""
    folder = tmp_path_factory.mktemp("board")
    (folder / "board.yaml").write_text(PRUNING_STUDY)
    done = gansweep("run", "board.yaml", cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    return folder


@pytest.fixture(scope="module")
def dashboard(finished: Path) -> Iterator[str]:
    """optuna-dashboard, as the README starts it, on loopback; its base URL."""
    port = free_port()
    log = (finished / "dashboard.log").open("w")
    process = subprocess.Popen(
        [str(DASHBOARD), "sqlite:///runs/board/optuna.db", "--host", "127.0.0.1", "--port", str(port)],
        cwd=finished, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/studies", timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        kill_group(process, signal.SIGTERM)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


@pytest.mark.slow
def test_the_dashboard_shows_the_study_and_its_trials_with_pruned_ones(finished: Path, dashboard: str, tmp_path: Path) -> None:
    storage = optuna.load_study(study_name="board", storage=f"sqlite:///{finished / 'runs/board/optuna.db'}")
    expected = {t.number: t for t in storage.trials}
    assert any(t.state == optuna.trial.TrialState.PRUNED for t in expected.values()), "no trial was pruned"

    studies = get_json(f"{dashboard}/api/studies")["study_summaries"]
    (study,) = [s for s in studies if s["study_name"] == "board"]
    detail = get_json(f"{dashboard}/api/studies/{study['study_id']}?after=0")
    trials = {t["number"]: t for t in detail["trials"]}
    assert set(trials) == set(expected)
    for number, trial in trials.items():
        truth = expected[number]
        assert trial["state"].upper() == truth.state.name, number
        shown = {int(v["step"]): float(v["value"]) for v in trial["intermediate_values"]}
        assert shown == pytest.approx(truth.intermediate_values), number
        if truth.state == optuna.trial.TrialState.PRUNED:
            assert shown, f"pruned trial {number} has no intermediate values"

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "optuna-dashboard-trials.png"
    page = chromium(f"{dashboard}/dashboard/studies/{study['study_id']}/trials", shot, tmp_path / "profile")
    print(f"screenshot: {shot}")
    (ARTIFACTS / "optuna-dashboard-trials.txt").write_text(page)
    assert "board" in page, page[:3000]
    for number, truth in expected.items():
        assert re.search(rf"Trial {number}\b", page), (number, page[:3000])
    assert f"{len(expected)} Trials" in page and "Intermediate Values" in page, page[:3000]
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in expected.values())
    assert page.count("Pruned") >= pruned, page[:3000]  # each pruned trial's state badge
    with Image.open(shot) as image:
        assert image.size == (1400, 900)
