"""One driver per study: a second `gansweep run` of a running study ends at once, naming it.

Two drivers of one study (two terminals, an overlapping scheduled job, a RayJob retried while
its first driver still runs) would hand out the same Optuna trials and tell them twice, and
leave MLflow runs RUNNING. So before any trial or MLflow run starts, the driver takes:

    the output folder's lock    <output>/driver.lock, held with flock(2) for the driver's life.
                                The kernel releases it when the process ends, however it ends
                                (SIGKILL included), so a killed driver never blocks the resume.
                                The file holds {host, pid, started} for the second driver's
                                message, and is removed when the driver ends.
    a lease in the Optuna study only for a shared Optuna storage (`storage:` in the study file
                                or GANSWEEP_OPTUNA_STORAGE), which drivers with other output
                                folders, on other machines, reach: the study's system attr
                                `gansweep:driver` holds {host, pid, started, heartbeat, token},
                                the heartbeat refreshed every HEARTBEAT_S by a thread of the
                                driver. Another driver refuses while it is fresh (STALE_S) and
                                takes over a stale one, or one whose pid is dead on its host.

A storage has no compare-and-set, so a lease is written, left to settle (SETTLE_S) and read
back: of two drivers starting within the same instant, the last writer keeps it and the other
refuses. The heartbeat is wall-clock time: hosts' clocks must agree to well within STALE_S.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gansweep.errors import GansweepError
from gansweep.service.protocol import OutputLayout

LOCK_FILE = OutputLayout(Path(".")).driver_lock.name  # driver.lock
LEASE_ATTR = "gansweep:driver"
HEARTBEAT_S = 10.0  # how often the lease is refreshed
STALE_S = 60.0  # a lease not refreshed for this long belongs to a driver that is gone
SETTLE_S = 1.0  # between writing a lease and reading it back
LOCK_ATTEMPTS = 3  # tries of the output folder's lock, 0.1 s apart, before another driver holds it
RESUME_HINT = "wait for it to end (or stop it), then run the same command to resume"


class DriverRunning(GansweepError):
    """Another driver runs this study; nothing was started or written."""


@dataclass(frozen=True)
class Driver:
    host: str
    pid: int
    started: str  # UTC, ISO 8601 to the second
    pid_start: int | None = None  # the process's start time in clock ticks since boot (Linux)

    @classmethod
    def this_process(cls) -> Driver:
        started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return cls(socket.gethostname(), os.getpid(), started, process_start(os.getpid()))

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Driver:
        return cls(str(record.get("host", "?")), int(record.get("pid", 0)), str(record.get("started", "?")),
                   record.get("pid_start"))

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host}, running since {self.started}"

    def gone(self) -> bool:
        """Known to have ended: this host's process `pid` is dead, a zombie, or a later process
        that reuses the pid (or is this very process: a driver restarted with its old pid).
        On another host nothing is known; its heartbeat tells."""
        if self.host != socket.gethostname():
            return False
        if self.pid == os.getpid():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # alive, another user's
        started = process_start(self.pid)
        if started is None:  # a zombie (or no /proc): a zombie is dead, /proc-less hosts trust kill
            return process_state(self.pid) == "Z"
        return self.pid_start is not None and started != self.pid_start


def process_start(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat, the start time in clock ticks; None without /proc or for
    a zombie (which is as good as dead)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


def process_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


# ---------------------------------------------------------------------------- output folder


class OutputLock:
    """<output>/driver.lock, flock'ed for as long as this driver runs."""

    def __init__(self, output: Path) -> None:
        self.path = output / LOCK_FILE
        self.fd: int | None = None

    def acquire(self, me: Driver, study_name: str) -> None:
        for attempt in range(1, LOCK_ATTEMPTS * 2 + 1):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                locked = self._lock(fd, fcntl.LOCK_EX, study_name, last=attempt >= LOCK_ATTEMPTS)
                # The holder we waited on may have removed the file (release) after we opened
                # it: then our lock is on a file nobody else sees. Open the current one again.
                same = locked and os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, json.dumps(asdict(me)).encode())
                self.fd = fd
                return
            os.close(fd)
            time.sleep(0.1)
        raise DriverRunning(f"{self.path}: cannot take the driver's lock; {RESUME_HINT}")

    def refuse_if_held(self, study_name: str) -> None:
        """The same test without taking the lock or writing anything: for the CLI, before it
        starts Ray. (acquire() decides; this only saves a refused driver Ray's start-up.)"""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return  # no lock file: no driver, or one that is just starting
        try:
            self._lock(fd, fcntl.LOCK_SH, study_name, last=True)
        finally:
            os.close(fd)  # and with it the lock

    def _lock(self, fd: int, operation: int, study_name: str, last: bool) -> bool:
        """flock `fd` without waiting: True once locked; False if held and not `last` (another
        driver's refuse_if_held holds it for an instant); DriverRunning if held and `last`."""
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return True
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                # a file system without locks: run unguarded rather than not at all
                print(f"gansweep: warning: cannot lock {self.path} ({err.strerror}); make sure "
                      "no other driver runs this study")
                return True
        if not last:
            return False
        raise DriverRunning(
            f"{self.path.parent}: study {study_name!r} is already running: {self.holder()} "
            f"(lock {self.path}); {RESUME_HINT}"
        )

    def holder(self) -> str:
        """The running driver as its lock file says (it writes the file just after locking)."""
        for _ in range(20):
            try:
                return Driver.from_record(json.loads(self.path.read_text())).describe()
            except (OSError, ValueError, TypeError):
                time.sleep(0.05)
        return "another driver (its lock file says no more)"

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still locked: see acquire
        os.close(self.fd)  # releases the flock
        self.fd = None


