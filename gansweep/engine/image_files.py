"""Image data sets on disk: where they are looked for (data_dir, GANSWEEP_DATA, Debian's
folder, the cache), torchvision's download where the network allows, and their reading into
float32 tensors in [0, 1] with Goodfellow's splits. gansweep.engine.data builds Datasets of them.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from torch import Tensor

from gansweep.errors import DataError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
MNIST_TRAIN = 50_000  # Goodfellow: train on the first 50,000, validate on 50,000..59,999
CIFAR_TRAIN = 45_000  # the last 5,000 of the 50,000 training images validate
DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation; an unreachable host must not hang a trial

CpuSplits = tuple[Tensor, Tensor, Tensor]  # (train, valid, test), float32 in [0, 1] on CPU


@dataclass(frozen=True)
class _ImageSource:
    """Where one torchvision image set lives and how its files are named."""

    tv_class: str  # torchvision.datasets class name; also MNIST-style sets' folder under root
    subdirs: tuple[str, ...]  # sub-folders of a search folder that may hold the files
    files: tuple[str, ...]  # files that must exist in the torchvision layout
    idx: bool  # MNIST-style idx files (may also lie loose, plain or gzipped)

    def layout_dir(self, root: Path) -> Path:
        """The folder torchvision reads below `root`."""
        return root / (f"{self.tv_class}/raw" if self.idx else "cifar-10-batches-py")


_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_SOURCES: dict[str, _ImageSource] = {
    "mnist": _ImageSource("MNIST", ("mnist",), _IDX_FILES, idx=True),
    "fashion-mnist": _ImageSource(
        "FashionMNIST", ("fashion-mnist", "fashion_mnist"), _IDX_FILES, idx=True
    ),
    "cifar10": _ImageSource(
        "CIFAR10",
        ("cifar10", "cifar-10"),
        (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
        idx=False,
    ),
}


def cache_dir() -> Path:
    """GANSWEEP_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/gansweep."""
    explicit = os.environ.get("GANSWEEP_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "gansweep"


def _has_files(folder: Path, names: tuple[str, ...], suffixes: tuple[str, ...] = ("",)) -> bool:
    return all(any((folder / (n + s)).is_file() for s in suffixes) for n in names)


def _unpack_idx(folder: Path, target: Path) -> None:
    """Copy loose idx files (plain or .gz) from `folder` into `target`, unpacked. Each file is
    written to a temporary name and renamed, so a concurrent or interrupted trial never sees
    a half-written file."""
    target.mkdir(parents=True, exist_ok=True)
    for name in _IDX_FILES:
        if (target / name).is_file():
            continue
        plain, packed = folder / name, folder / f"{name}.gz"
        def opener() -> BinaryIO:
            return open(plain, "rb") if plain.is_file() else gzip.open(packed, "rb")

        fd, tmp = tempfile.mkstemp(dir=target, prefix=f".{name}.", suffix=".tmp")
        try:
            with opener() as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
            os.replace(tmp, target / name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _search_folders(name: str, data_dir: str | None) -> list[tuple[str, Path | None]]:
    """(label, folder) in search order, before the cache; folder None where unset."""
    env = os.environ.get("GANSWEEP_DATA")
    places: list[tuple[str, Path | None]] = [
        ("data_dir", Path(data_dir).expanduser() if data_dir else None),
        ("GANSWEEP_DATA", Path(env).expanduser() if env else None),
    ]
    if name == "fashion-mnist":
        places.append(("Debian dataset-fashion-mnist", DEBIAN_FASHION_MNIST))
    return places


def find_root(name: str, data_dir: str | None) -> Path:
    """The torchvision root holding dataset `name`, unpacking or downloading into the cache
    where needed. Raises DataError naming every place looked."""
    source = _SOURCES[name]
    looked: list[str] = []
    cache = cache_dir()
    for label, folder in _search_folders(name, data_dir):
        if folder is None:
            looked.append(f"{label} (not set)")
            continue
        looked.append(f"{label}: {folder}")
        for sub in (folder, *(folder / s for s in source.subdirs)):
            if _has_files(source.layout_dir(sub), source.files):
                return sub
            if source.idx and _has_files(sub, _IDX_FILES, ("", ".gz")):
                try:
                    _unpack_idx(sub, source.layout_dir(cache))
                except OSError as err:
                    raise DataError(
                        f"dataset {name!r}: found idx files in {sub} but cannot unpack them into "
                        f"the cache {cache}: {err}. Set GANSWEEP_CACHE to a writable folder."
                    ) from None
                return cache
    if _has_files(source.layout_dir(cache), source.files):
        return cache
    if os.environ.get("GANSWEEP_OFFLINE", "") not in ("", "0"):
        looked.append(f"cache: {cache} (download skipped: GANSWEEP_OFFLINE is set)")
    else:
        problem = _download(name, cache)
        if problem is None:
            return cache
        looked.append(f"cache: {cache} (download failed: {problem})")
    hint = (
        "Put the data in a folder (torchvision's layout, or for MNIST-style sets the four idx "
        "files, plain or .gz) and set trial.data_dir or GANSWEEP_DATA to it"
    )
    if name == "fashion-mnist":
        hint += ", or install Debian's package: apt-get install dataset-fashion-mnist"
    raise DataError(f"dataset {name!r} not found. Looked in: {'; '.join(looked)}. {hint}.")


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """torchvision opens URLs with no timeout; bound each socket operation so that a
    network that drops packets fails the download instead of hanging the trial."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download(name: str, cache: Path) -> str | None:
    """Download `name` into `cache` with torchvision; the error's text on failure."""
    import torchvision.datasets

    tv_class = getattr(torchvision.datasets, _SOURCES[name].tv_class)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            tv_class(root=str(cache), train=True, download=True)
            tv_class(root=str(cache), train=False, download=True)
    except Exception as err:  # URLError, timeouts, md5 mismatches: any failure means "absent"
        return " ".join(f"{type(err).__name__}: {err}".split())[:300]
    return None


