"""Ray's start and stop, overlapped with the driver's own set-up and wind-down.

Starting a local Ray takes seconds (a GCS, a raylet and their helpers start as processes)
and so do the driver's imports (torch, Ray Tune, MLflow, Optuna) and the MLflow and Optuna
databases; stopping Ray and writing the report take seconds too. Each pair waits on
different things, so `gansweep run` runs them side by side: RayStart.begin() in a thread
as soon as the study file has been validated, RayStart.stop_in_background() as soon as
Tune is done. benchmarks/sweep_bench.py measures what this saves.

This module imports only Ray, so that the thread starts before the heavy imports.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any

import ray

from gansweep.errors import ConfigError

# Ray installs its SIGTERM handler (exit, so that `finally` blocks run) only when ray.init
# runs in the main thread, and warns otherwise; RayStart installs the same handler itself.
_NOT_MAIN_THREAD_WARNING = "SIGTERM handler is not set"
# How long a normal stop waits for a start still under way (a local Ray starts in seconds).
STOP_WAIT_S = 60.0


class _DropNotMainThreadWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _NOT_MAIN_THREAD_WARNING not in record.getMessage()


def init_ray(address: str | None) -> None:
    address = address or os.environ.get("RAY_ADDRESS")
    # Checkpoints at every evaluation force experiment snapshots; they are small, the warning is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            configure_logging=True,
            logging_level="WARNING",
            log_to_driver=False,  # workers' logs stay in Ray's session folder, not the terminal
        )
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ConfigError(f"--address {address}: cannot join the Ray cluster: {err}") from None


EXIT_SIGTERM = 128 + signal.SIGTERM  # 143: what a shell reports for a command ended by SIGTERM


def exit_on_sigterm(signum: int, frame: object) -> None:
    sys.exit(signum)  # as Ray's own handler: SystemExit unwinds through every `finally`


class RayStart:
    """A thread that owns the driver's connection to Ray: it runs ray.init, waits, and runs
    ray.shutdown when told to.

    The thread must live as long as Ray does: Ray starts its local processes with the
    parent-death signal (prctl PR_SET_PDEATHSIG), which Linux sends when the *thread* that
    started them ends, not the process. An init-only thread would take Ray down with it.
    """

    def __init__(self, address: str | None) -> None:
        self.address = address
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._own_ray, name="gansweep-ray", daemon=True)
        self.terminated = False  # a SIGTERM arrived once take_sigterm() held it

    @classmethod
    def begin(cls, address: str | None) -> RayStart:
        start = cls(address)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, exit_on_sigterm)
        logging.getLogger("ray._private.worker").addFilter(_DropNotMainThreadWarning())
        start.thread.start()
        return start

    def _own_ray(self) -> None:
        try:
            init_ray(self.address)
        except BaseException as err:  # handed to wait(), in the main thread
            self.error = err
        finally:
            self.ready.set()
        self.stopping.wait()
        if ray.is_initialized():
            ray.shutdown()

    def wait(self) -> None:
        """Block until Ray is up (or failed to start: that error is raised here)."""
        self.ready.wait()
        if self.error is not None:
            raise self.error

    def take_sigterm(self) -> None:
        """From now on SIGTERM (docker stop, Kubernetes, a batch scheduler) ends the sweep as
        Ctrl-C does. ray.init installs Ray's C++ failure handler on SIGTERM, which prints a
        stack and arms a 3-second alarm that aborts the driver midway through closing its
        runs; a handler set here, in the main thread once Ray is up, replaces it."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._as_ctrl_c)

    def _as_ctrl_c(self, signum: int, frame: Any) -> None:
        self.terminated = True
        # Whatever Ctrl-C does now: Tune's graceful stop during a fit, else KeyboardInterrupt
        handler = signal.getsignal(signal.SIGINT)
        if not callable(handler):
            raise KeyboardInterrupt
        handler(signal.SIGINT, frame)

    def stop_in_background(self) -> None:
        """Start ray.shutdown() (after the start, if that is still going on) and return."""
        self.stopping.set()

    def stop(self, *, wait_for_start: bool = False) -> None:
        """Stop Ray and return once it is down. ray.init cannot be interrupted: unless
        `wait_for_start` (a sweep that ended normally, perhaps with nothing left to run,
        waits for Ray to come up and stops it cleanly), a start still under way is left to
        the daemon thread, which ends with our process, taking any Ray process it started
        with it: Ctrl-C or SIGTERM while Ray is trying to reach a cluster ends the command."""
        self.stopping.set()
        if wait_for_start:
            self.ready.wait(timeout=STOP_WAIT_S)
        if self.ready.is_set():
            self.thread.join()
