"""An iteration's random draws, defined once and made in one order by every execution.

Per D update j: the real minibatch's indices (with replacement), G's noise, the bernoulli
mode's uniforms (bernoulli only), the gradient penalty's interpolation weights (WGAN-GP
only); then the G update's noise. Before the first iteration, once per trial, the reference
batch of virtual batch norm (g_norm: virtual_batch) comes first from the member's stream. Each member draws from its own stream (a torch.Generator
that starts where torch.manual_seed(seed) and the member's network initialisation left the
global stream), so a member draws the same numbers alone, in a pack of any size and mates,
and after mates leave: a trial gives the same losses whichever execution runs it. Dropout
masks are not draws of this module: the forward passes draw them from the global stream
(run.py reseeds it apart from the members' streams), a compiled or vmapped forward with
other numbers than the eager one, from the same distribution.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gansweep.engine.iteration import Draws, Spec


def noise(kind: str, shape: tuple[int, ...], device: torch.device, stream: torch.Generator | None = None) -> Tensor:
    """G's input noise: 'uniform' U(-1, 1), else standard normal; from `stream`, else the global one."""
    if kind == "uniform":
        return torch.rand(shape, device=device, generator=stream) * 2.0 - 1.0
    return torch.randn(shape, device=device, generator=stream)


def draw(
    spec: Spec, train_data: Tensor, noise_kind: str, noise_dim: int, batch_size: int,
    streams: list[torch.Generator],
) -> Draws:
    """One iteration's draws for the P = len(streams) members, member p's from streams[p].
    train_data (n_train, *shape) on the device. A lone member's tensors are its draws as
    drawn; a pack's are the members' concatenated along the trial dimension."""
    per_member = [_member_draws(spec, train_data, noise_kind, noise_dim, batch_size, s) for s in streams]
    if len(per_member) == 1:
        return per_member[0]
    by_update = [tuple(torch.cat(parts) for parts in zip(*field, strict=True))
                 for field in zip(*(m[:4] for m in per_member), strict=True)]
    return Draws(*by_update, torch.cat([m.g_noise for m in per_member]))


def _member_draws(
    spec: Spec, train_data: Tensor, noise_kind: str, noise_dim: int, batch_size: int, stream: torch.Generator,
) -> Draws:
    """One member's draws, in the order of the module docstring, each with a trial dimension
    of 1: per D update reals (1, n_real, *shape), d_noise (1, n_fake, noise_dim), coins (1, m)
    or (1, 0), mixes (1, n_mix, 1, ...) or (1, 0); then g_noise (1, m, noise_dim)."""
    device = train_data.device
    shape = tuple(train_data.shape[1:])
    empty = torch.empty((1, 0), device=device)
    bernoulli = spec.alpha_mode == "bernoulli"
    reals, d_noise, coins, mixes = [], [], [], []
    for _ in range(spec.k):
        index = torch.randint(0, train_data.shape[0], (1, spec.n_real), device=device, generator=stream)
        reals.append(train_data[index])
        d_noise.append(noise(noise_kind, (1, spec.n_fake, noise_dim), device, stream))
        coins.append(torch.rand((1, batch_size), device=device, generator=stream) if bernoulli else empty)
        if spec.gradient_penalty:
            mixes.append(torch.rand((1, spec.n_mix) + (1,) * len(shape), device=device, generator=stream))
        else:
            mixes.append(empty)
    g_noise = noise(noise_kind, (1, batch_size, noise_dim), device, stream)
    return Draws(tuple(reals), tuple(d_noise), tuple(coins), tuple(mixes), g_noise)


@torch.no_grad()
def draw_reference(generator: torch.nn.Module, noise_kind: str, stream: torch.Generator) -> None:
    """Virtual batch norm's reference batch (layers.VirtualBatchGenerator's buffer), drawn
    once, first of the member's stream, as G's noise; a generator without one is left as it is.
    The buffer is the trial state's (state.py): checkpoints carry it, a resumed trial keeps it."""
    reference = getattr(generator, "reference", None)
    if isinstance(reference, Tensor):
        reference.copy_(noise(noise_kind, tuple(reference.shape), reference.device, stream))


def member_stream(device: torch.device) -> torch.Generator:
    """A stream that starts where the global stream on `device` is now."""
    stream = torch.Generator(device=device)
    stream.set_state(torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state())
    return stream
