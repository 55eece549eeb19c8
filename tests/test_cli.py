"""The single-trial commands through the real CLI: train, baseline, validate."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import STUDIES, gansweep
from gansweep.data import load_dataset
from gansweep.losses import equilibrium
from gansweep.parzen import data_as_model_baseline


def test_train_writes_metrics_per_epoch_and_samples(tmp_path: Path) -> None:
    done = gansweep(
        "train", str(STUDIES / "smoke.yaml"), "--set", "alpha=0.3", "--set", "dataset=line",
        "--set", "epochs=4", "--set", "eval_every=2", "--output", "one", cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(tmp_path / "one" / "metrics.csv")
    assert list(table["epoch"]) == [1, 2, 3, 4] and table.columns[0] == "epoch"
    assert table["d_loss_star"].iloc[0] == pytest.approx(equilibrium("non_saturating", 0.3).d_loss)
    assert table["parzen_ll"].notna().tolist() == [False, True, False, True]
    assert sorted(p.name for p in (tmp_path / "one" / "samples").iterdir()) == ["epoch_0002.png", "epoch_0004.png"]
    trial = yaml.safe_load((tmp_path / "one" / "trial.yaml").read_text())
    assert trial["alpha"] == 0.3 and trial["dataset"] == "line" and trial["loss"] == "non_saturating"
    assert "d_loss" in done.stdout and "parzen_ll" in done.stdout  # the final summary


def test_train_with_a_diverging_trial_reports_it(tmp_path: Path) -> None:
    done = gansweep("train", str(STUDIES / "smoke.yaml"), "--set", "optimizer=sgd", "--set", "lr_d=1e12",
                    "--output", "bad", cwd=tmp_path)
    assert done.returncode == 1
    assert "diverged at epoch 1: d_loss" in done.stdout


def test_baseline_prints_the_data_as_model_score(tmp_path: Path) -> None:
    done = gansweep("baseline", "digits", "--samples", "500", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    data = load_dataset("digits")
    want = data_as_model_baseline(data.train, data.valid[:1_000], data.test, data.default_sigmas, n_samples=500)
    assert f"{want.mean:.2f} +- {want.stderr:.2f}" in done.stdout
    assert math.isfinite(want.mean)


def test_baseline_of_an_unknown_dataset_exits_2(tmp_path: Path) -> None:
    done = gansweep("baseline", "imagenet", cwd=tmp_path)
    assert done.returncode == 2 and "imagenet" in done.stderr and "Traceback" not in done.stderr


def test_missing_image_data_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    done = gansweep("train", str(STUDIES / "smoke.yaml"), "--set", "dataset=mnist", "--set",
                    f"data_dir={empty}", "--output", "out", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "mnist" in done.stderr and str(empty) in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
