"""A researcher's own data as `dataset:` a path: what kinds of file are read, their checks,
their content hash and their splits. NumPy (and Pillow, for image headers) only: the
engine turns the arrays into tensors (gansweep.engine.userdata), and `gansweep validate`
and `gansweep run` refuse a bad file before anything is written.

Kinds, by the path:
  .npy            points, an (N, d) array of numbers, d >= 1
  .csv            points, N rows of d numbers; a first row of column names is skipped
  .npz            an array `x`: (N, d) points, (N, H, W) or (N, C, H, W) images, and an
                  optional `y` of N labels (kept aside: the GANs here are unconditional)
  a folder        images in one sub-folder per class (torchvision's ImageFolder layout)
Images are scaled to [0, 1] as the built-in image sets are: integers (0..255) divided by
255, floats taken as they are and refused outside [0, 1].

Splits: a permutation of the N examples drawn from the trial's seed (as the toy sets' points
are), then SPLIT_FRACTIONS of them for validation and for test, the rest for training.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from gansweep.config.names import IMAGE_DATASETS, TOY_DATASETS

BUILT_IN = TOY_DATASETS + IMAGE_DATASETS
POINT_SUFFIXES = (".npy", ".csv")
ARRAY_SUFFIXES = (*POINT_SUFFIXES, ".npz")
# torchvision.datasets.folder.IMG_EXTENSIONS, spelled out: config imports no torchvision.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_FRACTIONS = {"valid": 0.1, "test": 0.1}
MIN_EXAMPLES = 10  # one validation and one test example and eight to train on
HASH_CHUNK = 1 << 20
CHECK_ROWS = 65_536  # rows of a memory-mapped array checked for NaN at a time

Kind = Literal["points", "images"]


class DataFileProblem(ValueError):
    """What is wrong with a data file; the message names the file."""


@dataclass(frozen=True)
class DataFile:
    """A data file that passed its checks."""

    path: Path
    kind: Kind
    n: int  # examples
    shape: tuple[int, ...]  # of one example: (d,) points, (C, H, W) images
    digest: str  # sha256 of the content (of every image's path and bytes, for a folder)

    @property
    def splits(self) -> dict[str, int]:
        return split_sizes(self.n)


def is_built_in(dataset: str) -> bool:
    return dataset in BUILT_IN


def resolve(dataset: str, folder: Path) -> str:
    """A built-in name as it is, a path made absolute against `folder` (the study's)."""
    if is_built_in(dataset):
        return dataset
    return str((folder / Path(dataset).expanduser()).resolve())


def split_sizes(n: int) -> dict[str, int]:
    """Examples per split of a set of n: validation and test SPLIT_FRACTIONS (at least one
    each), training the rest."""
    valid, test = (max(1, math.floor(n * SPLIT_FRACTIONS[s])) for s in ("valid", "test"))
    return {"train": n - valid - test, "valid": valid, "test": test}


def split_order(n: int, seed: int) -> np.ndarray:
    """The permutation that splits a file's n examples, numpy's default_rng(seed)'s: anyone
    can redraw it (validation first, then test, then training, in this order)."""
    return np.random.default_rng(seed).permutation(n)


# ---------------------------------------------------------------------------- checks


def inspect(path: str | Path) -> DataFile:
    """The checked data file at `path`. Raises DataFileProblem naming the file and what is
    wrong: missing, empty, an unknown kind, a wrong shape, NaN or infinite values, text in a
    CSV, images out of range or of different sizes, too few examples for the splits."""
    path = Path(path)
    stat = _stat(path)
    return _inspect(path, stat)


def _stat(path: Path) -> tuple[int, int]:
    if not path.exists():
        raise DataFileProblem(f"{path}: no such file or folder")
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=16)
def _inspect(path: Path, stat: tuple[int, int]) -> DataFile:
    """inspect(), once per file version (size, mtime): the schema asks a file's kind often."""
    del stat  # part of the cache key only
    if path.is_dir():
        files = image_files(path)
        kind: Kind = "images"
        shape = _image_folder_shape(path, files)
        n = len(files)
    else:
        array = read_array(path)
        kind = "points" if array.ndim == 2 else "images"
        n, shape = array.shape[0], tuple(array.shape[1:])
        if kind == "images":
            shape = shape if len(shape) == 3 else (1, *shape)
    if n < MIN_EXAMPLES:
        sizes = ", ".join(f"{s} {share:.0%}" for s, share in SPLIT_FRACTIONS.items())
        raise DataFileProblem(
            f"{path}: {n} examples are too few for the splits (validation and test take "
            f"{sizes}, at least one each): give at least {MIN_EXAMPLES}"
        )
    return DataFile(path=path, kind=kind, n=n, shape=shape, digest=content_digest(path))


