"""Packs: several trials trained as one unit of the engine (gansweep.engine.run), and the
pack rules of gansweep.config.rules. The executions themselves are held to each other and to
the textbook loop in test_engine.py; here, what a pack adds: members at their own equilibria,
a member that diverges leaves its mates alone, and what may share a pack.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import LOGGED

from gansweep.config.rules import pack_key
from gansweep.config.schema import TrialConfig
from gansweep.config.theory import realised_share
from gansweep.engine.losses import equilibrium
from gansweep.engine.train import train_pack
from gansweep.errors import ConfigError

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
         loss="least_squares", seed=2),
]


@pytest.fixture(autouse=True)
def one_thread():
    """A pack is meant to fill one CPU; on a busy 2-core machine a second OpenMP thread
    spin-waits and made the equilibrium test 5 to 10 times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
        share = realised_share(trial.alpha_mode, trial.alpha, trial.batch_size)  # 38/128 at 0.3
        star = equilibrium(trial.loss, share, trial.label_smoothing)
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


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"k": 2}, "k"),
        ({"g_hidden": (64,)}, "g_hidden"),
        ({"alpha_mode": "compose", "alpha": 0.25}, "round(alpha * batch_size)"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"d_dropout": 0.5}, "d_dropout"),
    ],
)
def test_pack_key_keeps_what_shapes_the_iteration(change: dict[str, Any], field: str) -> None:
    base = pack_key(TrialConfig(**SMALL))
    changed = dict(pack_key(TrialConfig(**{**SMALL, **change})))
    assert changed[field] != dict(base)[field]


def test_pack_key_ignores_per_trial_values() -> None:
    keys = {pack_key(TrialConfig(**SMALL, **values)) for values in VARIED}
    assert len(keys) == 1
    # compose mode: alphas that put as many real samples in a minibatch share a pack
    compose = {**SMALL, "alpha_mode": "compose"}
    assert pack_key(TrialConfig(**compose, alpha=0.5)) == pack_key(TrialConfig(**compose, alpha=0.51))
    assert pack_key(TrialConfig(**compose, alpha=0.5)) != pack_key(TrialConfig(**compose, alpha=0.3))


def test_trials_with_different_shapes_cannot_share_a_pack(circle) -> None:
    trials = [TrialConfig(**SMALL), TrialConfig(**{**SMALL, "d_hidden": (16,)})]
    with pytest.raises(ConfigError, match=r"trials 0 and 1 .* d_hidden=\(32, 32\) vs \(16,\)"):
        train_pack(trials, circle)


def test_every_architecture_packs_on_images(digits) -> None:
    base = dict(dataset="digits", dcgan_width=8, maxout_units=16, maxout_pieces=2, g_hidden=(32,),
                d_hidden=(32,), noise_dim=8, batch_size=16, epochs=1, steps_per_epoch=3, eval_samples=100,
                eval_valid=50, eval_test=50, device="cpu")
    for architecture in ("mlp", "maxout", "dcgan"):
        trials = [TrialConfig(**base, architecture=architecture, seed=s, alpha=a) for s, a in ((0, 0.5), (1, 0.5))]
        histories = train_pack(trials, digits)
        assert all(len(h) == 1 and h[0]["parzen_ll"] == h[0]["parzen_ll"] for h in histories), architecture


@pytest.mark.parametrize(
    "trial",
    [
        "{alpha_mode: weight, loss: hinge}",
        "{alpha_mode: weight, loss: wasserstein_gp, k: 3}",
        "{alpha_mode: compose, alpha: 0.5}",
        "{alpha_mode: bernoulli, optimizer: sgd, momentum_final: 0.9}",
        "{alpha_mode: weight, dataset: digits, architecture: dcgan}",
        "{alpha_mode: weight, dataset: digits, architecture: maxout}",
        "{alpha_mode: weight, d_dropout: 0.3, compile: true}",
    ],
)
def test_studies_that_pack_now_validate(tmp_path, trial: str) -> None:
    """What packs could not train before the one iteration (other losses, compose and
    bernoulli, SGD, images, dropout, compile) validates; searching the loss too."""
    from gansweep.config.load import load_study

    path = tmp_path / "packed.yaml"
    path.write_text(f"name: x\ntrial: {trial}\nsearch: {{loss: [minimax, hinge, least_squares]}}\nbudget: {{pack_size: 4}}\n")
    study = load_study(path)
    assert study.budget.pack_size == 4
