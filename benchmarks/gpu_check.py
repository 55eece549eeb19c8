"""The engine on a CUDA GPU, for a machine that has one (none of the tests needs it):

1. agreement: the four executions of one trial (eager, packed, compiled, compiled_packed) on
   the GPU, each variant of the game, per-epoch losses against the GPU's eager execution
   (the draws come from the device's own generator, so CPU and GPU runs differ in their
   numbers, not in their maths: the comparison is within the device);
2. speed: iterations per second of one [128, 128] ring8 trial and of a pack of 64, eager and
   compiled, on the GPU against one CPU thread;
3. NVML: the worker's system metrics sampler while a trial trains on the GPU.

    python -m benchmarks.gpu_check --out results/      # writes gpu_check.json and prints it

Results in benchmarks/README.md ("The engine on a GPU").
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gansweep.config.schema import TrialConfig
from gansweep.engine import run
from gansweep.engine.data import load_dataset

TOY = dict(
    dataset="circle", g_hidden=(16, 16), d_hidden=(16, 16), noise_dim=4, batch_size=32, epochs=2,
    steps_per_epoch=12, eval_every=2, eval_samples=200, eval_valid=100, eval_test=100,
)
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "least_squares": {"loss": "least_squares", "label_smoothing": 0.9},
    "hinge": {"loss": "hinge"},
    "wasserstein_gp_k3": {"loss": "wasserstein_gp", "k": 3},
    "weight_smoothed": {"alpha_mode": "weight", "alpha": 0.3, "label_smoothing": 0.9},
    "bernoulli_k3": {"alpha_mode": "bernoulli", "alpha": 0.7, "k": 3},
    "sgd_schedule": {"optimizer": "sgd", "lr_d": 0.02, "momentum": 0.5, "momentum_final": 0.9},
    "feature_matching": {"loss": "feature_matching"},
    "minibatch_vbn_averaging": {"minibatch_discrimination": 4, "g_norm": "virtual_batch",
                                "historical_averaging": 0.5},
}
COMPILED_VARIANTS = ("default", "minibatch_vbn_averaging")
LOGGED = ("d_loss", "g_loss", "d_real", "d_fake")


def losses(trials: list[TrialConfig], data: Any, execution: str) -> list[list[dict[str, float]]]:
    unit = run.build_unit(trials, data, execution=execution)
    history: list[list[dict[str, float]]] = [[] for _ in trials]
    for _ in range(trials[0].epochs):
        for member, metrics in zip(history, run.train_epoch(unit), strict=True):
            member.append(metrics)
    return history


def largest_gap(mine: list[dict[str, float]], reference: list[dict[str, float]]) -> float:
    """The largest relative difference of a logged value, any epoch."""
    return max(
        abs(a[name] - b[name]) / max(abs(b[name]), 1e-5)
        for a, b in zip(mine, reference, strict=True) for name in LOGGED
    )


def agreement(device: str) -> dict[str, dict[str, Any]]:
    """Per variant, each execution's largest gap to the eager execution on `device`."""
    data = load_dataset("circle", seed=0, device=device)  # where the worker loads it: the trial's device
    gaps: dict[str, dict[str, Any]] = {}
    for name, variant in VARIANTS.items():
        trial = TrialConfig(**{**TOY, **variant, "device": device})
        (eager,) = losses([trial], data, "eager")
        executions = ["packed"] + (["compiled", "compiled_packed"] if name in COMPILED_VARIANTS else [])
        gaps[name] = {ex: attempt(lambda ex=ex: largest_gap(losses([trial], data, ex)[0], eager)) for ex in executions}
        print(name, gaps[name], flush=True)
    return gaps


def attempt(check: Callable[[], float]) -> float | str:
    """The check's figure, or what broke (its last lines), so that one failure ends no run."""
    try:
        return check()
    except Exception:
        return traceback.format_exc()[-1500:]


def rate(trials: list[TrialConfig], data: Any, execution: str, steps: int) -> float:
    """Trial-iterations per second after a warm-up (which compiles, where compiled)."""
    unit = run.build_unit(trials, data, execution=execution)
    hyper = run.hyper_of(unit.trials, unit.spec, 1, unit.device)
    run.run_iterations(unit, 20, hyper)
    sync(unit.device)
    started = time.perf_counter()
    run.run_iterations(unit, steps, hyper)
    sync(unit.device)
    return steps * len(trials) / (time.perf_counter() - started)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def speed(devices: list[str]) -> dict[str, float | str]:
    wide = dict(TOY, dataset="ring8", g_hidden=(128, 128), d_hidden=(128, 128), noise_dim=2, batch_size=128)
    rates: dict[str, float | str] = {}
    torch.set_num_threads(1)
    for device in devices:
        data = load_dataset("ring8", seed=0, device=device)
        lone = [TrialConfig(**wide, device=device)]
        pack = [TrialConfig(**wide, device=device, seed=s, lr_d=1e-4 * (1 + s / 64)) for s in range(64)]
        cases = [("lone eager", lone, "eager"), ("pack of 64 packed", pack, "packed"),
                 ("lone compiled", lone, "compiled"), ("pack of 64 compiled", pack, "compiled_packed")]
        for label, trials, execution in cases:
            if device == "cpu" and len(trials) > 1 and execution.startswith("compiled"):
                continue  # minutes of inductor on one CPU thread, measured on the CPU machines
            steps = 300 if device == "cpu" and len(trials) > 1 else 1000
            rates[f"{device} {label}"] = attempt(lambda: rate(trials, data, execution, steps))
            print(device, label, rates[f"{device} {label}"], flush=True)
    return rates


def nvml() -> dict[str, float]:
    from gansweep.service.sysmetrics import SystemSampler

    sampler = SystemSampler(cuda_index=0)
    data = load_dataset("ring8", seed=0, device="cuda")
    wide = dict(TOY, dataset="ring8", g_hidden=(512, 512), d_hidden=(512, 512), noise_dim=2, batch_size=512)
    pack = [TrialConfig(**wide, device="cuda", seed=s) for s in range(64)]
    rate(pack, data, "packed", 300)
    return sampler.sample()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--device", default="cuda", help="the agreement check's device (cpu: a dry run)")
    parser.add_argument("--speed-devices", nargs="+", default=["cpu", "cuda"],
                        help="leave out cpu where other work shares the machine's cores")
    parser.add_argument("--skip", nargs="*", default=[], choices=["agreement", "speed", "nvml"])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"torch": torch.__version__,
                              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    for name, check in (("nvml", nvml), ("agreement", lambda: agreement(args.device)), ("speed", lambda: speed(args.speed_devices))):
        if name in args.skip:
            continue
        started = time.perf_counter()
        try:
            report[name] = check()
        except Exception as error:  # report what broke and go on to the next check
            report[name] = {"error": f"{type(error).__name__}: {error}"}
        report[f"{name}_seconds"] = round(time.perf_counter() - started, 1)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
