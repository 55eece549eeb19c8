"""One data set as the engine holds it (`Dataset`: its splits, each one tensor on one device),
its Parzen sigma grids, and the scale a trial trains it in. The loaders (engine/data.py for
the built-in sets, engine/userdata.py for a researcher's files) build it; everything that
trains or scores reads it.

Scales: the data keep their own coordinates (2D points as generated, images in [0, 1]); a
tanh generator of images trains on 2x - 1 and its samples are mapped back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gansweep.config.schema import TrialConfig

# Parzen sigma grids. Images: Goodfellow's logspace(-1, 0, 10) for data in [0, 1]. Toys live
# in about [-1, 1]^2 with features down to the 0.02 mode width, so the grid reaches lower.
IMAGE_SIGMAS: tuple[float, ...] = tuple(10 ** (-1 + i / 9) for i in range(10))
TOY_SIGMAS: tuple[float, ...] = tuple(10 ** (-2 + 2 * i / 9) for i in range(10))


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no truth value for ==
class Dataset:
    """One dataset's splits, each a single tensor on one device."""

    name: str
    train: Tensor  # (n_train, *shape) float32
    valid: Tensor  # (n_valid, *shape)
    test: Tensor  # (n_test, *shape)
    is_image: bool
    default_sigmas: tuple[float, ...]  # the Parzen sigma grid searched on the validation split
    modes: Tensor | None = None  # (n_modes, 2) centres of ring8 / grid25, else None
    mode_std: float | None = None  # std of each mode's Gaussian, else None

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example: (2,) for toys, (C, H, W) for images."""
        return tuple(self.train.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.train.device


def image_tanh(trial: TrialConfig, data: Dataset) -> bool:
    """Whether the generator trains on images rescaled to [-1, 1] (a tanh output)."""
    return data.is_image and trial.generator_output == "tanh"


def to_model_scale(trial: TrialConfig, data: Dataset, x: Tensor) -> Tensor:
    return x * 2.0 - 1.0 if image_tanh(trial, data) else x


def to_data_scale(trial: TrialConfig, data: Dataset, x: Tensor) -> Tensor:
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0) if image_tanh(trial, data) else x
