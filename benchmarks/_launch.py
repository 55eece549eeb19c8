"""Runs the real `gansweep` CLI, optionally with Ray Tune's actor reuse turned off.

    python -m benchmarks._launch run STUDY [gansweep args...]

sweep.py always asks Tune for reuse_actors=True; with GANSWEEP_BENCH_REUSE_ACTORS=0 this
launcher wraps ray.tune.TuneConfig so that every trial gets a fresh actor (process) instead,
which is what the sweep benchmark compares. Nothing else changes.
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    if os.environ.get("GANSWEEP_BENCH_REUSE_ACTORS", "1") == "0":
        from ray import tune

        original = tune.TuneConfig

        def no_reuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            kwargs["reuse_actors"] = False
            return original(*args, **kwargs)

        tune.TuneConfig = no_reuse  # sweep.py reads tune.TuneConfig at call time
    from gansweep.cli import main as gansweep_main

    return gansweep_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
