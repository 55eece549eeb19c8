"""Files that readers may open while they are being rewritten."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def write_csv_atomically(table: pd.DataFrame, path: Path) -> None:
    """Write the whole table to a temporary file beside `path`, then rename it over `path`:
    a reader (a live `cat`, the report, a resumed sweep) never sees a half-written table."""
    tmp = path.with_suffix(".csv.tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, path)
