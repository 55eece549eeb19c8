"""Sweep overhead: how much of a real `gansweep run` is spent training.

    python -m benchmarks.sweep_bench            # 20 trials, three ways (~4 min)
    python -m benchmarks.sweep_bench --small    # 8 trials, gansweep as it is only (~1 min)
    python -m benchmarks.sweep_bench --study studies/alpha.yaml   # and a shipped study
    python -m benchmarks.sweep_bench --no-compare --steps 8000    # trials 8 times longer
    python -m benchmarks.sweep_bench --pack 16                    # 64 trials, packed vs one by one

A generated study (benchmarks/sweep_bench.py: STUDY) of 20 short trials on the 2D circle,
a 5 x 4 grid over alpha and lr_d, each trial 2 epochs x 1,000 iterations (about 2 to 4 s of
training on one core) and one Parzen evaluation at the end, is run by the real CLI,
`gansweep run`, in a subprocess, with 2 trials at a time on 1 cpu each (the study's budget),
MLflow on a SQLite file in the output folder.

Share of the machine spent training = sum over trials of `wall_time` (results.csv: the
seconds inside train_epoch, evaluation excluded) / (the sweep's wall-clock time x 2 trial
slots). The ideal is 100%: trials back to back on both cores with nothing else. The
remainder is split using Tune's per-trial records (result.json):
- in the trial, not training: time_total_s of the trainable minus its epochs: dataset load,
  model set-up, Parzen evaluation, checkpoint writes;
- start-up: from the command's start to the first trial's start (Python imports, Ray's
  start, MLflow and Optuna set-up);
- between trials: free slots while the sweep runs (actor start, scheduling, the driver's
  callbacks: Optuna tell/ask, MLflow logging, checkpoint records);
- wind-down: from the last trial's end to the command's exit (results.csv, MLflow, Ray's
  shutdown).
Tune's timestamps have one-second resolution, so the start-up/wind-down split is good to
about a second; the total is exact.

Compared, in the same run (benchmarks/_launch.py turns one saving off at a time; sweep.py
is untouched):
- gansweep as it is: Tune's actor reuse (a worker process runs trial after trial), and Ray
  started in a thread while the driver imports and sets up Optuna and MLflow, and stopped in
  one while it writes the results and the report (gansweep/service/raystart.py);
- Ray in turn: Ray started only once the set-up is done and stopped after the report;
- actor reuse off: every trial starts a fresh Ray actor, which imports torch and loads the
  data again.
`--study studies/alpha.yaml` adds a shipped study as it is, for trials of the size the
studies run. `--fractional` adds the same 20 trials 4 at a time on half a cpu each (the same
2 cores, one torch thread per trial): Ray's fractional resources; compare the trials per
hour (each trial's training time stretches when two share a core, so its share of the
machine is not comparable).

`--pack N` times packs in `gansweep run` (budget.pack_size, the engine's packed execution): 64 trials
(an 8 x 8 grid, alpha_mode weight so that they can be packed) one trial per worker as usual,
then N trials per worker in one vectorised step, on the same 2 slots. Compare trials per
hour. A member's wall_time is its pack's: training counts each pack once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
SLOTS = 2  # max_concurrent x cpus_per_trial = the machine's 2 cores

STUDY = """\
name: sweep-bench
description: 20 short trials on the circle; timing the sweep machinery (benchmarks/sweep_bench.py).
trial:
  dataset: circle
  g_hidden: [64, 64]
  d_hidden: [64, 64]
  noise_dim: 2
  batch_size: 64
  epochs: 2
  steps_per_epoch: {steps}
  lr_d: 0.001
  alpha_mode: {alpha_mode}
  eval_every: 2
  eval_samples: 1000
  eval_valid: 500
  eval_test: 1000
  device: cpu
search:
  alpha: {alphas}
  lr_d: {lrs}
