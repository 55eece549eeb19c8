"""Every fast path of the step loop against the plain path: the same losses for the same seed.

train.FastPaths lists them; benchmarks/train_bench.py measures what they buy. The float32
paths only change the rounding, so a short trial must give the plain path's losses to about
float32 precision; bf16 autocast changes the precision of the products, so it is held to a
looser tolerance, and to bitwise determinism like every path.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from conftest import LOGGED, assert_same_losses
from gansweep.study import TrialConfig
from gansweep.train import DirectAdamStep, FastPaths, GanTrial, native_bf16, train_gan

TINY = dict(
    dataset="circle", g_hidden=(16,), d_hidden=(16,), noise_dim=2, batch_size=32, epochs=2,
    steps_per_epoch=20, eval_every=2, eval_samples=200, eval_valid=100, eval_test=200, device="cpu",
)
IMAGES = dict(
    dataset="digits", g_hidden=(32,), d_hidden=(32,), noise_dim=8, batch_size=16, epochs=1,
    steps_per_epoch=10, eval_samples=100, eval_valid=50, eval_test=50, device="cpu",
    dcgan_width=8, maxout_units=16, maxout_pieces=2,
)
FLOAT32 = FastPaths(bf16_autocast=False)  # every float32 fast path, on CPUs with bf16 or not
ONE_AT_A_TIME = {
    name: dataclasses.replace(FastPaths.plain(), **flags)
    for name, flags in {
        "fused_optimizer": {"fused_optimizer": True},
        "direct_adam": {"fused_optimizer": True, "direct_adam": True},
        "joint_discriminator": {"joint_discriminator": True},
        "direct_grads": {"direct_grads": True},
        "cached_weights": {"cached_weights": True},
        "stacked_sums": {"stacked_sums": True},
    }.items()
}


@pytest.mark.parametrize("path", [*ONE_AT_A_TIME, "all"])
@pytest.mark.parametrize("mode", ["compose", "weight", "bernoulli"])
def test_each_fast_path_gives_the_plain_losses(circle, path: str, mode: str) -> None:
    trial = TrialConfig(**TINY, alpha_mode=mode, alpha=0.3)
    fast = FLOAT32 if path == "all" else ONE_AT_A_TIME[path]
    plain = train_gan(trial, circle, fast=FastPaths.plain())
    assert_same_losses(train_gan(trial, circle, fast=fast), plain, rel=1e-4, abs_=1e-5)


@pytest.mark.parametrize(
    "update",
    [
        {"optimizer": "sgd", "momentum": 0.5, "momentum_final": 0.7},  # fused SGD, no direct step
        {"loss": "wasserstein_gp", "k": 2},  # gradient penalty through autograd.grad
        {"loss": "least_squares", "label_smoothing": 0.9, "k": 3},
        {"loss": "minimax", "noise": "uniform", "alpha_mode": "weight"},
    ],
)
def test_fast_paths_agree_with_plain_across_the_game(circle, update: dict) -> None:
    trial = TrialConfig(**{**TINY, **update})
    plain = train_gan(trial, circle, fast=FastPaths.plain())
    assert_same_losses(train_gan(trial, circle, fast=FLOAT32), plain, rel=1e-4, abs_=1e-5)


@pytest.mark.parametrize("architecture", ["mlp", "maxout", "dcgan"])
def test_float32_fast_paths_on_images(digits, architecture: str) -> None:
    """maxout and mlp-with-dropout draw their dropout masks for one joint batch instead of
    two, so only the architectures without dropout are compared number for number."""
    trial = TrialConfig(**IMAGES, architecture=architecture)
    fast = train_gan(trial, digits, fast=FLOAT32)
    again = train_gan(trial, digits, fast=FLOAT32)
    for name in (*LOGGED, "parzen_ll"):
        assert [m[name] for m in fast] == [m[name] for m in again]
    if architecture != "maxout":
        plain = train_gan(trial, digits, fast=FastPaths.plain())
        assert_same_losses(fast, plain, rel=1e-4, abs_=1e-5)


@pytest.fixture(scope="module")
def images16(digits):
    """16 x 16 images: DCGAN's D halves twice and so has a batch-norm layer (8 x 8: none)."""
    gen = torch.Generator().manual_seed(0)
    make = lambda n: torch.rand(n, 1, 16, 16, generator=gen)  # noqa: E731
    return dataclasses.replace(digits, train=make(256), valid=make(50), test=make(50))


