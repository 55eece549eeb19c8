"""One trial's training throughput, this tree against an earlier commit, in one run.

    python -m benchmarks.before_after d4a9f49            # toy and mlp, eager; about 6 minutes
    python -m benchmarks.before_after d4a9f49 --compile  # and the compiled rows
    python -m benchmarks.before_after d4a9f49 --case dcgan --repeats 3

The commit is checked out in a temporary git worktree; each tree's own benchmarks.train_bench
(--small, one case, one torch thread) runs in a fresh process, the two trees alternating
`repeats` times, so that a change in machine load hits both alike. Reported: per case and row
(gansweep's default loop, and `compile: true` with --compile) the median over the repeats of
each run's median it/s, and the ratio now / before; then the same ratio with each run's rate
divided by that run's textbook loop (the same code in both trees, measured in the same
process), which cancels the load that drifts between the runs of a shared machine.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROWS = {"default": r"^\| ours \(default[^|]*\| ([\d.]+) \|", "compiled": r"^\| ours \+ torch\.compile[^|]*\| ([\d.]+) \|",
        "textbook": r"^\| textbook \(DataLoader[^|]*\| ([\d.]+) \|"}


# Each tree's train_bench with only the loops compared: the others (the old tree's plain path,
# this tree's pack of one) share the process and move its rates; an eager loop beside a vmap
# one ran about 4% slower here than alone.
COMPARED_LOOPS = """
import sys
import benchmarks.train_bench as bench
compared = ("textbook (DataLoader", "ours (default", "ours + torch.compile")
measure = bench.measure
bench.measure = lambda loops, steps, rounds: measure([l for l in loops if l.name.startswith(compared)], steps, rounds)
bench.main(sys.argv[1:])
"""


def run_bench(tree: Path, case: str, compile_rows: bool) -> dict[str, float]:
    command = [sys.executable, "-c", COMPARED_LOOPS, "--small", "--case", case, "--threads", "1"]
    if compile_rows:
        command.append("--compile")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    output = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=True).stdout
    found = {}
    for name, pattern in ROWS.items():
        match = re.search(pattern, output, re.MULTILINE)
        if match:
            found[name] = float(match.group(1))
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("commit", help="the earlier commit to measure against")
    parser.add_argument("--case", action="append", help="train_bench cases (default: toy, mlp)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also the compile: true rows")
    args = parser.parse_args(argv)
    cases = args.case or ["toy", "mlp"]
    with tempfile.TemporaryDirectory(prefix="gansweep-before-") as folder:
        before = Path(folder) / "tree"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(before), args.commit], cwd=ROOT, check=True)
        try:
            print(f"now: {ROOT} ({git_head(ROOT)}), before: {args.commit}; {args.repeats} alternating runs per tree")
            print("\n| case | row | before it/s | now it/s | now / before | per textbook: before | now | now / before |"
                  "\n|---|---|---:|---:|---:|---:|---:|---:|")
            for case in cases:
                samples: dict[str, dict[str, list[float]]] = {"before": {}, "now": {}}
                for _ in range(args.repeats):
                    for label, tree in (("before", before), ("now", ROOT)):
                        for row, rate in run_bench(tree, case, args.compile).items():
                            samples[label].setdefault(row, []).append(rate)
                for row in samples["now"]:
                    if row not in samples["before"] or row == "textbook":
                        continue
                    old, new = statistics.median(samples["before"][row]), statistics.median(samples["now"][row])
                    old_rel, new_rel = (per_textbook(samples[label], row) for label in ("before", "now"))
                    print(f"| {case} | {row} | {old:.1f} | {new:.1f} | {new / old:.2f}x | {old_rel:.3f} | {new_rel:.3f} "
                          f"| {new_rel / old_rel:.2f}x |", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False)


def per_textbook(runs: dict[str, list[float]], row: str) -> float:
    """The median over the runs of the row's rate divided by the same run's textbook rate."""
    return statistics.median(rate / textbook for rate, textbook in zip(runs[row], runs["textbook"], strict=True))


def git_head(tree: Path) -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
