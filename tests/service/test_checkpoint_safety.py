"""Checkpoints are read without running code (issue 29, item 9): whoever can write the
checkpoint store or the artifact bucket must not run code on the workers or the report
through a pickled object. A real checkpoint still resumes."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from gansweep.config.schema import TrialConfig
from gansweep.engine import run
from gansweep.engine.data import load_dataset
from gansweep.reporting.view import trial_config
from gansweep.service import protocol as p
from gansweep.service.worker import load_resume_state, write_checkpoint


class CreatesAFile:
    """Unpickled, it calls open(path, "w"): code run by loading, visible as a new file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


TRIAL = TrialConfig(dataset="circle", g_hidden=(8,), d_hidden=(8,), noise_dim=2, batch_size=32, epochs=3,
                    steps_per_epoch=2, eval_samples=200, eval_valid=100, eval_test=200, device="cpu")


def resume_config(folder: Path, numbers: list[int]) -> dict:
    return {"resume": str(folder), "numbers": numbers}


def a_real_checkpoint(folder: Path) -> tuple[run.Unit, p.CheckpointState]:
    """What a worker writes after one epoch of a lone trial, number 0."""
    unit = run.build_unit([TRIAL], load_dataset("circle", seed=0), execution="eager")
    run.train_epoch(unit)
    state = p.CheckpointState(protocol=p.CHECKPOINT_PROTOCOL, epoch=1, numbers=[0], data_seed=0,
                              unit=run.unit_state(unit), last={})
    history = {0: [{**unit.last_metrics[0], p.EPOCH: 1.0}]}
    folder.mkdir()  # Tune hands the worker an existing temporary folder
    write_checkpoint(folder, state, unit, [0], folder / "no-samples", history)
    return unit, state


def test_a_real_checkpoint_resumes_with_its_state_best_and_history(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint"
    unit, state = a_real_checkpoint(folder)
    generator = run.member_generator_state(unit, 0)
    torch.save({"generator": generator, "trial": TRIAL.model_dump(mode="json"), "epoch": 1, "value": -1.5,
                "objectives": [-1.5]}, folder / p.member_path(0, p.BEST_FILE))
    saved, best, history = load_resume_state(resume_config(folder, [0]), seed=0)
    assert saved is not None and saved["epoch"] == 1 and saved["numbers"] == [0]
    torch.testing.assert_close(saved["unit"]["state"]["g"]["params"], state["unit"]["state"]["g"]["params"])
    assert (best[0].value, best[0].epoch, best[0].objectives) == (-1.5, 1, [-1.5])
    torch.testing.assert_close(best[0].generator, generator)
    assert history[0][0]["epoch"] == 1.0 and history[0][0]["d_loss"] == pytest.approx(unit.last_metrics[0]["d_loss"])
    resumed = run.build_unit([TRIAL], load_dataset("circle", seed=0), execution="eager")
    run.load_unit_state(resumed, saved["unit"])  # the engine continues from it
    assert resumed.epoch == 1


@pytest.mark.parametrize("file", [p.STATE_FILE, p.member_path(0, p.BEST_FILE)])
def test_a_checkpoint_file_holding_a_pickled_object_is_refused_and_runs_nothing(file: str, tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint"
    _, state = a_real_checkpoint(folder)
    marker = tmp_path / "code-ran"
    (folder / file).parent.mkdir(parents=True, exist_ok=True)
    torch.save({**state, "payload": CreatesAFile(marker)}, folder / file)
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        load_resume_state(resume_config(folder, [0]), seed=0)
    assert not marker.exists()


def test_the_report_reads_a_generator_checkpoint_without_running_its_objects(tmp_path: Path) -> None:
    checkpoint = p.OutputLayout(tmp_path).artifacts(0) / p.ARTIFACT_CHECKPOINT / p.GENERATOR_FILE
    checkpoint.parent.mkdir(parents=True)
    torch.save({"generator": {}, "trial": TRIAL.model_dump(mode="json")}, checkpoint)
    assert trial_config(None, tmp_path, 0) == TRIAL  # a plain one is read back
    marker = tmp_path / "code-ran"
    torch.save({"generator": {}, "trial": TRIAL.model_dump(mode="json"), "x": CreatesAFile(marker)}, checkpoint)
    assert trial_config(None, tmp_path, 0) is None
    assert not marker.exists()
