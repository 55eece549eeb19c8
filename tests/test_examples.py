"""examples/: the plugin the README's "Extending gansweep" shows, through the CLI as a user
runs it (its sweep, killed and resumed, is tests/service/test_plugin_sweep.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
from conftest import clean_env, gansweep

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_the_example_plugin_trains_with_gansweep_train(tmp_path: Path) -> None:
    for name in ("my_gan.py", "my_gan.yaml"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    checked = gansweep("validate", "my_gan.yaml", cwd=tmp_path, env=clean_env())
    assert checked.returncode == 0, checked.stderr
    assert "circle, my_mlp, my_least_squares" in checked.stdout
    assert ("my_gan.py (sha256 " in checked.stdout and "): loss my_least_squares, regulariser my_r1, metric radius_error, "
            "architecture my_mlp" in checked.stdout)
    done = gansweep("train", "my_gan.yaml", "--set", "epochs=2", "--output", "one", cwd=tmp_path, env=clean_env())
    assert done.returncode == 0, done.stdout + done.stderr
    table = pd.read_csv(tmp_path / "one" / "metrics.csv")
    assert list(table["epoch"]) == [1.0, 2.0]
    assert table["radius_error"].notna().all() and (table["radius_error"] >= 0).all()
    # the plugin loss's equilibrium (its d_star, g_star at alpha 0.5, s 1): D* = 0.5
    assert table["d_loss_star"].tolist() == [0.125, 0.125] and table["g_loss_star"].tolist() == [0.125, 0.125]
    assert "radius_error" in done.stdout  # the summary lists the plugin's metric