def data_kind(dataset: str) -> Kind | None:
    """'points' or 'images' for a built-in name or a readable file; None where the file
    cannot be read (its check reports why)."""
    if dataset in TOY_DATASETS:
        return "points"
    if dataset in IMAGE_DATASETS:
        return "images"
    try:
        return inspect(dataset).kind
    except DataFileProblem:
        return None


def read_array(path: Path) -> np.ndarray:
    """The checked array of a .npy, .csv or .npz file: (N, d) points as float32, or images
    (N, H, W) / (N, C, H, W) as float32 in [0, 1]."""
    suffix = path.suffix.lower()
    if suffix not in ARRAY_SUFFIXES:
        raise DataFileProblem(
            f"{path}: unknown kind of data file {suffix or '(no suffix)'!r}; give a .npy or "
            ".csv of points, a .npz with an array x, or a folder of images in class folders"
        )
    if path.stat().st_size == 0:
        raise DataFileProblem(f"{path}: empty file")
    if suffix == ".csv":
        return _finite(path, "the file", _read_csv(path)).astype(np.float32)
    if suffix == ".npy":
        array = _load_npy(path)
        _check_points_shape(path, array, "the array")
        return _finite(path, "the array", array).astype(np.float32)
    return _read_npz(path)


def _load_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataFileProblem(f"{path}: not a NumPy .npy array ({err})") from None
    return _numeric(path, "the array", array)


def _numeric(path: Path, what: str, array: np.ndarray) -> np.ndarray:
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise DataFileProblem(f"{path}: {what} holds {array.dtype} values, not real numbers")
    return array


def _check_points_shape(path: Path, array: np.ndarray, what: str) -> None:
    if array.ndim != 2 or array.shape[1] < 1:
        hint = f"; reshape it to ({array.shape[0]}, 1) for 1-D points" if array.ndim == 1 else ""
        raise DataFileProblem(f"{path}: {what} must be N x d points, got shape {array.shape}{hint}")
    if array.shape[0] == 0:
        raise DataFileProblem(f"{path}: {what} has no rows (shape {array.shape})")


def _finite(path: Path, what: str, array: np.ndarray) -> np.ndarray:
    """`array`, refused where it holds NaN or infinite values (naming the first one)."""
    if np.issubdtype(array.dtype, np.integer):
        return array
    for start in range(0, array.shape[0], CHECK_ROWS):
        block = np.asarray(array[start : start + CHECK_ROWS])
        bad = ~np.isfinite(block)
        if bad.any():
            where = np.argwhere(bad)[0]
            index = (start + int(where[0]), *(int(i) for i in where[1:]))
            raise DataFileProblem(
                f"{path}: {what} holds {int(bad.sum())} NaN or infinite values in rows "
                f"{start}..{start + block.shape[0] - 1}, the first {block[tuple(where)]} at "
                f"index {index}"
            )
    return np.asarray(array)


