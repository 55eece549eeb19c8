"""Seed 004's other two stabilisers (issue 16): minibatch discrimination in D and virtual batch
normalisation in G (Salimans et al. 2016). Their maths against direct computations on fixed
tensors, the networks that carry them, a few hundred steps of training with finite losses,
the executions agreeing as in tests/engine/test_stabilisers.py, and a resumed trial keeping VBN's
reference batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import LOGGED, assert_same_losses
from test_engine import IMAGES, TOY, losses_of
from test_stabilisers import trained_and_saved

from gansweep.config.names import G_NORMS
from gansweep.config.schema import TrialConfig
from gansweep.engine import models, run
from gansweep.engine.draws import member_stream, noise
from gansweep.engine.iteration import ALPHA_WEIGHTS
from gansweep.engine.layers import (
    VBN_EPS,
    MinibatchDiscrimination,
    VirtualBatchGenerator,
    VirtualBatchNorm,
    minibatch_counts,
)

MINIBATCH = {"minibatch_discrimination": 4, "minibatch_dim": 3}
VBN = {"g_norm": "virtual_batch"}


# ---------------------------------------------------------------------------- minibatch discrimination


def direct_features(f: np.ndarray, t: np.ndarray, kernels: int, dim: int, m: int,
                    counts: np.ndarray | None = None) -> np.ndarray:
    """o(x_i)_b written out with loops: (m - 1) sum_{j != i} s_j c_b(x_i, x_j) / sum_{j != i} s_j."""
    n = f.shape[0]
    big_m = (f @ t).reshape(n, kernels, dim)
    s = np.ones(n) if counts is None else counts
    o = np.zeros((n, kernels))
    for i in range(n):
        for b in range(kernels):
            num = sum(s[j] * math.exp(-np.abs(big_m[i, b] - big_m[j, b]).sum()) for j in range(n) if j != i)
            den = sum(s[j] for j in range(n) if j != i)
            o[i, b] = (m - 1) * num / den
    return o


def layer_with(t: np.ndarray, in_features: int, kernels: int, dim: int, m: int) -> MinibatchDiscrimination:
    layer = MinibatchDiscrimination(in_features, kernels, dim, m).double()
    with torch.no_grad():
        layer.T.copy_(torch.tensor(t))
    return layer


def test_minibatch_features_sum_closeness_over_the_other_samples() -> None:
    """A batch of m with unit counts: Salimans et al.'s sum over j != i, f passed through."""
    gen = np.random.default_rng(0)
    f, t = gen.normal(size=(5, 3)), gen.normal(size=(3, 4 * 2))
    out = layer_with(t, 3, 4, 2, m=5)(torch.tensor(f)).detach().numpy()
    assert out.shape == (5, 3 + 4)
    np.testing.assert_array_equal(out[:, :3], f)
    want = np.zeros((5, 4))  # the plain sum, no weighting at all
    big_m = (f @ t).reshape(5, 4, 2)
    for i in range(5):
        for j in range(5):
            if j != i:
                want[i] += np.exp(-np.abs(big_m[i] - big_m[j]).sum(-1))
    assert out[:, 3:].ravel().tolist() == pytest.approx(want.ravel().tolist(), rel=1e-12)
    # j = i is left out: two samples of a batch of 2 each see only the other
    pair = layer_with(t, 3, 4, 2, m=2)(torch.tensor(f[:2])).detach().numpy()[:, 3:]
    assert pair[0].tolist() == pytest.approx(np.exp(-np.abs(big_m[0] - big_m[1]).sum(-1)).tolist(), rel=1e-12)


