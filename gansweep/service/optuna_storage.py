"""The driver's Optuna storage, riding out a database that goes away for a while.

A managed PostgreSQL restarts on failover or maintenance: every open connection is cut and,
for a few seconds, new ones are refused. Optuna's RDBStorage then raises StorageInternalError
(from SQLAlchemy's OperationalError) from whatever call the sweep was making, and the driver
died with a traceback (issue 18). `RetryingRDBStorage` retries each storage call that failed
because the connection was lost or refused, after a back-off (0.5 s, doubling to 8 s), as the
MLflow outbox does, for at most GANSWEEP_STORAGE_RETRY_S (120 s) in all; then it stops the
sweep with StorageUnreachable, a GansweepError (exit 2, no traceback) naming the storage
without its password. Opening the storage at start waits GANSWEEP_STORAGE_CONNECT_S (10 s):
a wrong host or a database that is down is reported before any trial starts.

Only connection errors are retried: an integrity error or a bad query is a bug and stays one.
Each call is its own transaction in RDBStorage, so a call that failed on a lost connection
was rolled back and repeating it is safe; the one exception is a call whose commit reached
the server just before the connection broke, when the retry finds the change made
(set_trial_state_values: the trial is finished already, which the retry takes as done).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any

import optuna
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from gansweep.errors import GansweepError

RETRY_ENV = "GANSWEEP_STORAGE_RETRY_S"
CONNECT_ENV = "GANSWEEP_STORAGE_CONNECT_S"
DEFAULT_RETRY_S = 120.0
DEFAULT_CONNECT_S = 10.0
MIN_BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0

# The storage calls the driver makes, directly or through optuna.Study and its cache.
RETRIED = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_trial_user_attrs", "get_trial_system_attrs",
    "get_all_studies", "create_new_trial", "_create_new_trial", "set_trial_param", "_set_trial_param",
    "get_trial_param", "set_trial_state_values", "set_trial_intermediate_value", "set_trial_user_attr",
    "set_trial_system_attr", "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials",
    "_get_trials", "get_best_trial", "_get_best_trial_id", "record_heartbeat", "_get_stale_trial_ids",
)


class StorageUnreachable(GansweepError):
    """The Optuna storage did not answer within the bounded wait."""


def redacted(url: str) -> str:
    """The URL with its password masked (***), for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return url.split("@", 1)[-1] if "@" in url else url


def connection_lost(err: BaseException) -> bool:
    """Whether `err` (or an error it was raised from) says the database connection was lost,
    refused or timed out, rather than that the call itself was wrong."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return True
        if type(current).__module__.startswith(("psycopg2", "psycopg")) and type(current).__name__ in (
            "OperationalError", "InterfaceError",
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


def seconds_from_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise GansweepError(f"{name}={raw!r} is not a number of seconds") from None


class Patience:
    """The retry policy of one storage: back-off and the bounded total wait. Once a wait ran
    out, the storage counts as gone: later calls (the sweep's closing writes) try once only,
    rather than waiting the whole bound again each."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.gone = False

    def call(self, what: str, fn: Callable[[], Any], bound_s: float, retry: Callable[[int], bool] | None = None) -> Any:
        deadline = time.monotonic() + (0.0 if self.gone else bound_s)
        backoff, attempt = MIN_BACKOFF_S, 0
        while True:
            try:
                result = fn()
            except Exception as err:
                if not connection_lost(err):
                    if attempt and retry is not None and retry(attempt):
                        return True
                    raise
                if time.monotonic() + backoff > deadline:
                    self.gone = True
                    raise StorageUnreachable(self.message(what, bound_s, err)) from None
                attempt += 1
                time.sleep(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
                continue
            if attempt:
                print(f"gansweep: the Optuna storage {redacted(self.url)} answers again "
                      f"(after {attempt} retr{'y' if attempt == 1 else 'ies'} of {what})", flush=True)
            self.gone = False
            return result

    def message(self, what: str, bound_s: float, err: BaseException) -> str:
        detail = " ".join(str(getattr(err, "orig", None) or err).split())[:300].replace(self.password(), "***")
        return (
            f"the Optuna storage {redacted(self.url)} did not answer for {bound_s:.0f} s ({what}: {detail}). "
            f"Is the database up and reachable from here? Run the same command again to resume once it is "
            f"({RETRY_ENV} / {CONNECT_ENV} set how long the driver waits)"
        )

    def password(self) -> str:
        try:
            return make_url(self.url).password or "\0"
        except (sqlalchemy.exc.ArgumentError, ValueError):
            return "\0"


def _retrying(name: str) -> Callable[..., Any]:
    method = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(method)
    def wrapper(self: RetryingRDBStorage, *args: Any, **kwargs: Any) -> Any:
        def once() -> Any:
            try:
                return method(self, *args, **kwargs)
            except Exception:
                self.remove_session()  # its connection is broken: the next try takes a fresh one
                raise

        def finished_already(attempt: int) -> bool:
            # The commit of an earlier attempt went through before the connection broke.
            return name == "set_trial_state_values" and self.get_trial(args[0]).state.is_finished()

        return self.patience.call(name, once, self.retry_s, finished_already)

    return wrapper


class RetryingRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage whose calls ride out a lost connection (see the module's doc).
    optuna.create_study wraps it in its cache as it does any RDBStorage."""

    def __init__(self, url: str) -> None:
        self.patience = Patience(url)
        self.retry_s = seconds_from_env(RETRY_ENV, DEFAULT_RETRY_S)
        # A pooled connection the server closed is found out (and replaced) before use:
        # Optuna sets this for MySQL only.
        engine_kwargs = {"pool_pre_ping": True} if not url.startswith("sqlite") else {}
        self.patience.call(
            "connecting", lambda: super(RetryingRDBStorage, self).__init__(url, engine_kwargs=engine_kwargs),
            seconds_from_env(CONNECT_ENV, DEFAULT_CONNECT_S),
        )


for _name in RETRIED:
    setattr(RetryingRDBStorage, _name, _retrying(_name))
