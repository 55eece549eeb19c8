"""What runs inside a Ray Tune trial: one unit of one or more GAN trials (its members),
reporting each epoch with a checkpoint at evaluation epochs.

Imported by Ray workers only, through gansweep.service.trainable's entry point (the driver never
imports this module, nor torch through it); it imports Ray and torch; it knows nothing of
Optuna or MLflow (the driver records everything). The unit's config, its results and its
checkpoints are gansweep.service.protocol's; a checkpoint folder holds:
    state.pt                        CheckpointState: the unit's training state (networks,
                                    optimisers, RNG, each member's epoch and last metrics)
    state.pt.sha256                 its SHA-256 (checkpoint_check.py: state.pt is written
                                    atomically; the driver checks it before a resume)
    members/<number>/generator.pt   the member's generator weights and trial config
    members/<number>/samples/       its sample image of this epoch, when it drew one
    members/<number>/history.json   every result it reported up to this epoch (the driver
                                    logs them again on a resume where MLflow lacks them)
    members/<number>/best.pt        objective.select: best: the best evaluation's generator
                                    weights, epoch and objectives (read back on a resume)
    members/<number>/best_model/    ... and that generator as an MLflow model folder
                                    (mlflow.pytorch.save_model; the driver logs it as the
                                    run's MLflow logged model `best_model`, step = its epoch)

A lone trial is a unit of one, run with the engine's eager execution (compiled with
`compile: true`); a pack (budget.pack_size > 1) runs packed (vmap), even when one member is
left. The first result of each attempt (a fresh start, a retry after a worker died, a resume
after the driver stopped) also carries `node_id` and `resumed_from`. The driver prunes
members one by one: it posts their numbers on a PruneBoard actor, which the unit reads before
each epoch to drop them from its step.
"""

from __future__ import annotations

import copy
import io
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from gansweep.engine import run
from gansweep.engine.data import Dataset, load_dataset
from gansweep.engine.run import Unit, divergence, is_eval_epoch, is_sample_epoch, resolve_device
from gansweep.engine.train import Best, BestTracker, Epoch, EpochLoop, out_of_memory
from gansweep.errors import GansweepError, is_out_of_memory
from gansweep.service import protocol as p
from gansweep.service.checkpoint_check import write_with_checksum
from gansweep.service.storage import storage_filesystem, strip_scheme
from gansweep.service.sysmetrics import SystemSampler
from gansweep.config import plugins
from gansweep.config.schema import TrialConfig


@lru_cache(maxsize=4)
def cached_dataset(name: str, data_dir: str | None, seed: int, device: str, n_train: int | None) -> Dataset:
    # Reused actors run many trials: load each dataset once per worker process.
    return load_dataset(name, data_dir=data_dir, seed=seed, device=device, n_train=n_train)


History = dict[int, list[p.MemberResult]]  # number -> the member's results so far, in epoch order


