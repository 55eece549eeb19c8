"""End to end: `gansweep train` on digits with every quality metric writes finite values
of each into metrics.csv, with the feature space that computed them (slow: the domain
classifier is trained in a fresh cache folder); and each member of a pack is scored with its
own discriminator (fast)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

METRICS = ["fid", "kid", "precision", "recall", "c2st_accuracy", "d_auc"]


@pytest.mark.slow
def test_train_on_digits_writes_every_quality_metric(tmp_path: Path) -> None:
    study = tmp_path / "study.yaml"
    study.write_text(
        "name: quality\ntrial:\n  dataset: digits\n  device: cpu\n  epochs: 2\n  steps_per_epoch: 30\n"
        f"  eval_samples: 600\n  g_hidden: [64]\n  d_hidden: [64]\n  metrics: [{', '.join(METRICS)}]\n"
        "objective:\n  metric: fid\n"
    )
    env = {"GANSWEEP_CACHE": str(tmp_path / "cache"), "GANSWEEP_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "gansweep", "train", str(study), "--output", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(tmp_path / "out" / "metrics.csv")
    assert list(table["epoch"]) == [1, 2]
    for name in METRICS + ["kid_std", "blind_discriminator"]:
        assert all(math.isfinite(v) for v in table[name]), name
    assert table["features"].str.fullmatch(r"domain:digits:[0-9a-f]{8}").all()
    assert ((table["precision"] >= 0) & (table["precision"] <= 1)).all()
    assert ((table["c2st_accuracy"] >= 0) & (table["c2st_accuracy"] <= 1)).all()
    assert ((table["d_auc"] >= 0) & (table["d_auc"] <= 1)).all()
    assert (table["fid"] > 0).all()  # 60 steps of training do not make digits
    assert "quality metrics in the feature space domain:digits:" in done.stdout


def test_each_member_of_a_pack_scores_with_its_own_discriminator() -> None:
    from gansweep.config.schema import TrialConfig
    from gansweep.engine import run
    from gansweep.engine.data import load_dataset
    from gansweep.engine.scoring import discriminator_auc

    trials = [
        TrialConfig(dataset="circle", seed=seed, lr_d=lr, epochs=1, steps_per_epoch=20, eval_samples=600,
                    eval_valid=300, eval_test=600, g_hidden=(16,), d_hidden=(16,), metrics=("d_auc", "c2st_accuracy"),
                    device="cpu")
        for seed, lr in ((0, 1e-3), (1, 1e-2))
    ]
    unit = run.build_unit(trials, load_dataset("circle", seed=0), execution="packed")
    results = run.train_epoch(unit)
    aucs = []
    for row, metrics in enumerate(results):
        again = discriminator_auc(trials[row], unit.data, run.member_discriminator(unit, row), unit.last_samples[row])
        assert metrics["d_auc"] == again  # its own D and its own samples
        mate = discriminator_auc(trials[row], unit.data, run.member_discriminator(unit, 1 - row), unit.last_samples[row])
        assert mate != again  # the other member's D scores them otherwise
        assert metrics["features"] == "points:circle" and 0 <= metrics["c2st_accuracy"] <= 1
        assert metrics["blind_discriminator"] in (0.0, 1.0)
        aucs.append(again)
    assert aucs[0] != aucs[1]
