"""The study's `storage:` (an Optuna storage, opened by the service as SQLAlchemy's RDBStorage)
checked when the study is validated, not when the sweep first opens it: a URL SQLAlchemy can
parse, naming a database backend it has a dialect for. The password never enters a message.
"""

from __future__ import annotations

import re

# SQLAlchemy 2 dropped the postgres:// alias; the service opens it as postgresql+psycopg2://
# (service/protocol.with_postgres_driver), so it is a URL the project accepts.
POSTGRES_ALIAS = "postgres"
# user:password@ in a string SQLAlchemy could not parse: masked before it is printed
_CREDENTIALS = re.compile(r"(?<=:)[^:/@]*(?=@)")


def without_password(text: str) -> str:
    """`text` with whatever sits between the last ':' and an '@' (a URL's password) masked."""
    return _CREDENTIALS.sub("***", text)


def storage_url_problem(url: str) -> str | None:
    """What is wrong with `url` as an Optuna storage, or None when SQLAlchemy can open it
    (its DBAPI driver is the service's to import: it may be missing on a validating laptop)."""
    # sqlalchemy imported here: `gansweep validate` of a study without storage stays light
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return (
            f"storage must be a database URL such as sqlite:///runs/x/optuna.db or "
            f"postgresql://user:password@host/db, got {without_password(url)!r}"
        )
    if parsed.get_backend_name() == POSTGRES_ALIAS:
        parsed = parsed.set(drivername="postgresql+psycopg2")
    try:
        parsed.get_dialect()
    except NoSuchModuleError:
        return (
            f"storage names a database SQLAlchemy does not know ({parsed.drivername!r}); use "
            f"sqlite:///..., postgresql://... or mysql://..., got "
            f"{parsed.render_as_string(hide_password=True)!r}"
        )
    return None
