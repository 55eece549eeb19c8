"""The single-trial commands through the real CLI: train, baseline, validate."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import STUDIES, clean_env, gansweep
from gansweep.engine.data import load_dataset
from gansweep.engine.losses import equilibrium
from gansweep.engine.parzen import data_as_model_baseline


def test_train_writes_metrics_per_epoch_and_samples(tmp_path: Path) -> None:
    import torch

    done = gansweep(
        "train", str(STUDIES / "smoke.yaml"), "--set", "alpha=0.3", "--set", "dataset=line",
        "--set", "epochs=4", "--set", "eval_every=2", "--set", "objective.select=best", "--output", "one", cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(tmp_path / "one" / "metrics.csv")
    assert list(table["epoch"]) == [1, 2, 3, 4] and table.columns[0] == "epoch"
    # at the real share of smoke's minibatch of 64: round(0.3 x 64) = 19 real samples
    assert table["d_loss_star"].iloc[0] == pytest.approx(equilibrium("non_saturating", 19 / 64).d_loss)
    assert table["parzen_ll"].notna().tolist() == [False, True, False, True]
    assert sorted(p.name for p in (tmp_path / "one" / "samples").iterdir()) == ["epoch_0002.png", "epoch_0004.png"]
    trial = yaml.safe_load((tmp_path / "one" / "trial.yaml").read_text())
    assert trial["alpha"] == 0.3 and trial["dataset"] == "line" and trial["loss"] == "non_saturating"
    assert "d_loss" in done.stdout and "parzen_ll" in done.stdout  # the final summary
    # objective.select: best: the best evaluation's generator kept, its epoch and value reported
    evaluated = table[table["parzen_ll"].notna()]
    best = evaluated.loc[evaluated["parzen_ll"].idxmax()]
    assert evaluated["best_parzen_ll"].tolist() == pytest.approx(evaluated["parzen_ll"].cummax().tolist())
    assert table["best_epoch"].iloc[-1] == best["epoch"]
    kept = torch.load(tmp_path / "one" / "best_generator.pt", weights_only=False)
    assert kept["epoch"] == best["epoch"] and kept["metric"] == "parzen_ll"
    assert kept["value"] == pytest.approx(best["parzen_ll"])
    assert kept["trial"]["alpha"] == 0.3 and kept["generator"]
    assert f"best evaluation: epoch {kept['epoch']}" in done.stdout
    assert not (tmp_path / "one" / "best_generator.partial").exists()


def test_train_with_a_diverging_trial_reports_it(tmp_path: Path) -> None:
    done = gansweep("train", str(STUDIES / "smoke.yaml"), "--set", "optimizer=sgd", "--set", "lr_d=1e12",
                    "--output", "bad", cwd=tmp_path)
    assert done.returncode == 1
    assert "diverged at epoch 1: d_loss" in done.stdout


CONDITIONAL = {
    "adam_beta1": "  adam_beta1: {uniform: [0.0, 0.9], when: {optimizer: adam}}\n",
    "optimizer": "  optimizer: [sgd, adam]\n",
}


def test_train_resolves_a_condition_listed_before_its_field(tmp_path: Path) -> None:
    """adam_beta1 (when optimizer is adam) above `optimizer: [sgd, adam]` trained an sgd trial
    with adam_beta1 0.45: both orders now write the same trial, sgd with the fixed 0.5."""
    written = []
    for order in (["adam_beta1", "optimizer"], ["optimizer", "adam_beta1"]):
        name = "-".join(order)
        (tmp_path / f"{name}.yaml").write_text(
            "name: cond\ntrial: {dataset: line, g_hidden: [8], d_hidden: [8], epochs: 1, steps_per_epoch: 2,\n"
            "        eval_samples: 50, eval_valid: 50, eval_test: 50, device: cpu}\nsearch:\n"
            + "".join(CONDITIONAL[field] for field in order)
        )
        done = gansweep("train", f"{name}.yaml", "--output", name, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        written.append(yaml.safe_load((tmp_path / name / "trial.yaml").read_text()))
        validated = gansweep("validate", f"{name}.yaml", cwd=tmp_path)
        assert validated.returncode == 0, validated.stderr
    assert written[0] == written[1]
    assert (written[0]["optimizer"], written[0]["adam_beta1"]) == ("sgd", 0.5)


def test_baseline_prints_the_data_as_model_score(tmp_path: Path) -> None:
    # a fresh cache: the quality metrics' domain classifier of digits is trained there
    done = gansweep("baseline", "digits", "--samples", "500", cwd=tmp_path, env=clean_env(GANSWEEP_CACHE=str(tmp_path)))
    assert done.returncode == 0, done.stderr
    data = load_dataset("digits")
    want = data_as_model_baseline(data.train, data.valid[:1_000], data.test, data.default_sigmas, n_samples=500)
    assert f"{want.mean:.2f} +- {want.stderr:.2f}" in done.stdout
    assert math.isfinite(want.mean)
    # and the quality metrics of the data as its own model: c2st at chance, d_auc not applicable
    quality = re.search(r"in domain:digits:[0-9a-f]{8} \(500 training examples against 300 test examples\): "
                        r"fid (\S+), fid_infinity \S+, kid (\S+) \+- \S+ \(100 subsets of 150\), .*recall \S+ \(k = 3\), "
                        r"c2st_accuracy ([0-9.]+), energy_distance ([0-9.]+); d_auc n/a \(no discriminator", done.stdout)
    assert quality, done.stdout
    assert float(quality.group(3)) == pytest.approx(0.5, abs=0.1)
    assert float(quality.group(1)) >= 0 and math.isfinite(float(quality.group(2))) and float(quality.group(4)) >= 0


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


def test_validate_refuses_a_bounded_output_that_cannot_reach_the_2d_set(tmp_path: Path) -> None:
    """tanh on ring8 was accepted by validate and run, and every trial then failed in a
    worker: it is exit 2 before anything runs, naming g_output, the data set and the ranges;
    tanh on the circle, inside (-1, 1), validates."""
    smoke = str(STUDIES / "smoke.yaml")
    done = gansweep("validate", smoke, "--set", "dataset=ring8", "--set", "g_output=tanh", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    for words in (f"{smoke}: trial.g_output:", "g_output='tanh' covers (-1, 1)", "trial.dataset='ring8' spans [-1.048, 1.048]"):
        assert words in done.stderr, done.stderr
    inside = gansweep("validate", smoke, "--set", "g_output=tanh", cwd=tmp_path)
    assert inside.returncode == 0, inside.stderr


def test_output_piped_into_a_reader_that_leaves_ends_quietly(tmp_path: Path) -> None:
    """`gansweep validate study.yaml | head -1`: the reader closes the pipe; no traceback."""
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-m", "gansweep", "validate", str(STUDIES / "alpha.yaml")],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before the interpreter has started: every write finds no reader
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr

