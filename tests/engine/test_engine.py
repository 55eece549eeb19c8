"""The one iteration and its executions: eager, packed, compiled and compiled packs give the
same losses for the same trial, and the textbook loop's (tests/reference_loop.py).

Tolerances: the eager and packed executions differ from the textbook loop only in rounding
(fused Adam against torch.optim's loop, one flat update, float32 sums): rel 1e-3 over a few
dozen iterations, where hinge's kinks amplify a 1e-7 difference to 1e-4 in a raw D score; a
wrong alpha weight, loss term or update moves the losses by percents. Compiled executions fuse and reorder float32 ops: rel 1e-3 over the same
iterations (GAN dynamics amplify rounding; measured differences are about 1e-5).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from conftest import LOGGED, assert_same_losses, losses_of
from reference_loop import ReferenceTrial, reference_losses

from gansweep.config.names import TOY_DATASETS
from gansweep.config.rules import RANGE_TAIL, TOY_EXTENTS, output_range_problem
from gansweep.config.schema import TrialConfig
from gansweep.engine import evaluate, executions, iteration, run
from gansweep.engine.data import load_dataset
from gansweep.engine.iteration import Hyper, NetState
from gansweep.engine.train import train_gan, train_pack
from gansweep.errors import ConfigError

TOY = dict(
    dataset="circle", g_hidden=(16, 16), d_hidden=(16, 16), noise_dim=4, batch_size=32, epochs=2,
    steps_per_epoch=12, eval_every=2, eval_samples=200, eval_valid=100, eval_test=100, device="cpu",
)
IMAGES = dict(
    dataset="digits", dcgan_width=8, maxout_units=16, maxout_pieces=2, g_hidden=(32,), d_hidden=(32,),
    noise_dim=8, batch_size=16, epochs=2, steps_per_epoch=4, eval_every=2, eval_samples=100,
    eval_valid=50, eval_test=50, device="cpu",
)
# One variant of the game at a time, each against the default (non-saturating, compose, Adam, k 1).
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "minimax": {"loss": "minimax"},
    "max_likelihood": {"loss": "max_likelihood", "alpha_mode": "weight"},
    "least_squares": {"loss": "least_squares", "label_smoothing": 0.9},
    "hinge": {"loss": "hinge"},
    "wasserstein_gp": {"loss": "wasserstein_gp", "k": 3},
    "weight_smoothed": {"alpha_mode": "weight", "alpha": 0.3, "label_smoothing": 0.9},
    "bernoulli_k3": {"alpha_mode": "bernoulli", "alpha": 0.7, "k": 3},
    "sgd_schedule": {"optimizer": "sgd", "lr_d": 0.02, "momentum": 0.5, "momentum_final": 0.9},
    "uniform_noise": {"noise": "uniform", "adam_beta1": 0.9},
    "dropout": {"d_dropout": 0.3},
}
IMAGE_VARIANTS: dict[str, dict[str, Any]] = {
    "dcgan_batch_norm": {"architecture": "dcgan"},
    "maxout_dropout": {"architecture": "maxout"},
}


def textbook(trial: TrialConfig, data) -> list[dict[str, float]]:
    return reference_losses(trial, data)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_eager_and_packed_give_the_textbook_losses(circle, name: str) -> None:
    trial = TrialConfig(**{**TOY, **VARIANTS[name]})
    (eager,) = losses_of([trial], circle, "eager")
    (packed,) = losses_of([trial], circle, "packed")  # a pack of one: vmap over one row
    if not trial.d_dropout:  # the engine draws every input first, then the masks: other masks
        assert_same_losses(eager, textbook(trial, circle), rel=1e-3, abs_=1e-5)
    assert_same_losses(packed, eager, rel=1e-3, abs_=1e-5, parzen_rel=1e-3)


@pytest.mark.parametrize("name", list(IMAGE_VARIANTS))
def test_image_architectures_give_the_textbook_losses(digits, name: str) -> None:
    trial = TrialConfig(**{**IMAGES, **IMAGE_VARIANTS[name]})
    # bf16 autocast off: the textbook loop computes in float32
    unit = run.build_unit([trial], digits, execution="eager", autocast=False)
    eager = [run.train_epoch(unit)[0] for _ in range(trial.epochs)]
    reference = textbook(trial, digits)
    if trial.architecture == "maxout":  # dropout masks: the same draws only in the same order
        for got in eager:
            assert all(math.isfinite(got[n]) for n in LOGGED)
        return
    assert_same_losses(eager, reference, rel=1e-3, abs_=1e-5)


@pytest.mark.parametrize("name", ["default", "wasserstein_gp"])
def test_compiled_executions_give_the_eager_losses(circle, name: str) -> None:
    trial = TrialConfig(**{**TOY, **VARIANTS[name]})
    (eager,) = losses_of([trial], circle, "eager")
    (compiled,) = losses_of([trial], circle, "compiled")
    (compiled_pack,) = losses_of([trial], circle, "compiled_packed")
    assert_same_losses(compiled, eager, rel=1e-3, abs_=1e-5, parzen_rel=1e-2)
    assert_same_losses(compiled_pack, eager, rel=1e-3, abs_=1e-5, parzen_rel=1e-2)


def test_compiled_dropout_draws_its_own_masks_from_the_same_distribution(circle) -> None:
    """Inductor draws dropout masks itself (seeded by the global stream, other numbers): a
    compiled trial with dropout is the same game, not the same sequence of losses."""
    trial = TrialConfig(**{**TOY, **VARIANTS["dropout"]})
    (eager,) = losses_of([trial], circle, "eager")
    (compiled,) = losses_of([trial], circle, "compiled")
    (again,) = losses_of([trial], circle, "compiled")
    assert_same_losses(again, compiled, rel=1e-6, abs_=1e-7)  # seeded: repeatable
    for got, expected in zip(compiled, eager, strict=True):
        assert got["d_loss"] == pytest.approx(expected["d_loss"], abs=0.02)
        assert got["g_loss"] == pytest.approx(expected["g_loss"], abs=0.05)


@pytest.mark.slow  # a graph each, 5 to 15 s of compiling apiece
@pytest.mark.parametrize("name", [n for n in VARIANTS if n not in ("default", "wasserstein_gp", "dropout")])
def test_every_variant_compiles_to_the_eager_losses(circle, name: str) -> None:
    trial = TrialConfig(**{**TOY, **VARIANTS[name]})
    (eager,) = losses_of([trial], circle, "eager")
    for execution in ("compiled", "compiled_packed"):
        (compiled,) = losses_of([trial], circle, execution)
        assert_same_losses(compiled, eager, rel=1e-3, abs_=1e-5, parzen_rel=1e-2)


@pytest.mark.slow
def test_compiled_dcgan_updates_batch_norm_as_eager(digits) -> None:
    trial = TrialConfig(**IMAGES, architecture="dcgan")
    results, statistics = {}, {}
    for execution in ("eager", "compiled", "packed", "compiled_packed"):
        unit = run.build_unit([trial, trial.model_copy(update={"seed": 1})] if "packed" in execution else [trial],
                              digits, execution=execution, autocast=False)
        results[execution] = [run.train_epoch(unit)[0] for _ in range(trial.epochs)]
        names = unit.layouts[0].buffer_names
        assert any(n.endswith("running_mean") for n in names)
        # trial 0's running statistics, G's and D's, after every update of the epochs
        statistics[execution] = [b[0].double() for net in unit.state for b in net.buffers]
    assert_same_losses(results["compiled"], results["eager"], rel=1e-3, abs_=1e-5, parzen_rel=1e-2)
    assert_same_losses(results["compiled_packed"], results["packed"], rel=1e-3, abs_=1e-5, parzen_rel=1e-2)
    # a pack draws for its members together (draws.py): packs are compared with packs
    for execution, reference in (("compiled", "eager"), ("compiled_packed", "packed")):
        for got, expected in zip(statistics[execution], statistics[reference], strict=True):
            assert got.tolist() == pytest.approx(expected.tolist(), rel=1e-3, abs=1e-4)


def mates(trial: TrialConfig) -> list[TrialConfig]:
    """Three members differing in everything a pack lets them differ in."""
    return [
        trial,
        trial.model_copy(update={"seed": 1, "alpha": 0.3, "lr_d": 1e-3, "adam_beta1": 0.9}),
        trial.model_copy(update={"seed": 2, "label_smoothing": 0.9, "lr_g": 5e-4, "loss": "minimax"}),
    ]


@pytest.mark.parametrize("execution", ["packed", "compiled_packed"])
def test_a_member_trains_alone_whatever_its_mates(circle, execution: str) -> None:
    """Changing one member changes nobody else's losses: the vectorised step keeps trials
    apart (its gradients are each trial's own), and each draws from its own stream."""
    members = mates(TrialConfig(**TOY, alpha_mode="weight"))
    first = losses_of(members, circle, execution)
    changed = [members[0], members[1].model_copy(update={"lr_d": 1e-2, "loss": "max_likelihood"}), members[2]]
    second = losses_of(changed, circle, execution)
    assert_same_losses(second[0], first[0], rel=1e-5, abs_=1e-7)
    assert_same_losses(second[2], first[2], rel=1e-5, abs_=1e-7)
    assert second[1][-1]["d_loss"] != pytest.approx(first[1][-1]["d_loss"], rel=1e-3)


@pytest.mark.parametrize("alpha_mode", ["weight", "bernoulli"])
def test_each_member_of_a_pack_trains_as_its_lone_trial(circle, alpha_mode: str) -> None:
    """A pack's member draws from its own seed's stream: its losses are its lone eager run's."""
    members = mates(TrialConfig(**TOY, alpha_mode=alpha_mode))
    packed = losses_of(members, circle, "packed")
    for member, history in zip(members, packed, strict=True):
        (alone,) = losses_of([member], circle, "eager")
        assert_same_losses(history, alone, rel=1e-3, abs_=1e-5, parzen_rel=1e-3)


def test_packs_of_every_loss_and_sgd_train(circle) -> None:
    """Every loss in one pack, with SGD's momentum schedule: finite, each at its own loss."""
    base = TrialConfig(**TOY, alpha_mode="weight", optimizer="sgd", lr_d=0.02, momentum_final=0.9)
    losses = ["minimax", "non_saturating", "max_likelihood", "least_squares", "hinge", "wasserstein_gp"]
    trials = [base.model_copy(update={"loss": name, "seed": i}) for i, name in enumerate(losses)]
    histories = train_pack(trials, circle)
    for name, history in zip(losses, histories, strict=True):
        assert math.isfinite(history[-1]["d_loss"]) and math.isfinite(history[-1]["g_loss"]), name
        alone = losses_of([trials[losses.index(name)]], circle, "packed")[0]
        assert math.isfinite(alone[-1]["d_loss"])
    # the probabilistic losses report D as a probability, the others a raw score
    assert 0.0 < histories[0][-1]["d_real"] < 1.0


def test_dcgan_packs_keep_each_members_batch_norm_statistics(digits) -> None:
    trials = [TrialConfig(**IMAGES, architecture="dcgan", seed=s) for s in (0, 1)]
    unit = run.build_unit(trials, digits, execution="packed", autocast=False)
    run.train_epoch(unit)
    # on 8x8 digits DCGAN's batch norm is in G (D is one strided convolution and the head)
    running = [b for n, b in zip(unit.layouts[0].buffer_names, unit.state.g.buffers, strict=True) if n.endswith("running_mean")]
    assert running and not torch.equal(running[0][0], running[0][1])  # (P, C): one row each
    # under bf16 autocast (vmap's batch norm takes no bf16 input beside float32 statistics)
    alone = run.build_unit([trials[1]], digits, execution="packed", autocast=True)
    assert math.isfinite(run.train_epoch(alone)[0]["d_loss"])


@pytest.fixture(scope="module")
def digits16(tmp_path_factory, digits):
    """The digits at 16 x 16, a file of images: from 16 x 16 on DCGAN's D has batch norm too."""
    import numpy as np

    path = tmp_path_factory.mktemp("images") / "digits16.npz"
    images = torch.nn.functional.interpolate(digits.train[:400], scale_factor=2, mode="bilinear")
    np.savez(path, x=images.clamp(0, 1).numpy())
    return load_dataset(str(path), seed=0)


# name -> (data fixture, the trial's changes to IMAGES, its batch-norm layers in G and D)
PACKS_OF_ONE: dict[str, tuple[str, dict[str, Any], int]] = {
    "dcgan": ("digits", {"architecture": "dcgan"}, 1),  # 8 x 8: batch norm in G only
    "dcgan_d_batch_norm_k3": ("digits16", {"architecture": "dcgan", "k": 3}, 3),  # 2 in G, 1 in D
    "maxout": ("digits", {"architecture": "maxout", "d_dropout": 0.0}, 0),  # D's own dropout stays
}


@pytest.mark.parametrize("name", list(PACKS_OF_ONE))
def test_a_pack_of_one_image_trial_is_its_eager_trial(request, name: str) -> None:
    """A pack of one (DCGAN under torch.func.vmap, its batch norm included; maxout as batched
    products, the masks of its fixed dropout drawn in the eager order) gives the eager
    losses, and the same batch-norm running statistics after training. In float32 (no bf16
    autocast), as the textbook comparison; measured equal to about 1e-7."""
    fixture, changes, norms = PACKS_OF_ONE[name]
    data = request.getfixturevalue(fixture)
    trial = TrialConfig(**{**IMAGES, **changes, "dataset": data.name})
    histories, buffers = {}, {}
    for execution in ("eager", "packed"):
        unit = run.build_unit([trial], data, execution=execution, autocast=False)
        histories[execution] = [run.train_epoch(unit)[0] for _ in range(trial.epochs)]
        buffers[execution] = {
            f"{net}.{buffer}": value[0].double()  # row 0: the one member
            for net, layout, state in zip("gd", unit.layouts, unit.state, strict=True)
            for buffer, value in zip(layout.buffer_names, state.buffers, strict=True)
        }
    assert_same_losses(histories["packed"], histories["eager"], rel=1e-3, abs_=1e-5, parzen_rel=1e-3)
    assert sum(name.endswith("running_mean") for name in buffers["eager"]) == norms
    assert buffers["packed"].keys() == buffers["eager"].keys()
    for buffer, expected in buffers["eager"].items():
        assert buffers["packed"][buffer].tolist() == pytest.approx(expected.tolist(), rel=1e-3, abs=1e-7), buffer


# ---------------------------------------------------------------------------- updates


def random_net(p: int = 2, n: int = 7, second: bool = True) -> NetState:
    gen = torch.Generator().manual_seed(0)
    params = torch.randn(p, n, generator=gen)
    return NetState(params, (), torch.randn(p, n, generator=gen) * 0.1,
                    torch.rand(p, n, generator=gen) * 0.01 if second else params.new_zeros(p, 0),
                    torch.full((p, 1), 3.0))


def hyper_for(p: int = 2) -> Hyper:
    def col(*values: float) -> torch.Tensor:
        return torch.tensor(values[:p]).unsqueeze(1)

    return Hyper(alpha=col(0.5, 0.5), smoothing=col(1.0, 1.0), lr_d=col(1e-3, 1e-2), lr_g=col(2e-3, 2e-3),
                 beta1=col(0.5, 0.9), beta2=col(0.999, 0.99), momentum=col(0.5, 0.7), gp_weight=col(10.0, 10.0),
                 loss_masks=torch.ones(1, p, 1, dtype=torch.bool))


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_updates_are_torch_optims_step(optimizer: str) -> None:
    """adam_update / sgd_update against torch.optim on the same parameter, row by row."""
    net, hyper = random_net(second=optimizer == "adam"), hyper_for()
    grad = torch.randn(2, 7, generator=torch.Generator().manual_seed(1))
    new = iteration.UPDATES[optimizer](net, grad, hyper.lr_d, hyper)
    for row in range(2):
        param = torch.nn.Parameter(net.params[row].clone())
        if optimizer == "adam":
            opt = torch.optim.Adam([param], lr=hyper.lr_d[row].item(), betas=(hyper.beta1[row].item(), hyper.beta2[row].item()))
            opt.state[param] = {"step": torch.tensor(3.0), "exp_avg": net.moment1[row].clone(), "exp_avg_sq": net.moment2[row].clone()}
        else:
            opt = torch.optim.SGD([param], lr=hyper.lr_d[row].item(), momentum=hyper.momentum[row].item())
            opt.state[param] = {"momentum_buffer": net.moment1[row].clone()}
        param.grad = grad[row].clone()
        opt.step()
        torch.testing.assert_close(new.params[row], param.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_eager_fused_update_is_the_update(optimizer: str) -> None:
    """executions.FusedUpdate (torch's fused kernel, in place) = UPDATES[optimizer]."""
    from gansweep.engine.state import Layout

    module = torch.nn.Linear(3, 2)
    layout = Layout.of(module)
    net = random_net(p=1, n=8, second=optimizer == "adam")
    views = list(layout.unflatten(net.params[0]).values())
    params = [torch.nn.Parameter(v) for v in views]
    for param, view in zip(params, views, strict=True):
        param.data = view
    hyper = hyper_for(p=1)
    grad = torch.randn(1, 8, generator=torch.Generator().manual_seed(2))
    expected = iteration.UPDATES[optimizer](net, grad, hyper.lr_d, hyper)
    fused = executions.FusedUpdate(optimizer, {id(net.params): params}, {id(net.params): layout})
    grads = list(layout.unflatten(grad[0]).values())
    got = fused(net, grads, hyper.lr_d, hyper)  # type: ignore[arg-type]
    torch.testing.assert_close(got.params, expected.params, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got.moment1, expected.moment1, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got.steps, expected.steps)


# ---------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize(("before", "after"), [("eager", "compiled"), ("compiled", "eager"), ("eager", "packed")])
def test_a_trial_resumes_in_another_execution(circle, before: str, after: str) -> None:
    trial = TrialConfig(**{**TOY, "epochs": 4})
    straight = train_gan(trial, circle, execution="eager")
    states = {}
    train_gan(trial.model_copy(update={"epochs": 2}), circle, lambda m, e, state: states.update({e: state()}), execution=before)
    resumed = train_gan(trial, circle, resume_from=states[2], execution=after)
    assert [m["epoch"] for m in resumed] == [3.0, 4.0]
    rel = 1e-4 if "compiled" not in (before, after) else 1e-3
    assert_same_losses(resumed, straight[2:], rel=rel, abs_=1e-5, parzen_rel=1e-2)


def test_a_checkpoint_of_the_earlier_layout_resumes(circle) -> None:
    """Output folders written before the one iteration hold format-1 checkpoints: a trial
    resumed from one continues as the textbook loop does."""
    trial = TrialConfig(**{**TOY, "epochs": 4})
    reference = ReferenceTrial(trial, circle)
    for _ in range(2):
        reference.train_epoch()
    old = reference.format1_checkpoint()
    expected = [reference.train_epoch() for _ in range(2)]
    resumed = train_gan(trial, circle, resume_from=old)
    assert [m["epoch"] for m in resumed] == [3.0, 4.0]
    assert_same_losses(resumed, expected, rel=1e-4, abs_=1e-6)


def test_a_resumed_pack_trains_on_as_if_never_stopped(circle) -> None:
    members = mates(TrialConfig(**{**TOY, "epochs": 3}, alpha_mode="weight"))
    straight = losses_of(members, circle, "packed")
    unit = run.build_unit(members, circle, execution="packed")
    run.train_epoch(unit)
    saved = run.unit_state(unit)
    torch.manual_seed(123)  # whatever ran in between
    resumed = run.build_unit(members[::2], circle, execution="packed")  # member 1 left meanwhile
    run.load_unit_state(resumed, saved, rows=[0, 2])
    rest = [run.train_epoch(resumed) for _ in range(2)]
    for row, member in ((0, 0), (1, 2)):
        assert_same_losses([epoch[row] for epoch in rest], straight[member][1:], rel=1e-5, abs_=1e-7)


def test_members_keep_their_draws_when_mates_leave(circle) -> None:
    members = mates(TrialConfig(**TOY, alpha_mode="weight"))
    straight = losses_of(members, circle, "packed")
    unit = run.build_unit(members, circle, execution="packed")
    first = run.train_epoch(unit)
    unit = run.keep_rows(unit, [0, 2])
    second = run.train_epoch(unit)
    assert_same_losses([first[2], second[1]], straight[2], rel=1e-5, abs_=1e-7)


# ---------------------------------------------------------------------------- data scales


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_the_configs_extents_of_the_2d_sets_are_the_engines(name: str) -> None:
    """config.rules.TOY_EXTENTS, the plain numbers `gansweep validate` refuses a bounded
    g_output by, against the engine's points: the RANGE_TAIL quantiles of a million of them,
    and the engine's own check (the final guard) on the splits trials train on, which
    refuses a set for an output exactly when the config does."""
    assert set(TOY_EXTENTS) == set(TOY_DATASETS)
    points = load_dataset(name, seed=0, n_train=1_000_000).train
    quantiles = torch.quantile(points, torch.tensor([RANGE_TAIL, 1 - RANGE_TAIL]), dim=0)  # (2, 2)
    low, high = TOY_EXTENTS[name]
    assert quantiles[0].min().item() == pytest.approx(low, abs=2e-3)
    assert quantiles[1].max().item() == pytest.approx(high, abs=2e-3)
    for seed in (0, 1, 2):
        data = load_dataset(name, seed=seed)
        for output in ("tanh", "sigmoid", "identity"):
            trial = TrialConfig(**{**TOY, "dataset": name, "g_output": output, "seed": seed})
            refused = output_range_problem(name, output) is not None
            try:
                evaluate.check_output_range(trial, data)
                assert not refused, (name, output, seed)
            except ConfigError:
                assert refused, (name, output, seed)
    assert (output_range_problem(name, "tanh") is None) == (name == "circle")  # inside (-1, 1)
