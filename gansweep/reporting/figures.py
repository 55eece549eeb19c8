"""The report's figures: which trials and points each one shows (plots.py draws them)."""

from __future__ import annotations

from typing import Any

import numpy as np

from gansweep.config.theory import realised_share
from gansweep.reporting import plots
from gansweep.reporting.view import StudyView, TrialView

FIGURES = {  # file -> caption; the page shows those that could be drawn, in this order
    "losses.png": "Losses of D and G per epoch, one panel per alpha; dashed: the equilibrium values (THEORY.md).",
    "objective_vs_params.png": "The objective against each swept parameter, with standard-error bars.",
    "objective_vs_epoch.png": "The objective per epoch of the best trials.",
    "samples.png": "Samples: trials as rows (best first), epochs as columns.",
    "importances.png": "Optuna's parameter importances (fANOVA).",
}
BEST_CURVES = 5  # trials in the objective-per-epoch figure
LOSS_CURVES_PER_ALPHA = 8  # trials per panel of the loss figure, best first
# Panels of the loss figure: alpha searched over a range gives each trial its own value, and
# 1,000 panels took the report minutes and 3 GiB (constrained layout over every axes).
LOSS_PANELS = 8
MOSAIC_ROWS, MOSAIC_COLS = 12, 6
MIN_COMPLETE_FOR_IMPORTANCE = 4



def curve_label(trial: TrialView) -> str:
    """A trial's name with its equilibrium verdict: a loss gap is never shown without it."""
    verdict = trial.row.get("equilibrium")
    return f"{trial.label}: {verdict}" if verdict else trial.label


def figure_losses(view: StudyView) -> Any:
    curves: list[plots.LossCurves] = []
    per_alpha: dict[float, int] = {}
    for t in view.trials:  # best first
        if t.config is None or not (t.history.get("d_loss") or t.history.get("g_loss")):
            continue
        if t.config.alpha not in per_alpha and len(per_alpha) == LOSS_PANELS:
            continue  # a panel per alpha: a searched range gives every trial its own
        per_alpha[t.config.alpha] = per_alpha.get(t.config.alpha, 0) + 1
        if per_alpha[t.config.alpha] <= LOSS_CURVES_PER_ALPHA:
            share = realised_share(t.config.alpha_mode, t.config.alpha, t.config.batch_size)
            curves.append(plots.LossCurves(curve_label(t), t.config.alpha, t.config.loss, t.config.label_smoothing,
                                           t.history.get("d_loss", []), t.history.get("g_loss", []), share))
    if any(n > LOSS_CURVES_PER_ALPHA for n in per_alpha.values()):
        view.notes.append(f"The loss figure shows the best {LOSS_CURVES_PER_ALPHA} trials of each alpha.")
    alphas = {t.config.alpha for t in view.trials if t.config is not None}
    if len(alphas) > LOSS_PANELS:
        view.notes.append(f"The loss figure shows the {LOSS_PANELS} alphas of the best trials, of {len(alphas)}.")
    return plots.plot_losses_by_alpha(curves) if curves else None


def final_stderr(trial: TrialView) -> float | None:
    """The objective's standard error: over seed replicates where it has them, else Parzen's own."""
    if trial.row.get("objective_stderr") is not None:
        return float(trial.row["objective_stderr"])
    points = trial.history.get("parzen_stderr")
    return points[-1][1] if points else None


def of_group(baselines: dict[str, float], trials: list[TrialView]) -> dict[str, float]:
    """The baselines of the data sets these trials train on (all of them when unknown)."""
    datasets = {t.config.dataset for t in trials if t.config is not None}
    return {name: value for name, value in baselines.items() if not datasets or name in datasets}


def figure_objective_vs_params(view: StudyView, baselines: dict[str, float], trials: list[TrialView] | None = None) -> Any:
    trials = view.trials if trials is None else trials
    points = [
        plots.ObjectivePoint(t.label, t.state, t.row, float(t.row["objective"]), final_stderr(t))
        for t in trials if t.row.get("objective") is not None
    ]
    if not points:
        return None
    axes = [plots.ParamAxis(name, log=_is_log(view, name)) for name in view.search if name not in view.groups]
    return plots.plot_objective_vs_params(points, axes, view.metric, of_group(baselines, trials))


def _is_log(view: StudyView, name: str) -> bool:
    if view.optuna_study is None:
        return False
    for frozen in view.optuna_study.get_trials(deepcopy=False):
        if name in frozen.distributions:
            return bool(getattr(frozen.distributions[name], "log", False))
    return False


def figure_objective_vs_epoch(view: StudyView, baselines: dict[str, float], trials: list[TrialView] | None = None) -> Any:
    trials = view.trials if trials is None else trials
    curves = []
    for trial in trials:  # best first
        points = trial.history.get(view.metric) or []
        if not points:
            continue
        stderr = dict(trial.history.get(view.stderr_metric or "") or [])
        epochs = [e for e, _ in points]
        curves.append(plots.ObjectiveCurve(
            trial.label, epochs, [v for _, v in points],
            [stderr.get(e, 0.0) for e in epochs] if stderr else None,
        ))
        if len(curves) == BEST_CURVES:
            break
    return plots.plot_objective_vs_epoch(curves, view.metric, of_group(baselines, trials)) if curves else None


def grouped_figures(view: StudyView, baselines: dict[str, float]) -> dict[str, Any]:
    """The objective's figures, one of each per value of the scale fields (never one axis for
    objectives of different scales): objective_vs_params.png, or objective_vs_params.<group>.png."""
    drawn = {}
    for label, trials in view.grouped():
        suffix = f".{label.replace(' ', '_')}" if label else ""
        drawn[f"objective_vs_params{suffix}.png"] = figure_objective_vs_params(view, baselines, trials)
        drawn[f"objective_vs_epoch{suffix}.png"] = figure_objective_vs_epoch(view, baselines, trials)
    return drawn


def mosaic_epochs(available: set[int], columns: int = MOSAIC_COLS) -> list[int]:
    """At most `columns` epochs spread evenly from the first to the last."""
    ordered = sorted(available)
    if len(ordered) <= columns:
        return ordered
    return [ordered[i] for i in np.unique(np.round(np.linspace(0, len(ordered) - 1, columns)).astype(int))]


def figure_samples(view: StudyView) -> Any:
    shown = [t for t in view.trials if t.samples][:MOSAIC_ROWS]
    if not shown:
        return None
    if len([t for t in view.trials if t.samples]) > MOSAIC_ROWS:
        view.notes.append(f"The sample mosaic shows the best {MOSAIC_ROWS} trials with pictures.")
    epochs = mosaic_epochs({e for t in shown for e in t.samples})
    return plots.plot_sample_mosaic([(t.label, [t.samples.get(e) for e in epochs]) for t in shown], epochs)