def test_joint_discriminator_only_without_batch_norm(digits, images16) -> None:
    mlp = GanTrial.create(TrialConfig(**IMAGES, architecture="mlp"), digits)
    dcgan = GanTrial.create(TrialConfig(**IMAGES, architecture="dcgan"), images16)
    assert mlp.joint_d
    assert not dcgan.joint_d  # batch norm would pool the real and fake batches' statistics


def test_fast_paths_with_batch_norm_in_d(images16) -> None:
    trial = TrialConfig(**IMAGES, architecture="dcgan")
    plain = train_gan(trial, images16, fast=FastPaths.plain())
    assert_same_losses(train_gan(trial, images16, fast=FLOAT32), plain, rel=1e-4, abs_=1e-5)


def test_bf16_autocast_stays_close_and_deterministic(digits) -> None:
    trial = TrialConfig(**IMAGES, architecture="mlp")
    bf16 = FastPaths(bf16_autocast=True)
    first = train_gan(trial, digits, fast=bf16)
    again = train_gan(trial, digits, fast=bf16)
    for name in (*LOGGED, "parzen_ll"):
        assert [m[name] for m in first] == [m[name] for m in again]
    plain = train_gan(trial, digits, fast=FastPaths.plain())
    # bf16 keeps 8 bits of mantissa: about 2 decimal digits of each product
    assert_same_losses(first, plain, rel=0.05, abs_=0.02)


def test_channels_last_gives_the_same_dcgan(images16) -> None:
    trial = TrialConfig(**IMAGES, architecture="dcgan")
    standard = train_gan(trial, images16, fast=dataclasses.replace(FLOAT32, channels_last=False))
    nhwc = FastPaths(bf16_autocast=False, channels_last=True)
    gan = GanTrial.create(trial, images16, nhwc)
    assert gan.train_data.is_contiguous(memory_format=torch.channels_last)
    assert_same_losses(train_gan(trial, images16, fast=nhwc), standard, rel=1e-4, abs_=1e-5)


def test_automatic_choices(circle, digits) -> None:
    toy = GanTrial.create(TrialConfig(**TINY), circle)
    assert not toy.fast.bf16_autocast  # small products: bf16 buys nothing
    assert not toy.fast.compile  # off unless the trial asks: it measured slower on CPU
    image = GanTrial.create(TrialConfig(**IMAGES, architecture="dcgan"), digits)
    assert image.fast.bf16_autocast == native_bf16(torch.device("cpu"))
    assert not image.fast.channels_last  # CUDA only
    assert image.fast.fused_optimizer and image.fast.direct_adam
    assert isinstance(image.step_d, DirectAdamStep)
    plain = GanTrial.create(TrialConfig(**TINY), circle, FastPaths.plain())
    assert plain.fast == FastPaths.plain()
    assert not isinstance(plain.step_d, DirectAdamStep)


def test_direct_adam_step_is_the_fused_step_exactly() -> None:
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [torch.optim.Adam(net.parameters(), lr=1e-2, betas=(0.5, 0.9), fused=True) for net in nets]
    direct = DirectAdamStep(opts[1])
    x = torch.randn(16, 3)
    for step in range(6):
        for net, opt, do_step in zip(nets, opts, (opts[0].step, direct), strict=True):
            opt.zero_grad(set_to_none=True)
            net(x).square().mean().backward()
            do_step()
        if step == 3:  # a resume replaces the optimiser state: the lists must follow it
            saved = opts[1].state_dict()
            opts[1].load_state_dict(saved)
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert opts[0].state_dict()["state"][0]["step"] == opts[1].state_dict()["state"][0]["step"]


def test_direct_adam_step_covers_only_what_it_implements() -> None:
    net = nn.Linear(2, 2)
    assert DirectAdamStep.covers(torch.optim.Adam(net.parameters(), fused=True))
    assert not DirectAdamStep.covers(torch.optim.Adam(net.parameters()))
    assert not DirectAdamStep.covers(torch.optim.Adam(net.parameters(), fused=True, amsgrad=True))
    assert not DirectAdamStep.covers(torch.optim.AdamW(net.parameters(), fused=True))
    assert not DirectAdamStep.covers(torch.optim.SGD(net.parameters(), lr=0.1, fused=True))


def test_resume_with_fast_paths_continues_the_same_trial(circle) -> None:
    trial = TrialConfig(**{**TINY, "epochs": 4})
    straight = train_gan(trial, circle)
    states = {}
    train_gan(trial.model_copy(update={"epochs": 2}), circle, lambda m, e, state: states.update({e: state()}))
    resumed = train_gan(trial, circle, resume_from=states[2])
    for name in LOGGED:
        assert [m[name] for m in resumed] == [m[name] for m in straight[2:]]
