"""gansweep.engine.models: every architecture on every data shape it supports."""

from __future__ import annotations

from typing import get_args

import pytest
import torch
from torch import nn

from gansweep.engine.models import (
    ACTIVATIONS,
    ARCHITECTURES,
    OUTPUTS,
    Maxout,
    build_models,
    dcgan_levels,
)
from gansweep.config.names import Activation, GeneratorOutput
from gansweep.config.schema import TrialConfig

# (architecture, dataset, data shape): dcgan on image shapes only. Shapes are passed directly,
# so no image set is loaded.
CASES = [
    ("mlp", "circle", (2,)),
    ("mlp", "digits", (1, 8, 8)),
    ("mlp", "cifar10", (3, 32, 32)),
    ("maxout", "ring8", (2,)),
    ("maxout", "digits", (1, 8, 8)),
    ("maxout", "mnist", (1, 28, 28)),
    ("dcgan", "digits", (1, 8, 8)),
    ("dcgan", "mnist", (1, 28, 28)),
    ("dcgan", "cifar10", (3, 32, 32)),
]
BATCH = 8


def _trial(architecture: str, dataset: str, **extra: object) -> TrialConfig:
    small = {"dcgan_width": 16, "maxout_units": 32, "maxout_pieces": 3, "noise_dim": 16}
    return TrialConfig(architecture=architecture, dataset=dataset, **{**small, **extra})


def test_registries_hold_exactly_the_study_names() -> None:
    assert all(ARCHITECTURES.get(name).code is not None for name in ARCHITECTURES)
    assert set(ACTIVATIONS) == set(get_args(Activation))
    assert set(OUTPUTS) == set(get_args(GeneratorOutput)) - {"auto"}


def test_architectures_cover_every_case() -> None:
    assert {arch for arch, _, _ in CASES} == set(ARCHITECTURES)


@pytest.mark.parametrize(("architecture", "dataset", "shape"), CASES)
def test_shapes_ranges_and_gradients(
    architecture: str, dataset: str, shape: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    trial = _trial(architecture, dataset)
    generator, discriminator = build_models(trial, shape)
    fake = generator(torch.randn(BATCH, trial.noise_dim))
    assert fake.shape == (BATCH, *shape)
    if trial.generator_output == "tanh":
        assert -1.0 <= fake.min().item() and fake.max().item() <= 1.0
    elif trial.generator_output == "sigmoid":
        assert 0.0 <= fake.min().item() and fake.max().item() <= 1.0
    logits = discriminator(fake)
    assert logits.shape == (BATCH,)
    assert discriminator(torch.rand(BATCH, *shape)).shape == (BATCH,)

    logits.mean().backward()
    for net in (generator, discriminator):
        for name, param in net.named_parameters():
            assert param.grad is not None, name
            assert torch.isfinite(param.grad).all(), name
            assert param.grad.abs().sum().item() > 0, name


@pytest.mark.parametrize("output", ["tanh", "sigmoid", "identity"])
def test_generator_output_is_honoured(output: str) -> None:
    torch.manual_seed(0)
    trial = _trial("mlp", "digits", g_output=output)
    generator, _ = build_models(trial, (1, 8, 8))
    assert isinstance(generator[-2], OUTPUTS[output])  # the layer before the reshape
    fake = generator(10 * torch.randn(64, trial.noise_dim))
    low, high = {"tanh": (-1.0, 1.0), "sigmoid": (0.0, 1.0)}.get(output, (-1e9, 1e9))
    assert low <= fake.min().item() and fake.max().item() <= high
    if output == "identity":  # unbounded: large noise leaves [-1, 1]
        assert fake.abs().max().item() > 1.0


def test_auto_output_per_architecture() -> None:
    assert _trial("maxout", "mnist").generator_output == "sigmoid"
    assert _trial("dcgan", "mnist").generator_output == "tanh"
    assert _trial("mlp", "circle").generator_output == "identity"


def test_mlp_widths_activation_and_dropout() -> None:
    trial = _trial(
        "mlp", "circle", g_hidden=(7, 9), d_hidden=(5,), g_activation="gelu", d_dropout=0.3
    )
    generator, discriminator = build_models(trial, (2,))
    g_widths = [m.out_features for m in generator if isinstance(m, nn.Linear)]
    assert g_widths == [7, 9, 2]
    assert sum(isinstance(m, nn.GELU) for m in generator) == 2
    dropouts = [m for m in discriminator if isinstance(m, nn.Dropout)]
    assert [d.p for d in dropouts] == [0.3]


def test_maxout_layer_takes_the_max_over_pieces() -> None:
    torch.manual_seed(0)
    layer = Maxout(6, units=4, pieces=3)
    assert layer.linear.out_features == 12
    x = torch.randn(5, 6)
    expected = layer.linear(x).view(5, 4, 3).max(dim=-1).values
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("pieces", [1, 2, 5])
def test_maxout_discriminator_honours_units_and_pieces(pieces: int) -> None:
    trial = _trial("maxout", "mnist", maxout_units=24, maxout_pieces=pieces)
    generator, discriminator = build_models(trial, (1, 28, 28))
    layers = [m for m in discriminator.modules() if isinstance(m, Maxout)]
    assert [(m.units, m.pieces) for m in layers] == [(24, pieces), (24, pieces)]
    assert [m.linear.in_features for m in layers] == [784, 24]
    assert [d.p for d in discriminator if isinstance(d, nn.Dropout)] == [0.2, 0.5, 0.5]
    # Goodfellow's generator: 1200 -> 1200 ReLU whatever g_hidden says
    assert [m.out_features for m in generator if isinstance(m, nn.Linear)] == [1200, 1200, 784]


@pytest.mark.parametrize(
    ("shape", "expected"), [((1, 28, 28), (2, 7)), ((3, 32, 32), (3, 4)), ((1, 8, 8), (1, 4))]
)
def test_dcgan_levels(shape: tuple[int, ...], expected: tuple[int, int]) -> None:
    assert dcgan_levels(shape) == expected


@pytest.mark.parametrize("shape", [(2,), (1, 7, 7), (1, 6, 6), (1, 28, 32)])
def test_dcgan_rejects_unsupported_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="dcgan"):
        dcgan_levels(shape)


