"""The Tune trainable as the driver sees it: the entry point and the PruneBoard.

The driver hands Tune `run_unit` and reads the checkpoints it writes (their layout is
gansweep.service.protocol's); the training code behind it (gansweep.service.worker, and through it
torch) is imported only in the Ray worker processes that run units. The driver's start-up
then does not import torch, about 2 s of its 4.5 s of imports on 2 cores, spent while Ray
and the first trial's actor wait for it (benchmarks/README.md, sweep overhead).
tests/service/test_sweep.py checks that the driver's modules leave torch unimported.
"""

from __future__ import annotations

from typing import Any

import ray


def run_unit(config: dict[str, Any]) -> None:
    """The Tune trainable of a unit of one or more trials (gansweep.service.worker.run_unit)."""
    from gansweep.service import worker

    worker.run_unit(config)


@ray.remote(num_cpus=0)
class PruneBoard:
    """The numbers of members the driver pruned; units read it before each epoch."""

    def __init__(self) -> None:
        self.numbers: set[int] = set()

    def prune(self, number: int) -> None:
        self.numbers.add(number)

    def pruned(self, numbers: list[int]) -> list[int]:
        return [n for n in numbers if n in self.numbers]
