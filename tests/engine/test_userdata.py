"""A researcher's own data as `dataset:` a path (config.datafile, engine.userdata): each kind
of file trains through `gansweep train` and `gansweep run`; each bad file is exit 2 naming
the file and the problem, with nothing written; splits, sigma grids and the baseline's cache
key as documented."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import gansweep
from gansweep.cli import main
from gansweep.config import datafile

TINY_TRIAL = {
    "architecture": "mlp", "g_hidden": [16], "d_hidden": [16], "noise_dim": 4, "batch_size": 16,
    "epochs": 1, "steps_per_epoch": 3, "eval_samples": 64, "eval_valid": 8, "device": "cpu",
}


def write_points_npy(folder: Path, n: int = 120, d: int = 3) -> Path:
    path = folder / "points.npy"
    np.save(path, np.random.default_rng(0).normal(size=(n, d)).astype(np.float32))
    return path


def write_points_csv(folder: Path, n: int = 120) -> Path:
    path = folder / "points.csv"
    values = np.random.default_rng(1).normal(size=(n, 2))
    path.write_text("x,y\n" + "\n".join(f"{a},{b}" for a, b in values) + "\n")
    return path


def write_images_npz(folder: Path, n: int = 60, channels: bool = False) -> Path:
    rng = np.random.default_rng(2)
    shape = (n, 1, 8, 8) if channels else (n, 8, 8)
    path = folder / ("images4d.npz" if channels else "images.npz")
    np.savez(path, x=rng.integers(0, 256, size=shape, dtype=np.uint8), y=np.arange(n) % 3)
    return path


def write_image_folder(folder: Path, per_class: int = 6) -> Path:
    root = folder / "pictures"
    rng = np.random.default_rng(3)
    for name in ("cats", "dogs"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


WRITERS = {
    "npy": write_points_npy, "csv": write_points_csv, "npz": write_images_npz,
    "npz4d": lambda folder: write_images_npz(folder, channels=True), "folder": write_image_folder,
}


def write_study(folder: Path, dataset: str, name: str = "own", **extra) -> Path:
    study = {"name": name, "trial": {"dataset": dataset, **TINY_TRIAL}, **extra}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


# ---------------------------------------------------------------------------- gansweep train


@pytest.mark.parametrize("kind", list(WRITERS))
def test_each_kind_of_file_trains_through_gansweep_train(kind: str, tmp_path: Path, monkeypatch) -> None:
    data = WRITERS[kind](tmp_path / "data")
    study_dir = tmp_path / "studies"
    study_dir.mkdir()
    monkeypatch.chdir(study_dir.parent / "data")  # the path is the study folder's, not the cwd's
    study = write_study(study_dir, f"../data/{data.name}")
    assert main(["train", str(study), "--output", str(tmp_path / "out")]) == 0
    metrics = pd.read_csv(tmp_path / "out" / "metrics.csv")
    assert list(metrics["epoch"]) == [1] and np.isfinite(metrics["parzen_ll"]).all()
    trial = yaml.safe_load((tmp_path / "out" / "trial.yaml").read_text())
    assert trial["dataset"] == str(data.resolve())


@pytest.fixture(autouse=True)
def _data_folder(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()


# ---------------------------------------------------------------------------- bad files


def _bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (the bad file or folder, a phrase its error must contain)."""
    nan = np.ones((50, 2))
    nan[7, 1] = np.nan
    inf = np.ones((30, 4, 4))
    inf[3, 0, 0] = np.inf
    (folder / "empty_dir").mkdir()
    (folder / "no_images" / "cats").mkdir(parents=True)
    (folder / "no_images" / "cats" / "readme.txt").write_text("no pictures here")
    sizes = folder / "sizes"
    for name, side in (("a", 8), ("b", 9)):
        (sizes / name).mkdir(parents=True)
        Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(sizes / name / "0.png")
    files = {
        "missing": (folder / "absent.npy", "no such file or folder"),
        "wrong shape npy": (folder / "cube.npy", "must be N x d points, got shape (20, 2, 2)"),
        "1-D npy": (folder / "flat.npy", "reshape it to (20, 1)"),
        "nan npy": (folder / "nan.npy", "NaN or infinite"),
        "inf npz": (folder / "inf.npz", "NaN or infinite"),
        "text csv": (folder / "text.csv", "line 3, column 2: 'abc' is not a number"),
        "ragged csv": (folder / "ragged.csv", "line 2 has 3 values"),
        "nan csv": (folder / "nan.csv", "the file holds 1 NaN or infinite values"),
        "empty csv": (folder / "empty.csv", "empty file"),
        "header-only csv": (folder / "header.csv", "empty file"),
        "empty npy": (folder / "zero.npy", "empty file"),
        "no x npz": (folder / "nox.npz", "no array 'x'"),
        "wrong y npz": (folder / "wrongy.npz", "one label per example"),
        "wrong shape npz": (folder / "five.npz", "got shape (12, 1, 1, 2, 2)"),
        "float pixels": (folder / "floats.npz", "float pixels in [0, 2]"),
        "few points": (folder / "few.npy", "9 examples are too few for the splits"),
        "empty folder": (folder / "empty_dir", "empty folder: no class folders"),
        "no images": (folder / "no_images", "empty folder: no images"),
        "image sizes": (sizes, "images of different sizes"),
        "unknown kind": (folder / "points.txt", "unknown kind of data file '.txt'"),
    }
    np.save(folder / "cube.npy", np.zeros((20, 2, 2)))
    np.save(folder / "flat.npy", np.zeros(20))
    np.save(folder / "nan.npy", nan)
    np.savez(folder / "inf.npz", x=inf)
    (folder / "text.csv").write_text("1,2\n3,4\n5,abc\n")
    (folder / "ragged.csv").write_text("1,2\n3,4,5\n")
    (folder / "nan.csv").write_text("1,2\nnan,3\n")
    (folder / "empty.csv").write_text("")
    (folder / "header.csv").write_text("x,y\n")
    (folder / "zero.npy").write_bytes(b"")
    np.savez(folder / "nox.npz", images=np.zeros((20, 4, 4)))
    np.savez(folder / "wrongy.npz", x=np.zeros((20, 4, 4)), y=np.zeros(19))
    np.savez(folder / "five.npz", x=np.zeros((12, 1, 1, 2, 2)))
    np.savez(folder / "floats.npz", x=np.full((20, 4, 4), 2.0) * np.linspace(0, 1, 16).reshape(4, 4))
    np.save(folder / "few.npy", np.zeros((9, 2)))
    (folder / "points.txt").write_text("1 2\n")
    return files