def test_dcgan_follows_the_radford_guidelines() -> None:
    torch.manual_seed(0)
    trial = _trial("dcgan", "cifar10", dcgan_width=32)
    generator, discriminator = build_models(trial, (3, 32, 32))
    g, d = list(generator), list(discriminator.modules())
    # one fully connected layer each: G's projection and D's logit
    assert sum(isinstance(m, nn.Linear) for m in generator.modules()) == 1
    assert sum(isinstance(m, nn.Linear) for m in d) == 1
    # no batch norm on G's output layer nor on D's input layer
    assert isinstance(g[-2], nn.ConvTranspose2d) and isinstance(g[-1], OUTPUTS["tanh"])
    assert isinstance(discriminator[0], nn.Conv2d) and isinstance(discriminator[1], nn.LeakyReLU)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in g) == 3  # projection + 2 hidden
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d) == 2
    assert all(m.negative_slope == pytest.approx(0.2) for m in d if isinstance(m, nn.LeakyReLU))
    convs = [m for m in d if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in convs] == [32, 64, 128]  # width doubles as the side halves
    assert all(m.kernel_size == (4, 4) and m.stride == (2, 2) for m in convs)
    weights = torch.cat([m.weight.flatten() for m in convs])
    assert weights.mean().item() == pytest.approx(0.0, abs=0.002)
    assert weights.std().item() == pytest.approx(0.02, rel=0.05)
    scales = torch.cat([m.weight for m in g if isinstance(m, nn.BatchNorm2d)])
    assert scales.mean().item() == pytest.approx(1.0, abs=0.01)


def test_dcgan_channels_are_capped() -> None:
    from gansweep.engine.models import _dcgan_channels

    assert [_dcgan_channels(8, level) for level in range(1, 7)] == [8, 16, 32, 64, 64, 64]


def test_unknown_architecture_lists_valid_names() -> None:
    trial = TrialConfig.model_construct(architecture="resnet", dataset="mnist")
    with pytest.raises(ValueError, match="unknown architecture 'resnet'.*mlp, maxout, dcgan"):
        build_models(trial, (1, 28, 28))
