"""gansweep.engine.data: registry, toy generators, digits, Fashion-MNIST search path, errors."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from gansweep.engine import data, image_files
from gansweep.engine.data import DATASETS, Dataset, load_dataset, minibatch
from gansweep.errors import DataError
from gansweep.config.names import IMAGE_DATASETS, TOY_DATASETS

TOYS = list(TOY_DATASETS)
DEBIAN = image_files.DEBIAN_FASHION_MNIST
needs_debian_fashion = pytest.mark.skipif(
    not (DEBIAN / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed",
)


@pytest.fixture
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No GANSWEEP_DATA, a fresh cache folder, no download attempts; returns the cache."""
    cache = tmp_path / "cache"
    monkeypatch.delenv("GANSWEEP_DATA", raising=False)
    monkeypatch.setenv("GANSWEEP_CACHE", str(cache))
    monkeypatch.setenv("GANSWEEP_OFFLINE", "1")
    return cache


def test_registry_holds_exactly_the_study_names() -> None:
    assert set(DATASETS) == set(TOY_DATASETS) | set(IMAGE_DATASETS)


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(DataError, match="unknown dataset 'moons'.*ring8.*fashion-mnist"):
        load_dataset("moons")


# ---------------------------------------------------------------------------- toys


@pytest.mark.parametrize("name", TOYS)
def test_toy_shapes_sizes_and_metadata(name: str) -> None:
    ds = load_dataset(name, seed=0)
    assert isinstance(ds, Dataset)
    assert (ds.train.shape, ds.valid.shape, ds.test.shape) == ((10_000, 2), (1_000, 2), (2_000, 2))
    assert ds.shape == (2,)
    assert not ds.is_image
    assert ds.train.dtype == torch.float32
    assert ds.train.device == torch.device("cpu")
    assert len(ds.default_sigmas) == 10
    assert ds.default_sigmas[0] == pytest.approx(0.01)
    assert ds.default_sigmas[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("name", TOYS)
def test_toy_is_deterministic_per_seed(name: str) -> None:
    first, again, other = (load_dataset(name, seed=s) for s in (3, 3, 4))
    for split in ("train", "valid", "test"):
        torch.testing.assert_close(getattr(first, split), getattr(again, split), rtol=0, atol=0)
        assert not torch.equal(getattr(first, split), getattr(other, split))


@pytest.mark.parametrize("name", TOYS)
def test_toy_n_train_changes_only_the_training_split(name: str) -> None:
    full, small = load_dataset(name, seed=1), load_dataset(name, seed=1, n_train=500)
    assert small.train.shape == (500, 2)
    torch.testing.assert_close(small.valid, full.valid, rtol=0, atol=0)
    torch.testing.assert_close(small.test, full.test, rtol=0, atol=0)


def test_line_follows_the_rescaled_curve() -> None:
    points = load_dataset("line", seed=0).train
    t, y = points[:, 0], points[:, 1]
    assert t.min().item() == pytest.approx(-1.0, abs=0.01)
    assert t.max().item() == pytest.approx(1.0, abs=0.01)
    residual = y - t.square() * torch.sin(t) / math.sin(1.0)
    assert residual.mean().item() == pytest.approx(0.0, abs=0.002)
    assert residual.std().item() == pytest.approx(data.LINE_NOISE_STD, rel=0.05)


def test_circle_radius_and_noise() -> None:
    radius = load_dataset("circle", seed=0).train.norm(dim=1)
    # isotropic noise of std s around radius r moves the mean radius out by about s^2 / 2r
    assert radius.mean().item() == pytest.approx(0.7 + 0.08**2 / 1.4, abs=0.003)
    assert radius.std().item() == pytest.approx(0.08, rel=0.05)


@pytest.mark.parametrize(("name", "n_modes"), [("ring8", 8), ("grid25", 25)])
def test_mixture_points_sit_on_their_modes(name: str, n_modes: int) -> None:
    ds = load_dataset(name, seed=0)
    assert ds.modes is not None and ds.mode_std is not None
    assert ds.modes.shape == (n_modes, 2)
    assert ds.mode_std == pytest.approx(0.02)
    distance = torch.cdist(ds.train, ds.modes)  # (n, n_modes)
    nearest, which = distance.min(dim=1)
    # a 2D Gaussian puts 1 - exp(-9/2) = 98.9% of its mass within 3 std of its centre
    within = (nearest < 3 * ds.mode_std).float().mean().item()
    assert within == pytest.approx(1 - math.exp(-4.5), abs=0.005)
    share = torch.bincount(which, minlength=n_modes).float() / len(which)
    torch.testing.assert_close(share, torch.full((n_modes,), 1 / n_modes), rtol=0, atol=0.02)
    # neighbouring modes are well separated relative to their width
    gaps = torch.cdist(ds.modes, ds.modes) + torch.eye(n_modes) * 10
    assert gaps.min().item() > 20 * ds.mode_std


@pytest.mark.parametrize("name", ["line", "circle"])
def test_unmoded_toys_have_no_modes(name: str) -> None:
    ds = load_dataset(name)
    assert ds.modes is None and ds.mode_std is None


def test_minibatch_draws_rows_reproducibly() -> None:
    points = load_dataset("ring8", seed=0).train
    batch = minibatch(points, 64, torch.Generator().manual_seed(5))
    again = minibatch(points, 64, torch.Generator().manual_seed(5))
    assert batch.shape == (64, 2)
    torch.testing.assert_close(batch, again, rtol=0, atol=0)
    assert (batch[:, None, :] == points[None, :, :]).all(dim=2).any(dim=1).all()  # rows of data


# ---------------------------------------------------------------------------- digits


def test_digits_shape_range_and_fixed_splits() -> None:
    ds = load_dataset("digits", seed=0)
    assert ds.is_image and ds.shape == (1, 8, 8)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (1_197, 300, 300)
    everything = torch.cat([ds.train, ds.valid, ds.test])
    assert everything.min().item() == 0.0 and everything.max().item() == 1.0
    assert ds.default_sigmas == pytest.approx(tuple(10 ** (-1 + i / 9) for i in range(10)))
    other_seed = load_dataset("digits", seed=7)
    torch.testing.assert_close(ds.test, other_seed.test, rtol=0, atol=0)
    assert load_dataset("digits", n_train=100).train.shape == (100, 1, 8, 8)


def test_in_place_changes_do_not_leak_into_the_cache() -> None:
    first = load_dataset("digits")
    first.train.mul_(2).sub_(1)  # what a careless tanh rescaling would do
    assert load_dataset("digits").train.min().item() == 0.0


# ---------------------------------------------------------------------------- image search path


@needs_debian_fashion
def test_fashion_mnist_from_debian_folder(isolated_env: Path) -> None:
    ds = load_dataset("fashion-mnist")
    assert ds.is_image and ds.shape == (1, 28, 28)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (50_000, 10_000, 10_000)
    assert ds.train.dtype == torch.float32
    assert ds.train.min().item() == 0.0 and ds.train.max().item() == 1.0
    assert ds.test.min().item() == 0.0 and ds.test.max().item() == 1.0
    assert load_dataset("fashion-mnist", n_train=1_000).train.shape == (1_000, 1, 28, 28)


@needs_debian_fashion
def test_fashion_mnist_is_unpacked_once_into_the_cache(isolated_env: Path) -> None:
    load_dataset("fashion-mnist")
    raw = isolated_env / "FashionMNIST" / "raw"
    names = sorted(p.name for p in raw.iterdir())
    assert names == sorted(image_files._IDX_FILES)  # unpacked, no temporary files left behind
    assert (raw / "train-images-idx3-ubyte").stat().st_size == 16 + 60_000 * 28 * 28
    stamp = (raw / "train-images-idx3-ubyte").stat().st_mtime_ns
    load_dataset("fashion-mnist")
    assert (raw / "train-images-idx3-ubyte").stat().st_mtime_ns == stamp


@needs_debian_fashion
def test_data_dir_with_loose_gz_files(isolated_env: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mine" / "fashion-mnist"
    folder.mkdir(parents=True)
    for name in image_files._IDX_FILES:
        os.symlink(DEBIAN / f"{name}.gz", folder / f"{name}.gz")
    assert image_files.find_root("fashion-mnist", str(tmp_path / "mine")) == isolated_env


def test_absent_dataset_raises_data_error_naming_every_place(
    isolated_env: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=str(empty))
    message = str(info.value)
    assert str(empty) in message
    assert "GANSWEEP_DATA (not set)" in message
    assert str(isolated_env) in message and "GANSWEEP_OFFLINE" in message
    assert "data_dir" in message


def test_absent_cifar10_raises_data_error(isolated_env: Path) -> None:
    with pytest.raises(DataError, match="cifar10"):
        load_dataset("cifar10")


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GANSWEEP_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert image_files.cache_dir() == tmp_path / "gansweep"
    monkeypatch.setenv("GANSWEEP_CACHE", str(tmp_path / "elsewhere"))
    assert image_files.cache_dir() == tmp_path / "elsewhere"
