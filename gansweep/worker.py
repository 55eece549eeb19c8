"""What runs inside a Ray Tune trial: one GAN trial, reporting each epoch with a checkpoint.

Imported by Ray workers, so it imports Ray; it knows nothing of Optuna or MLflow (the driver
records everything). A checkpoint folder holds:
    state.pt       full training state (networks, optimisers, RNG, last metrics)
    generator.pt   the generator's weights and the trial config, the artifact users keep
    samples/       the sample image of this epoch, when it is a sample epoch

The first result of each attempt (a fresh start, a retry after a worker died, a resume after
the driver stopped) also carries `node_id` (the Ray node it runs on) and `resumed_from` (the
epoch of the checkpoint it loaded, 0 for none), which the driver records per trial.
"""

from __future__ import annotations

import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from gansweep.data import Dataset, load_dataset
from gansweep.errors import GansweepError
from gansweep.storage import storage_filesystem, strip_scheme
from gansweep.study import TrialConfig
from gansweep.train import is_eval_epoch, resolve_device, train_gan

STATE_FILE = "state.pt"
# Keys of the first result of an attempt that describe the attempt, not the training.
ATTEMPT_KEYS = ("node_id", "resumed_from")
GENERATOR_FILE = "generator.pt"
SAMPLES_DIR = "samples"


@lru_cache(maxsize=4)
def cached_dataset(name: str, data_dir: str | None, seed: int, device: str, n_train: int | None) -> Dataset:
    # Reused actors run many trials: load each dataset once per worker process.
    return load_dataset(name, data_dir=data_dir, seed=seed, device=device, n_train=n_train)


def load_resume_state(config: dict[str, Any]) -> dict[str, Any] | None:
    """Tune's own checkpoint (a retry after a worker died) wins over the one recorded in the
    Optuna study (a trial resumed by a new `gansweep run` after the driver stopped)."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None and config.get("resume"):
        uri = config["resume"]
        checkpoint = tune.Checkpoint(strip_scheme(uri), filesystem=storage_filesystem(uri))
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)


def write_checkpoint(folder: Path, state: dict[str, Any], trial: TrialConfig, sample: Path | None) -> None:
    torch.save(state, folder / STATE_FILE)
    torch.save({"generator": state["generator"], "trial": trial.model_dump(mode="json")}, folder / GENERATOR_FILE)
    if sample is not None:
        (folder / SAMPLES_DIR).mkdir()
        shutil.copy(sample, folder / SAMPLES_DIR / sample.name)


def run_trial(config: dict[str, Any]) -> None:
    """The Tune trainable. config = {"number": Optuna trial number, "values": trial fields,
    "resume": checkpoint URI or None, "threads": CPU threads for torch}."""
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    trial = TrialConfig.model_validate(config["values"])
    try:
        device = resolve_device(trial.device)
        data = cached_dataset(trial.dataset, trial.data_dir, trial.seed, str(device), trial.n_train)
    except GansweepError as err:
        # Bad data or device: a retry would fail the same way, so fail the trial, not the actor.
        tune.report({"epoch": 0, "failure_reason": str(err)})
        return
    resume = load_resume_state(config)
    attempt: dict[str, Any] = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "resumed_from": int(resume["epoch"]) if resume else 0,
    }
    with tempfile.TemporaryDirectory(prefix="gansweep-samples-") as samples:
        sample_dir = Path(samples)

        def report(metrics: dict[str, float], epoch: int, state: Any) -> None:
            if attempt:  # the first report of this attempt says where it runs and resumed from
                metrics = {**metrics, **attempt}
                attempt.clear()
            if not is_eval_epoch(trial, epoch):
                tune.report(metrics)  # checkpoints at evaluation epochs only: they are not free
                return
            sample = sample_dir / f"epoch_{epoch:04d}.png"
            with tempfile.TemporaryDirectory(prefix="gansweep-ckpt-") as folder:
                write_checkpoint(Path(folder), state(), trial, sample if sample.exists() else None)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

        try:
            train_gan(trial, data, report, sample_dir=sample_dir, resume_from=resume)
        except GansweepError as err:  # TrialDiverged, TrialOutOfMemory: recorded, not retried
            tune.report({"epoch": getattr(err, "epoch", 0), "failure_reason": str(err)})
