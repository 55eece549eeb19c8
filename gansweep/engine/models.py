"""Generator and discriminator builders: gansweep.extend.ARCHITECTURES maps a name to (G, D).

Contract shared by every architecture, so that losses and training never look inside:
  G: (B, noise_dim) -> (B, *data_shape), squashed by `trial.generator_output`;
  D: (B, *data_shape) -> (B,) raw logits. No sigmoid: losses use the stable logit forms.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from gansweep.config.schema import TrialConfig
from gansweep.config.names import ARCHITECTURES  # the registry, with the built-ins declared
from gansweep.extend import architecture
from gansweep.engine.layers import (
    Discriminator,
    MinibatchDiscrimination,
    VirtualBatchGenerator,
    VirtualBatchNorm,
)


# Hidden-layer activations, by the names study.py's `Activation` allows.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),  # 0.2: the DCGAN slope
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
}

# The generator's last squashing, by TrialConfig.generator_output: tanh for data in [-1, 1],
# sigmoid for data in [0, 1] (Goodfellow's MNIST net), identity for the unbounded 2D toys.
OUTPUTS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}

# Goodfellow et al. 2014's MNIST generator: 1200 -> 1200 ReLU units.
MAXOUT_G_HIDDEN = (1200, 1200)
MAXOUT_INPUT_DROPOUT = 0.2
MAXOUT_HIDDEN_DROPOUT = 0.5
DCGAN_MAX_WIDTH_FACTOR = 8  # channels stop doubling at 8 x dcgan_width (DCGAN's 64 -> 512)
DCGAN_MIN_SIDE = 4  # stop halving before the side would drop below this
DCGAN_INIT_STD = 0.02  # Radford et al.: weights from N(0, 0.02)


def build_models(trial: TrialConfig, data_shape: tuple[int, ...]) -> tuple[nn.Module, nn.Module]:
    """(generator, discriminator) for `trial.architecture` (a built-in or a plugin's) on
    examples of `data_shape`. Seed torch before calling for reproducible initial weights."""
    entry = ARCHITECTURES.get(trial.architecture)
    generator, discriminator = entry.code(tuple(data_shape), trial.noise_dim, trial)
    if not entry.built_in:
        check_contract(entry.origin, trial, tuple(data_shape), generator, discriminator)
    return generator, discriminator


@torch.no_grad()
def check_contract(origin: str, trial: TrialConfig, data_shape: tuple[int, ...], generator: nn.Module,
                   discriminator: nn.Module) -> None:
    """A plugin's networks keep the contract above, checked on two rows of zeros in eval mode
    (no random draw, no batch-norm statistic moved): an error names the plugin file."""
    name = f"architecture {trial.architecture!r} ({origin})"
    for module, role in ((generator, "generator"), (discriminator, "discriminator")):
        if not isinstance(module, nn.Module):
            raise ValueError(f"{name} must return torch modules (generator, discriminator), got a {type(module).__name__} as {role}")
    modes = generator.training, discriminator.training
    generator.eval(), discriminator.eval()
    try:
        samples = generator(torch.zeros(2, trial.noise_dim))
        if tuple(samples.shape) != (2, *data_shape):
            raise ValueError(f"{name}: G maps (B, {trial.noise_dim}) noise to (B, *{data_shape}), got {tuple(samples.shape)} for B = 2")
        logits = discriminator(torch.zeros(2, *data_shape))
        if tuple(logits.shape) != (2,):
            raise ValueError(f"{name}: D maps (B, *{data_shape}) to (B,) logits, got {tuple(logits.shape)} for B = 2")
    finally:
        generator.train(modes[0]), discriminator.train(modes[1])


def _output(trial: TrialConfig) -> nn.Module:
    name = trial.generator_output
    if name not in OUTPUTS:
        raise ValueError(f"unknown generator output {name!r}; valid names: {', '.join(OUTPUTS)}")
    return OUTPUTS[name]()


def _logit_head(in_features: int) -> nn.Sequential:
    """Linear -> 1, then (B, 1) -> (B,)."""
    return nn.Sequential(nn.Linear(in_features, 1), nn.Flatten(start_dim=0))


def _head(trial: TrialConfig, in_features: int) -> list[nn.Module]:
    """D's head on (B, in_features): Salimans et al.'s minibatch layer first where
    trial.minibatch_discrimination asks for kernels (layers.py), then the logit."""
    kernels = trial.minibatch_discrimination
    if not kernels:
        return [_logit_head(in_features)]
    layer = MinibatchDiscrimination(in_features, kernels, trial.minibatch_dim, trial.batch_size)
    return [layer, _logit_head(in_features + kernels)]


# The normalisation after each hidden layer of an mlp or maxout G, by trial.g_norm. Virtual
# batch norm's reference batch has batch_size examples (Salimans et al. draw one minibatch).
G_NORMS: dict[str, Callable[[int, TrialConfig], list[nn.Module]]] = {
    "none": lambda width, trial: [],
    "batch": lambda width, trial: [nn.BatchNorm1d(width)],
    "virtual_batch": lambda width, trial: [VirtualBatchNorm(width, trial.batch_size)],
}
# dcgan's G has batch norm already (Radford et al.): virtual_batch replaces it; `batch` is
# refused by config.rules, as it would change nothing.
DCGAN_G_NORMS: dict[str, Callable[[int, TrialConfig], nn.Module]] = {
    "none": lambda channels, trial: nn.BatchNorm2d(channels),
    "batch": lambda channels, trial: nn.BatchNorm2d(channels),
    "virtual_batch": lambda channels, trial: VirtualBatchNorm(channels, trial.batch_size),
}


def _generator(trial: TrialConfig, layers: list[nn.Module]) -> nn.Module:
    """G's Sequential; with virtual batch norm, one that holds the reference noise."""
    if trial.g_norm == "virtual_batch":
        return VirtualBatchGenerator(*layers, reference_size=trial.batch_size, noise_dim=trial.noise_dim)
    return nn.Sequential(*layers)


def _g_hidden(trial: TrialConfig, width: int, hidden: int, activation: nn.Module) -> list[nn.Module]:
    """A hidden layer of an mlp or maxout G: linear (no bias before a norm, whose shift
    cancels it), trial.g_norm's normalisation, the activation."""
    norm = G_NORMS[trial.g_norm](hidden, trial)
    return [nn.Linear(width, hidden, bias=not norm), *norm, activation]


# ---------------------------------------------------------------------------- mlp


def build_mlp(trial: TrialConfig, data_shape: tuple[int, ...]) -> tuple[nn.Module, nn.Module]:
    """Fully connected G and D with the trial's widths, activations and D dropout."""
    n_out = math.prod(data_shape)
    g_layers: list[nn.Module] = []
    width = trial.noise_dim
    for hidden in trial.g_hidden:
        g_layers += _g_hidden(trial, width, hidden, ACTIVATIONS[trial.g_activation]())
        width = hidden
    g_layers += [nn.Linear(width, n_out), _output(trial), nn.Unflatten(1, data_shape)]

    d_layers: list[nn.Module] = [nn.Flatten()]  # (B, *shape) -> (B, n_out)
    width, ends = n_out, []
    for hidden in trial.d_hidden:
        d_layers += [nn.Linear(width, hidden), ACTIVATIONS[trial.d_activation]()]
        if trial.d_dropout > 0:
            d_layers.append(nn.Dropout(trial.d_dropout))
        width = hidden
        ends.append(len(d_layers))
    d_layers += _head(trial, width)
    return _generator(trial, g_layers), _discriminator(d_layers, ends)


# ---------------------------------------------------------------------------- maxout


class Maxout(nn.Module):
    """`units` outputs, each the max of `pieces` linear functions of the input
    (Goodfellow et al. 2013)."""

    def __init__(self, in_features: int, units: int, pieces: int) -> None:
        super().__init__()
        self.units = units
        self.pieces = pieces
        self.linear = nn.Linear(in_features, units * pieces)

    def forward(self, x: Tensor) -> Tensor:
        z = self.linear(x).unflatten(-1, (self.units, self.pieces))  # (B, units, pieces)
        return z.amax(dim=-1)  # (B, units)

    def extra_repr(self) -> str:
        return f"units={self.units}, pieces={self.pieces}"


def build_maxout(trial: TrialConfig, data_shape: tuple[int, ...]) -> tuple[nn.Module, nn.Module]:
    """Goodfellow et al. 2014's MNIST nets: G noise -> 1200 ReLU -> 1200 ReLU -> data (sigmoid
    under g_output=auto); D two maxout layers with dropout. Widths are the paper's, not g_hidden;
    D's units and pieces come from maxout_units and maxout_pieces."""
    n_out = math.prod(data_shape)
    g_layers: list[nn.Module] = []
    width = trial.noise_dim
    for hidden in MAXOUT_G_HIDDEN:
        g_layers += _g_hidden(trial, width, hidden, nn.ReLU())
        width = hidden
    g_layers += [nn.Linear(width, n_out), _output(trial), nn.Unflatten(1, data_shape)]

    units, pieces = trial.maxout_units, trial.maxout_pieces
    d_layers = [
        nn.Flatten(),  # (B, n_out)
        nn.Dropout(MAXOUT_INPUT_DROPOUT),
        Maxout(n_out, units, pieces),  # (B, units)
        nn.Dropout(MAXOUT_HIDDEN_DROPOUT),
        Maxout(units, units, pieces),
        nn.Dropout(MAXOUT_HIDDEN_DROPOUT),
        *_head(trial, units),  # (B,)
    ]
    return _generator(trial, g_layers), _discriminator(d_layers, [4, 6])


# ---------------------------------------------------------------------------- dcgan


def dcgan_levels(data_shape: tuple[int, ...]) -> tuple[int, int]:
    """(number of stride-2 steps, side at the smallest resolution): halve the side while it
    stays even and at least DCGAN_MIN_SIDE. 28 -> (2, 7), 32 -> (3, 4), 8 -> (1, 4)."""
    if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
        raise ValueError(f"dcgan needs square images (C, H, H), got data shape {data_shape}")
    side, levels = data_shape[1], 0
    while side % 2 == 0 and side // 2 >= DCGAN_MIN_SIDE:
        side //= 2
        levels += 1
    if levels == 0:
        raise ValueError(
            f"dcgan needs an image side that halves at least once to >= {DCGAN_MIN_SIDE}, "
            f"got data shape {data_shape}"
        )
    return levels, side


def _dcgan_channels(width: int, level: int) -> int:
    """Channels at `level` halvings below full resolution (level >= 1): `width` at the first
    level, doubling per level, capped. Full resolution (level 0) holds the image itself."""
    return width * min(2 ** (level - 1), DCGAN_MAX_WIDTH_FACTOR)


def _dcgan_init(module: nn.Module) -> None:
    """Radford et al.: weights N(0, 0.02), batch-norm scales N(1, 0.02), zero biases."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, DCGAN_INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, VirtualBatchNorm)):
        nn.init.normal_(module.weight, 1.0, DCGAN_INIT_STD)
        nn.init.zeros_(module.bias)


def build_dcgan(trial: TrialConfig, data_shape: tuple[int, ...]) -> tuple[nn.Module, nn.Module]:
    """Radford et al. 2015's guidelines: transposed convolutions up in G, strided convolutions
    down in D (no pooling), batch norm in G except its output and in D except its input, ReLU
    in G, LeakyReLU(0.2) in D, no hidden fully connected layers besides G's projection of the
    noise and D's final linear logit. Kernel 4, stride 2, padding 1 doubles or halves a side."""
    channels, side = data_shape[0], data_shape[1]
    levels, base = dcgan_levels(data_shape)
    width = trial.dcgan_width
    top = _dcgan_channels(width, levels)

    # Convolutions followed by batch norm carry no bias: BN's shift would cancel it.
    g_layers: list[nn.Module] = [
        nn.Linear(trial.noise_dim, top * base * base, bias=False),  # (B, top * base^2)
        nn.Unflatten(1, (top, base, base)),  # (B, top, base, base)
        DCGAN_G_NORMS[trial.g_norm](top, trial),
        nn.ReLU(),
    ]
    for level in range(levels, 1, -1):  # up to level 1, i.e. side / 2
        c_in, c_out = _dcgan_channels(width, level), _dcgan_channels(width, level - 1)
        g_layers += [
            nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),  # side doubles
            DCGAN_G_NORMS[trial.g_norm](c_out, trial),
            nn.ReLU(),
        ]
    g_layers += [
        nn.ConvTranspose2d(_dcgan_channels(width, 1), channels, 4, stride=2, padding=1),
        _output(trial),  # (B, C, side, side)
    ]

    d_layers: list[nn.Module] = [
        # (B, C, side, side) -> (B, width, side / 2, side / 2)
        nn.Conv2d(channels, _dcgan_channels(width, 1), 4, stride=2, padding=1),
        nn.LeakyReLU(0.2),
    ]
    ends = [len(d_layers)]
    for level in range(2, levels + 1):
        c_in, c_out = _dcgan_channels(width, level - 1), _dcgan_channels(width, level)
        d_layers += [
            nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False),  # side halves
            nn.BatchNorm2d(c_out),
            nn.LeakyReLU(0.2),
        ]
        ends.append(len(d_layers))
    d_layers += [nn.Flatten(), *_head(trial, top * base * base)]  # (B,)

    generator, discriminator = _generator(trial, g_layers), _discriminator(d_layers, ends)
    generator.apply(_dcgan_init)
    discriminator.apply(_dcgan_init)
    assert base * 2**levels == side  # invariant of dcgan_levels
    return generator, discriminator


