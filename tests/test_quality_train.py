"""End to end: `gansweep train` on digits with every quality metric writes finite values
of each into metrics.csv, with the feature space that computed them (slow: the domain
classifier is trained in a fresh cache folder)."""

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
