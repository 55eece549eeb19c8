"""A plugin's loss, metric and architecture in every execution of the one iteration: a loss
written exactly like a built-in trains exactly like it (eager, packed beside the built-in,
compiled), a metric reads the evaluation's samples and the real rows it is documented to,
and an architecture trains alone and in packs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_same_losses, losses_of

from gansweep.config import plugins
from gansweep.config.schema import TrialConfig
from gansweep.engine.models import build_models

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "my_gan.py"
# The built-in non_saturating loss, written as a researcher would write it in a plugin.
PLUGIN = '''
import torch.nn.functional as F
from gansweep.extend import architecture, loss, metric

@loss("my_non_saturating")
class MyNonSaturating:
    probabilistic = True
    def d_real(self, logits): return F.softplus(-logits)
    def d_fake(self, logits): return F.softplus(logits)
    def g(self, logits): return F.softplus(-logits)

@metric("sizes", direction="maximize")
def sizes(generated, real):
    """n generated, n real and their dimensions in one number the test reads back."""
    return float(generated.shape[0] * 1_000_000 + real.shape[0] * 100 + generated.dim() * 10 + real.dim())

@architecture("wrong_logits")
def wrong_logits(data_shape, noise_dim, trial):
    import torch.nn as nn
    return nn.Linear(noise_dim, data_shape[0]), nn.Linear(data_shape[0], 1)  # D gives (B, 1)
'''
TOY: dict[str, Any] = dict(
    dataset="circle", g_hidden=(32, 32), d_hidden=(32, 32), noise_dim=4, batch_size=32, alpha=0.3,
    label_smoothing=0.9, epochs=2, steps_per_epoch=15, eval_samples=300, eval_valid=100, eval_test=300,
    device="cpu", seed=3,
)


@pytest.fixture(scope="module", autouse=True)
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    path = tmp_path_factory.mktemp("plugin") / "mine.py"
    path.write_text(PLUGIN)
    plugins.load([str(path), str(EXAMPLE)], "test")
    yield
    plugins.forget_all()


def test_a_plugin_loss_like_a_built_in_trains_exactly_like_it_eager(circle) -> None:
    (mine,) = losses_of([TrialConfig(**TOY, loss="my_non_saturating")], circle, "eager")
    (built_in,) = losses_of([TrialConfig(**TOY, loss="non_saturating")], circle, "eager")
    assert_same_losses(mine, built_in, rel=1e-6, abs_=1e-7)  # smoothing too: s d_real + (1 - s) d_fake


def test_a_plugin_loss_packs_beside_the_built_in_it_copies(circle) -> None:
    """One pack of both losses at the same seed: the members' losses are selected by the
    pack's loss masks, and each member trains as the built-in would."""
    mine, built_in = losses_of([TrialConfig(**TOY, loss="my_non_saturating"), TrialConfig(**TOY, loss="non_saturating")],
                               circle, "packed")
    assert_same_losses(mine, built_in, rel=1e-6, abs_=1e-7)
    (eager,) = losses_of([TrialConfig(**TOY, loss="non_saturating")], circle, "eager")
    assert_same_losses(mine, eager, rel=1e-3, abs_=1e-5, parzen_rel=1e-3)  # the packs' tolerance (test_engine.py)


def test_a_plugin_loss_compiles(circle) -> None:
    trial = TrialConfig(**{**TOY, "epochs": 1, "steps_per_epoch": 4}, loss="my_non_saturating")
    (compiled,) = losses_of([trial], circle, "compiled")
    (eager,) = losses_of([trial.model_copy(update={"loss": "non_saturating"})], circle, "eager")
    assert_same_losses(compiled, eager, rel=1e-3, abs_=1e-5, parzen_rel=1e-2)  # test_engine.py's bound


def test_a_plugin_metric_reads_the_samples_and_the_real_test_rows(circle) -> None:
    trial = TrialConfig(**{**TOY, "epochs": 1, "steps_per_epoch": 2}, metrics=("sizes",))
    (history,) = losses_of([trial], circle, "eager")
    # 300 samples and 300 test rows, both [n, 2] points: 300e6 + 300e2 + 2 * 10 + 2
    assert history[-1]["sizes"] == pytest.approx(300 * 1_000_000 + 300 * 100 + 22)


def test_the_example_architecture_trains_alone_and_in_packs(circle) -> None:
    trial = TrialConfig(**TOY, architecture="my_mlp", loss="my_least_squares")
    (eager,) = losses_of([trial], circle, "eager")
    (packed, _) = losses_of([trial, trial.model_copy(update={"seed": 4, "lr_d": 5e-4})], circle, "packed")
    assert_same_losses(packed, eager, rel=1e-3, abs_=1e-5, parzen_rel=1e-3)
    # its d_star and g_star: logged beside the losses, at D* = q s, q the real share of the
    # compose minibatch: round(0.3 x 32) = 10 of 32
    q = 10 / 32
    d = q * 0.9
    assert eager[-1]["g_loss_star"] == pytest.approx(0.5 * (d - 1) ** 2)
    assert eager[-1]["d_loss_star"] == pytest.approx(q * (0.9 * 0.5 * (d - 1) ** 2 + 0.1 * 0.5 * d**2) + (1 - q) * 0.5 * d**2)


def test_a_plugin_architecture_that_breaks_the_contract_is_named(circle) -> None:
    with pytest.raises(ValueError, match=r"architecture 'wrong_logits' \(.*mine.py\): D maps .* to \(B,\) logits, got \(2, 1\)"):
        build_models(TrialConfig(**TOY, architecture="wrong_logits"), circle.shape)


def test_halving_ds_costs_changes_no_adam_update(circle) -> None:
    """The example's my_least_squares is the built-in least_squares with D's costs halved
    (G's the same, s = 1): Adam's step is invariant to the scale of a gradient (up to its eps),
    so D, and with it G, train the same; only the logged d_loss halves."""
    trial = TrialConfig(**{**TOY, "label_smoothing": 1.0}, loss="least_squares")
    (built_in,) = losses_of([trial], circle, "eager")
    (mine,) = losses_of([trial.model_copy(update={"loss": "my_least_squares"})], circle, "eager")
    for got, expected in zip(mine, built_in, strict=True):
        assert got["d_loss"] == pytest.approx(0.5 * expected["d_loss"], rel=1e-4)
        for name in ("g_loss", "d_real", "d_fake", "parzen_ll"):
            assert got[name] == pytest.approx(expected[name], rel=1e-4), name
