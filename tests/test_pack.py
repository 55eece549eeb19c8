"""Packs of trials in one vectorised step (gansweep/pack.py) against gansweep's own maths.

The reference for one trial is gansweep itself: networks from build_models, losses from
gansweep.losses, torch.optim.Adam, and train_gan for the whole loop. A pack draws its random
numbers per pack, so the step is checked with injected minibatches and noise; a pack of one
trial draws exactly train_gan's, so there the whole loop is checked against train_gan.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from conftest import LOGGED
from gansweep.errors import ConfigError
from gansweep.losses import (
    alpha_weights,
    discriminator_loss,
    discriminator_output,
    equilibrium,
    generator_loss,
    get_loss,
    minibatch_plan,
)
from gansweep.models import build_models
from gansweep.pack import (
    PACK_LOSSES,
    build_pack,
    group_packs,
    load_pack_state,
    load_trial,
    pack_key,
    pack_state,
    pack_step,
    select,
    train_epoch,
    train_pack,
)
from gansweep.study import TrialConfig
from gansweep.train import FastPaths, train_gan

SMALL: dict[str, Any] = dict(
    dataset="circle", g_hidden=(32, 32), d_hidden=(32, 32), noise_dim=2, batch_size=32,
    alpha_mode="weight", epochs=2, steps_per_epoch=10, eval_every=2, eval_samples=300,
    eval_valid=100, eval_test=300, device="cpu",
)
# Three trials differing in every per-trial value a pack varies, including the loss.
VARIED: list[dict[str, Any]] = [
    dict(alpha=0.3, lr_d=1e-3, lr_g=2e-3, adam_beta1=0.5, adam_beta2=0.999, label_smoothing=1.0,
         loss="non_saturating", seed=0),
    dict(alpha=0.5, lr_d=2e-4, lr_g=None, adam_beta1=0.9, adam_beta2=0.99, label_smoothing=0.9,
         loss="minimax", seed=1),
    dict(alpha=0.7, lr_d=5e-4, lr_g=1e-4, adam_beta1=0.0, adam_beta2=0.9, label_smoothing=0.8,
         loss="max_likelihood", seed=2),
]


@pytest.fixture(autouse=True)
def one_thread():
    """A pack is meant to fill one CPU; on a busy 2-core machine a second OpenMP thread
    spin-waits and made the equilibrium test 5 to 10 times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def labelled(name: str) -> Callable[[str], str]:
    return lambda text: f"{name}: {text}"


class Reference:
    """One trial stepped the plain way: gansweep's nets and losses, torch.optim.Adam."""

    def __init__(self, trial: TrialConfig, data_shape: tuple[int, ...]) -> None:
        self.trial, self.loss = trial, get_loss(trial.loss)
        torch.manual_seed(trial.seed)  # as GanTrial.create seeds before building
        self.generator, self.discriminator = build_models(trial, data_shape)
        betas = (trial.adam_beta1, trial.adam_beta2)
        lr_g = trial.effective_lr_g
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=trial.lr_d, betas=betas)

    def step(self, real: torch.Tensor, noise_d: torch.Tensor, noise_g: torch.Tensor) -> list[float]:
        """k D updates on real[j], noise_d[j], then a G update on noise_g; the stats a pack
        reports: d_loss, g_loss, d_real, d_fake (D ones averaged over k)."""
        trial, loss, k = self.trial, self.loss, real.shape[0]
        plan = minibatch_plan("weight", trial.alpha, trial.batch_size)
        w_real, w_fake = alpha_weights("weight", trial.alpha, plan, torch.device("cpu"))
        d_stats = torch.zeros(3)
        for j in range(k):
            with torch.no_grad():
                fake = self.generator(noise_d[j])
            real_logits, fake_logits = self.discriminator(real[j]), self.discriminator(fake)
            d_loss = discriminator_loss(
                loss, real_logits, fake_logits, w_real, w_fake, trial.label_smoothing
            )
            self.opt_d.zero_grad()
            d_loss.backward()
            self.opt_d.step()
            with torch.no_grad():
                d_stats += torch.stack((
                    d_loss, discriminator_output(loss, real_logits).mean(),
                    discriminator_output(loss, fake_logits).mean(),
                )) / k
        g_loss = generator_loss(loss, self.discriminator(self.generator(noise_g)))
        self.opt_g.zero_grad()
        g_loss.backward()
        self.opt_g.step()
        return [d_stats[0].item(), g_loss.item(), d_stats[1].item(), d_stats[2].item()]


