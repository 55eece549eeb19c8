"""A researcher's own data (`dataset:` a path) as a Dataset: the file read and checked by
gansweep.config.datafile, an image folder through torchvision's ImageFolder, the examples
split by a permutation drawn from the seed (datafile.split_order), and a Parzen sigma grid
suited to the data's scale.

Sigma grids: images are in [0, 1] as the built-in image sets are, so they get the same grid
(Goodfellow's logspace(-1, 0, 10)). Points have any scale: they get the toy sets' grid
(0.01 to 1 for sets whose coordinates have a standard deviation near TOY_SCALE) times their
own scale over TOY_SCALE, so that a file of points measured in other units is searched over
the same grid relative to its spread (Parzen's ll then moves by exactly -d log(factor)).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gansweep.config import datafile
from gansweep.engine.dataset import IMAGE_SIGMAS, TOY_SIGMAS, Dataset
from gansweep.errors import DataError

# The mean standard deviation of a coordinate of the built-in 2D sets' points (circle: 0.50,
# ring8: 0.71, grid25: 0.71, line: 0.49), which TOY_SIGMAS was chosen for.
TOY_SCALE = 0.6


def load_file_dataset(
    path: str, *, seed: int, device: torch.device, n_train: int | None
) -> Dataset:
    """The Dataset of the file or folder at `path`, split from `seed`. Raises DataError
    naming the file and what is wrong with it."""
    try:
        info = datafile.inspect(path)
        examples = _read_examples(info)
    except datafile.DataFileProblem as err:
        raise DataError(f"dataset: {err}") from None
    order = torch.as_tensor(datafile.split_order(info.n, seed))
    sizes = info.splits
    n_valid, n_test = sizes["valid"], sizes["test"]
    valid, test, train = (examples[order[:n_valid]], examples[order[n_valid : n_valid + n_test]],
                          examples[order[n_valid + n_test :]])
    if n_train is not None:
        train = train[:n_train]
    is_image = info.kind == "images"
    return Dataset(
        name=path,
        train=train.to(device),
        valid=valid.to(device),
        test=test.to(device),
        is_image=is_image,
        default_sigmas=IMAGE_SIGMAS if is_image else point_sigmas(train),
    )


def point_sigmas(train: Tensor) -> tuple[float, ...]:
    """The toy grid scaled by the points' mean coordinate standard deviation over TOY_SCALE."""
    scale = float(train.double().std(dim=0).mean()) if train.shape[0] > 1 else 0.0
    if not np.isfinite(scale) or scale <= 0:
        scale = TOY_SCALE  # all points equal: no spread to scale by
    return tuple(s * scale / TOY_SCALE for s in TOY_SIGMAS)


def _read_examples(info: datafile.DataFile) -> Tensor:
    """(N, d) points or (N, C, H, W) images in [0, 1], float32 on the CPU."""
    if info.path.is_dir():
        return _read_image_folder(info.path)
    array = datafile.read_array(info.path)
    if info.kind == "images" and array.ndim == 3:
        array = array[:, None]  # (N, H, W) -> (N, 1, H, W)
    return torch.from_numpy(np.ascontiguousarray(array))


def _read_image_folder(folder: Path) -> Tensor:
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import pil_to_tensor

    images = ImageFolder(str(folder), transform=pil_to_tensor)
    try:
        stacked = torch.stack([image for image, _ in images])  # (N, 3, H, W) uint8
    except (OSError, RuntimeError) as err:
        raise DataError(f"dataset: {folder}: cannot read its images: {err}") from None
    return stacked.float() / 255.0