def load_resume_state(config: p.UnitConfig, seed: int) -> tuple[p.CheckpointState | None, dict[int, Best], History]:
    """Tune's own checkpoint (a retry after a worker died) wins over the one recorded in the
    Optuna study (a unit resumed by a new `gansweep run` after the driver stopped). Also each
    member's best evaluation kept there (objective.select: best) and its history."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None and config["resume"]:
        uri = config["resume"]
        checkpoint = tune.Checkpoint(strip_scheme(uri), filesystem=storage_filesystem(uri))
    if checkpoint is None:
        return None, {}, {}
    best: dict[int, Best] = {}
    history: History = {}
    with checkpoint.as_directory() as folder:
        saved = load_tensors(Path(folder) / p.STATE_FILE)
        for number in config["numbers"]:
            path = Path(folder) / p.member_path(number, p.BEST_FILE)
            if path.is_file():
                kept = load_tensors(path)
                best[number] = Best(kept["value"], kept["epoch"], kept["objectives"], kept["generator"])
            path = Path(folder) / p.member_path(number, p.HISTORY_FILE)
            history[number] = p.read_history(path.read_text()) if path.is_file() else []  # older checkpoints: none
    return p.read_checkpoint_state(saved, config["numbers"], seed), best, history


def load_tensors(path: Path) -> Any:
    """A checkpoint file of tensors, dicts, lists and numbers (all that state.pt and best.pt
    hold) read without running code: whoever can write the checkpoint store (a shared
    bucket) could otherwise run any code on the workers through a pickled object.
    weights_only refuses such an object with an UnpicklingError."""
    return torch.load(path, map_location="cpu", weights_only=True)


def trackers(select: p.Selection, best: dict[int, Best], numbers: list[int]) -> dict[int, BestTracker]:
    """objective.select: best: each member's tracker, from its best so far (a resume's)."""
    return {n: BestTracker(select["metric"], select["direction"], tuple(select["metrics"]), best.get(n)) for n in numbers}


def write_best(folder: Path, kept: Best, unit: Unit, row: int, scratch: Path) -> None:
    """best.pt and best_model/ (an MLflow model: mlflow.pytorch.load_model reads it back)
    into a member's checkpoint folder; the model folder is written once per new best and
    copied into later checkpoints."""
    import mlflow.pytorch  # only units that keep their best pay for MLflow's import

    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"generator": kept.generator, "trial": unit.trials[row].model_dump(mode="json"), "epoch": kept.epoch,
                "value": kept.value, "objectives": kept.objectives}, folder / p.BEST_FILE)
    if kept.model is None or not kept.model.is_dir():
        model = copy.deepcopy(run.member_generator(unit, row)).cpu().eval()
        model.load_state_dict(kept.generator)
        kept.model = scratch / f"epoch_{kept.epoch:04d}"
        shutil.rmtree(kept.model, ignore_errors=True)
        kept.model.parent.mkdir(parents=True, exist_ok=True)
        mlflow.pytorch.save_model(model, str(kept.model), serialization_format="pickle",
                                  pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                                  metadata={"epoch": kept.epoch, "objectives": kept.objectives})
    shutil.copytree(kept.model, folder / p.BEST_MODEL_DIR)


def write_member_files(folder: Path, generator: dict[str, Any], trial: TrialConfig, sample: Path | None) -> None:
    """What a user keeps of a member at a checkpoint: generator.pt (weights and the trial's
    config) and samples/ with this epoch's sample image, if one was drawn."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"generator": generator, "trial": trial.model_dump(mode="json")}, folder / p.GENERATOR_FILE)
    if sample is not None and sample.exists():
        (folder / p.SAMPLES_DIR).mkdir()
        shutil.copy(sample, folder / p.SAMPLES_DIR / sample.name)


