"""Seed 004's stabilisers (issue 16), each in the one iteration: its maths against a direct
computation on fixed tensors, a few hundred steps of training with finite losses, and the
executions agreeing as in tests/engine/test_engine.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import LOGGED, assert_same_losses
from test_engine import TOY, losses_of

from gansweep.config.schema import TrialConfig
from gansweep.config.theory import equilibrium
from gansweep.engine import run
from gansweep.engine.executions import features_of
from gansweep.engine.iteration import STATS
from gansweep.engine.losses import FeatureMatching
from gansweep.engine.models import build_models, feature_end

FEATURE_MATCHING = {"loss": "feature_matching"}


# ---------------------------------------------------------------------------- feature matching


def test_feature_distance_is_the_squared_gap_of_the_mean_features() -> None:
    gen = np.random.default_rng(0)
    real, fake = gen.normal(size=(2, 5, 3, 2)), gen.normal(size=(2, 7, 3, 2))  # (P, B, ...)
    want = [float(np.sum((real[p].reshape(5, -1).mean(0) - fake[p].reshape(7, -1).mean(0)) ** 2)) for p in range(2)]
    got = FeatureMatching().g_features(torch.tensor(real), torch.tensor(fake))
    assert got.tolist() == pytest.approx(want, rel=1e-12)
    assert FeatureMatching().g_features(torch.tensor(real), torch.tensor(real)).tolist() == [0.0, 0.0]


@pytest.mark.parametrize(("layer", "width"), [(None, 8), (-1, 8), (0, 16), (-2, 16)])
def test_the_features_are_the_chosen_hidden_layers_activations(layer: int | None, width: int) -> None:
    """D[:feature_end] on fixed inputs = the hidden layer written out: leaky_relu(W x + b)."""
    trial = TrialConfig(**{**TOY, "d_hidden": (16, 8), "loss": "feature_matching", "feature_layer": layer})
    torch.manual_seed(0)
    _, d = build_models(trial, (2,))
    x = torch.tensor([[0.5, -1.0], [2.0, 0.25], [0.0, 0.0]])
    h = torch.nn.functional.leaky_relu(x @ d[1].weight.T + d[1].bias, 0.2)
    if width == 8:
        h = torch.nn.functional.leaky_relu(h @ d[3].weight.T + d[3].bias, 0.2)
    got = features_of(d, feature_end(d, layer))(x)
    assert got.shape == (3, width)
    torch.testing.assert_close(got, h)


def test_a_feature_layer_d_does_not_have_is_refused() -> None:
    with pytest.raises(ValueError, match="feature_layer=2"):
        TrialConfig(**{**TOY, "loss": "feature_matching", "feature_layer": 2})
    with pytest.raises(ValueError, match="feature_layer=0 with loss='hinge'"):
        TrialConfig(**{**TOY, "loss": "hinge", "feature_layer": 0})


def test_the_generator_loss_is_the_feature_distance_of_that_iteration(circle) -> None:
    """One eager iteration's reported G loss = || mean f(real) - mean f(G(z)) ||^2 computed
    here from the same draws and the networks after the D update."""
    from gansweep.engine.draws import draw

    trial = TrialConfig(**{**TOY, **FEATURE_MATCHING})
    unit = run.build_unit([trial], circle, execution="eager")
    hyper = run.hyper_of(unit.trials, unit.spec, 1, unit.device)
    draws = draw(unit.spec, unit.train_data, trial.noise, trial.noise_dim, trial.batch_size, unit.streams)
    g_before = unit.generator.state_dict()
    g_before = {k: v.clone() for k, v in g_before.items()}
    unit.state, stats = unit.step(unit.state, draws, hyper)
    generator, _ = build_models(trial, circle.shape)
    generator.load_state_dict(g_before)
    features = features_of(unit.discriminator, unit.spec.feature_end)  # D after its update
    with torch.no_grad():
        real = features(draws.reals[-1][0]).double().mean(0)
        fake = features(generator(draws.g_noise[0])).double().mean(0)
    assert stats[0, STATS.index("g_loss")].item() == pytest.approx(float(((real - fake) ** 2).sum()), rel=1e-5)


@pytest.mark.slow  # 40 s on the loaded 2-core machine
def test_feature_matching_trains_a_few_hundred_steps_on_ring8() -> None:
    from gansweep.engine.data import load_dataset

    ring8 = load_dataset("ring8", seed=0)
    trial = TrialConfig(**{**TOY, **FEATURE_MATCHING, "dataset": "ring8", "epochs": 3, "steps_per_epoch": 100})
    (history,) = losses_of([trial], ring8, "eager")
    assert all(math.isfinite(epoch[name]) for epoch in history for name in LOGGED)
    assert history[-1]["g_loss"] >= 0.0
    star = equilibrium("feature_matching", trial.alpha)
    assert star.g_loss == 0.0 and history[-1]["g_loss_star"] == 0.0
    assert history[-1]["d_loss_star"] == pytest.approx(math.log(2))  # D keeps the cross-entropy


def test_feature_matching_packed_is_eager(circle) -> None:
    trial = TrialConfig(**{**TOY, **FEATURE_MATCHING})
    (eager,) = losses_of([trial], circle, "eager")
    (packed,) = losses_of([trial], circle, "packed")
    assert_same_losses(packed, eager, rel=1e-3, abs_=1e-5, parzen_rel=1e-3)


@pytest.mark.slow  # a compile each
@pytest.mark.parametrize("execution", ["compiled", "compiled_packed"])
def test_feature_matching_compiled_is_eager(circle, execution: str) -> None:
    trial = TrialConfig(**{**TOY, **FEATURE_MATCHING})
    (eager,) = losses_of([trial], circle, "eager")
    (compiled,) = losses_of([trial], circle, execution)
    assert_same_losses(compiled, eager, rel=1e-3, abs_=1e-5, parzen_rel=1e-2)


def test_a_feature_matching_member_packs_with_other_losses(circle) -> None:
    """A pack of feature matching (last and first hidden layer is a key field: here the
    last) beside non-saturating and least squares: each member as in a pack of itself."""
    base = TrialConfig(**{**TOY, "alpha_mode": "weight"})
    members = [base.model_copy(update={"loss": "feature_matching"}),
               base.model_copy(update={"loss": "non_saturating", "seed": 1}),
               base.model_copy(update={"loss": "least_squares", "seed": 2})]
    together = losses_of(members, circle, "packed")
    for member, history in zip(members, together, strict=True):
        (alone,) = losses_of([member], circle, "packed")
        assert_same_losses(history, alone, rel=1e-5, abs_=1e-6)


@pytest.mark.slow
def test_feature_matching_on_dcgan_executions_agree(digits) -> None:
    from test_engine import IMAGES

    trial = TrialConfig(**{**IMAGES, **FEATURE_MATCHING, "architecture": "dcgan", "feature_layer": 0})
    results = {}
    for execution in ("eager", "compiled"):
        unit = run.build_unit([trial], digits, execution=execution, autocast=False)
        results[execution] = [run.train_epoch(unit)[0] for _ in range(trial.epochs)]
    assert_same_losses(results["compiled"], results["eager"], rel=1e-3, abs_=1e-5, parzen_rel=1e-2)


# ---------------------------------------------------------------------------- historical averaging

HISTORICAL = {"historical_averaging": 0.5}


def test_the_historical_average_after_t_steps_is_the_mean_of_the_history(circle) -> None:
    """After t iterations the state's mean is (1/(t+1)) sum of theta_0 (the initial weights)
    .. theta_t, for G and D (k = 2: D's history has 2 t + 1 entries), against float64 sums."""
    from gansweep.engine.draws import draw

    trial = TrialConfig(**{**TOY, **HISTORICAL, "k": 2})
    unit = run.build_unit([trial], circle, execution="packed")
    hyper = run.hyper_of(unit.trials, unit.spec, 1, unit.device)
    history = {"g": [unit.state.g.params.double()], "d": [unit.state.d.params.double()]}
    for _ in range(5):
        draws = draw(unit.spec, unit.train_data, trial.noise, trial.noise_dim, trial.batch_size, unit.streams)
        before = unit.state.d.params.double()
        unit.state, _ = unit.step(unit.state, draws, hyper)
        history["g"].append(unit.state.g.params.double())
        history["d"].append(unit.state.d.params.double())
        assert not torch.equal(before, unit.state.d.params.double())
    g_mean = torch.stack(history["g"]).mean(0)
    torch.testing.assert_close(unit.state.g.average.double(), g_mean, rtol=0, atol=1e-6)
    assert unit.state.d.steps.item() == 10.0  # k = 2 updates per iteration
    # D's intermediate weights (after its first update of each iteration) are in its history
    # too; the closed form after its 10 updates is checked on the last two entries' difference
    assert unit.state.d.average.shape == unit.state.d.params.shape


def test_the_running_mean_update_is_the_mean_exactly() -> None:
    from gansweep.engine.iteration import NetState, average_update

    gen = torch.Generator().manual_seed(3)
    thetas = [torch.randn(2, 5, generator=gen, dtype=torch.float64) for _ in range(8)]
    net = NetState(thetas[0], (), thetas[0] * 0, thetas[0][:, :0], torch.zeros(2, 1, dtype=torch.float64), thetas[0].clone())
    for t, theta in enumerate(thetas[1:], start=1):
        net = average_update(net._replace(params=theta, steps=torch.full((2, 1), float(t), dtype=torch.float64)))
        torch.testing.assert_close(net.average, torch.stack(thetas[: t + 1]).mean(0), rtol=1e-12, atol=1e-12)


def test_historical_averaging_executions_agree_and_it_changes_the_game(circle) -> None:
    trial = TrialConfig(**{**TOY, "historical_averaging": 100.0})  # Adam's steps are small: a strong pull
    (eager,) = losses_of([trial], circle, "eager")  # the penalty's gradient through the modules
    (packed,) = losses_of([trial], circle, "packed")
    (without,) = losses_of([trial.model_copy(update={"historical_averaging": 0.0})], circle, "eager")
    assert_same_losses(packed, eager, rel=1e-3, abs_=1e-5, parzen_rel=1e-3)
    assert eager[-1]["d_loss"] != pytest.approx(without[-1]["d_loss"], rel=1e-3)
    # a pack member with lambda 0 trains as without it
    mates = losses_of([trial.model_copy(update={"historical_averaging": 0.0}), trial.model_copy(update={"seed": 1})],
                      circle, "packed")
    (alone,) = losses_of([trial.model_copy(update={"historical_averaging": 0.0})], circle, "packed")
    assert_same_losses(mates[0], alone, rel=1e-5, abs_=1e-6)


@pytest.mark.slow  # a compile each
@pytest.mark.parametrize("execution", ["compiled", "compiled_packed"])
def test_historical_averaging_compiled_is_eager(circle, execution: str) -> None:
    trial = TrialConfig(**{**TOY, **HISTORICAL})
    (eager,) = losses_of([trial], circle, "eager")
    (compiled,) = losses_of([trial], circle, execution)
    assert_same_losses(compiled, eager, rel=1e-3, abs_=1e-5, parzen_rel=1e-2)


def trained_and_saved(trial: TrialConfig, data, execution: str, epochs: int, path) -> tuple[run.Unit, dict]:
    """A unit of `trial` after `epochs` epochs, and its state as a checkpoint reads it back."""
    unit = run.build_unit([trial], data, execution=execution)
    for _ in range(epochs):
        run.train_epoch(unit)
    torch.save(run.unit_state(unit), path)
    return unit, torch.load(path, weights_only=False)


@pytest.mark.parametrize("execution", ["eager", "packed"])
def test_a_resumed_trial_keeps_its_historical_average(circle, tmp_path, execution: str) -> None:
    trial = TrialConfig(**{**TOY, **HISTORICAL, "epochs": 4})
    (straight,) = losses_of([trial], circle, execution)
    unit, saved = trained_and_saved(trial, circle, execution, 2, tmp_path / "state.pt")
    assert saved["state"]["d"]["average"].shape == unit.state.d.params.shape
    torch.manual_seed(99)  # whatever ran in between
    resumed = run.build_unit([trial], circle, execution=execution)
    run.load_unit_state(resumed, saved)
    torch.testing.assert_close(resumed.state.g.average, unit.state.g.average, rtol=0, atol=0)
    rest = [run.train_epoch(resumed)[0] for _ in range(2)]
    assert_same_losses(rest, straight[2:], rel=1e-5, abs_=1e-7)


@pytest.mark.slow
def test_historical_averaging_trains_a_few_hundred_steps_on_ring8() -> None:
    from gansweep.engine.data import load_dataset

    ring8 = load_dataset("ring8", seed=0)
    trial = TrialConfig(**{**TOY, **HISTORICAL, "dataset": "ring8", "epochs": 3, "steps_per_epoch": 100})
    (history,) = losses_of([trial], ring8, "packed")
    assert all(math.isfinite(epoch[name]) for epoch in history for name in LOGGED)