sampler: {{name: grid, seed: 0}}
budget: {{max_concurrent: {concurrent}, cpus_per_trial: {cpus}, pack_size: {pack}}}
"""
FULL = dict(concurrent=2, cpus=1, steps=1000, alphas=[0.2, 0.35, 0.5, 0.65, 0.8], lrs=[3.0e-4, 1.0e-3, 2.0e-3, 3.0e-3],
            alpha_mode="compose", pack=1)
SMALL = dict(FULL, alphas=[0.2, 0.4, 0.6, 0.8], lrs=[1.0e-3, 2.0e-3])
# 64 packable trials: the grid of --pack
PACKABLE = dict(FULL, alphas=[0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
                lrs=[3.0e-4, 5.0e-4, 7.0e-4, 1.0e-3, 1.5e-3, 2.0e-3, 2.5e-3, 3.0e-3], alpha_mode="weight")


@dataclass
class SweepTiming:
    label: str
    trials: int
    wall: float  # the command, start to exit
    training: float  # sum of results.csv wall_time
    in_trial: float  # sum of Tune's time_total_s per trial
    startup: float
    winddown: float
    states: dict[str, int]
    best: float  # the best objective (parzen_ll): the packed sweep must reach what the other does

    @property
    def capacity(self) -> float:
        return self.wall * SLOTS

    @property
    def share(self) -> float:
        return self.training / self.capacity

    @property
    def between(self) -> float:
        return self.capacity - self.in_trial - SLOTS * (self.startup + self.winddown)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1", GANSWEEP_OFFLINE="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def tune_records(output: Path) -> list[list[dict]]:
    """Every trial's result.json rows (Tune writes one JSON object per report)."""
    records = []
    paths = [*(output / "tune").glob("*/unit_*/result.json")]
    for path in sorted(paths):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            records.append(rows)
    return records


def training_seconds(results: pd.DataFrame) -> float:
    """Seconds the workers spent training: a pack's members share one wall_time (their pack's
    epochs), so a pack counts once."""
    if "tune_trial_id" not in results:
        return float(results["wall_time"].sum())
    return float(results.groupby("tune_trial_id")["wall_time"].max().sum())


