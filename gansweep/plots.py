"""Figures shared by the MLflow tracker and the report (matplotlib's Figure API, no backend)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from gansweep.study import TrialConfig


def plot_losses_vs_theory(history: dict[str, list[tuple[int, float]]], trial: TrialConfig, path: Path) -> Path:
    """D and G losses per epoch with their equilibrium values dashed (seed 003's figure 5)."""
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.add_subplot()
    for name, colour in (("d_loss", "tab:blue"), ("g_loss", "tab:orange")):
        points = history.get(name) or []
        if points:
            epochs, values = zip(*points, strict=True)
            axes.plot(epochs, values, color=colour, label=name)
        star = history.get(f"{name}_star") or []
        if star:
            axes.axhline(star[-1][1], color=colour, linestyle="--", label=f"{name} equilibrium")
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss (nats)")
    axes.set_title(f"{trial.dataset}, {trial.loss}, alpha={trial.alpha}, k={trial.k}")
    axes.legend(fontsize="small")
    figure.savefig(path, dpi=100)
    return path
