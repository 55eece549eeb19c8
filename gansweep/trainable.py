"""The Tune trainables as the driver sees them: entry points, checkpoint layout, PruneBoard.

The driver hands Tune `run_trial` or `run_pack` and reads the checkpoints they write; the
training code behind them (gansweep.worker, and through it torch) is imported only in the
Ray worker processes that run trials. The driver's start-up then does not import torch,
about 2 s of its 4.5 s of imports on 2 cores, spent while Ray and the first trial's actor
wait for it (benchmarks/README.md, sweep overhead). tests/test_sweep.py checks that the
driver's modules leave torch unimported.
"""

from __future__ import annotations

from typing import Any

import ray

STATE_FILE = "state.pt"  # full training state: networks, optimisers, RNG, last metrics
# Keys of the first result of an attempt that describe the attempt, not the training.
ATTEMPT_KEYS = ("node_id", "resumed_from")
GENERATOR_FILE = "generator.pt"  # the generator's weights and the trial config
SAMPLES_DIR = "samples"
MEMBERS_DIR = "members"  # a pack's checkpoint: members/<number>/ per member


def run_trial(config: dict[str, Any]) -> None:
    """The Tune trainable of one trial (gansweep.worker.run_trial)."""
    from gansweep import worker

    worker.run_trial(config)


def run_pack(config: dict[str, Any]) -> None:
    """The Tune trainable of a pack of trials (gansweep.worker.run_pack)."""
    from gansweep import worker

    worker.run_pack(config)


@ray.remote(num_cpus=0)
class PruneBoard:
    """The numbers of pack members the driver pruned; packs read it before each epoch."""

    def __init__(self) -> None:
        self.numbers: set[int] = set()

    def prune(self, number: int) -> None:
        self.numbers.add(number)

    def pruned(self, numbers: list[int]) -> list[int]:
        return [n for n in numbers if n in self.numbers]
