"""The compiled iteration (a trial's `compile: true`, gansweep/compiled.py) against the eager
step loop: the same losses for the same seed, checkpoints that move between the two, and one
graph shared by trials that differ only in hyperparameters.

Each new graph costs inductor 5 to 20 s of compiling on 2 cores; the default suite compiles
three (a toy, a DCGAN with batch norm, SGD with a momentum schedule), the slow suite the rest.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import assert_same_losses
from gansweep.compiled import COMPILED, adam_update, optimizer_hyper, optimizer_state, sgd_update
from gansweep.study import TrialConfig
from gansweep.train import FastPaths, GanTrial, train_gan

TINY = dict(
    dataset="circle", g_hidden=(16,), d_hidden=(16,), noise_dim=2, batch_size=32, epochs=2,
    steps_per_epoch=20, eval_every=2, eval_samples=200, eval_valid=100, eval_test=200,
    device="cpu", compile=True,
)
IMAGES = dict(
    dataset="digits", noise_dim=8, batch_size=16, epochs=2, steps_per_epoch=10, eval_samples=100,
    eval_valid=50, eval_test=50, device="cpu", dcgan_width=8, maxout_units=16, maxout_pieces=2,
    g_hidden=(32,), d_hidden=(32,), compile=True,
)
FLOAT32 = FastPaths(bf16_autocast=False)
EAGER = dataclasses.replace(FLOAT32, compile=False)


def compiled_and_eager(trial: TrialConfig, data, fast: FastPaths = FLOAT32) -> tuple[list[dict], list[dict]]:
    eager = train_gan(trial, data, fast=dataclasses.replace(fast, compile=False))
    return train_gan(trial, data, fast=fast), eager


# ---------------------------------------------------------------------------- default suite


def test_compiled_trial_gives_the_eager_losses(circle) -> None:
    compiled, eager = compiled_and_eager(TrialConfig(**TINY, alpha_mode="weight", alpha=0.3), circle)
    # inductor fuses and reorders float32 ops: the same maths up to rounding
    assert_same_losses(compiled, eager, rel=1e-4, abs_=1e-5)
    assert compiled[0]["d_loss"] != compiled[1]["d_loss"]  # it trained


def test_compile_time_is_logged_apart_from_the_throughput(circle) -> None:
    trial = TrialConfig(**{**TINY, "seed": 11, "noise_dim": 3}, alpha_mode="weight")  # a new graph
    first, second = train_gan(trial, circle, fast=FLOAT32)
    assert "compile_time" not in second  # once per trial and process
    steps = trial.steps_per_epoch
    # samples/s counts the 19 iterations after the first, in the epoch's time less the first's
    assert first["samples_per_second"] == pytest.approx(
        (steps - 1) * trial.batch_size * 2 / (first["epoch_time"] - first["compile_time"]), rel=1e-9
    )
    assert 0 < first["compile_time"] < first["epoch_time"]
    # the graph compiled, its one iteration took far longer than one of the other 19
    assert first["compile_time"] > 10 * (first["epoch_time"] - first["compile_time"]) / (steps - 1)
    again = train_gan(trial, circle, fast=FLOAT32)[0]  # this process has the graph now
    assert again["compile_time"] < first["compile_time"] / 10


def test_trials_differing_in_hyperparameters_share_one_graph(circle) -> None:
    first = TrialConfig(**TINY, alpha_mode="weight", alpha=0.3)
    train_gan(first, circle, fast=FLOAT32)
    graphs = len(COMPILED)
    other = first.model_copy(
        update={"alpha": 0.7, "lr_d": 1e-3, "lr_g": 5e-4, "adam_beta1": 0.2, "seed": 5, "gp_weight": 3.0}
    )
    with torch.compiler.set_stance("fail_on_recompile"):  # raises if dynamo compiles again
        compiled = train_gan(other, circle, fast=FLOAT32)
    assert len(COMPILED) == graphs
    assert_same_losses(compiled, train_gan(other, circle, fast=EAGER), rel=1e-4, abs_=1e-5)


def test_compiled_checkpoints_resume_eager_trials_and_back(circle) -> None:
    trial = TrialConfig(**{**TINY, "epochs": 4, "eval_every": 1})
    straight = train_gan(trial, circle, fast=FLOAT32)
    states: dict[int, dict] = {}
    train_gan(trial.model_copy(update={"epochs": 2}), circle,
              lambda m, e, state: states.update({e: state()}), fast=FLOAT32)
    # the same trial resumed compiled continues bit for bit: same kernels, same random stream
    resumed = train_gan(trial, circle, resume_from=states[2], fast=FLOAT32)
    assert [m["d_loss"] for m in resumed] == [m["d_loss"] for m in straight[2:]]
    # an eager trial loads the compiled trial's checkpoint (the optimiser state is torch's own)
    resumed_eagerly = train_gan(trial, circle, resume_from=states[2], fast=EAGER)
    # (rounding differences between the paths grow over 40 iterations: 1e-3, not 1e-4)
    assert_same_losses(resumed_eagerly, straight[2:], rel=1e-3, abs_=1e-5, parzen_rel=1e-2)
    # and a compiled trial continues an eager one
    eager_states: dict[int, dict] = {}
    train_gan(trial.model_copy(update={"epochs": 2}), circle,
              lambda m, e, state: eager_states.update({e: state()}), fast=EAGER)
    assert_same_losses(
        train_gan(trial, circle, resume_from=eager_states[2], fast=FLOAT32), straight[2:],
        rel=1e-3, abs_=1e-5, parzen_rel=1e-2,
    )


def test_compiled_dcgan_updates_batch_norm_statistics_as_eager(digits) -> None:
    trial = TrialConfig(**IMAGES, architecture="dcgan")
    compiled, eager = compiled_and_eager(trial, digits)
    assert_same_losses(compiled, eager, rel=1e-4, abs_=1e-5)  # parzen_ll runs G in eval mode
    gans = {}
    for name, fast in (("compiled", FLOAT32), ("eager", EAGER)):
        gan = GanTrial.create(trial, digits, fast)
        gan.train_epoch()
        gans[name] = gan.generator.state_dict()
    for key, value in gans["eager"].items():
        torch.testing.assert_close(gans["compiled"][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_compiled_sgd_follows_the_momentum_schedule(circle) -> None:
    trial = TrialConfig(**{**TINY, "epochs": 3}, optimizer="sgd", lr_d=0.05, momentum=0.5, momentum_final=0.9)
    compiled, eager = compiled_and_eager(trial, circle)
    assert_same_losses(compiled, eager, rel=1e-4, abs_=1e-5)


def test_optimizer_updates_are_torch_optims() -> None:
    """adam_update and sgd_update, eagerly, against torch.optim on the same gradients."""
    torch.manual_seed(0)
    for name, make in (
        ("adam", lambda ps: torch.optim.Adam(ps, lr=1e-2, betas=(0.3, 0.9))),
        ("sgd", lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.7)),
    ):
        reference = [torch.randn(5, 3, requires_grad=True), torch.randn(3, requires_grad=True)]
        mine = [p.detach().clone() for p in reference]
        ours = make([torch.nn.Parameter(p.clone()) for p in mine])
        opt = make(reference)
        state = optimizer_state(ours)
        update = adam_update if name == "adam" else sgd_update
        for _ in range(4):
            grads = [torch.randn_like(p) for p in mine]
            for p, g in zip(reference, grads, strict=True):
                p.grad = g.clone()
            opt.step()
            update(mine, grads, state, optimizer_hyper(ours, torch.device("cpu")))
        for got, expected in zip(mine, reference, strict=True):
            torch.testing.assert_close(got, expected.detach(), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------- slow suite


@pytest.mark.slow  # a graph each: about 15 s of compiling apiece
@pytest.mark.parametrize(
    "update",
    [
        {"alpha_mode": "bernoulli", "alpha": 0.3},  # weights drawn outside the graph
        {"alpha_mode": "compose", "alpha": 0.3, "k": 2},  # 10 real + 22 fake, two D steps
        {"loss": "wasserstein_gp", "k": 2},  # the penalty: a gradient inside the gradient
        {"loss": "least_squares", "label_smoothing": 0.9, "k": 3},
        {"loss": "minimax", "noise": "uniform"},
        {"loss": "max_likelihood"},
        {"loss": "hinge"},
    ],
    ids=lambda u: ",".join(f"{k}={v}" for k, v in u.items()),
)
def test_compiled_variants_give_the_eager_losses(circle, update: dict) -> None:
    compiled, eager = compiled_and_eager(TrialConfig(**{**TINY, **update}), circle)
    assert_same_losses(compiled, eager, rel=1e-4, abs_=1e-5)


@pytest.mark.slow
def test_compiled_bf16_mlp_gives_the_eager_bf16_losses(digits) -> None:
    # forced on: where the CPU lacks native bf16, autocast emulates it, the same numbers
    bf16 = FastPaths(bf16_autocast=True)
    compiled, eager = compiled_and_eager(TrialConfig(**IMAGES, architecture="mlp"), digits, bf16)
    assert_same_losses(compiled, eager, rel=1e-3, abs_=1e-4)


@pytest.mark.slow
def test_compiled_dropout_is_seeded_and_trains_maxout(digits) -> None:
    """Dropout's masks come from inductor's draws, not the eager stream: the same seed must
    still give the same trial, and the result must stay near the eager one."""
    trial = TrialConfig(**IMAGES, architecture="maxout")
    first, eager = compiled_and_eager(trial, digits)
    second = train_gan(trial, digits, fast=FLOAT32)
    assert [m["d_loss"] for m in first] == [m["d_loss"] for m in second]
    assert_same_losses(first, eager, rel=0.05, abs_=0.02)
