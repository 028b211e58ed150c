"""Disks that really fill: a small tmpfs, and a private PostgreSQL whose tables live on one.

``small_tmpfs`` mounts a tmpfs of a few MiB on a temporary folder (root only: the tests
that need it are skipped with ``tmpfs_missing``'s reason elsewhere) and unmounts it
afterwards. ``DiskFiller`` fills such a folder with one file until the kernel answers
ENOSPC, and frees it again. ``postgres_on_tmpfs`` starts a private instance (never the
machine's own server; ``support.standby``'s binaries and user) whose WAL stays on the
ordinary disk and whose database's default tablespace is a small tmpfs, so a full
tablespace gives PostgreSQL's own "could not extend file" (53100 disk_full) without
taking the server down (a full WAL disk makes PostgreSQL PANIC, a different failure).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from coalition.demo.processes import free_ports

from support.standby import BIN, _run, _start, pg_binaries_missing

_PROBED: list[str | None] = []


def _mount(size_mb: int, folder: Path) -> None:
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=1777", "tmpfs", str(folder)],
        check=True,
        capture_output=True,
        timeout=10,
    )


def _unmount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True, timeout=10)


def tmpfs_missing() -> str | None:
    """Why no tmpfs can be mounted here (not root, no ``mount``), or None."""
    if not _PROBED:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            _PROBED.append("mounting a tmpfs needs root and mount(8)")
        else:
            folder = Path(tempfile.mkdtemp(prefix="coalition-tmpfs-probe-"))
            try:
                _mount(1, folder)
                _unmount(folder)
                _PROBED.append(None)
            except (OSError, subprocess.SubprocessError) as exc:
                _PROBED.append(f"mount -t tmpfs failed: {exc}")
            finally:
                shutil.rmtree(folder, ignore_errors=True)
    return _PROBED[0]


@contextmanager
def small_tmpfs(size_mb: int) -> Iterator[Path]:
    """A fresh tmpfs of ``size_mb`` MiB mounted on a temporary folder, unmounted after."""
    folder = Path(tempfile.mkdtemp(prefix="coalition-tmpfs-"))
    _mount(size_mb, folder)
    try:
        yield folder
    finally:
        _unmount(folder)
        shutil.rmtree(folder, ignore_errors=True)


class DiskFiller:
    """Fills the file system of ``folder`` to the last byte with one file, and frees it."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "filler"

    def fill(self) -> None:
        chunk = b"\0" * 65536
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for size in (65536, 4096, 512, 1):
                try:
                    while os.write(fd, chunk[:size]) == size:
                        pass
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
        finally:
            os.close(fd)
        remaining = shutil.disk_usage(self.path.parent).free
        assert remaining < 65536, f"{remaining} bytes still free"

    def free(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class PrivatePostgres:
    """A private instance: ``url`` of a database on the tmpfs ``tablespace``."""

    url: str
    data: Path
    port: int
    tablespace: Path
    root: Path

    def stop(self) -> None:
        _run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def start(self) -> None:
        _start(self.data, self.port, self.root, self.root / "postgres.log")

    def psql(self, sql: str, database: str = "postgres") -> None:
        _run(
            str(BIN / "psql"),
            *("-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database),
            *("-v", "ON_ERROR_STOP=1", "-c", sql),
        )


def postgres_missing() -> str | None:
    """Why ``postgres_on_tmpfs`` cannot run here, or None."""
    return pg_binaries_missing() or tmpfs_missing()


@contextmanager
def postgres_on_tmpfs(size_mb: int, name: str = "coalition") -> Iterator[PrivatePostgres]:
    """A private PostgreSQL with the database ``name`` in a tablespace on a tmpfs of
    ``size_mb`` MiB; stopped, unmounted and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="coalition-pgfull-"))
    shutil.chown(root, "postgres")
    data, port = root / "data", free_ports(1)[0]
    with small_tmpfs(size_mb) as tablespace:
        shutil.chown(tablespace, "postgres")
        server = PrivatePostgres(
            f"postgresql://postgres@127.0.0.1:{port}/{name}", data, port, tablespace, root
        )
        started = False
        try:
            _run(str(BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust")
            server.start()
            started = True
            server.psql(f"CREATE TABLESPACE small LOCATION '{tablespace}'")
            server.psql(f'CREATE DATABASE "{name}" TABLESPACE small')
            yield server
        finally:
            if started:
                with suppress(RuntimeError):
                    server.stop()
            shutil.rmtree(root, ignore_errors=True)
