"""Checkpoints written before the one iteration (format 1) read as format 2.

Format 1 had two layouts: a lone trial's (`generator` / `discriminator` state_dicts and
torch.optim `opt_g` / `opt_d` state) and a pack's (`pack_state`: flat (P, N) Adam rows, in
the named_parameters order the flat rows keep now). Both carry everything format 2 needs, so
an output folder written before this change resumes after it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gansweep.engine.state import Layout


def upgrade(saved: dict[str, Any], layouts: tuple[Layout, Layout]) -> dict[str, Any]:
    """`saved` in format 2; `layouts`: the networks' (generator, discriminator) layouts."""
    if saved.get("format") == 2:
        return saved
    if "generator" in saved and "opt_g" in saved:
        return _lone(saved, layouts)
    if "g" in saved and "slots" in saved:
        return _pack(saved)
    raise ValueError(f"unknown checkpoint layout with keys {sorted(saved)}")


def _lone(saved: dict[str, Any], layouts: tuple[Layout, Layout]) -> dict[str, Any]:
    nets = {}
    for name, module_key, opt_key, layout in (
        ("g", "generator", "opt_g", layouts[0]), ("d", "discriminator", "opt_d", layouts[1]),
    ):
        weights = saved[module_key]
        params = torch.cat([weights[n].flatten() for n in layout.names]).unsqueeze(0)
        states = [saved[opt_key]["state"].get(i, {}) for i in range(len(layout.names))]

        def moment(key: str, states: list[dict[str, Tensor]] = states, params: Tensor = params) -> Tensor:
            if not states or key not in states[0]:
                return torch.zeros_like(params)
            return torch.cat([s[key].flatten() for s in states]).unsqueeze(0)

        adam = any("exp_avg" in s for s in states)
        step = float(states[0]["step"]) if adam and states and "step" in states[0] else 0.0
        nets[name] = {
            "params": params,
            "buffers": [weights[n].unsqueeze(0) for n in layout.buffer_names],
            "moment1": moment("exp_avg") if adam else moment("momentum_buffer"),
            "moment2": moment("exp_avg_sq") if adam else params.new_zeros(1, 0),
            "steps": torch.full((1, 1), step if adam else 0.0),
        }
    return {
        "format": 2, "state": nets, "slots": [0], "n_slots": 1,
        "epochs": [int(saved["epoch"])], "wall_times": [float(saved["wall_time"])],
        "metrics": [saved.get("metrics")], "rng_cpu": saved["rng_cpu"],
        **({"rng_cuda": saved["rng_cuda"]} if "rng_cuda" in saved else {}),
    }


def _pack(saved: dict[str, Any]) -> dict[str, Any]:
    nets = {}
    for name in ("g", "d"):
        part = saved[name]
        rows = part["params"].shape[0]
        nets[name] = {
            "params": part["params"], "buffers": [],
            "moment1": part["exp_avg"], "moment2": part["exp_avg_sq"],
            "steps": torch.full((rows, 1), float(part["step"])),
        }
    n = len(saved["epochs"])
    return {
        "format": 2, "state": nets, "slots": saved["slots"], "n_slots": saved["n_slots"],
        "epochs": saved["epochs"], "wall_times": saved["wall_times"], "metrics": [None] * n,
        "rng_cpu": saved["rng_cpu"], **({"rng_cuda": saved["rng_cuda"]} if "rng_cuda" in saved else {}),
    }
