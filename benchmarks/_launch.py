"""Runs the real `gansweep` CLI, optionally with one of its overhead savings turned off.

    python -m benchmarks._launch run STUDY [gansweep args...]

The sweep benchmark compares gansweep with and without each saving; nothing else changes.
- GANSWEEP_BENCH_REUSE_ACTORS=0: sweep.py always asks Tune for reuse_actors=True; this
  wraps ray.tune.TuneConfig so that every trial gets a fresh actor (process) instead.
- GANSWEEP_BENCH_OVERLAP_RAY=0: Ray starts only when the sweep needs it (after the imports
  and the Optuna and MLflow set-up) and stops only after the report, one thing after the
  other, as gansweep did before raystart.py.
"""

from __future__ import annotations

import os
import sys


def ray_start_in_turn():  # noqa: ANN201
    """RayStart that starts Ray when first waited for and stops it only in stop()."""
    from gansweep.service.raystart import RayStart

    class InTurn(RayStart):
        @classmethod
        def begin(cls, address: str | None) -> RayStart:
            return cls(address)

        def wait(self) -> None:
            if not self.thread.is_alive() and not self.ready.is_set():
                self.thread.start()
            super().wait()

        def stop_in_background(self) -> None:
            pass  # Ray stops at the very end, in stop()

        def stop(self, *, wait_for_start: bool = False) -> None:
            if self.ready.is_set() or self.thread.is_alive():
                super().stop(wait_for_start=wait_for_start)

    return InTurn


def main() -> int:
    if os.environ.get("GANSWEEP_BENCH_REUSE_ACTORS", "1") == "0":
        from ray import tune

        original = tune.TuneConfig

        def no_reuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            kwargs["reuse_actors"] = False
            return original(*args, **kwargs)

        tune.TuneConfig = no_reuse  # sweep.py reads tune.TuneConfig at call time
    if os.environ.get("GANSWEEP_BENCH_OVERLAP_RAY", "1") == "0":
        from gansweep.service import raystart

        raystart.RayStart = ray_start_in_turn()  # the CLI imports RayStart at call time
    from gansweep.cli import main as gansweep_main

    return gansweep_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
