"""Datasets: name -> loader; device-resident tensors; fixed train/valid/test splits.

Every split is one float32 tensor on the requested device, so training draws minibatches by
indexing (`minibatch`) with no DataLoader, no worker processes and no host round trips.
Images are kept in the canonical scale [0, 1] with shape (N, C, H, W) (the Parzen protocol of
Goodfellow 2014 scores MNIST in [0, 1]); whoever trains a tanh generator maps them to [-1, 1].
2D toy sets have shape (N, 2).

Where image data comes from, in order (the first place that has the files wins):
  1. the `data_dir` argument (a study's `trial.data_dir`);
  2. the GANSWEEP_DATA environment variable;
  3. fashion-mnist only: Debian's `dataset-fashion-mnist` folder, /usr/share/datasets/fashion-mnist;
  4. the cache folder (GANSWEEP_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/gansweep), where
     torchvision downloads the data when the network allows. GANSWEEP_OFFLINE=1 skips the
     download attempt (useful on machines whose network hangs instead of failing).
A folder may hold the torchvision layout (ROOT/MNIST/raw/..., ROOT/cifar-10-batches-py/...) or,
for the MNIST-style sets, the four idx files themselves (plain or .gz, as Debian ships them),
directly or in a sub-folder named after the dataset; loose idx files are unpacked once into the
cache folder in torchvision's layout, since torchvision's reader wants them there, unpacked.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from gansweep.engine.dataset import IMAGE_SIGMAS, TOY_SIGMAS, Dataset  # noqa: F401 (read here by callers)
from gansweep.engine.image_files import CpuSplits, find_root, image_cpu
from gansweep.engine.image_files import image_labels as image_labels_on_disk
from gansweep.errors import ConfigError, DataError

# Fixed toy split sizes; `n_train` may change the training size only.
TOY_SIZES: dict[str, int] = {"train": 10_000, "valid": 1_000, "test": 2_000}

LINE_NOISE_STD = 0.02  # added to y after the noiseless curve is rescaled to [-1, 1]
CIRCLE_RADIUS = 0.7  # seed 003
CIRCLE_NOISE_STD = 0.08  # seed 003; isotropic 2D noise around points on the circle
RING_RADIUS = 1.0
# Mode widths: VEEGAN/PacGAN use std 0.02 (ring radius 2, grid spacing 2). We keep 0.02 on a
# radius-1 ring (neighbouring centres 0.77 apart) and a spacing-0.5 grid: 3 std = 0.06, so the
# 3-std "high quality" discs of neighbouring modes are far apart.
RING_MODE_STD = 0.02
GRID_MODE_STD = 0.02

# digits splits are fixed for every trial seed, so that trials with different seeds are scored
# on the same held-out images.
DIGITS_SPLIT_SEED = 20_240_601
DIGITS_SIZES: dict[str, int] = {"train": 1_197, "valid": 300, "test": 300}


class Loader(Protocol):
    """What DATASETS maps a name to; load_dataset validates the arguments first."""

    def __call__(
        self, *, data_dir: str | None, seed: int, device: torch.device, n_train: int | None
    ) -> Dataset: ...


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    n_train: int | None = None,
) -> Dataset:
    """Load (or generate) dataset `name` with its splits on `device`.

    `name` may also be the path of a researcher's own data (gansweep.engine.userdata).
    `seed` only affects the 2D toy sets and the splits of a file (image splits are fixed). `n_train` sets the number of
    training points of a toy set and caps an image training split at its first `n_train`
    examples. Raises DataError for an unknown name or data that cannot be found.
    """
    if n_train is not None and n_train < 1:
        raise DataError(f"n_train must be at least 1, got {n_train}")
    if name not in DATASETS:
        from pathlib import Path

        from gansweep.engine.userdata import load_file_dataset  # pandas, torchvision: only for files

        if not Path(name).exists():
            raise DataError(
                f"unknown dataset {name!r}: no such file or folder, and valid names of the "
                f"built-in sets are {', '.join(DATASETS)}"
            )
        return load_file_dataset(name, seed=seed, device=resolve_device(device), n_train=n_train)
    loader = DATASETS[name]
    return loader(data_dir=data_dir, seed=seed, device=resolve_device(device), n_train=n_train)


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' means CUDA when available, else CPU; CUDA asked for without one is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but no CUDA device is visible")
    return torch.device(device)


def minibatch(data: Tensor, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
    """`batch_size` examples drawn uniformly with replacement from `data` (dim 0).

    The indices are drawn on data.device, so a CUDA batch needs no host sync; a `generator`
    must live on that same device.
    """
    index = torch.randint(
        0, data.shape[0], (batch_size,), device=data.device, generator=generator
    )  # (batch_size,)
    return data[index]


# ---------------------------------------------------------------------------- 2D toy sets


def _split_generator(name: str, seed: int, split: str) -> torch.Generator:
    """An independent stream per (dataset, seed, split): the valid and test points do not
    change when n_train changes the size of the training split."""
    digest = hashlib.sha256(f"{name}:{seed}:{split}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") % 2**63)


def _toy_dataset(
    name: str,
    sample: Callable[[int, torch.Generator], Tensor],
    *,
    seed: int,
    device: torch.device,
    n_train: int | None,
    modes: Tensor | None = None,
    mode_std: float | None = None,
) -> Dataset:
    sizes = {**TOY_SIZES, "train": n_train or TOY_SIZES["train"]}
    splits = {
        split: sample(size, _split_generator(name, seed, split)).to(device)
        for split, size in sizes.items()
    }
    return Dataset(
        name=name,
        is_image=False,
        default_sigmas=TOY_SIGMAS,
        modes=None if modes is None else modes.to(device),
        mode_std=mode_std,
        **splits,
    )


def _sample_line(n: int, gen: torch.Generator) -> Tensor:
    # seed 003: t ~ U[-1, 1], y = t^2 sin(t). t^2 sin t is odd and increasing on [-1, 1], so
    # the noiseless curve spans [-sin 1, sin 1]; dividing by sin 1 makes it span [-1, 1].
    t = torch.rand(n, generator=gen) * 2 - 1  # (n,)
    y = t.square() * torch.sin(t) / math.sin(1.0)
    y = y + LINE_NOISE_STD * torch.randn(n, generator=gen)
    return torch.stack([t, y], dim=1)  # (n, 2)


def _sample_circle(n: int, gen: torch.Generator) -> Tensor:
    angle = torch.rand(n, generator=gen) * (2 * math.pi)
    points = CIRCLE_RADIUS * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return points + CIRCLE_NOISE_STD * torch.randn(n, 2, generator=gen)  # (n, 2)


def _sample_mixture(centres: Tensor, std: float) -> Callable[[int, torch.Generator], Tensor]:
    """Equal-weight isotropic Gaussians at `centres` (n_modes, 2)."""

    def sample(n: int, gen: torch.Generator) -> Tensor:
        which = torch.randint(0, centres.shape[0], (n,), generator=gen)
        return centres[which] + std * torch.randn(n, 2, generator=gen)  # (n, 2)

    return sample


def ring8_centres() -> Tensor:
    angle = torch.arange(8, dtype=torch.float32) * (2 * math.pi / 8)
    return RING_RADIUS * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)  # (8, 2)


def grid25_centres() -> Tensor:
    axis = torch.linspace(-1.0, 1.0, 5)
    x, y = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], dim=1)  # (25, 2)


def _toy_loader(
    name: str,
    sample: Callable[[int, torch.Generator], Tensor],
    modes: Tensor | None = None,
    mode_std: float | None = None,
) -> Loader:
    def load(
        *, data_dir: str | None, seed: int, device: torch.device, n_train: int | None
    ) -> Dataset:
        del data_dir  # generated, not read
        return _toy_dataset(
            name, sample, seed=seed, device=device, n_train=n_train, modes=modes, mode_std=mode_std
        )

    return load


# ---------------------------------------------------------------------------- image sets



def _image_dataset(
    name: str, splits: CpuSplits, *, device: torch.device, n_train: int | None
) -> Dataset:
    train, valid, test = splits
    if n_train is not None:
        train = train[:n_train]
    # .to() is a no-op on CPU, so clone there: the in-process cache must not be changed by a
    # caller that rescales its tensors in place.
    move = (lambda t: t.clone()) if device.type == "cpu" else (lambda t: t.to(device))
    return Dataset(
        name=name,
        train=move(train),
        valid=move(valid),
        test=move(test),
        is_image=True,
        default_sigmas=IMAGE_SIGMAS,
    )


@functools.lru_cache(maxsize=1)
def _digits_cpu() -> CpuSplits:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    images = torch.as_tensor(load_digits().images, dtype=torch.float32) / 16.0  # (1797, 8, 8)
    images = images.unsqueeze(1)  # (1797, 1, 8, 8)
    fixed = torch.Generator().manual_seed(DIGITS_SPLIT_SEED)
    order = torch.randperm(images.shape[0], generator=fixed)
    images = images[order]
    n_train, n_valid = DIGITS_SIZES["train"], DIGITS_SIZES["valid"]
    return images[:n_train], images[n_train : n_train + n_valid], images[n_train + n_valid :]


def image_labels(name: str, data_dir: str | None = None) -> CpuSplits:
    """The class labels (int64, on the CPU) of an image set's (train, valid, test) splits,
    aligned with load_dataset's images: what gansweep.engine.features trains its domain
    classifier on. Raises DataError for a 2D set (it has no labels) or missing files."""
    if name == "digits":
        from sklearn.datasets import load_digits

        labels = torch.as_tensor(load_digits().target, dtype=torch.long)
        labels = labels[torch.randperm(labels.shape[0], generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))]
        n_train, n_valid = DIGITS_SIZES["train"], DIGITS_SIZES["valid"]
        return labels[:n_train], labels[n_train : n_train + n_valid], labels[n_train + n_valid :]
    if name not in DATASETS or name in ("line", "circle", "ring8", "grid25"):
        raise DataError(f"dataset {name!r} has no class labels; only image sets do")
    return image_labels_on_disk(name, find_root(name, data_dir).resolve())


def _load_digits(
    *, data_dir: str | None, seed: int, device: torch.device, n_train: int | None
) -> Dataset:
    del data_dir, seed  # bundled data, fixed splits
    return _image_dataset("digits", _digits_cpu(), device=device, n_train=n_train)


def _image_loader(name: str) -> Loader:
    def load(
        *, data_dir: str | None, seed: int, device: torch.device, n_train: int | None
    ) -> Dataset:
        del seed  # image splits are fixed (Goodfellow's protocol)
        root = find_root(name, data_dir).resolve()
        return _image_dataset(name, image_cpu(name, root), device=device, n_train=n_train)

    return load


DATASETS: dict[str, Loader] = {
    "line": _toy_loader("line", _sample_line),
    "circle": _toy_loader("circle", _sample_circle),
    "ring8": _toy_loader(
        "ring8", _sample_mixture(ring8_centres(), RING_MODE_STD), ring8_centres(), RING_MODE_STD
    ),
    "grid25": _toy_loader(
        "grid25", _sample_mixture(grid25_centres(), GRID_MODE_STD), grid25_centres(), GRID_MODE_STD
    ),
    "digits": _load_digits,
    "mnist": _image_loader("mnist"),
    "fashion-mnist": _image_loader("fashion-mnist"),
    "cifar10": _image_loader("cifar10"),
}