def test_minibatch_features_with_counts_and_other_batch_sizes() -> None:
    gen = np.random.default_rng(1)
    f, t = gen.normal(size=(7, 3)), gen.normal(size=(3, 2 * 3))
    counts = np.array([0.3, 0.3, 0.0, 0.7, 0.7, 0.7, 0.0])
    layer = layer_with(t, 3, 2, 3, m=4)
    got = layer(torch.tensor(f), torch.tensor(counts)).detach().numpy()[:, 3:]
    assert got.ravel().tolist() == pytest.approx(direct_features(f, t, 2, 3, 4, counts).ravel().tolist(), rel=1e-12)
    # no counts on a batch of 7 for a minibatch of 4: the mean over the others times 3
    plain = layer(torch.tensor(f)).detach().numpy()[:, 3:]
    assert plain.ravel().tolist() == pytest.approx(direct_features(f, t, 2, 3, 4).ravel().tolist(), rel=1e-12)


def test_minibatch_features_change_when_the_batch_collapses_onto_one_point() -> None:
    gen = np.random.default_rng(2)
    f, t = gen.normal(size=(6, 3)), gen.normal(size=(3, 4 * 5))
    layer = layer_with(t, 3, 4, 5, m=6)
    spread = layer(torch.tensor(f)).detach().numpy()[:, 3:]
    collapsed = layer(torch.tensor(np.repeat(f[:1], 6, axis=0))).detach().numpy()[:, 3:]
    # every other sample at distance 0: c = 1, o = m - 1 for each kernel
    assert collapsed.ravel().tolist() == pytest.approx([5.0] * 24, rel=1e-12)
    assert spread.ravel().tolist() == pytest.approx(direct_features(f, t, 4, 5, 6).ravel().tolist(), rel=1e-12)
    assert spread.max() < 5.0 - 1e-3  # distinct samples are farther apart than a collapsed batch


def test_the_layer_sees_the_minibatch_d_trains_on_in_every_alpha_mode() -> None:
    """The iteration's counts (minibatch_counts of ALPHA_WEIGHTS) make the layer's features
    those of D's minibatch as alpha composes it: bernoulli's joint call over m real and m fake
    slots gives each sample the features of the m chosen samples alone; compose's joint call
    of round(alpha m) + rest is the plain sum; weight mode's is the alpha-weighted mean."""
    gen = torch.Generator().manual_seed(4)
    m, a = 6, 3
    t = torch.randn(a, 2 * 2, generator=gen, dtype=torch.float64)
    layer = layer_with(t.numpy(), a, 2, 2, m)
    real, fake = torch.randn(m, a, generator=gen, dtype=torch.float64), torch.randn(m, a, generator=gen, dtype=torch.float64)
    alpha = torch.tensor([[0.5]], dtype=torch.float64)
    coins = torch.tensor([[0.1, 0.9, 0.2, 0.8, 0.7, 0.3]], dtype=torch.float64)  # slots 0, 2, 5 real
    w_real, w_fake = ALPHA_WEIGHTS["bernoulli"](alpha, coins, m, m)
    (counts,) = minibatch_counts(w_real, w_fake, True, 1, m, m)
    joint = layer(torch.cat((real, fake)), counts[0])[:, a:]  # (2m, B)
    chosen = torch.where((coins[0] < 0.5).unsqueeze(1), real, fake)  # D's actual minibatch of m
    alone = layer(chosen)[:, a:]
    for slot in range(m):
        row = slot if coins[0, slot] < 0.5 else m + slot
        torch.testing.assert_close(joint[row], alone[slot], rtol=1e-12, atol=1e-12)

    w_real, w_fake = ALPHA_WEIGHTS["compose"](alpha, coins, 2, 4)
    (counts,) = minibatch_counts(w_real, w_fake, True, 1, 2, 4)
    batch = torch.cat((real[:2], fake[:4]))
    torch.testing.assert_close(layer(batch, counts[0]), layer(batch), rtol=1e-12, atol=1e-12)

    w_real, w_fake = ALPHA_WEIGHTS["weight"](torch.tensor([[0.3]], dtype=torch.float64), coins, m, m)
    real_counts, fake_counts = minibatch_counts(w_real, w_fake, False, 1, m, m)  # a batch-norm D: apart
    assert real_counts.shape == (1, m) and fake_counts.shape == (1, m)
    (counts,) = minibatch_counts(w_real, w_fake, True, 1, m, m)
    want = direct_features(torch.cat((real, fake)).numpy(), t.numpy(), 2, 2, m, counts[0].numpy())
    got = layer(torch.cat((real, fake)), counts[0])[:, a:].detach().numpy()
    assert got.ravel().tolist() == pytest.approx(want.ravel().tolist(), rel=1e-12)