@pytest.mark.parametrize("k", [1, 2])
def test_pack_step_is_p_plain_steps_on_the_same_batches(circle, k: int) -> None:
    trials = [TrialConfig(**SMALL, **values, k=k) for values in VARIED]
    pack = build_pack(trials, circle)
    references = [Reference(trial, circle.shape) for trial in trials]
    p, m = len(trials), SMALL["batch_size"]
    draws = torch.Generator().manual_seed(123)
    state, initial = pack.state, pack.state.d.params.clone()
    for _ in range(6):
        index = torch.randint(0, len(circle.train), (k, p, m), generator=draws)
        real = circle.train[index]  # (k, P, m, 2)
        noise_d = torch.randn(k, p, m, 2, generator=draws)
        noise_g = torch.randn(p, m, 2, generator=draws)
        state, stats = pack_step(state, real, noise_d, noise_g, pack.hparams)
        for i, reference in enumerate(references):
            expected = reference.step(real[:, i], noise_d[:, i], noise_g[i])
            torch.testing.assert_close(stats[i], torch.tensor(expected))
    assert torch.equal(pack.state.d.params, initial)  # pack_step returns a new state
    pack.state = state
    for i, reference in enumerate(references):
        gan = load_trial(pack, i)
        for mine, theirs in ((gan.generator, reference.generator),
                             (gan.discriminator, reference.discriminator)):
            pairs = zip(mine.named_parameters(), theirs.named_parameters(), strict=True)
            for (name, a), (their_name, b) in pairs:
                assert name == their_name
                torch.testing.assert_close(a, b, msg=labelled(name))
        # the plain steps moved the weights away from where they started, so the comparison bites
        torch.manual_seed(trials[i].seed)
        _, initial_d = build_models(trials[i], circle.shape)
        now_then = zip(reference.discriminator.parameters(), initial_d.parameters(), strict=True)
        moved = [(now - then).abs().max().item() for now, then in now_then]
        # Adam's early steps move a weight by about lr each: far beyond assert_close's tolerance
        assert max(moved) == pytest.approx(6 * k * trials[i].lr_d, rel=0.5)


@pytest.mark.parametrize("k", [1, 2])
def test_a_pack_of_one_trains_like_train_gan(circle, k: int) -> None:
    """Same seed, same draws (a pack of one draws train_gan's minibatches and noise, in its
    order), same maths: the per-epoch metrics agree, Parzen score included."""
    trial = TrialConfig(**SMALL, **VARIED[2], k=k)
    (packed,) = train_pack([trial], circle)
    plain = train_gan(trial, circle, fast=FastPaths.plain())
    assert [m["epoch"] for m in packed] == [m["epoch"] for m in plain] == [1.0, 2.0]
    for mine, reference in zip(packed, plain, strict=True):
        for name in (*LOGGED, "d_loss_star", "g_loss_star", "d_loss_gap", "g_loss_gap"):
            assert mine[name] == pytest.approx(reference[name], rel=1e-5, abs=1e-6), name
    for name in ("parzen_ll", "parzen_sigma"):
        assert packed[-1][name] == pytest.approx(plain[-1][name], rel=1e-5), name
    assert "parzen_ll" not in packed[0]  # eval_every=2, as train_gan


# Seed 003's result, for a pack mixing losses and smoothing. Over 4 packs of these 5 trials
# (seeds offset by 0 to 3) the last epoch's means fell within 0.014 (d_loss), 0.054 (g_loss)
# and 0.013 (D(x)) of theory after 400 steps. Untrained (logits near 0) they sit at log 2 and
# 0.5 whatever alpha, 0.08 and 0.2 away from theory at alpha = 0.3 or 0.7.
EQUILIBRIUM: dict[str, Any] = dict(
    dataset="circle", g_hidden=(64, 64), d_hidden=(64, 64), noise_dim=2, batch_size=128,
    alpha_mode="weight", epochs=4, steps_per_epoch=100, lr_d=5e-4, eval_every=4,
    eval_samples=2_000, eval_valid=500, eval_test=1_000, device="cpu",
)
GAMES: list[dict[str, Any]] = [
    dict(alpha=0.3, seed=0),
    dict(alpha=0.7, seed=1),
    dict(alpha=0.3, label_smoothing=0.9, seed=2),
    dict(alpha=0.3, loss="minimax", seed=3),
    dict(alpha=0.3, loss="max_likelihood", seed=4),
]


def test_packed_trials_settle_at_their_equilibria(circle) -> None:
    trials = [TrialConfig(**EQUILIBRIUM, **game) for game in GAMES]
    seen: list[tuple[int, int]] = []
    histories = train_pack(trials, circle, lambda index, _, epoch: seen.append((index, epoch)))
    assert seen == [(i, e) for e in range(1, 5) for i in range(len(trials))]
    for trial, history in zip(trials, histories, strict=True):
        star = equilibrium(trial.loss, trial.alpha, trial.label_smoothing)
        assert star is not None
        last = history[-1]
        assert last["d_loss"] == pytest.approx(star.d_loss, abs=0.02), trial.loss
        assert last["g_loss"] == pytest.approx(star.g_loss, abs=0.08), trial.loss
        assert last["d_real"] == pytest.approx(star.d_output, abs=0.03), trial.loss
        assert last["d_loss_star"] == pytest.approx(star.d_loss)
        assert last["d_loss_gap"] == pytest.approx(abs(last["d_loss"] - star.d_loss))
        assert last["pack_size"] == len(trials)
        assert ["parzen_ll" in m for m in history] == [False, False, False, True]


