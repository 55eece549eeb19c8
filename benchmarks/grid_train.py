"""A grid study trained cell by cell with `gansweep train`, in parallel, with no services:
for a many-core machine without Ray, MLflow or Optuna (a lent GPU box, say), or to check a
sweep's numbers. Every cell of the study's grid (each search field's choices crossed) trains
once per replicate seed (the study's seed + r, as `budget.replicates` does), on the CPU, one
torch thread per process; the table gives each cell's mean and standard error over its
seeds of the objective (and of `objective.second`), per value of the study's scale fields.

    python -m benchmarks.grid_train studies/stabilisers.yaml --jobs 15 --out results/

A sweep trains a configuration's replicates as one pack, whose toy set is drawn with the
first seed; here each seed draws its own set (the same distribution). Results in
benchmarks/README.md and, for studies/stabilisers.yaml, the README.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from gansweep.config.load import load_study
from gansweep.config.schema import Choice, StudyConfig
from gansweep.config.space import scale_fields


def grid_cells(study: StudyConfig) -> list[dict[str, Any]]:
    """Every combination of the search's choices (a grid study has nothing else)."""
    names = list(study.search)
    for name in names:
        if not isinstance(study.search[name], Choice):
            raise SystemExit(f"{name}: only a grid of choices can be trained cell by cell")
    choices = [study.search[name].values for name in names]
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*choices)]


def cell_label(cell: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in cell.items())


def train(study_path: Path, cell: dict[str, Any], seed: int, out: Path, objective: str) -> dict[str, Any]:
    """One cell, one seed, through the CLI; its last evaluation's metrics."""
    folder = out / "cells" / f"{abs(hash(cell_label(cell))) % 10**10}-{seed}"
    sets = [f"--set={k}={v}" for k, v in cell.items()] + [f"--set=seed={seed}", "--set=device=cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "gansweep", "train", str(study_path), *sets, "--output", str(folder)],
        capture_output=True, text=True, env=env, check=False,
    )
    row: dict[str, Any] = {**cell, "seed": seed, "seconds": time.perf_counter() - started}
    metrics = folder / "metrics.csv"
    if done.returncode != 0 or not metrics.exists():
        return {**row, "error": (done.stderr or done.stdout)[-300:]}
    table = pd.read_csv(metrics)
    evaluated = table.dropna(subset=[objective]) if objective in table else table
    return {**row, **evaluated.iloc[-1].to_dict()}


def summary(rows: pd.DataFrame, study: StudyConfig) -> pd.DataFrame:
    """Per cell: each objective's mean and standard error over the seeds."""
    metrics = [study.objective.metric] + ([study.objective.second.metric] if study.objective.second else [])
    cells = list(study.search)
    table = rows.groupby(cells, sort=False)[metrics].agg(["mean", "sem", "count"])
    table.columns = [f"{m}_{stat}" for m, stat in table.columns]
    return table.reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path("grid_train"))
    args = parser.parse_args()
    study = load_study(args.study)
    seeds = [study.trial.seed + r for r in range(study.budget.replicates)]
    runs = [(cell, seed) for cell in grid_cells(study) for seed in seeds]
    print(f"{len(runs)} trainings on {args.jobs} processes; scale fields {scale_fields(study)}", flush=True)
    started = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda r: train(args.study, r[0], r[1], args.out, study.objective.metric), runs))
    elapsed = time.perf_counter() - started
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.drop(columns=[c for c in table.columns if c.startswith("Unnamed")]).to_csv(args.out / "runs.csv", index=False)
    failed = table[table["error"].notna()] if "error" in table else table.iloc[0:0]
    cells = summary(table.drop(failed.index), study)
    cells.to_csv(args.out / "cells.csv", index=False)
    print(cells.to_string(index=False))
    print(f"{len(rows)} trainings in {elapsed:.0f} s ({len(failed)} failed)")
    for _, row in failed.iterrows():
        print("failed:", row.to_dict())


if __name__ == "__main__":
    main()