@pytest.mark.parametrize("architecture", ["mlp", "maxout", "dcgan"])
def test_each_discriminator_gets_the_layer_before_its_head(architecture: str) -> None:
    fields = {**IMAGES, "architecture": architecture} if architecture != "mlp" else TOY
    trial = TrialConfig(**{**fields, **MINIBATCH})
    shape = (1, 8, 8) if architecture != "mlp" else (2,)
    torch.manual_seed(0)
    _, d = models.build_models(trial, shape)
    layer, head = d[-2], d[-1]
    assert isinstance(layer, MinibatchDiscrimination) and layer.T.shape[1] == 4 * 3
    assert head[0].in_features == layer.T.shape[0] + 4
    d.eval()  # no dropout: the same sample, other mates
    x = torch.randn(5, *shape)
    with torch.no_grad():
        first, other = d(x), d(torch.cat((x[:1], torch.randn(4, *shape))))
        features = d[: models.feature_end(d, None)](x)
    assert first.shape == (5,)
    assert first[0].item() != pytest.approx(other[0].item(), rel=1e-6)  # its mates change its logit
    assert features.flatten(1).shape[1] == layer.T.shape[0]  # feature matching's features stop before the layer


def test_the_rules_refuse_what_makes_no_sense() -> None:
    with pytest.raises(ValueError, match="loss='wasserstein_gp'.*minibatch_discrimination=4"):
        TrialConfig(**{**TOY, **MINIBATCH, "loss": "wasserstein_gp"})
    TrialConfig(**{**TOY, "minibatch_dim": 3})  # C without kernels: read only when B > 0 (a study searches B)
    with pytest.raises(ValueError, match="g_norm='batch'.*architecture='dcgan'"):
        TrialConfig(**{**IMAGES, "architecture": "dcgan", "g_norm": "batch"})
    assert set(models.G_NORMS) == set(models.DCGAN_G_NORMS) == set(G_NORMS)


def test_a_study_file_that_breaks_a_rule_names_its_file_and_field(tmp_path) -> None:
    from gansweep.config.load import load_study
    from gansweep.errors import ConfigError

    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\ntrial:\n  loss: wasserstein_gp\n  minibatch_discrimination: 8\n")
    with pytest.raises(ConfigError) as caught:
        load_study(path)
    message = str(caught.value)
    assert str(path) in message and "minibatch_discrimination" in message and "wasserstein_gp" in message


# ---------------------------------------------------------------------------- virtual batch norm


