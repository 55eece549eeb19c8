"""What an epoch is, as small pure functions: its iterations, which epochs evaluate and draw
samples, SGD's momentum schedule, the divergence check, the theory gaps, and the device
choices (bf16, batch norm) that decide an execution's details."""

from __future__ import annotations

import math

import torch
from torch import nn

from gansweep.config.schema import TrialConfig
from gansweep.config.theory import equilibrium, realised_share
from gansweep.errors import TrialDiverged

Metrics = dict[str, float]


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 matrices in hardware (else bf16 is emulated)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
    return False


def has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def momentum_at(trial: TrialConfig, epoch: int) -> float:
    """Goodfellow's schedule: momentum ramps linearly from `momentum` to `momentum_final`."""
    if trial.momentum_final is None or trial.epochs == 1:
        return trial.momentum
    share = (epoch - 1) / (trial.epochs - 1)
    return trial.momentum + share * (trial.momentum_final - trial.momentum)


def steps_per_epoch(trial: TrialConfig, n_train: int) -> int:
    return trial.steps_per_epoch or max(1, n_train // trial.batch_size)


def samples_per_second(trial: TrialConfig, steps: int, elapsed: float) -> float:
    """Each of `steps` iterations feeds m samples to each of k D steps and to the G step."""
    return steps * trial.batch_size * (trial.k + 1) / elapsed


def is_eval_epoch(trial: TrialConfig, epoch: int) -> bool:
    return epoch % trial.eval_every == 0 or epoch == trial.epochs


def is_sample_epoch(trial: TrialConfig, epoch: int) -> bool:
    if trial.sample_epochs is None:
        return is_eval_epoch(trial, epoch)
    return epoch in trial.sample_epochs


def divergence(metrics: Metrics, epoch: int) -> TrialDiverged | None:
    """The error of an epoch whose D or G loss is NaN or infinite, else None."""
    for name in ("d_loss", "g_loss"):
        if not math.isfinite(metrics[name]):
            return TrialDiverged(epoch, name, metrics[name])
    return None


def theory_metrics(trial: TrialConfig, metrics: Metrics) -> Metrics:
    """The equilibrium losses of THEORY.md and the gaps to them, where theory gives them: at
    the real share D's minibatch really has (config.theory.realised_share)."""
    star = equilibrium(trial.loss, realised_share(trial.alpha_mode, trial.alpha, trial.batch_size), trial.label_smoothing)
    if star is None:
        return {}
    return {
        "d_loss_star": star.d_loss,
        "g_loss_star": star.g_loss,
        "d_loss_gap": abs(metrics["d_loss"] - star.d_loss),
        "g_loss_gap": abs(metrics["g_loss"] - star.g_loss),
    }
