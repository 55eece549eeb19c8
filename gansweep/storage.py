"""Where sweeps keep their state: Optuna storage and Ray Tune's storage (local or S3).

On one machine everything lives in the study's output folder. On a cluster, Tune's
checkpoints must be on storage every node reaches (S3/MinIO or NFS) and Optuna's study in a
database every driver reaches (PostgreSQL).
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs

OPTUNA_STORAGE_ENV = "GANSWEEP_OPTUNA_STORAGE"
TUNE_STORAGE_ENV = "GANSWEEP_STORAGE_PATH"
S3_ENDPOINT_ENV = "GANSWEEP_S3_ENDPOINT"


def optuna_storage_url(configured: str | None, output: Path) -> str:
    """The study file's `storage`, else GANSWEEP_OPTUNA_STORAGE, else SQLite in output/."""
    return configured or os.environ.get(OPTUNA_STORAGE_ENV) or f"sqlite:///{output.resolve() / 'optuna.db'}"


def tune_storage_path(output: Path) -> str:
    """GANSWEEP_STORAGE_PATH (e.g. s3://gansweep/tune), else output/tune on local disk."""
    return os.environ.get(TUNE_STORAGE_ENV) or str(output.resolve() / "tune")


def storage_filesystem(uri: str) -> pyarrow.fs.FileSystem | None:
    """For s3:// URIs, an S3 filesystem built now, with the credentials of this process's
    environment (or the default AWS chain) and GANSWEEP_S3_ENDPOINT for MinIO and other
    S3-compatible stores. Built eagerly because the driver withholds the AWS variables from
    its environment while Tune runs (see sweep.withheld_from_ray). None for other URIs: Ray
    picks the filesystem from the URI itself."""
    if not uri.startswith("s3://"):
        return None
    credentials = {
        "access_key": os.environ.get("AWS_ACCESS_KEY_ID"),
        "secret_key": os.environ.get("AWS_SECRET_ACCESS_KEY"),
        "session_token": os.environ.get("AWS_SESSION_TOKEN"),
    }
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    endpoint = os.environ.get(S3_ENDPOINT_ENV)
    if not endpoint:  # AWS itself: the bucket's own region unless one is set
        bucket = uri.removeprefix("s3://").split("/", 1)[0]
        return pyarrow.fs.S3FileSystem(**credentials, region=region or pyarrow.fs.resolve_s3_region(bucket))
    scheme, _, host = endpoint.partition("://")
    return pyarrow.fs.S3FileSystem(
        **credentials,
        endpoint_override=host or scheme,
        scheme=scheme if host else "https",
        region=region or "us-east-1",
    )


def strip_scheme(uri: str) -> str:
    """pyarrow filesystems take paths without the scheme once the filesystem is given."""
    return uri.removeprefix("s3://")
