"""A private PostgreSQL primary and its hot standby, for the tests of read-only processes.

``primary_and_standby`` runs ``initdb`` and ``pg_ctl`` on a temporary folder and two free
ports (never the machine's own server), makes the standby with ``pg_basebackup -R``
(streaming replication, ``hot_standby`` on by default) and yields the URLs of one
database on each; both instances are stopped (``-m immediate``) and their folder removed
afterwards, whatever happened. PostgreSQL refuses to run as root, so as root the
instances run as the ``postgres`` user (``runuser``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from coalition.demo.processes import free_ports

BIN = Path(os.environ.get("COALITION_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
START_TIMEOUT_S = 30


def pg_binaries_missing() -> str | None:
    """Why the private instances cannot run here, or None."""
    for tool in ("initdb", "pg_ctl", "pg_basebackup"):
        if not (BIN / tool).exists():
            return f"no {tool} in {BIN} (set COALITION_TEST_PG_BIN)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser to start PostgreSQL as postgres"
    return None


def _as_owner(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def _run(*args: str, timeout: float = 60) -> None:
    result = subprocess.run(
        _as_owner(list(args)), capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}{result.stderr}")


@dataclass(frozen=True)
class Pair:
    """The URLs of the database ``name`` on the primary and on its standby."""

    primary_url: str
    standby_url: str
    primary_port: int
    standby_port: int


def _start(data: Path, port: int, sockets: Path, log: Path) -> None:
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
    _run(str(BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start")


@contextmanager
def primary_and_standby(name: str = "coalition") -> Iterator[Pair]:
    """The module's pair of instances, database ``name`` created on the primary (and
    replayed on the standby)."""
    root = Path(tempfile.mkdtemp(prefix="coalition-standby-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    primary, standby = root / "primary", root / "standby"
    primary_port, standby_port = free_ports(2)
    started: list[Path] = []
    try:
        _run(str(BIN / "initdb"), "-D", str(primary), "-U", "postgres", "-A", "trust")
        _start(primary, primary_port, root, root / "primary.log")
        started.append(primary)
        _run(
            str(BIN / "psql"),
            *("-h", "127.0.0.1", "-p", str(primary_port), "-U", "postgres"),
            *("-c", f'CREATE DATABASE "{name}"'),
        )
        _run(
            str(BIN / "pg_basebackup"),
            *("-h", "127.0.0.1", "-p", str(primary_port), "-U", "postgres"),
            *("-D", str(standby), "-R", "-X", "stream", "--checkpoint=fast"),
        )
        _start(standby, standby_port, root, root / "standby.log")
        started.append(standby)
        yield Pair(
            f"postgresql://postgres@127.0.0.1:{primary_port}/{name}",
            f"postgresql://postgres@127.0.0.1:{standby_port}/{name}",
            primary_port,
            standby_port,
        )
    finally:
        for data in reversed(started):
            try:
                _run(str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
            except RuntimeError:
                time.sleep(0.5)
        shutil.rmtree(root, ignore_errors=True)