def write_checkpoint(folder: Path, state: p.CheckpointState, unit: Unit, numbers: list[int], samples: Path,
                     history: History) -> None:
    """The one checkpoint writer: state.pt for the unit (atomically, with its SHA-256 beside
    it, which the driver checks before a resume), members/<number>/ for each member."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_with_checksum(folder / p.STATE_FILE, buffer.getvalue())
    for row, number in enumerate(numbers):
        sample = samples / str(number) / f"epoch_{unit.epochs[row]:04d}.png"
        member = folder / p.MEMBERS_DIR / str(number)
        write_member_files(member, run.member_generator_state(unit, row), unit.trials[row], sample)
        (member / p.HISTORY_FILE).write_text(p.history_text(history.get(number, [])))


def run_unit(raw_config: dict[str, Any]) -> None:
    """The Tune trainable: a protocol.UnitConfig."""
    config = p.read_unit_config(raw_config)
    torch.set_num_threads(max(1, int(config["threads"])))
    plugins.install_all(config.get("plugins"))  # their names are valid values of the trials below
    numbers = list(config["numbers"])
    trials = [TrialConfig.model_validate(v) for v in config["values"]]
    resume, best, history = load_resume_state(config, trials[0].seed)
    attempt: dict[str, Any] = {
        p.NODE_ID: ray.get_runtime_context().get_node_id(),
        p.RESUMED_FROM: int(resume["epoch"]) if resume else 0,
    }
    if resume is not None:  # members that diverged before the checkpoint are not in it
        kept = [row for row, n in enumerate(numbers) if n in resume["numbers"]]
        numbers, trials = [numbers[row] for row in kept], [trials[row] for row in kept]
    first = trials[0]
    # The unit's data: its first member's seed, kept in checkpoints so that a resumed pack
    # that lost that member trains on the same set.
    data_seed = int(resume["data_seed"]) if resume else first.seed
    unit: Unit | None = None
    try:
        device = resolve_device(first.device)
        data = cached_dataset(first.dataset, first.data_dir, data_seed, str(device), first.n_train)
        execution = run.default_execution(trials, packed=True) if config["packed"] else None
        unit = run.build_unit(trials, data, execution=execution)
        if resume is not None:
            run.load_unit_state(unit, resume["unit"], [resume["numbers"].index(n) for n in numbers])
    except GansweepError as err:
        # Bad data or device: a retry would fail the same way, so fail the unit, not the actor.
        tune.report(p.failed_unit(numbers, 0, str(err), attempt))
        return
    except (RuntimeError, MemoryError) as err:
        if not is_out_of_memory(err):
            raise
        tune.report(p.failed_unit(numbers, 0, str(out_of_memory(err, first, None)), attempt))
        return
    if unit.epoch >= first.epochs:
        # Resumed from the final checkpoint (its driver stopped before recording the end):
        # say the last epoch again so that the driver can close the members.
        last = {n: unit.last_metrics[row] or resume["last"][str(n)] for row, n in enumerate(numbers)}  # type: ignore[index]
        tune.report(p.unit_result(unit.epoch, last, attempt))
        return
    board = ray.get_actor(config["board"]) if config["board"] else None
    with tempfile.TemporaryDirectory(prefix="gansweep-samples-") as samples_dir:
        train_unit(unit, numbers, data_seed, attempt, board, Path(samples_dir), (config.get("select"), best), history)


def train_unit(unit: Unit, numbers: list[int], data_seed: int, attempt: dict[str, Any], board: Any, samples: Path,
               keep_best: tuple[p.Selection | None, dict[int, Best]] = (None, {}), history: History | None = None) -> None:
    """The unit's epochs (train.epochs), each reported (with a checkpoint at evaluation
    epochs), until its last epoch or until no member is left. keep_best: objective.select:
    best's selection and the members' best evaluations so far; history: the members' results
    so far (a resume's). A member the driver pruned (on the board) leaves before an epoch."""
    select, best = keep_best
    kept = trackers(select, best, numbers) if select is not None else {}
    history = {n: list(history.get(n, [])) if history else [] for n in numbers}
    first = unit.trials[0]
    device = resolve_device(first.device)
    system = SystemSampler(cuda_index=(device.index or 0) if device.type == "cuda" else None)
    stopped = (lambda keys: set(ray.get(board.pruned.remote(keys)))) if board is not None else None
    loop = EpochLoop(unit, numbers, stopped)
    try:
        for epoch in loop:
            usage = system.sample()  # this epoch's cost, shared by the unit's members
            members = {n: member_result(epoch, row, usage, samples, kept.get(n), history[n])
                       for row, n in enumerate(epoch.keys)}
            report_epoch(epoch, members, attempt, data_seed, samples, kept, history)
            attempt = {}
    except (RuntimeError, MemoryError) as err:
        if not is_out_of_memory(err):
            raise
        tune.report(p.failed_unit(loop.keys, loop.unit.epoch + 1, str(out_of_memory(err, first, loop.unit)), attempt))
    except GansweepError as err:
        tune.report(p.failed_unit(loop.keys, loop.unit.epoch + 1, str(err), attempt))


def member_result(epoch: Epoch[int], row: int, usage: dict[str, float], samples: Path, tracker: BestTracker | None,
                  history: list[p.MemberResult]) -> p.MemberResult:
    """What the driver gets of one member's epoch: the reason a diverged member failed
    (without its NaN metrics), else its metrics with the pack's size, the system's usage and
    its best so far; its sample picture drawn, its history grown."""
    unit, metrics = epoch.unit, epoch.results[row]
    diverged = divergence(metrics, epoch.number)
    if diverged is not None:
        return p.MemberResult(epoch=float(epoch.number), failure_reason=str(diverged))
    metrics[p.PACK_SIZE] = float(epoch.size)
    metrics.update(usage)
    number = epoch.keys[row]
    if is_sample_epoch(unit.trials[row], epoch.number):
        run.save_member_samples(unit, row, samples / str(number))
    if tracker is not None:
        tracker.note(metrics, unit.epochs[row], lambda: run.member_generator_state(unit, row))
    history.append({**metrics, p.EPOCH: float(epoch.number)})  # type: ignore[typeddict-item]
    return metrics  # type: ignore[return-value]


def report_epoch(epoch: Epoch[int], members: dict[int, p.MemberResult], attempt: dict[str, Any], data_seed: int,
                 samples: Path, kept: dict[int, BestTracker], history: History) -> None:
    """tune.report of the epoch, with a checkpoint of the members that go on when one of
    them evaluated."""
    result = p.unit_result(epoch.number, members, attempt)
    unit, numbers = epoch.survivors
    if not (unit.size and any(is_eval_epoch(t, epoch.number) for t in unit.trials)):
        tune.report(result)
        return
    state = p.CheckpointState(protocol=p.CHECKPOINT_PROTOCOL, epoch=epoch.number, numbers=numbers,
                              data_seed=data_seed, unit=run.unit_state(unit), last={})
    with tempfile.TemporaryDirectory(prefix="gansweep-ckpt-") as folder:
        write_checkpoint(Path(folder), state, unit, numbers, samples, history)
        for row, number in enumerate(numbers):
            tracker = kept.get(number)
            if tracker is not None and tracker.best is not None:
                write_best(Path(folder) / p.MEMBERS_DIR / str(number), tracker.best, unit, row,
                           samples / "best" / str(number))
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))
