"""An iteration's random draws, defined once and made in one order by every execution.

Per D update j: the real minibatch's indices (with replacement), G's noise, the bernoulli
mode's uniforms (bernoulli only), the gradient penalty's interpolation weights (WGAN-GP
only); then the G update's noise. For P trials each draw is one call for all of them, from
the global stream (torch's default generator on the data's device), so a pack of one draws
exactly what a lone trial draws. A pack draws for all its `n_slots` starting members and
hands each member its own slot's draws, so a member's draws do not change when mates leave.
Dropout masks are not draws of this module: the forward passes draw them (a compiled or
vmapped forward with other numbers than the eager one, from the same distribution).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gansweep.engine.iteration import Draws, Spec


def noise(kind: str, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """G's input noise: 'uniform' U(-1, 1), else standard normal."""
    if kind == "uniform":
        return torch.rand(shape, device=device) * 2.0 - 1.0
    return torch.randn(shape, device=device)


def draw(
    spec: Spec, train_data: Tensor, noise_kind: str, noise_dim: int, batch_size: int,
    n_slots: int, slots: Tensor | None = None,
) -> Draws:
    """One iteration's draws for `n_slots` trials; `slots` (P,) picks the members' rows when
    fewer than n_slots still train. train_data (n_train, *shape) on the device."""
    device = train_data.device
    shape = tuple(train_data.shape[1:])
    empty = torch.empty(n_slots, 0, device=device)
    reals, d_noise, coins, mixes = [], [], [], []
    for _ in range(spec.k):
        index = torch.randint(0, train_data.shape[0], (n_slots * spec.n_real,), device=device)
        reals.append(train_data[index].view(n_slots, spec.n_real, *shape))
        d_noise.append(noise(noise_kind, (n_slots, spec.n_fake, noise_dim), device))
        coins.append(torch.rand(n_slots, batch_size, device=device) if spec.alpha_mode == "bernoulli" else empty)
        if spec.gradient_penalty:
            mixes.append(torch.rand((n_slots, spec.n_mix) + (1,) * len(shape), device=device))
        else:
            mixes.append(empty)
    g_noise = noise(noise_kind, (n_slots, batch_size, noise_dim), device)
    draws = Draws(_stack(reals), _stack(d_noise), _stack(coins), _stack(mixes), g_noise)
    if slots is None:
        return draws
    return Draws(*(t.index_select(1, slots) for t in draws[:4]), g_noise.index_select(0, slots))


def _stack(parts: list[Tensor]) -> Tensor:
    return parts[0].unsqueeze(0) if len(parts) == 1 else torch.stack(parts)
