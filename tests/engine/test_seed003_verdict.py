"""Seed 003's own configuration (RicLincio/gt-project's FFGAN.py as far as the trial fields
express it: G 10 -> 3 -> 5 -> 10 -> 2 and D 2 -> 10 -> 5 -> 2 -> 1 with leaky ReLU, dropout
0.3 in D, real target 0.9, Adam 1e-4 with beta1 0.5, alpha 0.9 in compose mode, m = 128),
trained with no metric asked for: its losses settle at the equilibrium values of the real share
its minibatch really has (115/128), and the verdict says why: a blind discriminator (issue 30).
15,000 iterations, about a minute on a 2-core machine: slow."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

SEED_003 = """\
name: seed003-verdict
trial:
  dataset: circle
  g_hidden: [3, 5, 10]
  d_hidden: [10, 5, 2]
  g_activation: leaky_relu
  d_activation: leaky_relu
  d_dropout: 0.3
  g_output: identity
  noise_dim: 10
  loss: non_saturating
  alpha: 0.9
  alpha_mode: compose
  label_smoothing: 0.9
  batch_size: 128
  optimizer: adam
  lr_d: 0.0001
  adam_beta1: 0.5
  epochs: 3
  steps_per_epoch: 5000
  eval_every: 3
  eval_samples: 2000
  eval_test: 2000
  device: cpu
"""


@pytest.mark.slow
def test_seed_003s_configuration_settles_blind_at_the_realised_share(tmp_path: Path) -> None:
    study = tmp_path / "seed003.yaml"
    study.write_text(SEED_003)
    done = subprocess.run(
        [sys.executable, "-m", "gansweep", "train", str(study), "--output", str(tmp_path / "out")],
        capture_output=True, text=True, check=False, timeout=900,
        # one thread: the seed's nets are too small for two, which spin against each other on a busy machine
        env={"GANSWEEP_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    last = pd.read_csv(tmp_path / "out" / "metrics.csv").iloc[-1]
    # L_D* and L_G* at D* = 0.9 x 115/128 (THEORY.md section 2 with smoothing), by hand
    q, s = 115 / 128, 0.9
    d_star = -q * (s * math.log(s * q) + (1 - s) * math.log(1 - s * q)) - (1 - q) * math.log(1 - s * q)
    assert (last["d_loss_star"], last["g_loss_star"]) == pytest.approx((d_star, -math.log(s * q)), rel=1e-9)
    assert last["d_loss"] == pytest.approx(d_star, rel=0.01)  # the losses do settle there...
    assert last["g_loss"] == pytest.approx(-math.log(s * q), rel=0.05)
    assert last["c2st_accuracy"] >= 0.9  # ...with samples a fresh classifier tells from the circle
    assert last["equilibrium"] == "blind"
    assert "equilibrium: blind" in done.stdout
