"""gansweep.files: the one atomic CSV writer, used by results.csv and `gansweep train`'s metrics.csv."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from gansweep.files import write_csv_atomically
from gansweep.single import write_metrics


def test_a_table_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    write_csv_atomically(pd.DataFrame({"trial": [0, 1], "objective": [1.5, -2.0]}), path)
    write_csv_atomically(pd.DataFrame({"trial": [0, 1, 2], "objective": [1.5, -2.0, 0.25]}), path)
    pd.testing.assert_frame_equal(pd.read_csv(path), pd.DataFrame({"trial": [0, 1, 2], "objective": [1.5, -2.0, 0.25]}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]  # no temporary file left


def test_a_write_that_fails_leaves_the_old_table(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    write_csv_atomically(pd.DataFrame({"trial": [0]}), path)
    (tmp_path / "results.csv.tmp").mkdir()  # the temporary file cannot be written
    with pytest.raises(OSError):
        write_csv_atomically(pd.DataFrame({"trial": [0, 1]}), path)
    assert pd.read_csv(path)["trial"].tolist() == [0]


def test_train_metrics_put_the_epoch_first(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    write_metrics([{"d_loss": 1.25, "epoch": 1}, {"d_loss": 1.0, "epoch": 2}], path)
    assert path.read_text().splitlines() == ["epoch,d_loss", "1,1.25", "2,1.0"]
