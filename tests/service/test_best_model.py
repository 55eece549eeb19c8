"""objective.select: best on the worker's side, without Ray: the best evaluation kept by the
objective's direction, its generator written as an MLflow model folder, logged to a real
MLflow store as the driver logs it (an MLflow 3 logged model of the trial's run, from its
epoch), loaded back with mlflow.pytorch.load_model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from gansweep.config.schema import TrialConfig
from gansweep.engine import run
from gansweep.service import protocol as p
from gansweep.engine.train import BEST_EPOCH, BEST_PREFIX, Best, BestTracker
from gansweep.service.worker import write_best
from gansweep.service.replicates import RunKey

TRIAL = TrialConfig(dataset="circle", g_hidden=(16,), d_hidden=(16,), noise_dim=3, epochs=3, steps_per_epoch=5,
                    device="cpu")


@pytest.mark.parametrize(("direction", "kept"), [("maximize", 2), ("minimize", 3)])
def test_the_best_evaluation_is_kept_by_the_objectives_direction(circle, direction: str, kept: int) -> None:
    unit = run.build_unit([TRIAL], circle)
    assert (BEST_EPOCH, BEST_PREFIX) == (p.BEST_EPOCH, p.BEST_PREFIX)  # the engine's names are the protocol's
    tracker = BestTracker("parzen_ll", direction, ("parzen_ll",))
    weights = {}
    for epoch, value in ((1, -3.0), (2, -1.0), (3, -4.0)):
        unit.epochs[0] = epoch
        with torch.no_grad():
            unit.state.g.params.add_(0.5)  # a different generator each epoch
        weights[epoch] = run.member_generator_state(unit, 0)
        metrics = {"parzen_ll": value}
        tracker.note(metrics, epoch, lambda: run.member_generator_state(unit, 0))
        assert metrics[p.BEST_EPOCH] == tracker.best.epoch  # reported with every result
        assert metrics[p.BEST_PREFIX + "parzen_ll"] == tracker.best.value
    assert tracker.best.epoch == kept
    assert tracker.best.value == {2: -1.0, 3: -4.0}[tracker.best.epoch]
    for name, tensor in weights[tracker.best.epoch].items():
        assert torch.equal(tracker.best.generator[name], tensor)  # that epoch's generator, not the last


def saved_best(circle, tmp_path: Path, epoch: int = 2):
    """A unit's kept best (epoch `epoch`) written into a checkpoint folder as the worker does,
    the unit trained on past it; the folder and the kept weights' generator."""
    unit = run.build_unit([TRIAL], circle)
    unit.epochs[0] = epoch
    kept = Best(-1.5, epoch, {"parzen_ll": -1.5}, run.member_generator_state(unit, 0))
    with torch.no_grad():
        unit.state.g.params.mul_(0.0)  # the unit trains on: the model must be the kept weights
    folder = tmp_path / "checkpoint" / p.MEMBERS_DIR / "7"
    write_best(folder, kept, unit, 0, tmp_path / "scratch")
    reference = run.member_generator(unit, 0)
    reference.load_state_dict(kept.generator)
    return folder, reference.eval()


