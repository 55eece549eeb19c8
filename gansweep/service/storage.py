"""Where sweeps keep their state: Optuna storage and Ray Tune's storage (local or S3).

On one machine everything lives in the study's output folder. On a cluster, Tune's
checkpoints must be on storage every node reaches (S3/MinIO or NFS) and Optuna's study in a
database every driver reaches (PostgreSQL).
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs

# The Optuna storage of an output folder is the folder's layout (protocol), which the
# reporting reads too; re-exported here beside Tune's storage.
from gansweep.service.protocol import OPTUNA_STORAGE_ENV, OutputLayout, local_optuna_storage_url, optuna_storage_url

TUNE_STORAGE_ENV = "GANSWEEP_STORAGE_PATH"
S3_ENDPOINT_ENV = "GANSWEEP_S3_ENDPOINT"


def tune_storage_path(output: Path) -> str:
    """GANSWEEP_STORAGE_PATH (e.g. s3://gansweep/tune), else output/tune on local disk."""
    return os.environ.get(TUNE_STORAGE_ENV) or str(OutputLayout(output.resolve()).tune)


# Credentials in the environment: read by each process that builds or rebuilds a filesystem.
CREDENTIAL_ENV = {
    "access_key": "AWS_ACCESS_KEY_ID",
    "secret_key": "AWS_SECRET_ACCESS_KEY",
    "session_token": "AWS_SESSION_TOKEN",
}


# Filesystems built in this process, by their (non-secret) options.
BUILT: dict[tuple, S3Storage] = {}


class S3Storage(pyarrow.fs.S3FileSystem):
    """pyarrow's S3FileSystem, except that it pickles without its credentials.

    Why: pyarrow pickles an S3FileSystem with its access and secret keys in clear, and Tune
    pickles the RunConfig's storage_filesystem into files it writes, tuner.pkl and
    search_gen_state-*.json: both in the driver's Ray session folder on local disk
    (/tmp/ray/session_*/artifacts/.../driver_artifacts) and uploaded next to the checkpoints
    in the bucket. tests/service/test_storage.py found AWS_SECRET_ACCESS_KEY in both places, which
    defeated sweep.withheld_from_ray. A pickled S3Storage carries only the endpoint, scheme and
    region; the process that unpickles it (a Ray worker) takes the keys from its own environment
    (or the default AWS chain), as cluster nodes have them (docker-compose.yml, k8s/ray) and as
    load_resume_state already needs. In the process that built it (the driver, whose AWS
    variables are withheld while Tune runs) copies and round trips return the object itself."""

    def __init__(self, *, endpoint_override: str | None, scheme: str, region: str) -> None:
        credentials = {name: os.environ.get(env) for name, env in CREDENTIAL_ENV.items()}
        super().__init__(**credentials, endpoint_override=endpoint_override, scheme=scheme, region=region)
        self.options = {"endpoint_override": endpoint_override, "scheme": scheme, "region": region}
        BUILT[options_key(self.options)] = self  # the latest, built with the current environment

    def __reduce__(self) -> tuple:
        return rebuild_s3_storage, (self.options,)

    def __copy__(self) -> S3Storage:
        return self  # immutable: a copy needs neither a rebuild nor the credentials again

    def __deepcopy__(self, memo: dict) -> S3Storage:
        return self


def options_key(options: dict[str, str | None]) -> tuple:
    return tuple(sorted(options.items()))


def rebuild_s3_storage(options: dict[str, str | None]) -> S3Storage:
    """Unpickling: this process's own filesystem for these options, else a new one with this
    process's credentials."""
    return BUILT.get(options_key(options)) or S3Storage(**options)


def storage_filesystem(uri: str) -> pyarrow.fs.FileSystem | None:
    """For s3:// URIs, an S3 filesystem built now, with the credentials of this process's
    environment (or the default AWS chain) and GANSWEEP_S3_ENDPOINT for MinIO and other
    S3-compatible stores. Built eagerly because the driver withholds the AWS variables from
    its environment while Tune runs (see sweep.withheld_from_ray). It pickles without the
    credentials (see S3Storage). None for other URIs: Ray picks the filesystem from the URI
    itself."""
    if not uri.startswith("s3://"):
        return None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    endpoint = os.environ.get(S3_ENDPOINT_ENV)
    if not endpoint:  # AWS itself: the bucket's own region unless one is set
        bucket = uri.removeprefix("s3://").split("/", 1)[0]
        region = region or pyarrow.fs.resolve_s3_region(bucket)
        return S3Storage(endpoint_override=None, scheme="https", region=region)
    scheme, _, host = endpoint.partition("://")
    return S3Storage(
        endpoint_override=host or scheme,
        scheme=scheme if host else "https",
        region=region or "us-east-1",
    )


def strip_scheme(uri: str) -> str:
    """pyarrow filesystems take paths without the scheme once the filesystem is given."""
    return uri.removeprefix("s3://")


# What pyarrow's S3 client says when the store does not answer (refused, reset, timed out),
# as opposed to an error of the request itself (a missing key, a denied credential).
OUTAGE_MARKS = ("NETWORK_CONNECTION", "curlCode: 7", "curlCode: 28", "curlCode: 52", "curlCode: 56",
                "Could not connect to server", "Connection refused", "Connection reset")


def is_storage_outage(error_text: str) -> bool:
    """Whether a worker's error (its traceback text) is the S3 store being away: the trial
    then stays unfinished and resumes from its last checkpoint, instead of failing for good."""
    return "AWS Error" in error_text and any(mark in error_text for mark in OUTAGE_MARKS)
