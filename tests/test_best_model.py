"""objective.select: best on the worker's side, without Ray: the best evaluation kept by the
objective's direction, its generator written as an MLflow model folder, logged to a real
MLflow store as the driver logs it, loaded back with mlflow.pytorch.load_model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gansweep.config.schema import TrialConfig
from gansweep.engine import run
from gansweep.service import protocol as p
from gansweep.service.worker import Best, note_best, write_best

TRIAL = TrialConfig(dataset="circle", g_hidden=(16,), d_hidden=(16,), noise_dim=3, epochs=3, steps_per_epoch=5,
                    device="cpu")


@pytest.mark.parametrize(("direction", "kept"), [("maximize", 2), ("minimize", 3)])
def test_the_best_evaluation_is_kept_by_the_objectives_direction(circle, direction: str, kept: int) -> None:
    unit = run.build_unit([TRIAL], circle)
    select = p.Selection(metric="parzen_ll", direction=direction, metrics=["parzen_ll"])
    best: dict[int, Best] = {}
    weights = {}
    for epoch, value in ((1, -3.0), (2, -1.0), (3, -4.0)):
        unit.epochs[0] = epoch
        with torch.no_grad():
            unit.state.g.params.add_(0.5)  # a different generator each epoch
        weights[epoch] = run.member_generator_state(unit, 0)
        metrics = {"parzen_ll": value}
        note_best(best, select, unit, 0, 7, metrics)
        assert metrics[p.BEST_EPOCH] == best[7].epoch  # reported with every result
        assert metrics[p.BEST_PREFIX + "parzen_ll"] == best[7].value
    assert best[7].epoch == kept
    assert best[7].value == {2: -1.0, 3: -4.0}[best[7].epoch]
    for name, tensor in weights[best[7].epoch].items():
        assert torch.equal(best[7].generator[name], tensor)  # that epoch's generator, not the last


def test_a_best_model_logged_to_mlflow_loads_back_and_generates_samples(circle, tmp_path: Path) -> None:
    import mlflow
    import mlflow.pytorch
    from mlflow.tracking import MlflowClient

    unit = run.build_unit([TRIAL], circle)
    unit.epochs[0] = 2
    kept = Best(-1.5, 2, {"parzen_ll": -1.5}, run.member_generator_state(unit, 0))
    with torch.no_grad():
        unit.state.g.params.mul_(0.0)  # the unit trains on: the model must be the kept weights
    folder = tmp_path / "checkpoint" / p.MEMBERS_DIR / "7"
    write_best(folder, kept, unit, 0, tmp_path / "scratch")
    saved = torch.load(folder / p.BEST_FILE, weights_only=False)
    assert (saved["epoch"], saved["value"]) == (2, -1.5)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("best")).info.run_id
    client.log_artifacts(run_id, str(folder / p.BEST_MODEL_DIR), p.BEST_MODEL_DIR)  # as the driver's fetch does
    mlflow.set_tracking_uri(uri)
    model = mlflow.pytorch.load_model(f"runs:/{run_id}/{p.BEST_MODEL_DIR}")
    noise = torch.randn(50, TRIAL.noise_dim)
    samples = model(noise)
    assert samples.shape == (50, 2)
    reference = run.member_generator(unit, 0)
    reference.load_state_dict(kept.generator)
    reference.eval()
    assert torch.allclose(samples, reference(noise))  # the kept epoch's generator
