"""The sweep's free-space floor: checked before anything is created, and while Tune runs
(every trial stops as with Ctrl-C, resumable, before a checkpoint or database write can fail
halfway)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from ray import tune

from gansweep.errors import ConfigError, DiskFull

MIN_FREE_ENV = "GANSWEEP_MIN_FREE_MB"
DEFAULT_MIN_FREE_MB = 256  # a few checkpoints of the largest shipped nets, with room to spare


def min_free_bytes() -> int:
    text = os.environ.get(MIN_FREE_ENV, str(DEFAULT_MIN_FREE_MB))
    try:
        return int(float(text) * 2**20)
    except ValueError:
        raise ConfigError(f"{MIN_FREE_ENV} must be a number of MiB, got {text!r}") from None


def short_of_space(folders: list[Path], floor: int) -> tuple[Path, int] | None:
    """The first folder whose file system has less than `floor` bytes free, and its free bytes.
    A folder not created yet is measured at its nearest existing parent, where it will be."""
    for folder in folders:
        existing = next((p for p in (folder, *folder.parents) if p.is_dir()), Path("/"))
        free = shutil.disk_usage(existing).free
        if free < floor:
            return folder, free
    return None


def disk_full_error(short: tuple[Path, int], floor: int, unfinished: int | None = None) -> DiskFull:
    folder, free = short
    stopped = f"the sweep stopped with {unfinished} trial(s) unfinished, their state saved; " if unfinished else ""
    return DiskFull(
        f"{folder} has {free / 2**20:.0f} MiB free, below the {floor / 2**20:.0f} MiB the sweep "
        f"keeps in reserve ({MIN_FREE_ENV}); {stopped}free some space and run the same command "
        "to resume"
    )


class DiskSpaceStopper(tune.Stopper):
    """Stops every trial, as Ctrl-C does (they stay resumable), once a folder the sweep writes
    to runs short of space: better a clean stop than a checkpoint or database write that
    fails halfway. Checked at most once a second (statvfs is cheap; results come often)."""

    def __init__(self, folders: list[Path], floor: int) -> None:
        self.folders = folders
        self.floor = floor
        self.short: tuple[Path, int] | None = None
        self.checked_at = 0.0

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        if self.short is None and time.monotonic() - self.checked_at >= 1.0:
            self.checked_at = time.monotonic()
            self.short = short_of_space(self.folders, self.floor)
        return self.short is not None


def prepare_output(output: Path) -> None:
    """Create the output folder and prove it writable before anything is tracked or started."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".gansweep-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"output folder {output} is not writable: {err.strerror or err}") from None
