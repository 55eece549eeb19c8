"""Sequential networks run for P trials at once as batched matrix products, without vmap.

A pack's networks are one structure with P rows of weights. torch.func's vmap runs each layer
through its batching rules, a fixed cost per op that dominates for the small layers of 2D
toys. An nn.Sequential of Linear (and maxout) layers with element-wise layers between them
needs none of it: each Linear is one torch.baddbmm over (P, B, in) inputs and (P, out, in)
weights, and element-wise layers (activations, dropout) apply to the (P, B, ...) tensor as it
is. `stacked_forward` returns that forward where a network is built only of such layers, and
None otherwise (DCGAN's convolutions and batch norm: the caller uses vmap). The layers are the
module's own, so the network is defined once (models.py); only the calling differs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from gansweep.engine.models import Maxout
from gansweep.engine.state import Layout

# Layers applied element-wise: the same call on (P, B, ...) as on (B, ...); dropout draws
# one mask per element, so each trial gets its own.
ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.Tanh, nn.GELU, nn.Sigmoid, nn.Identity, nn.Dropout)

Layer = Callable[[dict[str, Tensor], Tensor], Tensor]


def _linear(prefix: str) -> Layer:
    def apply(weights: dict[str, Tensor], x: Tensor) -> Tensor:  # x (P, B, in)
        weight, bias = weights[f"{prefix}weight"], weights[f"{prefix}bias"]  # (P, out, in), (P, out)
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))  # (P, B, out)

    return apply


def _maxout(prefix: str, module: Maxout) -> Layer:
    linear = _linear(f"{prefix}linear.")

    def apply(weights: dict[str, Tensor], x: Tensor) -> Tensor:
        return linear(weights, x).unflatten(-1, (module.units, module.pieces)).amax(dim=-1)

    return apply


def _flatten(module: nn.Flatten) -> Layer:
    start = module.start_dim + 1 if module.start_dim >= 0 else module.start_dim
    end = module.end_dim + 1 if module.end_dim >= 0 else module.end_dim
    return lambda weights, x: x.flatten(start, end)


def _unflatten(module: nn.Unflatten) -> Layer:
    dim = module.dim + 1 if module.dim >= 0 else module.dim
    return lambda weights, x: x.unflatten(dim, module.unflattened_size)


def _layers(module: nn.Module, prefix: str) -> list[Layer] | None:
    """The module's layers as stacked calls, or None where one has no stacked form."""
    if isinstance(module, nn.Sequential):
        layers: list[Layer] = []
        for name, child in module.named_children():
            inner = _layers(child, f"{prefix}{name}.")
            if inner is None:
                return None
            layers += inner
        return layers
    if type(module) is nn.Linear and module.bias is not None:
        return [_linear(prefix)]
    if isinstance(module, Maxout):
        return [_maxout(prefix, module)]
    if isinstance(module, nn.Flatten):
        return [_flatten(module)]
    if isinstance(module, nn.Unflatten):
        return [_unflatten(module)]
    if isinstance(module, ELEMENTWISE):
        return [lambda weights, x, module=module: module(x)]
    return None


def stacked_forward(module: nn.Module, layout: Layout) -> Callable[[Tensor, tuple[Tensor, ...], Tensor], Tensor] | None:
    """(flat params (P, N), buffers, x (P, B, ...)) -> (P, B, ...), or None (use vmap)."""
    if layout.buffer_names:
        return None
    layers = _layers(module, "")
    if layers is None:
        return None

    def forward(params: Tensor, buffers: tuple[Tensor, ...], x: Tensor) -> Tensor:
        del buffers  # none: checked above
        weights = layout.unflatten(params)
        for layer in layers:
            x = layer(weights, x)
        return x

    return forward
