"""Trials per hour on one CPU thread: P packed 2D-toy trials (gansweep.engine's packed and
compiled-packed executions) against the same trials trained one after another, eagerly.

    python -m benchmarks.pack_bench             # P = 1, 4, 16, 64; about 2 minutes
    python -m benchmarks.pack_bench --small     # fewer, shorter rounds, under a minute
    python -m benchmarks.pack_bench --sizes 8 32 --threads 2
    python -m benchmarks.pack_bench --compile   # add compiled packs (a compile per size)
    python -m benchmarks.pack_bench --seed003   # seed 003's own networks (G 10-3-5-10-2, D 2-10-5-2-1)
    python -m benchmarks.pack_bench --hidden 128 --sizes 1 8   # studies/alpha.yaml's widths

Case: the 2D circle, G 2-64-64-2 (ReLU), D 2-64-64-1 (LeakyReLU 0.2), noise_dim 2, batch 64,
k = 1, alpha_mode weight, Adam. The P trials of a pack differ in alpha (0.1 to 0.9), lr_d and
lr_g (1e-4 to 1e-3, log-spaced), Adam's beta1, label smoothing, the loss (non_saturating,
minimax, max_likelihood, least_squares in turn) and the seed: what a sweep over those values
would pack.

Loops:
- serial (baseline): the eager execution as train_gan runs it (the trial's modules, fused
  Adam, one joint D forward, autograd.grad steps), one trial at a time. A trial's step
  costs the same whatever its alpha, learning rates or loss, so one trial's rate is the rate
  of running the pack's P trials one after another; it is measured once and shared by all P.
- pack P: the packed execution on a unit of P trials: per step one vmapped D update and one
  vmapped G update for all P trials, the draws made for all of them in one call each, then
  the one read-back of the epoch's sums, as train_pack does.
- compiled pack P (--compile): the same iteration compiled into one graph.

Both loops run with torch.set_num_threads(1) by default: a sweep gives each trial (or pack)
one CPU. Neither includes evaluation (Parzen), which costs the same per trial either way.

Throughput: steps/s per trial = generator steps per second that each trial advances (for a
pack, its pack steps per second); trial-steps/s = P x that, the work done for the sweep;
trials/hour = trial-steps/s x 3600 / TRIAL_STEPS, with TRIAL_STEPS = 2,000 generator steps
(studies/alpha.yaml: 8 epochs of 250 steps); "vs serial" = trial-steps/s over the serial rate.

Timing: each loop keeps its state and runs `steps` steps per round after a warm-up; rounds
are interleaved (serial, pack 1, pack 4, ..., then reversed) so that a change in machine load
hits every loop alike. Reported: rates from the median round, and from the best round.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch

from benchmarks.train_bench import header
from gansweep.config.schema import TrialConfig
from gansweep.engine import run as engine
from gansweep.engine.data import Dataset, load_dataset
from gansweep.engine.models import build_models, count_parameters

TRIAL_STEPS = 2_000  # generator steps of one studies/alpha.yaml trial
BASE = TrialConfig(
    dataset="circle", architecture="mlp", g_hidden=(64, 64), d_hidden=(64, 64), noise_dim=2,
    batch_size=64, k=1, alpha_mode="weight", optimizer="adam", device="cpu", eval_every=1_000,
    epochs=1_000_000,  # never an evaluation epoch
)
# Seed 003's own code: G noise 10 -> 3 -> 5 -> 10 -> 2 (tanh), D 2 -> 10 -> 5 -> 2 -> 1, batch 128.
SEED003 = BASE.model_copy(update=dict(g_hidden=(3, 5, 10), d_hidden=(10, 5, 2), noise_dim=10,
                                      batch_size=128, g_activation="tanh", d_activation="tanh"))
LOSSES = ("non_saturating", "minimax", "max_likelihood", "least_squares")
SIZES = (1, 4, 16, 64)
# (steps per round, rounds) for the full run and for --small.
ROUNDS = ((200, 7), (60, 3))


def varied_trials(p: int, base: TrialConfig = BASE) -> list[TrialConfig]:
    """P trials spread over the values a sweep varies; equal in everything a pack shares."""

    def spread(low: float, high: float, i: int) -> float:
        return low if p == 1 else low + (high - low) * i / (p - 1)

    return [
        base.model_copy(update=dict(
            alpha=round(spread(0.1, 0.9, i), 4),
            lr_d=10 ** spread(-4.0, -3.0, i),
            lr_g=10 ** spread(-3.0, -4.0, i),
            adam_beta1=(0.5, 0.0, 0.9)[i % 3],
            label_smoothing=(1.0, 0.9)[i % 2],
            loss=LOSSES[i % len(LOSSES)],
            seed=i,
        ))
        for i in range(p)
    ]


class Loop:
    name: str
    trials: int  # how many trials each step advances

    def run(self, steps: int) -> float:
        """`steps` steps, ending with a host sync; returns the wall-clock seconds."""
        raise NotImplementedError


class Serial(Loop):
    def __init__(self, data: Dataset, base: TrialConfig) -> None:
        self.name, self.trials = "serial: the eager execution, one trial at a time", 1
        self.unit = engine.build_unit(varied_trials(1, base), data, execution="eager")

    def run(self, steps: int) -> float:
        return run_epoch(self.unit, steps)


class Packed(Loop):
    def __init__(self, data: Dataset, p: int, base: TrialConfig, execution: str = "packed") -> None:
        compiled = execution == "compiled_packed"
        self.name, self.trials = f"{'compiled pack' if compiled else 'pack'} of {p}", p
        self.unit = engine.build_unit(varied_trials(p, base), data, execution=execution)

    def run(self, steps: int) -> float:
        return run_epoch(self.unit, steps)


def run_epoch(unit: engine.Unit, steps: int) -> float:
    """`steps` iterations of `unit` and the epoch's one read-back; the seconds they took."""
    hyper = engine.hyper_of(unit.trials, unit.spec, 1, unit.device)
    started = time.perf_counter()
    sums, _ = engine.run_iterations(unit, steps, hyper)
    sums.tolist()
    return time.perf_counter() - started


