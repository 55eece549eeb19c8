"""Issue 29, item 2: a damaged state.pt of an unfinished trial, found when the sweep resumes.
Real CLI, real Ray, real files: the sweep is SIGKILLed midway, one trial's last state.pt is
cut short, another's every state.pt overwritten; the rerun refuses both with a warning naming
the file and completes every trial, from the checkpoint before (the first) or from scratch."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
import pytest
from conftest import gansweep, mlflow_runs
from mlflow.tracking import MlflowClient
from test_sweep import check_consistent, children, kill_midway

from gansweep.service.checkpoint_check import (
    checkpoint_problem,
    last_good_checkpoint,
    write_with_checksum,
)

STUDY = """\
name: corrupt
trial: {dataset: circle, g_hidden: [16], d_hidden: [16], noise_dim: 2, epochs: 5, steps_per_epoch: 100,
        eval_samples: 200, eval_valid: 100, eval_test: 200, device: cpu}
search:
  alpha: [0.4, 0.6]
sampler: {name: grid, seed: 1}
budget: {max_concurrent: 2}
"""
EPOCHS = 5


def torch_checkpoint(folder: Path, value: float) -> Path:
    """A real state.pt (torch.save's zip archive) written as the worker writes it."""
    import io

    import torch

    folder.mkdir(parents=True)
    buffer = io.BytesIO()
    torch.save({"epoch": torch.tensor([value] * 100)}, buffer)
    write_with_checksum(folder / "state.pt", buffer.getvalue())
    return folder


def test_an_intact_checkpoint_passes_and_a_changed_or_cut_one_is_refused(tmp_path: Path) -> None:
    folder = torch_checkpoint(tmp_path / "checkpoint_000001", 1.0)
    assert checkpoint_problem(str(folder)) is None
    assert sorted(f.name for f in folder.iterdir()) == ["state.pt", "state.pt.sha256"]  # no temporary left
    data = (folder / "state.pt").read_bytes()
    (folder / "state.pt").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit flipped
    assert "SHA-256" in checkpoint_problem(str(folder))
    (folder / "state.pt.sha256").unlink()  # a checkpoint from before checksums: its zip CRCs decide
    (folder / "state.pt").write_bytes(data[: len(data) // 2])
    assert "not a readable torch checkpoint" in checkpoint_problem(str(folder))
    (folder / "state.pt").write_bytes(data)
    assert checkpoint_problem(str(folder)) is None


def test_the_last_intact_checkpoint_before_a_refused_one_is_found(tmp_path: Path) -> None:
    for number in (1, 2, 3):
        torch_checkpoint(tmp_path / f"checkpoint_00000{number}", float(number))
    (tmp_path / "checkpoint_000002" / "state.pt").write_bytes(b"overwritten")
    assert last_good_checkpoint(str(tmp_path / "checkpoint_000003")) == str(tmp_path / "checkpoint_000001")
    (tmp_path / "checkpoint_000001" / "state.pt").unlink()
    assert last_good_checkpoint(str(tmp_path / "checkpoint_000003")) is None  # from scratch


def both_running_past_two_checkpoints(db: Path) -> bool:
    """Two RUNNING trials, each with a checkpoint recorded and two evaluations (so Tune has
    kept an earlier checkpoint beside the recorded one)."""
    try:
        with sqlite3.connect(db, timeout=5) as connection:
            return connection.execute(
                "select count(*) from trials t where t.state = 'RUNNING' "
                "and exists (select 1 from trial_user_attributes a where a.trial_id = t.trial_id and a.key = 'checkpoint') "
                "and (select count(*) from trial_intermediate_values v where v.trial_id = t.trial_id) >= 2"
            ).fetchone()[0] == 2
    except sqlite3.OperationalError:
        return False  # the database or its tables not created yet


def recorded_checkpoints(db: Path) -> dict[int, Path]:
    study = optuna.load_study(study_name="corrupt", storage=f"sqlite:///{db}")
    return {t.number: Path(t.user_attrs["checkpoint"]) for t in study.trials if t.state.name == "RUNNING"}


@pytest.mark.slow  # about a minute: a sweep killed midway, then resumed
def test_a_damaged_checkpoint_is_refused_by_name_and_the_trial_resumes_before_it_or_from_scratch(tmp_path: Path) -> None:
    db = kill_midway(tmp_path, STUDY, both_running_past_two_checkpoints)
    checkpoints = recorded_checkpoints(db)
    assert len(checkpoints) == 2, checkpoints
    cut, overwritten = sorted(checkpoints)
    state = checkpoints[cut] / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # a copy cut short
    for earlier in checkpoints[overwritten].parent.glob("checkpoint_*"):  # no intact one left
        (earlier / "state.pt").write_bytes(b"not a checkpoint")

    done = gansweep("run", "resume.yaml", "--output", "out", cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Traceback" not in output and "UnpicklingError" not in output
    assert f"refused checkpoint {checkpoints[cut] / 'state.pt'} of trial(s) {cut}" in done.stderr
    assert f"refused checkpoint {checkpoints[overwritten] / 'state.pt'} of trial(s) {overwritten}" in done.stderr
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    table = check_consistent(tmp_path / "out", uri, "corrupt", expected=2)
    assert set(table["state"]) == {"COMPLETE"} and (table["epochs"] == EPOCHS).all(), table.to_string()

    trials = optuna.load_study(study_name="corrupt", storage=f"sqlite:///{db}").trials
    (refused,) = trials[cut].user_attrs["checkpoint_refused"]
    assert refused["checkpoint"] == str(state) and "SHA-256" in refused["reason"]
    earlier = Path(refused["resumed_from"])
    assert earlier.parent == checkpoints[cut].parent and earlier.name < checkpoints[cut].name
    assert 0 < trials[cut].user_attrs["attempts"][-1]["resumed_from"]
    (refused,) = trials[overwritten].user_attrs["checkpoint_refused"]
    assert refused["resumed_from"] == "scratch"
    assert trials[overwritten].user_attrs["attempts"][-1]["resumed_from"] == 0
    client = MlflowClient(uri)
    for run in children(mlflow_runs(uri, "corrupt")):  # the same run goes on, no epoch twice
        assert [m.step for m in client.get_metric_history(run.info.run_id, "d_loss")] == list(range(1, EPOCHS + 1))