# ---------------------------------------------------------------------------- Optuna storage


class StorageLease:
    """The study's `gansweep:driver` system attr in a shared Optuna storage, kept fresh by a
    heartbeat thread. `storage`: an optuna BaseStorage (RDBStorage), used from that thread too."""

    def __init__(self, storage: Any, study_id: int, study_name: str) -> None:
        self.storage = storage
        self.study_id = study_id
        self.study_name = study_name
        self.token = uuid.uuid4().hex
        self.record: dict[str, Any] | None = None
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def current(self) -> dict[str, Any] | None:
        lease = self.storage.get_study_system_attrs(self.study_id).get(LEASE_ATTR)
        return lease if isinstance(lease, dict) else None

    def refuse_if_held(self, lease: dict[str, Any] | None) -> None:
        if lease is None or lease.get("token") == self.token:
            return
        age = time.time() - float(lease.get("heartbeat", 0.0))
        holder = Driver.from_record(lease)
        if age < STALE_S and not holder.gone():
            raise DriverRunning(
                f"study {self.study_name!r} in the shared Optuna storage (`storage:` / "
                f"GANSWEEP_OPTUNA_STORAGE) is already running: {holder.describe()}, last heard "
                f"from {age:.0f} s ago; {RESUME_HINT} (a driver silent for {STALE_S:.0f} s is "
                "taken over)"
            )

    def acquire(self, me: Driver) -> None:
        self.refuse_if_held(self.current())
        self.record = {**asdict(me), "token": self.token, "heartbeat": time.time()}
        self.storage.set_study_system_attr(self.study_id, LEASE_ATTR, self.record)
        time.sleep(SETTLE_S)  # a driver that read the old lease with us writes within this
        self.refuse_if_held(self.current())
        self.thread = threading.Thread(target=self._beat, name="gansweep-driver-lease", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            try:
                lease = self.current()
                if lease is not None and lease.get("token") != self.token:
                    holder = Driver.from_record(lease).describe()
                    print(f"gansweep: warning: another driver took over study {self.study_name!r} "
                          f"({holder}) after this one was silent for {STALE_S:.0f} s")
                    return
                self.record = {**(self.record or {}), "heartbeat": time.time()}
                self.storage.set_study_system_attr(self.study_id, LEASE_ATTR, self.record)
            except Exception:  # the database away for a while: try again at the next beat
                continue

    def release(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        with contextlib.suppress(Exception):
            lease = self.current()
            if lease is not None and lease.get("token") == self.token:
                self.storage.set_study_system_attr(self.study_id, LEASE_ATTR, None)


@contextlib.contextmanager
def one_driver(study_name: str, output: Path, shared: tuple[Any, int] | None = None) -> Iterator[Driver]:
    """Hold the output folder's lock and, for a shared storage (`shared`: an Optuna storage and
    the study's id in it), the study's lease, while the body runs. Raises DriverRunning."""
    me = Driver.this_process()
    lock = OutputLock(output)
    lock.acquire(me, study_name)
    lease = StorageLease(*shared, study_name) if shared is not None else None
    try:
        if lease is not None:
            lease.acquire(me)
        yield me
    finally:
        if lease is not None:
            lease.release()
        lock.release()
