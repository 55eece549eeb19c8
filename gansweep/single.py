"""`gansweep train` and `gansweep baseline`: one trial or one score, no services."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gansweep.errors import TrialDiverged, TrialOutOfMemory
from gansweep.files import write_csv_atomically
from gansweep.config.names import quality_metrics
from gansweep.config.schema import ObjectiveConfig, TrialConfig

# The summary's rows: the losses beside their equilibrium values, then every registered
# metric (the built-ins' and the study's plugins') the last epoch has, Parzen's details after it.
LOSS_ROWS = ("d_loss", "d_loss_star", "g_loss", "g_loss_star", "d_real", "d_fake")
PARZEN_ROWS = ("parzen_stderr", "parzen_sigma", "modes_covered", "high_quality_share")
LAST_ROWS = ("d_logit_std", "blind_discriminator", "wall_time")


def summary_metrics() -> tuple[str, ...]:
    return LOSS_ROWS + ("parzen_ll",) + PARZEN_ROWS + quality_metrics() + LAST_ROWS


def write_metrics(rows: list[dict[str, float]], path: Path) -> None:
    """The whole per-epoch table, epoch first, rewritten each time (files.write_csv_atomically)."""
    import pandas as pd

    table = pd.DataFrame(rows)
    first = [c for c in ("epoch",) if c in table.columns]
    write_csv_atomically(table[first + [c for c in table.columns if c not in first]], path)


def epoch_summary(metrics: dict[str, float]) -> str:
    text = f"d {metrics['d_loss']:.3f} g {metrics['g_loss']:.3f}"
    if "parzen_ll" in metrics:
        text += f" parzen {metrics['parzen_ll']:.2f}"
    return text


BEST_GENERATOR = "best_generator.pt"  # objective.select: best: the best evaluation's generator


def keep_best_generator(path: Path, trial: TrialConfig, metric: str, epoch: int, value: float,
                        generator: dict[str, Any]) -> None:
    """objective.select: best in `gansweep train`: the best evaluation's generator in
    output/best_generator.pt, as the sweep's worker keeps best.pt; never a half-written file
    under the final name."""
    import torch

    kept = {"generator": generator, "trial": trial.model_dump(mode="json"), "epoch": epoch, "value": value,
            "metric": metric}
    partial = path.with_suffix(".partial")
    torch.save(kept, partial)
    partial.replace(path)


def train_one(trial: TrialConfig, output: Path, objective: ObjectiveConfig | None = None) -> int:
    """One trial to its last epoch; with objective.select: best also its best evaluation's
    generator (best_generator.pt)."""
    from gansweep.engine.data import load_dataset
    from gansweep.engine.run import resolve_device
    from gansweep.engine.train import BestTracker, train_gan

    console = Console()
    device = resolve_device(trial.device)
    data = load_dataset(
        trial.dataset, data_dir=trial.data_dir, seed=trial.seed, device=device, n_train=trial.n_train
    )
    output.mkdir(parents=True, exist_ok=True)
    (output / "trial.yaml").write_text(yaml.safe_dump(trial.model_dump(mode="json"), sort_keys=False))
    rows: list[dict[str, float]] = []
    progress = Progress(
        TextColumn("[bold]epoch"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        disable=not console.is_terminal,  # CI logs stay readable: only the summary is printed
    )

    best = None
    if objective is not None and objective.select == "best":
        best = BestTracker(objective.metric, objective.direction, (objective.metric,))
    (output / BEST_GENERATOR).unlink(missing_ok=True)  # an earlier train's into this folder

    def report(metrics: dict[str, float], epoch: int, state: Callable[[], dict[str, Any]]) -> None:
        if best is not None and best.note(metrics, epoch, lambda: state()["generator"]):
            keep_best_generator(output / BEST_GENERATOR, trial, best.metric, epoch, best.best.value,  # type: ignore[union-attr]
                                best.best.generator)  # type: ignore[union-attr]
        rows.append(metrics)
        write_metrics(rows, output / "metrics.csv")
        progress.update(task, completed=epoch, description=epoch_summary(metrics))

    with progress:
        task = progress.add_task("", total=trial.epochs)
        try:
            train_gan(trial, data, report, sample_dir=output / "samples")
        except (TrialDiverged, TrialOutOfMemory) as err:
            console.print(f"[red]trial failed: {err}[/red]")
            console.print(f"metrics so far: {output / 'metrics.csv'}")
            return 1
    print_summary(console, trial, rows[-1], output)
    if best is not None and best.best is not None:
        console.print(f"best evaluation: epoch {best.best.epoch}, {best.metric} {best.best.value:.4f}; "
                      f"its generator: {output / BEST_GENERATOR}")
    return 0


VERDICT_LINES = {
    "settled": "equilibrium: settled (the losses sit at their equilibrium values, D cannot tell real from "
               "generated, and neither can a fresh classifier: c2st_accuracy)",
    "blind": "[yellow]equilibrium: blind (the losses sit at their equilibrium values only because D cannot "
             "tell real from generated, its AUC near 0.5 or its output constant, while a fresh classifier "
             "tells the samples from the data: c2st_accuracy)[/yellow]",
    "unsettled": "equilibrium: unsettled (the losses are away from their equilibrium values, or D still tells "
                 "real from generated)",
    "n/a": "equilibrium: n/a (theory gives this loss no equilibrium values)",
    "no verdict": "equilibrium: no verdict (equilibrium_check: false)",
}


def verdict_line(verdict: str) -> str:
    return VERDICT_LINES.get(verdict, f"equilibrium: {verdict}")


def print_summary(console: Console, trial: TrialConfig, last: dict[str, float], output: Path) -> None:
    table = Table(title=f"{trial.dataset} / {trial.architecture} / {trial.loss}, alpha={trial.alpha}, k={trial.k}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in summary_metrics():
        if name in last:
            table.add_row(name, f"{last[name]:.4f}")
    console.print(table)
    if "features" in last:
        console.print(f"quality metrics in the feature space {last['features']}")
    if "equilibrium" in last:
        console.print(verdict_line(str(last["equilibrium"])))
    console.print(f"metrics: {output / 'metrics.csv'}   samples: {output / 'samples'}")


def print_baseline(
    dataset: str, n_samples: int, data_dir: str | None, device: str, seed: int, features: str = "domain"
) -> int:
    from gansweep.engine.data import load_dataset
    from gansweep.errors import ConfigError
    from gansweep.engine.parzen import data_as_model_baseline
    from gansweep.config.names import IMAGE_DATASETS, TOY_DATASETS
    from gansweep.engine.run import resolve_device

    if dataset not in TOY_DATASETS + IMAGE_DATASETS:
        from pathlib import Path

        from gansweep.config import datafile

        if not Path(dataset).exists():
            raise ConfigError(
                f"baseline: unknown dataset {dataset!r}: not a file or folder, nor a built-in "
                f"set ({', '.join(TOY_DATASETS + IMAGE_DATASETS)})"
            )
        try:  # a researcher's own file: checked as a study's would be
            datafile.inspect(dataset)
        except datafile.DataFileProblem as err:
            raise ConfigError(f"baseline: {err}") from None
        dataset = str(Path(dataset).resolve())
    if n_samples < 1:
        raise ConfigError(f"baseline: --samples must be at least 1, got {n_samples}")
    data = load_dataset(dataset, data_dir=data_dir, seed=seed, device=resolve_device(device))
    result = data_as_model_baseline(
        data.train, data.valid[:1_000], data.test, data.default_sigmas, n_samples=n_samples, seed=seed
    )
    print(
        f"{dataset}: data-as-model Parzen log-likelihood {result.mean:.2f} +- {result.stderr:.2f} "
        f"(sigma {result.sigma:.4g}, {result.n_samples} training examples as kernel centres, "
        f"{result.n_test} test examples)"
    )
    print_quality_baseline(dataset, data, n_samples, data_dir, features)
    return 0


def print_quality_baseline(dataset: str, data: object, n_samples: int, data_dir: str | None, features: str) -> None:
    """The quality metrics of n_samples training examples as a model's samples: what a
    perfect generator scores with these sizes (engine.scoring.data_as_model_scores). d_auc
    is not applicable: the data as its own model has no discriminator to score."""
    from gansweep.engine.scoring import FEATURE_METRICS, FEATURES, N_GENERATED, N_REAL, data_as_model_scores

    trial = TrialConfig(dataset=dataset, data_dir=data_dir, eval_samples=n_samples, features=features)  # type: ignore[arg-type]
    scores = data_as_model_scores(trial, data, FEATURE_METRICS)  # type: ignore[arg-type]
    shown = ", ".join(f"{name} {scores[name]:.4g}" + quality_detail(name, scores) for name in FEATURE_METRICS)
    print(f"{dataset}: data as its own model, in {scores[FEATURES]} ({scores[N_GENERATED]} training examples against "
          f"{scores[N_REAL]} test examples): {shown}; d_auc n/a (no discriminator: the data is the model)")


def quality_detail(name: str, scores: dict) -> str:
    """What a baseline's score was computed with, where the metric has settings of its own."""
    if name == "kid":
        return f" +- {scores['kid_std']:.2g} ({scores['kid_subsets']} subsets of {scores['kid_subset_size']})"
    if name == "recall":
        return f" (k = {scores['pr_k']})"
    return ""
