"""A gansweep plugin: a loss, a metric, an architecture and a regulariser, each in a few lines.

A study names this file (`plugins: [my_gan.py]`, relative to the study file) and then uses
the names below in `trial`, `search` and `objective` exactly like the built-ins: see
examples/my_gan.yaml and the README's "Extending gansweep".
"""

import math

from torch import nn

from gansweep.extend import architecture, loss, metric, regulariser


@loss("my_least_squares")
class MyLeastSquares:
    """Least squares with D's costs halved: targets 1 (real) and 0 (generated), G aims at 1.
    Beside the built-in least_squares under Adam it trains the same networks (Adam's step does
    not change with the scale of a gradient): only the logged d_loss halves."""

    def d_real(self, logits):  # per sample: [batch] -> [batch]
        return 0.5 * (logits - 1) ** 2

    def d_fake(self, logits):
        return 0.5 * logits**2

    def g(self, logits):
        return 0.5 * (logits - 1) ** 2

    # Optional: the losses at p_g = p_data with the optimal D, logged as d_loss_star and
    # g_loss_star beside the trial's own. D minimises alpha (s d_real + (1 - s) d_fake) +
    # (1 - alpha) d_fake pointwise: D* = alpha s.
    def d_star(self, alpha, s):
        d = alpha * s
        return alpha * (s * 0.5 * (d - 1) ** 2 + (1 - s) * 0.5 * d**2) + (1 - alpha) * 0.5 * d**2

    def g_star(self, alpha, s):
        return 0.5 * (alpha * s - 1) ** 2


@metric("radius_error", direction="minimize")
def radius_error(generated, real):
    """|mean distance from the origin of the samples - that of the data| (the circle's radius)."""
    return float((generated.flatten(1).norm(dim=1).mean() - real.flatten(1).norm(dim=1).mean()).abs())


@architecture("my_mlp")
def my_mlp(data_shape, noise_dim, trial):
    """Two hidden layers of trial.g_hidden[0] / d_hidden[0] units, ELU in G, leaky ReLU in D."""
    size = math.prod(data_shape)
    g_width, d_width = trial.g_hidden[0], trial.d_hidden[0]
    generator = nn.Sequential(
        nn.Linear(noise_dim, g_width), nn.ELU(),
        nn.Linear(g_width, g_width), nn.ELU(),
        nn.Linear(g_width, size), nn.Unflatten(1, tuple(data_shape)),
    )
    discriminator = nn.Sequential(
        nn.Flatten(),
        nn.Linear(size, d_width), nn.LeakyReLU(0.2),
        nn.Linear(d_width, d_width), nn.LeakyReLU(0.2),
        nn.Linear(d_width, 1), nn.Flatten(0),  # (B, 1) -> (B,) logits
    )
    return generator, discriminator


@regulariser("my_r1", player="d")
def my_r1(real, d_grad):
    """R1 (Mescheder et al. 2018) over gamma: 1/2 E ||grad D(x)||^2 at real x; the study's
    weight is gamma. Inputs by parameter name, the trial axis first: real (P, n, *shape)."""
    return 0.5 * d_grad(real).flatten(2).pow(2).sum(2).mean(1)  # one value per trial: (P,)

