"""Errors gansweep raises on purpose. The CLI turns every GansweepError into a
one-paragraph message and exit code 2; anything else is a bug and keeps its traceback."""

from __future__ import annotations


class GansweepError(Exception):
    """Base of every error a user can cause and fix."""


class ConfigError(GansweepError):
    """A study file or a --set value is invalid; the message names file, field and value."""


class DataError(GansweepError):
    """A dataset cannot be found or read; the message says where gansweep looked."""


class DiskFull(GansweepError):
    """Free space below the sweep's floor (GANSWEEP_MIN_FREE_MB): the sweep stops with its
    state saved, before a write can fail halfway; the same command resumes it."""


class TrialDiverged(GansweepError):
    """A loss became NaN or infinite; the trial is recorded as failed with this reason."""

    def __init__(self, epoch: int, loss_name: str, value: float) -> None:
        self.epoch = epoch
        self.loss_name = loss_name
        self.value = value
        super().__init__(f"diverged at epoch {epoch}: {loss_name} = {value}")


class TrialOutOfMemory(GansweepError):
    """The trial's networks or batches do not fit in its device's memory (CUDA or host);
    recorded as failed with this reason, not retried: a retry would fail the same way."""

    def __init__(self, epoch: int, device: str, detail: str) -> None:
        self.epoch = epoch
        super().__init__(f"out of memory on {device} at epoch {epoch}: {detail}")


def is_out_of_memory(err: BaseException) -> bool:
    """torch's CUDA OutOfMemoryError, the RuntimeError its CPU allocator raises, or Python's
    own MemoryError."""
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True  # (torch.OutOfMemoryError by name: errors.py does not import torch)
    return isinstance(err, RuntimeError) and (
        "can't allocate memory" in str(err) or "out of memory" in str(err).lower()
    )


def tracking_unusable(tracking_uri: str, err: BaseException) -> GansweepError:
    """The one message for an MLflow store that does not answer or refuses (the Tracker's too)."""
    first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
    return GansweepError(
        f"MLflow tracking at {tracking_uri} is not usable: {first_line}. "
        "Start the server or set --tracking-uri / MLFLOW_TRACKING_URI."
    )
