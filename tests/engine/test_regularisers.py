"""Plugin regularisers (gansweep.extend.regulariser) in the one iteration: each against the
textbook loop (tests/reference_loop.py, which gives the same function its inputs the plain
way: D's input gradient by autograd.grad), in every execution, and the weights per member."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_same_losses, losses_of
from reference_loop import reference_losses

from gansweep.config import plugins
from gansweep.config.schema import TrialConfig
from gansweep.engine.regularisers import per_trial

PLUGIN = '''
from gansweep.extend import regulariser

@regulariser("r1", player="d")
def r1(real, d_grad):
    """Mescheder et al. 2018's R1 / gamma: 1/2 E ||grad D(x)||^2 at real x (weight: gamma)."""
    return 0.5 * d_grad(real).flatten(2).pow(2).sum(2).mean(1)

@regulariser("logit_l2", player="d")
def logit_l2(real_logits, fake_logits):
    return real_logits.pow(2).mean(1) + fake_logits.pow(2).mean(1)

@regulariser("pull", player="g")
def pull(fake):
    return fake.flatten(2).pow(2).sum(2).mean(1)

@regulariser("g_smooth", player="g")
def g_smooth(fake, d_grad, real_logits):
    """Through D's input gradient at G's samples: a second-order path back to G."""
    return d_grad(fake).flatten(2).pow(2).sum(2).mean(1) + 0.0 * real_logits.mean(1)

@regulariser("wrong_shape", player="d")
def wrong_shape(real):
    return real.sum(2)
'''
TOY: dict[str, Any] = dict(
    dataset="circle", g_hidden=(16, 16), d_hidden=(16, 16), noise_dim=4, batch_size=32, epochs=2,
    steps_per_epoch=12, eval_every=2, eval_samples=200, eval_valid=100, eval_test=100, device="cpu", seed=5,
    lr_d=5e-3,  # large steps: each term moves the networks visibly within the test's 24 iterations
)
WEIGHTS = {
    "r1": {"r1": 10.0},
    "logit_l2": {"logit_l2": 0.5},
    "pull": {"pull": 0.3},
    "all": {"r1": 1.0, "logit_l2": 0.1, "pull": 0.1, "g_smooth": 0.05},
}


@pytest.fixture(scope="module", autouse=True)
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    path = tmp_path_factory.mktemp("plugin") / "regs.py"
    path.write_text(PLUGIN)
    plugins.load([str(path)], "test")
    yield
    plugins.forget_all()


@pytest.mark.parametrize("name", list(WEIGHTS))
def test_eager_and_packed_give_the_textbook_loops_regularised_losses(circle, name: str) -> None:
    trial = TrialConfig(**TOY, regularisers=WEIGHTS[name])
    (eager,) = losses_of([trial], circle, "eager")
    assert_same_losses(eager, reference_losses(trial, circle), rel=1e-3, abs_=1e-5)
    (packed,) = losses_of([trial], circle, "packed")
    assert_same_losses(packed, eager, rel=1e-3, abs_=1e-5, parzen_rel=1e-3)
    plain = losses_of([TrialConfig(**TOY)], circle, "eager")[0]
    moved = [n for n in ("d_loss", "g_loss", "d_real", "d_fake") if eager[-1][n] != pytest.approx(plain[-1][n], rel=1e-3)]
    assert moved, "the regulariser changed nothing"


def test_members_of_a_pack_have_their_own_weights(circle) -> None:
    """A member that leaves the regulariser off (weight 0) trains as a plain trial; its mate
    with a weight as it would alone."""
    off, on = TrialConfig(**TOY), TrialConfig(**TOY, regularisers={"r1": 10.0, "pull": 0.3})
    packed_off, packed_on = losses_of([off, on], circle, "packed")
    assert_same_losses(packed_off, losses_of([off], circle, "eager")[0], rel=1e-3, abs_=1e-5, parzen_rel=1e-3)
    assert_same_losses(packed_on, losses_of([on], circle, "eager")[0], rel=1e-3, abs_=1e-5, parzen_rel=1e-3)


def test_compiled_executions_give_the_eager_regularised_losses(circle) -> None:
    trial = TrialConfig(**{**TOY, "epochs": 1, "steps_per_epoch": 4}, regularisers={"r1": 10.0, "pull": 0.3})
    (eager,) = losses_of([trial], circle, "eager")
    (compiled,) = losses_of([trial], circle, "compiled")
    assert_same_losses(compiled, eager, rel=1e-3, abs_=1e-5, parzen_rel=1e-2)  # test_engine.py's bound


def test_a_regulariser_must_give_one_value_per_trial(circle) -> None:
    with pytest.raises(ValueError, match=r"regulariser 'wrong_shape' must give one value per trial, shape \(1,\), got \(1, 16\)"):
        losses_of([TrialConfig(**{**TOY, "epochs": 1, "steps_per_epoch": 1}, regularisers={"wrong_shape": 1.0})],
                  circle, "eager")
    import torch

    assert per_trial(torch.ones(3), 3, "x").shape == (3, 1) and per_trial(torch.tensor(2.0), 1, "x").shape == (1, 1)


def test_a_regulariser_that_calls_d_is_refused_with_batch_norm_in_d() -> None:
    with pytest.raises(ValueError, match=r"regularisers \['r1'\] call D on their own inputs, and architecture='dcgan' has batch norm"):
        TrialConfig(dataset="digits", architecture="dcgan", regularisers={"r1": 1.0})
    TrialConfig(dataset="digits", architecture="dcgan", regularisers={"logit_l2": 1.0})  # logits only: fine
    with pytest.raises(ValueError, match=r"unknown regulariser 'r2'; valid: r1, logit_l2, pull, g_smooth, wrong_shape"):
        TrialConfig(regularisers={"r2": 1.0})


def test_weights_travel_as_a_mapping_and_come_back(tmp_path: Path) -> None:
    trial = TrialConfig(regularisers={"pull": 0.3, "r1": 10.0})
    assert trial.regularisers == (("pull", 0.3), ("r1", 10.0))
    assert trial.model_dump(mode="json")["regularisers"] == {"pull": 0.3, "r1": 10.0}
    assert TrialConfig.model_validate(trial.model_dump(mode="json")) == trial
    assert hash(trial) == hash(TrialConfig.model_validate(trial.model_dump(mode="json")))
