"""A private PostgreSQL cluster on loopback for tests: Debian's postgresql binaries
(/usr/lib/postgresql/<version>/bin), a data directory in a temp folder, a free port on
127.0.0.1, a superuser with a password, and the databases deploy/postgres-init creates (the
script itself is run, with the environment the postgres image gives it).

PostgreSQL refuses to run as root: as root, initdb and pg_ctl run as the `postgres` user
(runuser), which owns the data directory; as anyone else, as themselves.

    server = PgServer(user="gansweep", password="...")
    server.start(); server.init_like_compose()
    server.url("optuna")                 # postgresql+psycopg2://gansweep:...@127.0.0.1:PORT/optuna
    server.restart()                     # pg_ctl restart -m fast: every connection is cut
    server.stop()
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT, free_port

INIT_SCRIPTS = ROOT / "deploy" / "postgres-init"


def postgres_bin() -> Path | None:
    """The newest installed /usr/lib/postgresql/<version>/bin holding initdb, else None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def needs_postgres() -> pytest.MarkDecorator:
    """Tests need the Debian package (scripts/setup.sh installs it)."""
    return pytest.mark.skipif(postgres_bin() is None, reason="postgresql not installed (scripts/setup.sh)")


class PgServer:
    def __init__(self, user: str = "gansweep", password: str | None = None) -> None:
        self.bin = postgres_bin()
        assert self.bin is not None, "no /usr/lib/postgresql/*/bin/initdb: run scripts/setup.sh"
        self.user = user
        self.password = password or secrets.token_hex(12)
        self.port = free_port()
        self.host = "127.0.0.1"
        # Owned by whoever runs the server; short, outside pytest's 0700 root-owned tmp_path.
        self.folder = Path(tempfile.mkdtemp(prefix="gspg-", dir="/tmp"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.as_owner: list[str] = []
        if os.geteuid() == 0:
            self.as_owner = ["runuser", "-u", "postgres", "--"]
            owner = pwd.getpwnam("postgres")
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)

    def _run(self, *command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run([*self.as_owner, *command], capture_output=True, text=True, timeout=timeout,
                              cwd=self.folder)
        assert done.returncode == 0, f"{command[0]} failed:\n{done.stdout}\n{done.stderr}\n{self.logs()}"
        return done

    def start(self) -> None:
        pwfile = self.folder / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.as_owner:
            owner = pwd.getpwnam("postgres")
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
                  "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8")
        pwfile.unlink()
        # In postgresql.conf, so that `pg_ctl restart` keeps them.
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                       f"unix_socket_directories = '{self.folder}'\nfsync = off\n")
        self._pg_ctl("start")

    def _pg_ctl(self, action: str, *extra: str) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  *extra, action)

    def restart(self) -> None:
        """What a managed database's failover or maintenance does to its clients: the server
        goes away (every connection cut) and comes back on the same address."""
        self._pg_ctl("restart", "-m", "fast")

    def stop_now(self) -> None:
        self._pg_ctl("stop", "-m", "fast")

    def start_again(self) -> None:
        self._pg_ctl("start")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run([*self.as_owner, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                            "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)

    def client_env(self) -> dict[str, str]:
        """libpq's environment for psql (and the init scripts) to reach this server."""
        return {**os.environ, "PGHOST": self.host, "PGPORT": str(self.port), "PGPASSWORD": self.password,
                "POSTGRES_USER": self.user, "PGCONNECT_TIMEOUT": "10"}

    def init_like_compose(self) -> None:
        """Run every deploy/postgres-init script, in name order, as the postgres image runs
        /docker-entrypoint-initdb.d on an empty data directory."""
        for script in sorted(INIT_SCRIPTS.glob("*.sh")):
            done = subprocess.run(["bash", str(script)], env=self.client_env(), capture_output=True, text=True,
                                  timeout=60)
            assert done.returncode == 0, f"{script.name}: {done.stdout}{done.stderr}"

    def psql(self, sql: str, database: str = "postgres") -> list[list[str]]:
        done = subprocess.run([str(self.bin / "psql"), "-X", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1",
                               "-U", self.user, "-d", database, "-c", sql],
                              env=self.client_env(), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return [line.split("\t") for line in done.stdout.splitlines() if line]

    def create_database(self, name: str) -> None:
        self.psql(f'CREATE DATABASE "{name}" OWNER "{self.user}"')

    def url(self, database: str, driver: str = "postgresql+psycopg2", password: str | None = None) -> str:
        return f"{driver}://{self.user}:{password or self.password}@{self.host}:{self.port}/{database}"

    def logs(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""

    def wait_until_up(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = subprocess.run([str(self.bin / "pg_isready"), "-h", self.host, "-p", str(self.port)],
                                  capture_output=True, timeout=30)
            if done.returncode == 0:
                return
            time.sleep(0.3)
        raise TimeoutError(f"PostgreSQL on {self.port} not up within {timeout}s\n{self.logs()}")


def started_pg_server(**kwargs: str) -> Iterator[PgServer]:
    server = PgServer(**kwargs)
    try:
        server.start()
        yield server
    finally:
        server.stop()
