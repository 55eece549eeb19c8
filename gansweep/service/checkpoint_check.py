"""A checkpoint's state.pt written whole and read back only when intact.

The worker writes state.pt atomically (a temporary file in the same folder, then os.replace)
with its SHA-256 in state.pt.sha256 beside it. Before a new `gansweep run` resumes an
unfinished unit, the driver checks the state.pt recorded for it: a file that an interrupted
copy, a full disk or a hand cut short or overwrote is refused with a warning naming it, and
the unit resumes from the last intact checkpoint before it in the same folder (Tune keeps
two), or from scratch when there is none; each refusal is kept in the Optuna trials' user
attr `checkpoint_refused`. Before this, such a file reached torch.load in the worker, Tune
retried the unit on the same file and FAILED it with a reason pointing at Ray's error.txt.

Torch-free (the driver never imports torch): state.pt is torch's zip archive, so a
checkpoint written before checksums is checked by its members' CRCs.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import pyarrow.fs

from gansweep.service import protocol as p
from gansweep.service.storage import storage_filesystem, strip_scheme

CHECKSUM_SUFFIX = ".sha256"
ATTR_CHECKPOINT_REFUSED = "checkpoint_refused"  # [{checkpoint, reason, resumed_from}] per refusal
CHECKPOINT_FOLDER = re.compile(r"checkpoint_(\d+)$")  # Tune's checkpoint folders, numbered in order


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomically(path: Path, data: bytes) -> None:
    """`data` at `path`, whole or not at all: written to a temporary file in the same folder
    (os.replace is atomic only within one file system), flushed to disk, then renamed."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_with_checksum(path: Path, data: bytes) -> None:
    """`data` at `path` and its SHA-256 in `path`.sha256, each written atomically; the data
    first, so that a crash between the two leaves a mismatch (refused), never a bad file
    with a matching sum."""
    write_atomically(path, data)
    write_atomically(path.with_name(path.name + CHECKSUM_SUFFIX), f"{sha256_hex(data)}  {path.name}\n".encode())


def zip_problem(data: bytes) -> str | None:
    """Why `data` is no intact zip archive (torch.save's format), or None."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError) as err:
        return f"not a readable torch checkpoint ({err})"
    return f"its member {bad} fails its CRC check" if bad else None


def state_problem(data: bytes, recorded_sum: str | None) -> str | None:
    """Why state.pt's bytes cannot be trusted, or None. `recorded_sum`: the sidecar's text
    (None: a checkpoint from before checksums, checked as a zip archive)."""
    if recorded_sum is None:
        return zip_problem(data)
    expected = recorded_sum.split()[0] if recorded_sum.strip() else ""
    actual = sha256_hex(data)
    if actual != expected:
        return f"its SHA-256 ({actual[:16]}...) is not the one recorded when it was written ({expected[:16] or 'none'}...)"
    return None


def filesystem_of(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The pyarrow file system and path of a checkpoint folder, local or on S3."""
    filesystem = storage_filesystem(uri)
    if filesystem is None:
        return pyarrow.fs.FileSystem.from_uri(uri if "://" in uri else str(Path(uri).resolve()))
    return filesystem, strip_scheme(uri)


def read_or_none(filesystem: pyarrow.fs.FileSystem, path: str) -> bytes | None:
    if filesystem.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def checkpoint_problem(uri: str) -> str | None:
    """Why the checkpoint folder at `uri` cannot be resumed from (its state.pt missing,
    cut short or changed), or None; None too when the store does not answer now (the
    worker's own read decides then)."""
    try:
        filesystem, folder = filesystem_of(uri)
        data = read_or_none(filesystem, f"{folder}/{p.STATE_FILE}")
        if data is None:
            return f"it has no {p.STATE_FILE}"
        recorded = read_or_none(filesystem, f"{folder}/{p.STATE_FILE}{CHECKSUM_SUFFIX}")
    except (OSError, ValueError):
        return None
    return state_problem(data, recorded.decode(errors="replace") if recorded is not None else None)


def earlier_checkpoints(uri: str) -> list[str]:
    """The checkpoint folders before `uri` in its trial's folder, the latest first."""
    parent, _, name = uri.rstrip("/").rpartition("/")
    own = CHECKPOINT_FOLDER.match(name)
    if own is None:
        return []
    try:
        filesystem, folder = filesystem_of(parent)
        listed = filesystem.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
    except (OSError, ValueError):
        return []
    numbered = [(int(m.group(1)), info.base_name) for info in listed
                if info.type == pyarrow.fs.FileType.Directory and (m := CHECKPOINT_FOLDER.match(info.base_name))]
    return [f"{parent}/{base}" for number, base in sorted(numbered, reverse=True) if number < int(own.group(1))]


def last_good_checkpoint(uri: str) -> str | None:
    """The latest checkpoint before `uri` whose state.pt is intact, or None (from scratch)."""
    return next((earlier for earlier in earlier_checkpoints(uri) if checkpoint_problem(earlier) is None), None)


def refusal_record(uri: str, reason: str, fallback: str | None) -> dict[str, Any]:
    """What a trial keeps of a refused checkpoint (its Optuna user attr)."""
    return {"checkpoint": f"{uri}/{p.STATE_FILE}", "reason": reason, "resumed_from": fallback or "scratch"}


def refusal_warning(numbers: list[int], record: dict[str, Any]) -> str:
    fallback = record["resumed_from"]
    then = "starting over" if fallback == "scratch" else f"resuming from the checkpoint before it, {fallback}"
    trials = ", ".join(str(n) for n in numbers)
    return (f"gansweep: warning: refused checkpoint {record['checkpoint']} of trial(s) {trials}: "
            f"{record['reason']}; {then}")


def refuse_bad_checkpoint(study: Any, numbers: list[int], uri: str, reason: str) -> None:
    """Point the unit's members at the last intact checkpoint before `uri` (or none: from
    scratch), record the refusal on each, and warn, naming the file."""
    fallback = last_good_checkpoint(uri)
    record = refusal_record(uri, reason, fallback)
    for number in numbers:
        refused = list(study.frozen(number).user_attrs.get(ATTR_CHECKPOINT_REFUSED, []))
        study.set_attrs(number, {p.ATTR_CHECKPOINT: fallback or "", ATTR_CHECKPOINT_REFUSED: [*refused, record]})
    print(refusal_warning(numbers, record), file=sys.stderr, flush=True)