def test_a_diverging_trial_leaves_its_pack_mates_alone(circle) -> None:
    longer = {**SMALL, "epochs": 3, "eval_every": 1}
    healthy = TrialConfig(**longer, seed=5)
    wild = TrialConfig(**longer, loss="max_likelihood", lr_d=1e30, lr_g=1e30)
    tame = wild.model_copy(update={"lr_d": 1e-3, "lr_g": 1e-3})
    diverged, mate = train_pack([wild, healthy], circle)
    _, same_mate = train_pack([tame, healthy], circle)
    assert len(diverged) == 1 and diverged[0]["diverged"] == 1.0
    assert "parzen_ll" not in diverged[0]
    assert [m["epoch"] for m in mate] == [1.0, 2.0, 3.0]
    for name in (*LOGGED, "parzen_ll"):  # the same draws, and no NaN leaking across trials
        assert [m[name] for m in mate] == pytest.approx([m[name] for m in same_mate], rel=1e-6)


def test_a_pack_resumed_from_its_state_trains_on_as_if_never_stopped(circle) -> None:
    """pack_state after epoch 1, loaded into a freshly built pack (the RNG moved on
    meanwhile), gives epoch 2 exactly as the pack that never stopped; a resumed pack of the
    last two trials gives those trials' epoch 2 too: a trial's draws keep their slot."""
    trials = [TrialConfig(**SMALL, **values) for values in VARIED]
    going = build_pack(trials, circle)
    train_epoch(going)
    saved = pack_state(going)
    reference = train_epoch(going)
    torch.rand(1000)  # what else a worker does between the checkpoint and the resume
    resumed = build_pack(trials, circle)
    load_pack_state(resumed, saved, [0, 1, 2])
    again = train_epoch(resumed)
    survivors = build_pack(trials[1:], circle)
    load_pack_state(survivors, saved, [1, 2])
    fewer = train_epoch(survivors)
    assert [m["epoch"] for m in again] == [2.0, 2.0, 2.0] and [m["epoch"] for m in fewer] == [2.0, 2.0]
    for name in (*LOGGED, "parzen_ll"):
        assert [m[name] for m in again] == pytest.approx([m[name] for m in reference], rel=1e-6), name
        assert [m[name] for m in fewer] == pytest.approx([m[name] for m in reference[1:]], rel=1e-6), name
    assert [m["pack_size"] for m in fewer] == [2.0, 2.0]


def test_select_drops_trials_from_the_step_and_keeps_the_others_draws(circle) -> None:
    """A pack of the third trial alone, selected from a pack of three, trains that trial's
    epoch as the whole pack does from the same RNG state: its row, its draws."""
    trials = [TrialConfig(**SMALL, **values) for values in VARIED]
    whole, one = build_pack(trials, circle), select(build_pack(trials, circle), [2])
    assert one.size == 1 and one.state.g.params.shape[0] == one.hparams.lr_d.shape[0] == 1
    torch.manual_seed(123)
    reference = train_epoch(whole)
    torch.manual_seed(123)
    (alone,) = train_epoch(one)
    for name in LOGGED:
        assert alone[name] == pytest.approx(reference[2][name], rel=1e-6), name
    assert reference[2]["pack_size"] == 3.0 and alone["pack_size"] == 1.0


def test_pack_losses_are_the_bce_family() -> None:
    assert PACK_LOSSES == ("minimax", "non_saturating", "max_likelihood")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"alpha_mode": "compose"}, "alpha_mode='compose'"),
        ({"loss": "hinge"}, "loss='hinge'"),
        ({"loss": "wasserstein_gp"}, "loss='wasserstein_gp'"),
        ({"optimizer": "sgd"}, "optimizer='sgd'"),
        ({"architecture": "maxout"}, "architecture='maxout'"),
        ({"d_dropout": 0.5}, "d_dropout=0.5"),
        ({"dataset": "digits"}, "dataset='digits'"),
    ],
)
def test_pack_key_names_the_unsupported_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=f"cannot be packed: {field}; a pack needs"):
        pack_key(TrialConfig(**{**SMALL, **change}))


def test_pack_key_ignores_per_trial_values_and_keeps_shapes() -> None:
    keys = {pack_key(TrialConfig(**SMALL, **values)) for values in VARIED}
    assert len(keys) == 1
    assert pack_key(TrialConfig(**SMALL, k=2)) not in keys
    assert pack_key(TrialConfig(**{**SMALL, "g_hidden": (64,)})) not in keys
    wider = TrialConfig(**{**SMALL, "g_hidden": (64,)})
    trials = [TrialConfig(**SMALL, **VARIED[0]), wider, TrialConfig(**SMALL, **VARIED[1])]
    groups = group_packs(trials)
    assert list(groups.values()) == [[0, 2], [1]]
    assert dict(next(iter(groups)))["g_hidden"] == (32, 32)


def test_trials_with_different_shapes_cannot_share_a_pack(circle) -> None:
    trials = [TrialConfig(**SMALL), TrialConfig(**{**SMALL, "d_hidden": (16,)})]
    with pytest.raises(ConfigError, match=r"trials 0 and 1 .* d_hidden=\(32, 32\) vs \(16,\)"):
        train_pack(trials, circle)
