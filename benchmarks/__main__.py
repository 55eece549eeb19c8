"""Every benchmark, one after another: `python -m benchmarks [--small] [NAME ...]`.

Each benchmark is its own module with its own options (`python -m benchmarks.NAME --help`);
this runner starts each in a fresh process, so one's threads, caches and Ray do not touch
the next one's timings, and passes --small through. benchmarks/README.md holds the results.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

BENCHMARKS = {
    "parzen": "benchmarks.parzen_bench",  # Parzen protocol vs scikit-learn and per-sigma code
    "train": "benchmarks.train_bench",  # one trial's step loop vs the textbook loop
    "sweep": "benchmarks.sweep_bench",  # share of a sweep's wall time spent training
    "pruning": "benchmarks.pruning_bench",  # epochs and best value, pruned vs not
    "pack": "benchmarks.pack_bench",  # packed (vmapped) trials vs one trial at a time
    "pack-sweep": "benchmarks.sweep_bench --pack 16 32",  # packs in `gansweep run` vs one per worker
    "metrics": "benchmarks.metrics_bench",  # each quality metric's cost vs Parzen's; the domain classifier
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"of {', '.join(BENCHMARKS)}; default: all")
    parser.add_argument("--small", action="store_true", help="each benchmark's short version")
    args = parser.parse_args()
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    failed = []
    for name in args.names or list(BENCHMARKS):
        print(f"\n## {name} ({BENCHMARKS[name]})", flush=True)
        module, *options = BENCHMARKS[name].split()
        small = ["--small"] if args.small and not options else []  # the pack comparison has no short form
        command = [sys.executable, "-m", module, *options, *small]
        if subprocess.run(command).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
