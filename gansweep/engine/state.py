"""A unit's training state (iteration.TrainState) built from its members' networks, moved
between those networks and the flat rows the iteration updates, selected, and checkpointed.

A network's parameters live in one flat (P, N) row per trial, in the order of the module's
named_parameters(): the optimiser's update is a few ops on one tensor per network, whatever
the number of layers, and a pack's P trials are P rows. Buffers (batch-norm statistics) keep
their shapes, stacked (P, *shape). A lone trial is a unit of P = 1 with the same layout, so a
checkpoint is the same whichever execution wrote it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gansweep.engine.iteration import SECOND_MOMENT, NetState, TrainState


@dataclass(frozen=True)
class Layout:
    """Where a network's named parameters sit in its flat row, and its buffers' names."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    buffer_names: tuple[str, ...]

    @classmethod
    def of(cls, module: nn.Module) -> Layout:
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        return cls(
            names=tuple(n for n, _ in named),
            shapes=tuple(tuple(p.shape) for _, p in named),
            buffer_names=tuple(n for n, _ in module.named_buffers()),
        )

    @property
    def sizes(self) -> list[int]:
        return [math.prod(shape) for shape in self.shapes]

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """(..., N) -> name -> (..., *shape) views."""
        parts = flat.split(self.sizes, dim=-1)
        return {n: p.unflatten(-1, s) for n, p, s in zip(self.names, parts, self.shapes, strict=True)}


def new_net_state(modules: list[nn.Module], layout: Layout, optimizer: str, averaging: bool = False) -> NetState:
    """The P networks' weights as rows, fresh optimiser moments (an optimiser's first step);
    `averaging`: the running mean of historical averaging, the initial weights (t = 1)."""
    rows = [torch.cat([dict(m.named_parameters())[n].detach().flatten() for n in layout.names]) for m in modules]
    params = torch.stack(rows)  # (P, N)
    buffers = tuple(
        torch.stack([dict(m.named_buffers())[n].detach().clone() for m in modules]) for n in layout.buffer_names
    )
    width = params.shape[1] if SECOND_MOMENT[optimizer] else 0
    return NetState(
        params=params,
        buffers=buffers,
        moment1=torch.zeros_like(params),
        moment2=params.new_zeros(params.shape[0], width),
        steps=params.new_zeros(params.shape[0], 1),
        average=params.clone() if averaging else params.new_zeros(params.shape[0], 0),
    )


@torch.no_grad()
def load_row(module: nn.Module, layout: Layout, net: NetState, row: int) -> nn.Module:
    """Trial `row`'s weights and buffers copied into `module` (for evaluation, a checkpoint's
    generator.pt); the module's own tensors when they are the state's (eager aliases)."""
    weights = layout.unflatten(net.params[row])
    params = dict(module.named_parameters())
    for name in layout.names:
        if params[name].data_ptr() != weights[name].data_ptr():
            params[name].copy_(weights[name])
    buffers = dict(module.named_buffers())
    for name, stacked in zip(layout.buffer_names, net.buffers, strict=True):
        if buffers[name].data_ptr() != stacked[row].data_ptr():
            buffers[name].copy_(stacked[row])
    return module


def alias_module(module: nn.Module, layout: Layout, net: NetState) -> None:
    """Make `module`'s parameters and buffers views of row 0 of `net` (P = 1): calling the
    module then uses the state, and updating the state in place updates the module."""
    weights = layout.unflatten(net.params[0])
    for name, param in module.named_parameters():
        param.data = weights[name]
    for name, stacked in zip(layout.buffer_names, net.buffers, strict=True):
        owner, _, leaf = name.rpartition(".")
        module.get_submodule(owner)._buffers[leaf] = stacked[0]


def select_rows(state: TrainState, rows: Tensor) -> TrainState:
    """Only these trials' rows, in this order (rows (P',) long on the state's device)."""

    def net_rows(net: NetState) -> NetState:
        return NetState(
            params=net.params[rows],
            buffers=tuple(b[rows] for b in net.buffers),
            moment1=net.moment1[rows],
            moment2=net.moment2[rows],
            steps=net.steps[rows],
            average=None if net.average is None else net.average[rows],
        )

    return TrainState(net_rows(state.g), net_rows(state.d))


def state_dict(state: TrainState) -> dict[str, Any]:
    """The state as plain tensors on the CPU, for torch.save."""
    return {
        name: {
            "params": net.params.detach().cpu(),
            "buffers": [b.detach().cpu() for b in net.buffers],
            "moment1": net.moment1.detach().cpu(),
            "moment2": net.moment2.detach().cpu(),
            "steps": net.steps.detach().cpu(),
            **({"average": net.average.detach().cpu()} if net.average is not None and net.average.numel() else {}),
        }
        for name, net in (("g", state.g), ("d", state.d))
    }


def state_from_dict(saved: dict[str, Any], rows: list[int], device: torch.device) -> TrainState:
    """The rows `rows` of a saved state_dict, on `device`."""
    index = torch.tensor(rows, dtype=torch.long)

    def net_of(part: dict[str, Any]) -> NetState:
        def take(t: Tensor) -> Tensor:
            return t[index].to(device)

        return NetState(
            params=take(part["params"]),
            buffers=tuple(take(b) for b in part["buffers"]),
            moment1=take(part["moment1"]),
            moment2=take(part["moment2"]),
            steps=take(part["steps"]),
            # a checkpoint without it: historical averaging's mean restarts at the weights
            average=take(part["average"]) if "average" in part else None,
        )

    return TrainState(net_of(saved["g"]), net_of(saved["d"]))