def _read_csv(path: Path) -> np.ndarray:
    """N rows of d numbers; a first row that is all names (a header) is skipped."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = [(number, row) for number, row in enumerate(csv.reader(handle), 1) if row]
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataFileProblem(f"{path}: not a text CSV file ({err})") from None
    if rows and not any(_is_number(cell) for cell in rows[0][1]):
        rows = rows[1:]  # the column names
    if not rows:
        raise DataFileProblem(f"{path}: empty file (no rows of numbers)")
    width = len(rows[0][1])
    values = []
    for number, row in rows:
        if len(row) != width:
            raise DataFileProblem(
                f"{path}: line {number} has {len(row)} values, the first row {width}: a CSV of "
                "points has d numbers on every line"
            )
        for column, cell in enumerate(row, 1):
            if not _is_number(cell):
                raise DataFileProblem(
                    f"{path}: line {number}, column {column}: {cell!r} is not a number (a CSV "
                    "of points holds numbers only, with an optional first row of names)"
                )
        values.append([float(cell) for cell in row])
    return np.array(values, dtype=np.float64)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _read_npz(path: Path) -> np.ndarray:
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataFileProblem(f"{path}: not a NumPy .npz archive ({err})") from None
    with archive:
        if "x" not in archive.files:
            raise DataFileProblem(
                f"{path}: no array 'x' (it holds {', '.join(archive.files) or 'nothing'}); "
                "a .npz data set keeps its examples in x and optional labels in y"
            )
        x = _numeric(path, "x", archive["x"])
        y = archive["y"] if "y" in archive.files else None
    if x.ndim not in (2, 3, 4) or x.shape[0] == 0 or 0 in x.shape[1:]:
        raise DataFileProblem(
            f"{path}: x must be N x d points, N x H x W or N x C x H x W images, got shape "
            f"{x.shape}"
        )
    if y is not None and (y.ndim != 1 or y.shape[0] != x.shape[0]):
        raise DataFileProblem(f"{path}: y must hold one label per example of x ({x.shape[0]}), got shape {y.shape}")
    x = _finite(path, "x", x)
    if x.ndim == 2:
        return x.astype(np.float32)
    return unit_scale_images(path, x)


def unit_scale_images(path: Path, x: np.ndarray) -> np.ndarray:
    """Images in [0, 1] as float32: integers 0..255 divided by 255, floats kept in [0, 1]."""
    low, high = float(x.min()), float(x.max())
    if np.issubdtype(x.dtype, np.integer):
        if low < 0 or high > 255:
            raise DataFileProblem(f"{path}: x holds integer pixels in [{low:g}, {high:g}], not 0..255")
        return (x / 255.0).astype(np.float32)
    if low < 0 or high > 1:
        raise DataFileProblem(
            f"{path}: x holds float pixels in [{low:g}, {high:g}]; images are read in [0, 1] "
            "(give floats in [0, 1] or integers 0..255)"
        )
    return x.astype(np.float32)


# ---------------------------------------------------------------------------- image folders


def image_files(folder: Path) -> list[Path]:
    """The images of an ImageFolder layout (folder/<class>/<image>), sorted as torchvision
    sorts them. Refuses a folder without class folders or without images."""
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DataFileProblem(
            f"{folder}: empty folder: no class folders (an image folder holds one sub-folder per "
            "class, each with its images)"
        )
    files = [
        f for c in classes for f in sorted(c.rglob("*"))
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise DataFileProblem(
            f"{folder}: empty folder: no images ({', '.join(IMAGE_SUFFIXES)}) in its class "
            f"folders {', '.join(c.name for c in classes)}"
        )
    return files


def _image_folder_shape(folder: Path, files: list[Path]) -> tuple[int, int, int]:
    """(3, H, W) of every image (ImageFolder reads them as RGB): read from the headers,
    refused where one cannot be read or sizes differ."""
    from PIL import Image, UnidentifiedImageError

    sizes: dict[tuple[int, int], Path] = {}
    for file in files:
        try:
            with Image.open(file) as image:
                sizes.setdefault(image.size, file)
        except (UnidentifiedImageError, OSError) as err:
            raise DataFileProblem(f"{folder}: cannot read image {file}: {err}") from None
        if len(sizes) > 1:
            (a, first), (b, other) = sizes.items()
            raise DataFileProblem(
                f"{folder}: images of different sizes: {first} is {a[0]}x{a[1]}, {other} is "
                f"{b[0]}x{b[1]}; a data set's images share one size"
            )
    (width, height), = sizes
    return (3, height, width)


def content_digest(path: Path) -> str:
    """sha256 of a file's bytes, or of a folder's images (relative path and bytes)."""
    digest = hashlib.sha256()
    files = image_files(path) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as handle:
            while chunk := handle.read(HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()
