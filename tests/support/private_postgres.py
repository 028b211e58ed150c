"""A private PostgreSQL instance that a test or the hammer (``scripts/hammer.py``) starts,
crashes and removes itself.

``initdb`` and ``pg_ctl`` on a temporary folder and a free port, never the machine's own
server. PostgreSQL refuses to run as root, so as root the instance runs as the
``postgres`` user (``runuser``). ``crash`` is ``pg_ctl stop -m immediate``: every backend
is killed without a checkpoint, and the next start runs crash recovery from the WAL, as
after a PostgreSQL process crash (the operating system keeps its page cache, so
``fsync=off`` loses nothing here; the fault model is process crashes, not power loss).
``private_postgres`` is the instance as a context manager, removed whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from coalition.demo.processes import free_ports
from coalition.errors import CoalitionError

BIN = Path(os.environ.get("COALITION_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
"""Where ``initdb``, ``pg_ctl`` and ``psql`` are (the tests' variable)."""


def binaries_missing() -> str | None:
    """Why the private instance cannot run here, or None."""
    for tool in ("initdb", "pg_ctl", "psql"):
        if not (BIN / tool).exists():
            return f"no {tool} in {BIN} (set COALITION_TEST_PG_BIN)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser to start PostgreSQL as postgres"
    return None


class PrivatePostgres:
    """One PostgreSQL instance in a temporary folder: ``start``, ``crash``, ``remove``."""

    def __init__(self, max_connections: int = 300) -> None:
        missing = binaries_missing()
        if missing is not None:
            raise CoalitionError(missing)
        self.root = Path(tempfile.mkdtemp(prefix="coalition-hammer-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_ports(1)[0]
        self.max_connections = max_connections
        self.running = False
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust")

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c max_connections={self.max_connections}"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        self.running = True

    def crash(self) -> None:
        """Stop at once (``-m immediate``): no checkpoint, crash recovery at next start."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        self.running = False

    def create_database(self, name: str) -> str:
        """Create database ``name``; its SQLAlchemy URL."""
        self._run(
            "psql",
            *("-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"),
            *("-c", f'CREATE DATABASE "{name}"'),
        )
        return self.url(name)

    def remove(self) -> None:
        """Stop the instance if it runs and delete its folder."""
        if self.running:
            with contextlib.suppress(CoalitionError):
                self.crash()
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        command = [str(BIN / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise CoalitionError(f"{tool} failed:\n{result.stdout}{result.stderr}")


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started ``PrivatePostgres``, removed afterwards whatever happened."""
    instance = PrivatePostgres()
    try:
        instance.start()
        yield instance
    finally:
        instance.remove()