def test_a_best_model_is_a_logged_model_of_its_run_and_loads_back_and_generates_samples(
    circle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The driver's path (tracking.Tracker, through its outbox, no torch needed there): the
    worker's model folder becomes an MLflow 3 logged model of the trial's run, from its epoch."""
    import mlflow
    import mlflow.pytorch
    from mlflow.entities import LoggedModelStatus
    from mlflow.tracking import MlflowClient

    from gansweep.service.tracking import MODEL_EPOCH, MODEL_TYPE, TAG_BEST_EPOCH, Tracker

    monkeypatch.chdir(tmp_path)  # the store's artifacts (./mlruns) stay in tmp_path
    folder, reference = saved_best(circle, tmp_path)
    saved = torch.load(folder / p.BEST_FILE, weights_only=False)
    assert (saved["epoch"], saved["value"]) == (2, -1.5)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "best", "best", tmp_path / "out")
    tracker.start_child(RunKey(7), "007", {"dataset": "circle", "noise_dim": TRIAL.noise_dim, "epochs": 3})
    for epoch, value in ((1, -3.0), (2, -1.5), (3, -4.0)):
        tracker.log_epoch(RunKey(7), {"parzen_ll": value, "best_epoch": 2.0 if epoch > 1 else 1.0}, epoch)
    copied = tmp_path / "out" / "artifacts" / "7" / p.BEST_MODEL_DIR  # as the callback's fetch copies it out
    shutil.copytree(folder / p.BEST_MODEL_DIR, copied)
    tracker.log_model(RunKey(7), copied, p.BEST_MODEL_DIR, 2)
    tracker.set_child_tags(RunKey(7), {TAG_BEST_EPOCH: "2"})
    tracker.finish_child(RunKey(7), "COMPLETE", {})
    assert tracker.flush()

    client = MlflowClient(uri)
    run_id = tracker.run_ids[RunKey(7)]
    found = client.search_logged_models([tracker.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    assert len(found) == 1
    (model,) = found
    assert (model.name, model.model_type, model.status) == (p.BEST_MODEL_DIR, MODEL_TYPE, LoggedModelStatus.READY)
    assert model.params[MODEL_EPOCH] == "2" and model.tags[TAG_BEST_EPOCH] == "2"
    assert model.params["dataset"] == "circle"  # the run's params, as log_model copies them
    assert {(m.key, m.step, m.value) for m in model.metrics} == {("parzen_ll", 2, -1.5), ("best_epoch", 2, 2.0)}
    finished = client.get_run(run_id)
    assert [(o.model_id, o.step) for o in finished.outputs.model_outputs] == [(model.model_id, 2)]
    assert finished.data.tags[TAG_BEST_EPOCH] == "2" and finished.info.status == "FINISHED"
    assert not client.list_artifacts(run_id)  # the model is the logged model's, not copied into the run

    mlflow.set_tracking_uri(uri)
    info = mlflow.models.get_model_info(model.model_uri)
    assert (info.run_id, info.model_id) == (run_id, model.model_id)  # its MLmodel names run and model
    assert info.metadata["epoch"] == 2  # the worker's save_model wrote the epoch into it
    noise = torch.randn(50, TRIAL.noise_dim)
    for uri_ in (model.model_uri, f"models:/{model.model_id}", f"runs:/{run_id}/{p.BEST_MODEL_DIR}"):
        loaded = mlflow.pytorch.load_model(uri_)
        samples = loaded(noise)
        assert samples.shape == (50, 2)
        assert torch.allclose(samples, reference(noise))  # the kept epoch's generator


def test_logging_a_best_model_again_keeps_one_model_per_run(circle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The outbox retries a call that failed midway, and a resumed trial closes again with a
    later best: the run keeps one logged model, the latest epoch's."""
    from mlflow.entities import LoggedModelStatus
    from mlflow.tracking import MlflowClient

    from gansweep.service.tracking import MODEL_EPOCH, log_saved_model

    monkeypatch.chdir(tmp_path)
    folder, _ = saved_best(circle, tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("again")
    run_id = client.create_run(experiment).info.run_id
    first = log_saved_model(client, run_id, folder / p.BEST_MODEL_DIR, p.BEST_MODEL_DIR, 2)
    assert log_saved_model(client, run_id, folder / p.BEST_MODEL_DIR, p.BEST_MODEL_DIR, 2) == first  # no second model
    pending = client.create_logged_model(experiment, name=p.BEST_MODEL_DIR, source_run_id=run_id,
                                         params={MODEL_EPOCH: "5"})  # a call cut short after creating it
    assert log_saved_model(client, run_id, folder / p.BEST_MODEL_DIR, p.BEST_MODEL_DIR, 5) == pending.model_id
    (model,) = client.search_logged_models([experiment], filter_string=f"source_run_id = '{run_id}'")
    assert (model.model_id, model.status, model.params[MODEL_EPOCH]) == (pending.model_id, LoggedModelStatus.READY, "5")
    outputs = client.get_run(run_id).outputs.model_outputs
    assert {(o.model_id, o.step) for o in outputs} == {(first, 2), (pending.model_id, 5)}