def run_sweep(
    label: str, study_text: str, *, reuse_actors: bool = True, overlap_ray: bool = True,
    keep: Path | None = None,
) -> SweepTiming:
    folder = Path(tempfile.mkdtemp(prefix="gansweep-sweep-bench-"))
    try:
        study = folder / "study.yaml"
        study.write_text(study_text)
        output = folder / "out"
        command = [
            sys.executable, "-m", "benchmarks._launch", "run", str(study), "--output", str(output),
            "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}",
        ]
        env = clean_env(
            GANSWEEP_BENCH_REUSE_ACTORS="1" if reuse_actors else "0",
            GANSWEEP_BENCH_OVERLAP_RAY="1" if overlap_ray else "0",
        )
        started = time.time()
        done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=1200)
        ended = time.time()
        if done.returncode != 0:
            raise RuntimeError(f"gansweep run failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        results = pd.read_csv(output / "results.csv")
        records = tune_records(output)
        starts = [rows[0]["timestamp"] - rows[0]["time_this_iter_s"] for rows in records]
        ends = [rows[-1]["timestamp"] for rows in records]
        timing = SweepTiming(
            label=label,
            trials=len(results),
            wall=ended - started,
            training=training_seconds(results),
            in_trial=float(sum(rows[-1]["time_total_s"] for rows in records)),
            startup=max(0.0, min(starts) - started),
            winddown=max(0.0, ended - max(ends)),
            states=results["state"].value_counts().to_dict(),
            best=float(results["objective"].max()),
        )
        if keep is not None:
            shutil.copytree(output, keep / label.replace(" ", "_"), dirs_exist_ok=True)
        return timing
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def table(timings: list[SweepTiming]) -> str:
    lines = [
        "| sweep | trials | wall s | trials/hour | training s (sum) | share training | in trials, not training | start-up | between trials | wind-down | per trial overhead s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in timings:
        cap = t.capacity
        not_training = t.in_trial - t.training
        per_trial = (cap - t.training - SLOTS * (t.startup + t.winddown)) / max(1, t.trials) / SLOTS
        lines.append(
            f"| {t.label} | {t.trials} | {t.wall:.1f} | {3600 * t.trials / t.wall:.0f} | {t.training:.1f} | **{t.share:.0%}** | "
            f"{not_training / cap:.0%} ({not_training:.1f} s) | "
            f"{SLOTS * t.startup / cap:.0%} ({t.startup:.0f} s) | "
            f"{t.between / cap:.0%} ({t.between:.1f} slot-s) | "
            f"{SLOTS * t.winddown / cap:.0%} ({t.winddown:.0f} s) | {per_trial:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[SweepTiming]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="8 trials, gansweep as it is only")
    parser.add_argument("--no-compare", action="store_true", help="gansweep as it is only")
    parser.add_argument("--study", type=Path, action="append", default=[],
                        help="also time this study file (e.g. studies/alpha.yaml), as it is")
    parser.add_argument("--fractional", action="store_true",
                        help="also 4 trials at a time on half a cpu each (the same 2 cores)")
    parser.add_argument("--steps", type=int, default=None,
                        help="iterations per epoch (default 1,000: about 1 s an epoch); longer "
                        "trials show where the fixed costs stop mattering")
    parser.add_argument("--pack", type=int, nargs="+", default=None, metavar="N",
                        help="instead: 64 packable trials one per worker, then N per worker in one step")
    parser.add_argument("--keep", type=Path, help="copy each sweep's output folder here")
    args = parser.parse_args(argv)
    spec = SMALL if args.small else FULL
    if args.pack is not None:
        spec = PACKABLE
    if args.steps is not None:
        spec = {**spec, "steps": args.steps}
    if args.pack is not None:
        return compare_packs(spec, args.pack, args.keep)
    study_text = STUDY.format(**spec)
    runs = [("gansweep (actor reuse, Ray started and stopped in the background)", {})]
    if not (args.small or args.no_compare):
        runs.append(("Ray started and stopped in turn", {"overlap_ray": False}))
        runs.append(("actor reuse off", {"reuse_actors": False}))
    print(f"{len(spec['alphas']) * len(spec['lrs'])} trials x 2 epochs x {spec['steps']} iterations, "
          f"{SLOTS} at a time; load average at start {os.getloadavg()[0]:.1f}; "
          f"{time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    timings = [run_sweep(label, study_text, keep=args.keep, **options) for label, options in runs]
    if args.fractional:
        shared = STUDY.format(**{**spec, "concurrent": 4, "cpus": 0.5})
        timings.append(run_sweep("4 at a time on 0.5 cpu each", shared, keep=args.keep))
    for path in args.study:
        timings.append(run_sweep(f"{path} as shipped", path.read_text(), keep=args.keep))
    print()
    print(table(timings))
    for t in timings:
        print(f"{t.label}: states {t.states}; mean training per trial {t.training / t.trials:.2f} s, "
              f"mean trainable time {t.in_trial / t.trials:.2f} s; "
              f"{3600 * t.trials / t.wall:.0f} trials per hour")
    return timings


def compare_packs(spec: dict, sizes: list[int], keep: Path | None) -> list[SweepTiming]:
    trials = len(spec["alphas"]) * len(spec["lrs"])
    print(f"{trials} trials x 2 epochs x {spec['steps']} iterations, {SLOTS} workers; packs of {sizes}; "
          f"load average at start {os.getloadavg()[0]:.1f}; {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    single = run_sweep("one trial per worker (pack_size 1)", STUDY.format(**spec), keep=keep)
    packed = [
        run_sweep(f"packs of {size} (pack_size {size})", STUDY.format(**{**spec, "pack": size}), keep=keep)
        for size in sizes
    ]
    print()
    print(table([single, *packed]))
    for t in (single, *packed):
        print(f"{t.label}: {t.wall:.1f} s, {3600 * t.trials / t.wall:.0f} trials per hour "
              f"({single.wall / t.wall:.2f}x), states {t.states}, best parzen_ll {t.best:.3f}")
    return [single, *packed]


if __name__ == "__main__":
    main()
