"""A real PostgreSQL server for tests: ``initdb`` into a temporary directory, ``pg_ctl`` on a free loopback port.

``postgres`` (session scope) yields a ``PostgresServer``: ``.url`` is a database created for the session
(``postgresql://postgres@127.0.0.1:PORT/receiver_test``) and ``.new_database(name=None)`` creates another,
empty one and returns its URL (a fresh name each call when none is given).  The server trusts connections
from 127.0.0.1 only (no password), listens on no other address, keeps its Unix socket in its own directory
and runs with ``fsync=off``: it is thrown away when the session ends.

PostgreSQL refuses to run as root: under root the server runs as the ``postgres`` system user (created by
Debian's package) through ``runuser``, its directory owned by that user.  A missing PostgreSQL is a test
*failure*, not a skip: scripts/setup installs it (as tests/broker.py does for Mosquitto).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

SUPERUSER = "postgres"
DATABASE = "receiver_test"


def find_binaries() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding both initdb and pg_ctl (or the ones on PATH)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                        if Path(p).parent.name.isdigit() else 0, reverse=True)
    for directory in candidates:
        if all(os.access(Path(directory) / name, os.X_OK) for name in ("initdb", "pg_ctl")):
            return Path(directory)
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """One throw-away PostgreSQL cluster on 127.0.0.1."""

    def __init__(self, binaries: Path) -> None:
        self.binaries = binaries
        self.host = "127.0.0.1"
        self.port = 0
        self.user = SUPERUSER
        self.directory = Path(tempfile.mkdtemp(prefix="pg-test-"))  # not under pytest's 0700 root-only tmp
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        self._run_as: list[str] = []
        self._names = itertools.count(1)
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam(SUPERUSER)
            except KeyError:
                pytest.fail("running as root and there is no 'postgres' system user to run PostgreSQL as "
                            "(PostgreSQL refuses root; scripts/setup installs the postgresql package)", pytrace=False)
            os.chown(self.directory, account.pw_uid, account.pw_gid)
            self._run_as = ["runuser", "-u", SUPERUSER, "--"]
        self.url = ""

    def _run(self, *command: str) -> subprocess.CompletedProcess:
        result = subprocess.run([*self._run_as, *command], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}\n{log}")
        return result

    def start(self) -> None:
        self._run(str(self.binaries / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "-A", "trust",
                  "-E", "UTF8", "--no-locale", "--no-sync")
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.directory}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 100\n")
        for attempt in range(5):
            self.port = free_port()
            try:
                self._run(str(self.binaries / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                          "-t", "60", "-o", f"-p {self.port}", "start")
                break
            except RuntimeError:
                if attempt == 4:
                    raise
        self.url = self.new_database(DATABASE)

    def url_for(self, name: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{name}"

    def new_database(self, name: str | None = None) -> str:
        """Create an empty database and return its URL."""
        import psycopg

        name = name or f"db_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url_for("postgres"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run([*self._run_as, str(self.binaries / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                            "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    binaries = find_binaries()
    if binaries is None:
        pytest.fail("PostgreSQL not found (no initdb/pg_ctl under /usr/lib/postgresql/*/bin or on PATH; "
                    "scripts/setup installs the postgresql package)", pytrace=False)
    server = PostgresServer(binaries)
    try:
        try:
            server.start()
        except RuntimeError as exc:
            pytest.fail(f"cannot start PostgreSQL: {exc}", pytrace=False)
        yield server
    finally:
        server.stop()
