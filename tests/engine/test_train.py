"""The trial engine: seed 003's equilibrium result, determinism, resume, divergence."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from gansweep.config.schema import TrialConfig
from gansweep.engine import evaluate, run
from gansweep.engine.data import load_dataset
from gansweep.engine.losses import equilibrium
from gansweep.engine.parzen import data_as_model_baseline
from gansweep.engine.train import train_gan
from gansweep.errors import ConfigError, TrialDiverged, TrialOutOfMemory

# Small nets on the 2D line: 2,000 generator steps settle the game in a few seconds on a CPU.
LINE = dict(
    dataset="line", g_hidden=(64, 64), d_hidden=(64, 64), noise_dim=2, batch_size=128,
    epochs=4, steps_per_epoch=500, lr_d=1e-3, lr_g=1e-3, alpha_mode="weight",
    eval_every=4, eval_samples=2_000, eval_valid=500, eval_test=1_000, device="cpu",
)
TINY = dict(
    dataset="circle", g_hidden=(16,), d_hidden=(16,), noise_dim=2, batch_size=32, epochs=4,
    steps_per_epoch=20, eval_every=2, eval_samples=200, eval_valid=100, eval_test=200, device="cpu",
)


@pytest.fixture(scope="module")
def line():
    return load_dataset("line", seed=0)


@pytest.fixture(scope="module")
def line_baseline(line):
    return data_as_model_baseline(line.train, line.valid[:500], line.test[:1_000], line.default_sigmas).mean


@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.7])
def test_losses_settle_at_the_alpha_equilibrium(line, line_baseline, alpha: float) -> None:
    """Seed 003: with alpha real samples per D minibatch the losses converge to
    L_D* = H(alpha) and L_G* = -log(alpha) (non-saturating)."""
    history = train_gan(TrialConfig(**LINE, alpha=alpha), line)
    star = equilibrium("non_saturating", alpha)
    last = history[-1]
    assert last["d_loss"] == pytest.approx(star.d_loss, abs=0.02)
    assert last["g_loss"] == pytest.approx(star.g_loss, abs=0.05)
    assert last["d_real"] == pytest.approx(alpha, abs=0.03)  # D* = alpha at p_g = p_data
    # Equilibrium losses alone would also come from a D that gave up: the samples must be
    # close to the data too. Uniform noise over the square scores 3 nats below the baseline.
    assert last["parzen_ll"] == pytest.approx(line_baseline, abs=1.5)


def test_label_smoothing_moves_the_equilibrium(line) -> None:
    alpha, s = 0.5, 0.9
    history = train_gan(TrialConfig(**LINE, alpha=alpha, label_smoothing=s), line)
    star = equilibrium("non_saturating", alpha, s)
    assert history[-1]["d_loss"] == pytest.approx(star.d_loss, abs=0.02)
    assert history[-1]["g_loss"] == pytest.approx(star.g_loss, abs=0.05)
    assert history[-1]["d_loss_star"] == pytest.approx(star.d_loss)
    # the smoothed optimum is distinguishable from the plain one
    assert star.g_loss == pytest.approx(equilibrium("non_saturating", alpha).g_loss + math.log(1 / s))


@pytest.mark.parametrize("mode", ["compose", "weight", "bernoulli"])
def test_same_seed_same_losses(mode: str) -> None:
    data = load_dataset("circle", seed=0)
    trial = TrialConfig(**TINY, alpha_mode=mode, alpha=0.3)
    first = train_gan(trial, data)
    again = train_gan(trial, data)
    other = train_gan(trial.model_copy(update={"seed": 1}), data)
    for name in ("d_loss", "g_loss", "parzen_ll"):
        assert [m.get(name) for m in first] == [m.get(name) for m in again]
    assert [m["d_loss"] for m in first] != [m["d_loss"] for m in other]


def test_resume_from_a_checkpoint_gives_the_same_trial() -> None:
    data = load_dataset("circle", seed=0)
    trial = TrialConfig(**TINY)
    straight = train_gan(trial, data)
    states = {}
    train_gan(trial.model_copy(update={"epochs": 2}), data, lambda m, e, state: states.update({e: state()}))
    # the checkpoint came from a 2-epoch trial; resume it as the 4-epoch one
    resumed = train_gan(trial, data, resume_from=states[2])
    assert [m["epoch"] for m in resumed] == [3.0, 4.0]
    for name in ("d_loss", "g_loss"):
        assert [m[name] for m in resumed] == pytest.approx([m[name] for m in straight[2:]], rel=1e-6)
    assert resumed[-1]["parzen_ll"] == pytest.approx(straight[-1]["parzen_ll"], rel=1e-6)


def test_resume_at_the_last_epoch_reports_the_final_metrics_again() -> None:
    data = load_dataset("circle", seed=0)
    trial = TrialConfig(**TINY)
    states, reported = {}, []
    train_gan(trial, data, lambda m, e, state: states.update({e: state()}))
    train_gan(trial, data, lambda m, e, state: reported.append((e, m)), resume_from=states[4])
    assert [e for e, _ in reported] == [4]
    assert reported[0][1]["d_loss"] == pytest.approx(states[4]["metrics"][0]["d_loss"])


def test_nan_loss_stops_the_trial_naming_epoch_and_loss() -> None:
    data = load_dataset("circle", seed=0)
    poisoned = data.train.clone()
    poisoned[:, 0] = float("nan")
    with pytest.raises(TrialDiverged, match=r"epoch 1: d_loss = nan") as caught:
        train_gan(TrialConfig(**TINY), dataclasses.replace(data, train=poisoned))
    assert caught.value.epoch == 1


# 4e12 units: a weight matrix of tens of terabytes, which the allocator refuses at once.
TOO_BIG = 4_000_000_000_000


def test_networks_that_do_not_fit_are_out_of_memory_at_epoch_0() -> None:
    data = load_dataset("circle", seed=0)
    with pytest.raises(TrialOutOfMemory, match=r"out of memory on cpu at epoch 0: .*allocate") as caught:
        train_gan(TrialConfig(**{**TINY, "g_hidden": (TOO_BIG,)}), data)
    assert caught.value.epoch == 0


def test_a_step_that_does_not_fit_is_out_of_memory_in_its_epoch() -> None:
    data = load_dataset("circle", seed=0)
    # bernoulli mode: nothing of batch size is allocated before the first step draws its batch
    trial = TrialConfig(**{**TINY, "batch_size": TOO_BIG, "alpha_mode": "bernoulli"})
    with pytest.raises(TrialOutOfMemory, match=r"out of memory on cpu at epoch 1: ") as caught:
        train_gan(trial, data)
    assert caught.value.epoch == 1


def test_other_runtime_errors_are_not_taken_for_out_of_memory() -> None:
    def report(metrics, epoch, state):
        raise RuntimeError("a bug in the caller")

    with pytest.raises(RuntimeError, match="a bug in the caller"):
        train_gan(TrialConfig(**TINY), load_dataset("circle", seed=0), report)


def test_report_sees_every_epoch_and_the_theory_gaps() -> None:
    data = load_dataset("circle", seed=0)
    seen = []
    train_gan(TrialConfig(**TINY, alpha=0.3), data, lambda m, e, state: seen.append((e, m)))
    assert [e for e, _ in seen] == [1, 2, 3, 4]
    star = equilibrium("non_saturating", 10 / 32)  # round(0.3 x 32) real of TINY's 32: the share D sees
    for _, metrics in seen:
        assert metrics["d_loss_gap"] == pytest.approx(abs(metrics["d_loss"] - star.d_loss))
        assert metrics["g_loss_gap"] == pytest.approx(abs(metrics["g_loss"] - star.g_loss))
    assert ["parzen_ll" in m for _, m in seen] == [False, True, False, True]  # eval_every=2


def test_no_theory_gap_for_losses_without_an_equilibrium() -> None:
    data = load_dataset("circle", seed=0)
    history = train_gan(TrialConfig(**TINY, loss="wasserstein_gp", k=2), data)
    assert "d_loss_gap" not in history[-1]
    assert math.isfinite(history[-1]["d_loss"])


@pytest.mark.parametrize("architecture", ["mlp", "maxout", "dcgan"])
def test_every_architecture_trains_on_images_and_saves_a_grid(architecture: str, tmp_path) -> None:
    data = load_dataset("digits", seed=0)
    trial = TrialConfig(
        dataset="digits", architecture=architecture, dcgan_width=8, maxout_units=16, maxout_pieces=2,
        g_hidden=(32,), d_hidden=(32,), noise_dim=8, batch_size=16, epochs=1, steps_per_epoch=3,
        eval_samples=100, eval_valid=50, eval_test=50, device="cpu",
    )
    history = train_gan(trial, data, sample_dir=tmp_path)
    assert math.isfinite(history[-1]["parzen_ll"])
    assert (tmp_path / "epoch_0001.png").stat().st_size > 0


@pytest.mark.parametrize("output", ["tanh", "sigmoid", "identity"])
def test_generator_scale_round_trips_to_the_data_scale(digits, output: str) -> None:
    trial = TrialConfig(dataset="digits", g_output=output)
    images = torch.rand(10, 1, 8, 8)
    model = evaluate.to_model_scale(trial, digits, images)
    torch.testing.assert_close(evaluate.to_data_scale(trial, digits, model), images)
    if output == "tanh":  # [0, 1] images train as [-1, 1]
        torch.testing.assert_close(model, images * 2 - 1)


def test_image_samples_are_scored_in_the_unit_interval(digits) -> None:
    trial = TrialConfig(dataset="digits", g_hidden=(16,), d_hidden=(16,), noise_dim=4, batch_size=16,
                        epochs=1, steps_per_epoch=2, device="cpu")
    unit = run.build_unit([trial], digits)
    samples = evaluate.generate(trial, digits, unit.generator, 50)
    assert trial.generator_output == "tanh"
    assert unit.train_data.min().item() == pytest.approx(-1.0) and unit.train_data.max().item() == pytest.approx(1.0)
    assert samples.shape == (50, 1, 8, 8)
    assert 0.0 <= samples.min().item() and samples.max().item() <= 1.0


def test_tanh_on_a_toy_set_inside_its_range_trains_on_the_raw_points(circle) -> None:
    """Seed 003's tanh generator on the circle: the points keep their coordinates (no 2x - 1,
    which would move the circle's centre to (-1, -1)), and samples are scored unclamped."""
    trial = TrialConfig(**TINY, g_output="tanh")
    unit = run.build_unit([trial], circle)
    torch.testing.assert_close(unit.train_data, circle.train)
    points = torch.tensor([[-0.99, 0.5], [0.2, -0.7]])
    torch.testing.assert_close(evaluate.to_data_scale(trial, circle, points), points, rtol=0, atol=0)
    assert math.isfinite(train_gan(trial, circle)[-1]["parzen_ll"])


@pytest.mark.parametrize(("dataset", "output"), [("ring8", "tanh"), ("circle", "sigmoid")])
def test_a_bounded_output_that_cannot_cover_the_data_is_an_error(dataset: str, output: str) -> None:
    data = load_dataset(dataset, seed=0)
    trial = TrialConfig(**{**TINY, "dataset": dataset}, g_output=output)
    with pytest.raises(ConfigError, match=rf"g_output: {output} covers .* but {dataset} spans \[-1\.0\d+|g_output: {output} covers .* but {dataset} spans \[-0\.9"):
        train_gan(trial, data)