def _discriminator(layers: list[nn.Module], hidden_ends: list[int]) -> nn.Sequential:
    """D as a Sequential that knows where each hidden layer's block ends (its activation and
    dropout included): feature matching's features are the output of D[:end], which stops
    before the minibatch layer of the head."""
    discriminator = Discriminator(*layers)
    discriminator.hidden_ends = tuple(hidden_ends)
    return discriminator


def feature_end(discriminator: nn.Module, layer: int | None) -> int:
    """The Sequential index where D's hidden layer `layer` (Python indexing; None: the last)
    ends: D[:feature_end] computes that layer's activations."""
    ends = discriminator.hidden_ends
    index = -1 if layer is None else layer
    if not -len(ends) <= index < len(ends):
        raise ValueError(f"feature_layer={layer} but D has {len(ends)} hidden layers (valid: {-len(ends)} to {len(ends) - 1})")
    return ends[index]


# The built-ins, registered as a plugin's architecture is: (data_shape, noise_dim, trial).
architecture("mlp")(lambda data_shape, noise_dim, trial: build_mlp(trial, data_shape))
architecture("maxout")(lambda data_shape, noise_dim, trial: build_maxout(trial, data_shape))
architecture("dcgan")(lambda data_shape, noise_dim, trial: build_dcgan(trial, data_shape))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