def _read_torchvision(name: str, root: Path, train: bool) -> Tensor:
    """One official split as uint8 (N, C, H, W), read by torchvision from `root`."""
    import torchvision.datasets

    tv_class = getattr(torchvision.datasets, _SOURCES[name].tv_class)
    try:
        data = tv_class(root=str(root), train=train, download=False).data
    except Exception as err:  # corrupt or truncated files
        raise DataError(f"dataset {name!r}: cannot read the files under {root}: {err}") from None
    data = torch.as_tensor(data)
    if data.dim() == 3:  # MNIST-style (N, H, W)
        return data.unsqueeze(1)
    return data.permute(0, 3, 1, 2)  # CIFAR numpy arrays are (N, H, W, C)


@functools.lru_cache(maxsize=4)
def image_cpu(name: str, root: Path) -> CpuSplits:
    """Decoded [0, 1] float32 splits, cached per (name, root) for the life of the process, so
    that trials reusing a worker load each image set once."""
    train_all = _read_torchvision(name, root, train=True)
    test = _read_torchvision(name, root, train=False)
    n_train = CIFAR_TRAIN if name == "cifar10" else MNIST_TRAIN

    def scale(images: Tensor) -> Tensor:
        return images.contiguous().to(torch.float32).div_(255.0)

    return scale(train_all[:n_train]), scale(train_all[n_train:]), scale(test)


@functools.lru_cache(maxsize=4)
def image_labels(name: str, root: Path) -> CpuSplits:
    """The class labels (int64) of image_cpu's (train, valid, test) splits, in their order."""
    import torchvision.datasets

    tv_class = getattr(torchvision.datasets, _SOURCES[name].tv_class)
    try:
        train_all, test = (torch.as_tensor(tv_class(root=str(root), train=t, download=False).targets) for t in (True, False))
    except Exception as err:  # corrupt or truncated files
        raise DataError(f"dataset {name!r}: cannot read the labels under {root}: {err}") from None
    n_train = CIFAR_TRAIN if name == "cifar10" else MNIST_TRAIN
    return train_all[:n_train].long(), train_all[n_train:].long(), test.long()
