"""What a sweep needs before it writes anything: its output folder writable, its MLflow store
reachable (a server) or creatable (a local SQLite file or folder). Checked together, so that a
read-only working directory or a server that is down ends with one message and exit code 2,
instead of a traceback from whichever write came first and an optuna.db left behind.

Nothing here writes: a local store is judged by the file system's own permission check
(os.access, which also reports a read-only mount, EROFS, for root), a server by a read-only
request."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from gansweep.errors import GansweepError, tracking_unusable

LOCAL_SCHEMES = ("", "file")  # MLflow's file store: a folder (mlruns)


def unwritable_reason(folder: Path) -> str | None:
    """Why `folder` (created if missing, with its parents) could not be written, or None.
    A missing folder is made in its nearest existing parent, so that parent decides."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
    if not existing.is_dir():
        return f"{existing} is a file where a folder is needed"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is read-only"
    return None


def local_store_path(tracking_uri: str) -> Path | None:
    """The file or folder of a local MLflow store (sqlite:///mlflow.db, file:./mlruns, a
    plain path); None for a server or a database that is not a local file."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        # sqlite:///relative.db and sqlite:////absolute.db: the path after the third slash
        path = tracking_uri[len("sqlite:///"):]
        return Path(unquote(path)) if path and path != ":memory:" else None
    if parsed.scheme in LOCAL_SCHEMES:
        return Path(unquote(parsed.path if parsed.scheme else tracking_uri))
    return None


def local_store_problem(path: Path, is_file: bool) -> str | None:
    """Why the local store at `path` could not be opened for writing, or None. A SQLite file
    needs its folder writable too (SQLite writes its journal beside it)."""
    if path.exists():
        if not os.access(path, os.W_OK):
            return f"{path} is read-only"
        return unwritable_reason(path.parent) if is_file else None
    return unwritable_reason(path.parent if is_file else path)


def server_problem(tracking_uri: str) -> GansweepError | None:
    """A read-only request to an MLflow server: None when it answers (and accepts our
    credentials), else the error to show. MLflow's retries are off (tracking.MLFLOW_DEFAULTS),
    so a server that is down answers at once."""
    from mlflow.tracking import MlflowClient

    from gansweep.service.tracking import mlflow_defaults

    mlflow_defaults()
    try:
        MlflowClient(tracking_uri).search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 (refused, timed out, unauthorised: all mean no sweep)
        return tracking_unusable(tracking_uri, err)
    return None


def check_sweep_can_write(output: Path, tracking_uri: str) -> None:
    """Raise one GansweepError naming every place the sweep needs and cannot use, before
    anything is created: the output folder, then the MLflow store."""
    problems = []
    output_problem = unwritable_reason(output)
    if output_problem:
        problems.append(f"the output folder {output} cannot be created or written ({output_problem})")
    store = local_store_path(tracking_uri)
    if store is not None:
        store_problem = local_store_problem(store.resolve(), is_file=tracking_uri.startswith("sqlite:"))
        if store_problem:
            problems.append(f"the MLflow store {tracking_uri} cannot be created or written ({store_problem}); "
                            "set --tracking-uri / MLFLOW_TRACKING_URI to one that can")
    elif tracking_uri.startswith(("http://", "https://")):
        unusable = server_problem(tracking_uri)
        if unusable is not None:
            problems.append(str(unusable))
    if problems:
        raise GansweepError("cannot run the sweep, nothing was written: " + "; ".join(problems))