@dataclass
class Row:
    loop: Loop
    seconds: list[float]
    steps: int

    def rate(self, seconds: float) -> float:
        return self.steps / seconds  # steps/s per trial

    @property
    def median(self) -> float:
        return self.rate(statistics.median(self.seconds))

    @property
    def best(self) -> float:
        return self.rate(min(self.seconds))


def measure(loops: list[Loop], steps: int, rounds: int) -> list[Row]:
    for loop in loops:  # warm-up: allocator, thread pool, vmap's first-call paths
        loop.run(max(5, steps // 5))
    times: dict[int, list[float]] = {id(loop): [] for loop in loops}
    for r in range(rounds):
        for loop in loops if r % 2 == 0 else loops[::-1]:  # alternate who goes first
            times[id(loop)].append(loop.run(steps))
    return [Row(loop, times[id(loop)], steps) for loop in loops]


def table(rows: list[Row], base: TrialConfig) -> str:
    serial = rows[0].median
    g, d = build_models(base, (2,))
    lines = [
        f"### circle, mlp: G {count_parameters(g):,} / D {count_parameters(d):,} parameters, "
        f"batch {base.batch_size}, k {base.k}; trials of {TRIAL_STEPS:,} steps",
        "",
        "| loop | P | steps/s per trial (median) | trial-steps/s | trials/hour | "
        "vs serial | trial-steps/s (best round) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        total = row.median * row.loop.trials
        lines.append(
            f"| {row.loop.name} | {row.loop.trials} | {row.median:,.1f} | {total:,.0f} | "
            f"{total * 3600 / TRIAL_STEPS:,.0f} | {total / serial:.2f}x | "
            f"{row.best * row.loop.trials:,.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES),
                        help=f"pack sizes P (default: {' '.join(map(str, SIZES))})")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for every loop (default 1: one CPU per trial)")
    parser.add_argument("--compile", action="store_true", help="add compiled packs of each size")
    parser.add_argument("--seed003", action="store_true", help="seed 003's networks, batch 128")
    parser.add_argument("--hidden", type=int, help="G and D hidden widths (two layers; default 64)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(header(args.threads))
    base = SEED003 if args.seed003 else BASE
    if args.hidden:
        base = base.model_copy(update={"g_hidden": (args.hidden,) * 2, "d_hidden": (args.hidden,) * 2})
    data = load_dataset(base.dataset, seed=0)
    loops: list[Loop] = [Serial(data, base), *(Packed(data, p, base) for p in args.sizes)]
    if args.compile:
        loops += [Packed(data, p, base, "compiled_packed") for p in args.sizes]
    steps, rounds = ROUNDS[1 if args.small else 0]
    rows = measure(loops, steps, rounds)
    print()
    print(table(rows, base), flush=True)
    return rows


if __name__ == "__main__":
    main()
