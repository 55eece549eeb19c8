"""The retrying outbox of the driver's MLflow calls.

Every call is queued, in order, and delivered by one thread of its own, so the driver's
event loop (and with it training) never waits for MLflow: not for a slow server, nor for a
request that hangs until its timeout when the server dies in the middle of it. While the
server is unreachable the thread retries the queue after a back-off; at the end of the sweep
the driver waits for the queue to drain. What still cannot be delivered at the end is
written to <output>/mlflow-undelivered.jsonl and reported.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gansweep.errors import GansweepError

# While the server is away, the queue is retried after 1 s, then 2, 4 ... at most 15 s apart.
MIN_BACKOFF_S = 1.0
MAX_BACKOFF_S = 15.0


@dataclass
class Outbox:
    undelivered_path: Path  # where the calls still undelivered at the end are listed
    destination: str  # named in messages: the tracking URI
    pending: deque[tuple[str, Callable[[], Any]]] = field(default_factory=deque, init=False)
    backoff_s: float = field(default=0.0, init=False)  # 0 while the server answers
    retry_at: float = field(default=0.0, init=False)  # time.monotonic() of the next attempt
    failures: int = field(default=0, init=False)  # failed deliveries so far
    # Guards pending, backoff_s, retry_at and failures between the driver and the deliverer.
    changed: threading.Condition = field(default_factory=threading.Condition, init=False)
    deliverer: threading.Thread | None = field(default=None, init=False)
    given_up: bool = field(default=False, init=False)  # set at the end: the deliverer stops

    def call_later(self, what: str, fn: Callable[[], Any]) -> None:
        """Queue fn for the delivery thread and return at once; calls run in queue order."""
        with self.changed:
            self.pending.append((what, fn))
            if self.deliverer is None:
                self.deliverer = threading.Thread(target=self._deliver, name="gansweep-mlflow", daemon=True)
                self.deliverer.start()
            self.changed.notify_all()

    def _deliver(self) -> None:
        """The delivery thread: the queue's head, in order, forever; a failed call stays at
        the head and is tried again after a back-off (1 s, doubling to 15 s)."""
        while True:
            with self.changed:
                while not self.given_up and (not self.pending or time.monotonic() < self.retry_at):
                    wait = None if not self.pending else self.retry_at - time.monotonic()
                    self.changed.wait(wait)
                if self.given_up:
                    return
                _, fn = self.pending[0]
            try:
                fn()
            except Exception:
                with self.changed:
                    self.backoff_s = min(MAX_BACKOFF_S, self.backoff_s * 2 if self.backoff_s else MIN_BACKOFF_S)
                    self.retry_at = time.monotonic() + self.backoff_s
                    self.failures += 1
                    self.changed.notify_all()
                continue
            with self.changed:
                self.pending.popleft()
                self.backoff_s, self.retry_at = 0.0, 0.0
                self.changed.notify_all()

    def flush(self) -> bool:
        """Wait until the queue is delivered (True) or a delivery fails (False). A queue
        waiting out a back-off is tried again at once."""
        with self.changed:
            failures = self.failures
            self.retry_at = 0.0
            self.changed.notify_all()
            while self.pending and self.failures == failures:
                self.changed.wait()
            return not self.pending

    def flush_with_retries(self, seconds: float = 60.0) -> None:
        deadline = time.monotonic() + seconds
        while not self.flush() and time.monotonic() < deadline:
            time.sleep(2.0)
        with self.changed:
            if not self.pending:
                return
            self.given_up = True  # the deliverer stops after the call it may be making
            self.changed.notify_all()
            undelivered = [what for what, _ in self.pending]
        path = self.undelivered_path
        with path.open("a") as file:
            for what in undelivered:
                file.write(json.dumps({"call": what}) + "\n")
        raise GansweepError(
            f"{len(undelivered)} MLflow calls could not reach {self.destination}; "
            f"listed in {path}. Results are complete in the output folder."
        )
