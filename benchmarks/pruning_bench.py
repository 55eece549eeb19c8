"""Pruning: what Optuna's pruner saves on studies/search.yaml, and what it costs in the best value.

    python -m benchmarks.pruning_bench              # seeds 0 and 1, four pruners (~15 min)
    python -m benchmarks.pruning_bench --small      # seed 0, 10 trials each (~4 min)
    python -m benchmarks.pruning_bench --pruners none median
    python -m benchmarks.pruning_bench --seeds 0 1 2 --pruners percentile:startup_trials=5 \
        percentile:warmup_epochs=1 successive_halving:min_resource=2

The shipped study (TPE over every axis on the line, 8 epochs of 250 steps, pruning after 3
start-up trials and 2 warm-up epochs) is run by the real CLI, `gansweep run`, once per
sampler seed and pruner, with `--set pruner.name=...`: `none` is the baseline (every trial
runs all its epochs); median, percentile (keep the top 25%) and successive_halving
(min_resource 1, reduction factor 3) keep the study's other pruner settings, and a variant
`name:key=value,...` overrides some of them.
The same sampler seed gives the same first trials; after the first prune the two TPE
histories differ, as they would for a user. Reported from each results.csv: trials, total
epochs trained (the compute), best objective (Parzen log-likelihood on the line, nats), the
sweep's wall time, and the pruned run's ratios to the baseline.

The Parzen objective of one trial moves by a few tenths of a nat from one evaluation to the
next on this set; a best value within that of the baseline's is "the same best".
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "studies" / "search.yaml"


@dataclass(frozen=True)
class SweepOutcome:
    pruner: str
    seed: int
    trials: int
    pruned: int
    epochs: int
    best: float
    wall_s: float


PRUNERS = ("none", "median", "percentile", "successive_halving")


def pruner_sets(variant: str) -> list[str]:
    """`--set` arguments for a variant: a pruner name, optionally `name:key=value,key=value`.

    >>> pruner_sets("percentile:startup_trials=3,warmup_epochs=1")
    ['--set', 'pruner.name=percentile', '--set', 'pruner.startup_trials=3', '--set', 'pruner.warmup_epochs=1']
    """
    name, _, settings = variant.partition(":")
    pairs = [f"name={name}", *filter(None, settings.split(","))]
    return [arg for pair in pairs for arg in ("--set", f"pruner.{pair}")]


def run_sweep(folder: Path, pruner: str, seed: int, trials: int) -> SweepOutcome:
    """One `gansweep run` of the shipped study in its own folder (own Optuna and MLflow)."""
    label = pruner
    out = folder / f"{label.replace(':', '_').replace(',', '_').replace('=', '')}-{seed}"
    out.mkdir(parents=True)
    sets = ["--set", f"sampler.seed={seed}", "--set", f"budget.trials={trials}", *pruner_sets(pruner)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}", "GANSWEEP_OFFLINE": "1"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "gansweep", "run", str(STUDY), "--output", str(out / "run"), *sets],
        cwd=out, env=env, capture_output=True, text=True,
    )
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"gansweep run failed ({label}, seed {seed}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    table = pd.read_csv(out / "run" / "results.csv")
    return SweepOutcome(
        pruner=label, seed=seed, trials=len(table), pruned=int((table["state"] == "PRUNED").sum()),
        epochs=int(table["epochs"].sum()), best=float(table["objective"].max()), wall_s=wall,
    )


def markdown(outcomes: list[SweepOutcome]) -> str:
    rows = [
        "| seed | pruner | trials | pruned | epochs trained | best parzen_ll | wall s | epochs vs none | best - none's best |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    baseline = {o.seed: o for o in outcomes if o.pruner == "none"}
    for o in outcomes:
        base = baseline[o.seed]
        rows.append(
            f"| {o.seed} | {o.pruner} | {o.trials} | {o.pruned} | {o.epochs} | {o.best:.3f} | "
            f"{o.wall_s:.0f} | {o.epochs / base.epochs:.2f} | {o.best - base.best:+.3f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="seed 0 only, 10 trials per sweep")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--pruners", nargs="+", default=list(PRUNERS),
                        help="pruner names, or variants such as percentile:startup_trials=3,warmup_epochs=1; "
                        "none (the baseline) is always run")
    args = parser.parse_args()
    seeds = args.seeds or ([0] if args.small else [0, 1])
    trials = 10 if args.small else 20
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"study {STUDY.relative_to(ROOT)}, {trials} trials per sweep; {time.strftime('%Y-%m-%d')}")
    outcomes: list[SweepOutcome] = []
    with tempfile.TemporaryDirectory(prefix="gansweep-prune-bench-") as folder:
        for seed in seeds:
            for pruner in dict.fromkeys(["none", *args.pruners]):
                outcome = run_sweep(Path(folder), pruner, seed, trials)
                print(f"  {outcome}", flush=True)
                outcomes.append(outcome)
    print(markdown(outcomes))


if __name__ == "__main__":
    main()