def test_each_bad_file_is_exit_2_naming_file_field_and_problem(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    bad = _bad_files(tmp_path / "data")
    for name, (path, problem) in bad.items():
        study = write_study(tmp_path, str(path.relative_to(tmp_path)), name="bad")
        for command in ("run", "train", "validate"):
            assert main([command, str(study)]) == 2, (name, command)
            err = capsys.readouterr().err
            assert f"{study}:3: trial.dataset: {path.resolve()}" in err, (name, err)
            assert problem in err, (name, command, err)
            assert "Traceback" not in err
        assert not (tmp_path / "runs").exists(), name  # nothing written, not even the folder


def test_a_bad_file_among_search_choices_names_its_index(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    good = write_points_npy(tmp_path / "data")
    np.save(tmp_path / "data" / "nan.npy", np.full((20, 2), np.nan))
    study = write_study(tmp_path, "data/points.npy", search={"dataset": ["circle", "data/points.npy", "data/nan.npy"]})
    assert main(["run", str(study)]) == 2
    err = capsys.readouterr().err
    assert "search.dataset.2" in err and str((tmp_path / "data" / "nan.npy")) in err and "NaN" in err
    assert good.exists() and not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------- the engine side


def test_splits_come_from_the_seed_cover_every_point_once_and_are_recorded(tmp_path: Path) -> None:
    from gansweep.engine.userdata import load_file_dataset
    import torch

    path = tmp_path / "rows.npy"
    np.save(path, np.arange(200, dtype=np.float32).reshape(100, 2))  # row i holds 2i, 2i+1
    cpu = torch.device("cpu")
    first, again, other = (load_file_dataset(str(path), seed=s, device=cpu, n_train=None) for s in (0, 0, 1))
    rows = {name: (getattr(first, name)[:, 0] / 2).long().tolist() for name in ("train", "valid", "test")}
    assert [len(rows[s]) for s in ("train", "valid", "test")] == [80, 10, 10]
    assert sorted(rows["train"] + rows["valid"] + rows["test"]) == list(range(100))
    assert torch.equal(first.test, again.test) and torch.equal(first.train, again.train)
    assert not torch.equal(first.test, other.test)
    assert datafile.inspect(path).splits == {"train": 80, "valid": 10, "test": 10}
    capped = load_file_dataset(str(path), seed=0, device=cpu, n_train=20)
    assert torch.equal(capped.train, first.train[:20]) and torch.equal(capped.test, first.test)


def test_images_are_scaled_to_unit_range_with_the_image_sigma_grid(tmp_path: Path) -> None:
    from gansweep.engine.data import IMAGE_SIGMAS
    from gansweep.engine.userdata import load_file_dataset
    import torch

    pixels = np.random.default_rng(0).integers(0, 256, size=(40, 5, 5), dtype=np.uint8)
    pixels[0, 0, 0], pixels[1, 0, 0] = 0, 255
    np.savez(tmp_path / "im.npz", x=pixels)
    data = load_file_dataset(str(tmp_path / "im.npz"), seed=0, device=torch.device("cpu"), n_train=None)
    every = torch.cat([data.train, data.valid, data.test])
    assert data.is_image and data.shape == (1, 5, 5) and data.default_sigmas == IMAGE_SIGMAS
    assert float(every.min()) == 0.0 and float(every.max()) == 1.0
    assert sorted((every * 255).round().flatten().tolist()) == sorted(pixels.astype(float).flatten().tolist())
    folder = write_image_folder(tmp_path / "data")
    data = load_file_dataset(str(folder), seed=0, device=torch.device("cpu"), n_train=None)
    assert data.shape == (3, 8, 8) and data.train.shape[0] + data.valid.shape[0] + data.test.shape[0] == 12
    assert 0.0 <= float(data.train.min()) and float(data.train.max()) <= 1.0


def test_the_sigma_grid_follows_the_points_scale_so_parzen_moves_by_d_log_c(tmp_path: Path) -> None:
    """Points c times larger get a grid c times larger; the data-as-model Parzen score, a
    density, then falls by exactly d log c (the same sigma is chosen, relative to the data)."""
    from gansweep.engine.parzen import data_as_model_baseline
    from gansweep.engine.userdata import load_file_dataset
    import torch

    points = np.random.default_rng(4).normal(size=(600, 3)).astype(np.float32)
    scores = {}
    for c in (1.0, 100.0):
        path = tmp_path / f"scaled{int(c)}.npy"
        np.save(path, points * np.float32(c))
        data = load_file_dataset(str(path), seed=0, device=torch.device("cpu"), n_train=None)
        std = float(data.train.double().std(dim=0).mean())
        assert data.default_sigmas[0] == pytest.approx(0.01 * std / 0.6, rel=1e-6)
        assert data.default_sigmas[-1] == pytest.approx(1.0 * std / 0.6, rel=1e-6)
        scores[c] = data_as_model_baseline(data.train, data.valid, data.test, data.default_sigmas, n_samples=400)
    assert scores[100.0].sigma == pytest.approx(100 * scores[1.0].sigma, rel=1e-4)
    assert scores[100.0].mean == pytest.approx(scores[1.0].mean - 3 * math.log(100.0), abs=1e-3)


def test_the_baseline_is_cached_by_the_files_content_not_its_name(tmp_path: Path) -> None:
    from gansweep.config.schema import TrialConfig
    from gansweep.reporting.baseline import baseline_key

    one, two = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(one, np.ones((30, 2)))
    np.save(two, np.ones((30, 2)))
    key = lambda path, **kw: json.loads(baseline_key(TrialConfig(dataset=str(path), **kw)))  # noqa: E731
    assert key(one) == key(two)  # the same content at two paths: one cached score
    assert key(one)["dataset"] == f"sha256:{datafile.content_digest(one)}"
    assert key(one, seed=1) != key(one)  # the splits depend on the seed
    np.save(two, np.full((30, 2), 2.0))
    assert key(one) != key(two)


# ---------------------------------------------------------------------------- gansweep run


@pytest.mark.slow
def test_each_kind_of_file_trains_through_gansweep_run(tmp_path: Path) -> None:
    """One sweep whose grid is the four kinds of file: each a COMPLETE trial, its dataset
    param the file's absolute path."""
    data = tmp_path / "data"
    files = [write_points_npy(data), write_points_csv(data), write_images_npz(data), write_image_folder(data)]
    study = write_study(
        tmp_path, "data/points.npy", name="ownrun",
        search={"dataset": [str(f.relative_to(tmp_path)) for f in files]},
        sampler={"name": "grid"}, budget={"max_concurrent": 2, "cpus_per_trial": 1},
    )
    done = gansweep("run", str(study), "--output", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    assert set(table["state"]) == {"COMPLETE"} and len(table) == 4
    assert sorted(table["dataset"]) == sorted(str(f.resolve()) for f in files)
    assert table["objective"].notna().all()


def test_gansweep_baseline_scores_a_file_as_the_engine_does(tmp_path: Path, capsys) -> None:
    from gansweep.engine.parzen import data_as_model_baseline
    from gansweep.engine.userdata import load_file_dataset
    import torch

    path = write_points_npy(tmp_path / "data", n=300)
    assert main(["baseline", str(path), "--samples", "100", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    data = load_file_dataset(str(path), seed=0, device=torch.device("cpu"), n_train=None)
    want = data_as_model_baseline(data.train, data.valid[:1_000], data.test, data.default_sigmas, n_samples=100)
    assert f"{path}: data-as-model Parzen log-likelihood {want.mean:.2f} +- {want.stderr:.2f}" in out
    np.save(tmp_path / "data" / "bad.npy", np.full((20, 2), np.inf))
    assert main(["baseline", str(tmp_path / "data" / "bad.npy")]) == 2
    assert "bad.npy: the array holds 40 NaN or infinite values" in capsys.readouterr().err