def direct_vbn(h: np.ndarray, r: int, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Each row normalised per channel with the mean and mean square of the reference rows
    plus itself (the reference rows: of the reference rows alone), over batch and space."""
    out = np.empty_like(h)
    ref = h[:r]
    axes = (0,) + tuple(range(2, h.ndim))
    for i in range(h.shape[0]):
        pool = ref if i < r else np.concatenate((ref, h[i : i + 1]))
        mean, var = pool.mean(axis=axes), pool.var(axis=axes)  # biased, as batch norm normalises
        shape = (-1,) + (1,) * (h.ndim - 2)
        out[i] = weight.reshape(shape) * (h[i] - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + VBN_EPS) + bias.reshape(shape)
    return out


@pytest.mark.parametrize("shape", [(4,), (3, 2, 2)])
def test_virtual_batch_norm_is_the_reference_statistics_plus_the_example(shape: tuple[int, ...]) -> None:
    gen = np.random.default_rng(5)
    h = gen.normal(loc=1.5, scale=2.0, size=(6 + 5, *shape))  # R = 6 reference rows, 5 examples
    layer = VirtualBatchNorm(shape[0], reference_size=6).double()
    weight, bias = gen.normal(size=shape[0]), gen.normal(size=shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    got = layer(torch.tensor(h)).detach().numpy()
    assert got.ravel().tolist() == pytest.approx(direct_vbn(h, 6, weight, bias).ravel().tolist(), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("architecture", ["mlp", "maxout", "dcgan"])
def test_an_examples_output_is_independent_of_the_rest_of_its_batch(architecture: str) -> None:
    fields = {**IMAGES, "architecture": architecture} if architecture != "mlp" else TOY
    trial = TrialConfig(**{**fields, **VBN})
    shape = (1, 8, 8) if architecture != "mlp" else (2,)
    torch.manual_seed(0)
    g, _ = models.build_models(trial, shape)
    assert isinstance(g, VirtualBatchGenerator) and g.reference.shape == (trial.batch_size, trial.noise_dim)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in g.modules())
    with torch.no_grad():
        g.reference.normal_()
        z = torch.randn(5, trial.noise_dim)
        alone, in_batch = g(z[2:3]), g(z)
        mates = g(torch.cat((torch.randn(3, trial.noise_dim), z[2:3])))
    torch.testing.assert_close(in_batch[2:3], alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mates[3:], alone, rtol=1e-5, atol=1e-6)
    if architecture == "mlp":  # against batch norm, whose output does depend on the mates
        bn = TrialConfig(**{**fields, "g_norm": "batch"})
        torch.manual_seed(0)
        g_bn, _ = models.build_models(bn, shape)
        with torch.no_grad():
            assert not torch.allclose(g_bn(z)[2:3], g_bn(torch.cat((torch.randn(3, trial.noise_dim), z[2:3])))[3:])


def test_the_reference_batch_is_drawn_first_from_the_trials_own_stream(circle) -> None:
    trial = TrialConfig(**{**TOY, **VBN, "noise": "uniform", "seed": 3})
    unit = run.build_unit([trial], circle, execution="packed")
    torch.manual_seed(3)
    models.build_models(trial, circle.shape)  # the initialisation's draws, as build_unit's
    stream = member_stream(torch.device("cpu"))
    want = noise("uniform", (trial.batch_size, trial.noise_dim), torch.device("cpu"), stream)
    (reference,) = (b for name, b in zip(unit.layouts[0].buffer_names, unit.state.g.buffers, strict=True)
                    if name == "reference")
    torch.testing.assert_close(reference[0], want, rtol=0, atol=0)
    torch.testing.assert_close(unit.generator.reference, want, rtol=0, atol=0)
    # the draws continue after it: the member's stream is where `stream` is now
    torch.testing.assert_close(unit.streams[0].get_state(), stream.get_state(), rtol=0, atol=0)


# ---------------------------------------------------------------------------- training, executions


@pytest.mark.slow  # about 1 s alone, but 18 to 28 s each beside another suite on the 2-core machine
@pytest.mark.parametrize("stabiliser", [MINIBATCH, VBN], ids=["minibatch", "vbn"])
def test_each_trains_a_few_hundred_steps_on_ring8_with_finite_losses(stabiliser: dict) -> None:
    from gansweep.engine.data import load_dataset

    ring8 = load_dataset("ring8", seed=0)
    trial = TrialConfig(**{**TOY, **stabiliser, "dataset": "ring8", "epochs": 3, "steps_per_epoch": 100,
                           "eval_every": 3})
    (history,) = losses_of([trial], ring8, "eager")
    assert len(history) == 3
    assert all(math.isfinite(epoch[name]) for epoch in history for name in LOGGED)
    assert math.isfinite(history[-1]["parzen_ll"])


VARIANTS = {
    "minibatch": MINIBATCH,
    "minibatch-bernoulli": {**MINIBATCH, "alpha_mode": "bernoulli"},
    "minibatch-weight": {**MINIBATCH, "alpha_mode": "weight", "alpha": 0.3},
    "minibatch-feature-matching": {**MINIBATCH, "loss": "feature_matching"},
    "vbn": VBN,
    "batch-norm": {"g_norm": "batch"},
    "vbn-and-minibatch": {**VBN, **MINIBATCH, "historical_averaging": 0.5},
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_packed_is_eager(circle, name: str) -> None:
    trial = TrialConfig(**{**TOY, **VARIANTS[name]})
    (eager,) = losses_of([trial], circle, "eager")
    (packed,) = losses_of([trial], circle, "packed")
    assert_same_losses(packed, eager, rel=1e-3, abs_=1e-5, parzen_rel=1e-3)


@pytest.mark.parametrize("stabiliser", [MINIBATCH, VBN], ids=["minibatch", "vbn"])
def test_on_dcgan_packed_is_eager(digits, stabiliser: dict) -> None:
    trial = TrialConfig(**{**IMAGES, **stabiliser, "architecture": "dcgan"})
    results = {}
    for execution in ("eager", "packed"):
        unit = run.build_unit([trial], digits, execution=execution, autocast=False)
        results[execution] = [run.train_epoch(unit)[0] for _ in range(trial.epochs)]
    assert all(math.isfinite(epoch[name]) for epoch in results["eager"] for name in LOGGED)
    assert_same_losses(results["packed"], results["eager"], rel=1e-3, abs_=1e-5, parzen_rel=1e-2)


def test_pack_members_each_see_their_own_minibatch(circle) -> None:
    """Members of other alphas, losses and seeds in one pack: each as in a pack of itself (each
    its own counts, its own reference batch)."""
    base = TrialConfig(**{**TOY, **MINIBATCH, **VBN, "alpha_mode": "weight"})
    members = [base, base.model_copy(update={"alpha": 0.3, "seed": 1, "loss": "hinge"}),
               base.model_copy(update={"alpha": 0.7, "seed": 2, "loss": "least_squares"}),
               base.model_copy(update={"seed": 3, "loss": "max_likelihood"})]
    together = losses_of(members, circle, "packed")
    for member, history in zip(members, together, strict=True):
        (alone,) = losses_of([member], circle, "packed")
        assert_same_losses(history, alone, rel=1e-5, abs_=1e-6)


@pytest.mark.slow  # two compiles each (about 25 s on the 2-core machine)
@pytest.mark.parametrize("stabiliser", [MINIBATCH, VBN], ids=["minibatch", "vbn"])
def test_compiled_and_compiled_packs_are_eager(circle, stabiliser: dict) -> None:
    trial = TrialConfig(**{**TOY, **stabiliser})
    (eager,) = losses_of([trial], circle, "eager")
    for execution in ("compiled", "compiled_packed"):
        (compiled,) = losses_of([trial], circle, execution)
        assert_same_losses(compiled, eager, rel=1e-3, abs_=1e-5, parzen_rel=1e-2)


@pytest.mark.parametrize("execution", ["eager", "packed"])
def test_a_resumed_trial_keeps_its_reference_batch(circle, tmp_path, execution: str) -> None:
    trial = TrialConfig(**{**TOY, **VBN, **MINIBATCH, "epochs": 4})
    (straight,) = losses_of([trial], circle, execution)
    unit, saved = trained_and_saved(trial, circle, execution, 2, tmp_path / "state.pt")
    index = unit.layouts[0].buffer_names.index("reference")
    torch.testing.assert_close(saved["state"]["g"]["buffers"][index], unit.state.g.buffers[index], rtol=0, atol=0)
    torch.manual_seed(99)  # whatever ran in between
    resumed = run.build_unit([trial.model_copy(update={"seed": 5})], circle, execution=execution)  # another reference
    assert not torch.equal(resumed.state.g.buffers[index], unit.state.g.buffers[index])
    resumed.trials = [trial]
    run.load_unit_state(resumed, saved)
    torch.testing.assert_close(resumed.state.g.buffers[index], unit.state.g.buffers[index], rtol=0, atol=0)
    rest = [run.train_epoch(resumed)[0] for _ in range(2)]
    assert_same_losses(rest, straight[2:], rel=1e-5, abs_=1e-7)
