"""What runs inside a Ray Tune trial: one GAN trial, reporting each epoch with a checkpoint.

Imported by Ray workers only, through gansweep.trainable's entry points (the driver never
imports this module, nor torch through it); it imports Ray and torch; it knows nothing of Optuna or MLflow (the driver
records everything). A checkpoint folder holds:
    state.pt       full training state (networks, optimisers, RNG, last metrics)
    generator.pt   the generator's weights and the trial config, the artifact users keep
    samples/       the sample image of this epoch, when it is a sample epoch

The first result of each attempt (a fresh start, a retry after a worker died, a resume after
the driver stopped) also carries `node_id` (the Ray node it runs on) and `resumed_from` (the
epoch of the checkpoint it loaded, 0 for none), which the driver records per trial.

A pack (budget.pack_size > 1, gansweep.engine.run's unit of several trials) is one Tune trial that trains several Optuna
trials, its members. Its results are {"epoch", "members": {number: that member's metrics}},
and its checkpoints hold the pack's state.pt and members/<number>/ with each member's
generator.pt and samples/. The driver prunes members one by one: it posts their numbers on a
PruneBoard actor, which the pack reads before each epoch to drop them from its step.
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

from gansweep.engine.data import Dataset, load_dataset
from gansweep.engine import run
from gansweep.engine.run import Unit, divergence, is_eval_epoch, is_sample_epoch, resolve_device
from gansweep.engine.train import out_of_memory, train_gan
from gansweep.errors import GansweepError, is_out_of_memory
from gansweep.storage import storage_filesystem, strip_scheme
from gansweep.config.schema import TrialConfig
from gansweep.trainable import GENERATOR_FILE, MEMBERS_DIR, SAMPLES_DIR, STATE_FILE


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


def write_trial_files(folder: Path, generator: dict[str, Any], trial: TrialConfig, sample: Path | None) -> None:
    """What a user keeps of a trial at a checkpoint: generator.pt (weights and the trial's
    config) and samples/ with this epoch's sample image, if one was drawn."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"generator": generator, "trial": trial.model_dump(mode="json")}, folder / GENERATOR_FILE)
    if sample is not None and sample.exists():
        (folder / SAMPLES_DIR).mkdir()
        shutil.copy(sample, folder / SAMPLES_DIR / sample.name)


def write_checkpoint(folder: Path, state: dict[str, Any], trial: TrialConfig, sample: Path | None) -> None:
    torch.save(state, folder / STATE_FILE)
    write_trial_files(folder, state["generator"], trial, sample)


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
                write_checkpoint(Path(folder), state(), trial, sample)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

        try:
            train_gan(trial, data, report, sample_dir=sample_dir, resume_from=resume)
        except GansweepError as err:  # TrialDiverged, TrialOutOfMemory: recorded, not retried
            tune.report({"epoch": getattr(err, "epoch", 0), "failure_reason": str(err)})


def write_pack_checkpoint(folder: Path, state: dict[str, Any], pack: Unit, numbers: list[int], samples: Path) -> None:
    """state.pt for the pack; members/<number>/ with each member's files."""
    torch.save(state, folder / STATE_FILE)
    for row, number in enumerate(numbers):
        generator = run.member_generator_state(pack, row)
        sample = samples / str(number) / f"epoch_{pack.epochs[row]:04d}.png"
        write_trial_files(folder / MEMBERS_DIR / str(number), generator, pack.trials[row], sample)


def run_pack(config: dict[str, Any]) -> None:
    """The Tune trainable of a pack. config = {"numbers": Optuna trial numbers, "values": their
    trial fields, "resume": checkpoint URI or None, "threads", "board": the PruneBoard's name}."""
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    numbers = [int(n) for n in config["numbers"]]
    trials = [TrialConfig.model_validate(v) for v in config["values"]]
    resume = load_resume_state(config)
    if resume is not None:  # members that diverged before the checkpoint are not in it
        kept = [row for row, n in enumerate(numbers) if n in resume["numbers"]]
        numbers, trials = [numbers[row] for row in kept], [trials[row] for row in kept]
    first = trials[0]
    # The pack's data: its first member's seed, kept in checkpoints so that a resumed pack
    # that lost that member trains on the same set.
    data_seed = int(resume["data_seed"]) if resume else first.seed
    try:
        device = resolve_device(first.device)
        data = cached_dataset(first.dataset, first.data_dir, data_seed, str(device), first.n_train)
        pack = run.build_unit(trials, data, execution=run.default_execution(trials, packed=True))
    except GansweepError as err:
        tune.report({"epoch": 0, "failure_reason": str(err)})
        return
    if resume is not None:
        run.load_unit_state(pack, resume["pack"], [resume["numbers"].index(n) for n in numbers])
    attempt: dict[str, Any] = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "resumed_from": int(resume["epoch"]) if resume else 0,
    }
    board = ray.get_actor(config["board"]) if config.get("board") else None
    if resume is not None and pack.epoch >= first.epochs:
        # Resumed from the final checkpoint (its driver stopped before recording the end):
        # say the last epoch again so that the driver can close the members.
        last = {n: resume["last"][str(n)] for n in numbers}
        tune.report({"epoch": float(pack.epoch), "members": {str(n): m for n, m in last.items()}, **attempt})
        return
    with tempfile.TemporaryDirectory(prefix="gansweep-samples-") as samples_dir:
        samples = Path(samples_dir)
        while pack.size and pack.epoch < first.epochs:
            if board is not None:
                pruned = set(ray.get(board.pruned.remote(numbers)))
                pack, numbers = keep(pack, numbers, [row for row, n in enumerate(numbers) if n not in pruned])
                if not pack.size:
                    break
            size = pack.size
            try:
                results = run.train_epoch(pack)
            except (RuntimeError, MemoryError) as err:
                if not is_out_of_memory(err):
                    raise
                reason = str(out_of_memory(err, first, pack))
                members = {str(n): {"epoch": float(pack.epoch + 1), "failure_reason": reason} for n in numbers}
                tune.report({"epoch": float(pack.epoch + 1), "members": members, **attempt})
                return
            epoch = pack.epoch
            members: dict[str, dict[str, Any]] = {}
            for row, (number, metrics) in enumerate(zip(numbers, results, strict=True)):
                diverged = divergence(metrics, epoch)
                if diverged is not None:  # train_gan's reason, without the NaN metrics
                    metrics = {"epoch": float(epoch), "failure_reason": str(diverged)}
                else:
                    metrics["pack_size"] = float(size)
                    if is_sample_epoch(pack.trials[row], epoch):
                        run.save_member_samples(pack, row, samples / str(number))
                members[str(number)] = metrics
            pack, numbers = keep(pack, numbers, run.healthy_rows(results))  # the diverged leave
            result: dict[str, Any] = {"epoch": float(epoch), "members": members, **attempt}
            attempt = {}
            if pack.size and any(is_eval_epoch(t, epoch) for t in pack.trials):
                state = {
                    "epoch": epoch, "numbers": numbers, "data_seed": data_seed,
                    "pack": run.unit_state(pack), "last": {str(n): members[str(n)] for n in numbers},
                }
                with tempfile.TemporaryDirectory(prefix="gansweep-ckpt-") as folder:
                    write_pack_checkpoint(Path(folder), state, pack, numbers, samples)
                    tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))
            else:
                tune.report(result)


def keep(pack: Unit, numbers: list[int], rows: list[int]) -> tuple[Unit, list[int]]:
    """The pack of only these rows, with their Optuna numbers."""
    return run.keep_rows(pack, rows), [numbers[row] for row in rows]
