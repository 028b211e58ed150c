"""Storage failures: the database's own errors, classified once into the core hierarchy.

Why here: a full disk, a read-only file, an I/O error, a damaged page or an unreachable
PostgreSQL used to surface as whatever the driver raised (``sqlite3.OperationalError``,
``psycopg.errors.DiskFull`` ...), which the transports did not know, so callers got a
text/plain 500 or a traceback. ``store.db.make_engine`` installs ``handle_error`` as
the engine's hook of that name (every statement, commit and connect of every engine) and
``store.prepared`` calls ``storage_error`` for the statements it runs on the driver's
cursor, so no other module looks at a driver's error codes.

Contract:

- ``classify`` returns ``StorageUnavailable`` for a condition the operator can fix while
  the node keeps running (disk full, read-only, I/O error, server unreachable or shutting
  down), ``CorruptDatabase`` for damaged files, and None for everything else (a unique
  violation, a serialization failure, a lock timeout: the callers' own business).
- The message names the condition and the driver's code, never a file path or a host
  (a member may read it); the driver's own text goes to the node's log, once per
  outage (``StorageHealth.failed``).
- ``StorageHealth`` is what ``/healthz`` reports: the last storage failure of an engine
  and when it happened, until a write succeeds again (``recovered``) or no failure was
  seen for ``FORGET_AFTER_S`` seconds.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
import weakref
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.engine import ExceptionContext

from coalition.errors import CoalitionError, CorruptDatabase, StorageUnavailable

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5.0
"""The ``Retry-After`` of a transient storage failure: long enough not to hammer a full
disk, short enough that a caller notices soon when the operator freed space."""

FORGET_AFTER_S = 30.0
"""How long a storage failure stays in ``/healthz`` when nothing has written since."""

# SQLite primary result codes (https://sqlite.org/rescode.html), the low byte of
# ``sqlite3.Error.sqlite_errorcode``.
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26

_FULL = "the database's disk is full"
_READ_ONLY = "the database is read-only"
_IO = "the database's disk gives I/O errors"
_UNREACHABLE = "the database server cannot be reached"
_CORRUPT = "the database file is damaged"

_ENOSPC = {errno.ENOSPC, errno.EDQUOT}

# PostgreSQL SQLSTATE classes and codes (Appendix A of its manual).
_PG_CORRUPT = {"XX001", "XX002"}  # data_corrupted, index_corrupted
_PG_UNAVAILABLE_CLASSES = {
    "08": _UNREACHABLE,  # connection exception
    "53": _FULL,  # insufficient resources: 53100 disk_full (53200 memory, 53300 connections)
    "58": _IO,  # system error: 58030 io_error
}
_PG_UNAVAILABLE = {
    "25006": _READ_ONLY,  # read_only_sql_transaction
    "57P01": _UNREACHABLE,  # admin_shutdown
    "57P02": _UNREACHABLE,  # crash_shutdown
    "57P03": _UNREACHABLE,  # cannot_connect_now
}
_PG_RESOURCES = {"53200": "the database server is out of memory", "53300": "too many connections"}


def _unavailable(what: str, code: str) -> StorageUnavailable:
    return StorageUnavailable(
        f"storage unavailable: {what} ({code}): nothing was written; retry once the "
        "operator has fixed the node's storage",
        retry_after_s=RETRY_AFTER_S,
    )


def _corrupt(code: str) -> CorruptDatabase:
    return CorruptDatabase(
        f"storage damaged: {_CORRUPT} ({code}): nothing was written; the operator must "
        "restore it from a backup or a replica"
    )


def _sqlite(exc: BaseException) -> CoalitionError | None:
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(code, int):
        return None
    name = str(getattr(exc, "sqlite_errorname", code))
    primary = code & 0xFF
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return _corrupt(name)
    what = {
        _SQLITE_FULL: _FULL,
        _SQLITE_READONLY: _READ_ONLY,
        _SQLITE_IOERR: _IO,
        _SQLITE_CANTOPEN: "the database file cannot be opened",
    }.get(primary)
    return None if what is None else _unavailable(what, name)


def _postgres(exc: BaseException) -> CoalitionError | None:
    if not type(exc).__module__.startswith("psycopg"):
        return None
    state = getattr(exc, "sqlstate", None)
    if state is None:
        # No SQLSTATE: the client library's own failure (connection refused, server
        # closed the connection), raised as psycopg.OperationalError.
        if type(exc).__name__ == "OperationalError":
            return _unavailable(_UNREACHABLE, "no connection")
        return None
    if state in _PG_CORRUPT:
        return _corrupt(f"PostgreSQL {state}")
    what = _PG_RESOURCES.get(state) or _PG_UNAVAILABLE.get(state)
    what = what or _PG_UNAVAILABLE_CLASSES.get(state[:2])
    return None if what is None else _unavailable(what, f"PostgreSQL {state}")


def _os_error(exc: BaseException) -> CoalitionError | None:
    if not isinstance(exc, OSError) or exc.errno is None:
        return None
    if exc.errno in _ENOSPC:
        return _unavailable(_FULL, errno.errorcode[exc.errno])
    if exc.errno == errno.EROFS:
        return _unavailable(_READ_ONLY, "EROFS")
    if exc.errno == errno.EIO:
        return _unavailable(_IO, "EIO")
    return None


def is_storage_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a classified storage failure (``classify``'s result)."""
    return isinstance(exc, StorageUnavailable | CorruptDatabase)


def classify(exc: BaseException) -> CoalitionError | None:
    """The core error for a storage failure ``exc`` (a driver's error, SQLAlchemy's
    wrapper of one, or an ``OSError`` of a database file), or None when it is none."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if is_storage_failure(current):
            assert isinstance(current, CoalitionError)
            return current
        seen.add(id(current))
        found = _sqlite(current) or _postgres(current) or _os_error(current)
        if found is not None:
            return found
        current = getattr(current, "orig", None) or current.__cause__
    return None


@dataclass(frozen=True, slots=True)
class StorageProblem:
    """The last storage failure an engine saw: what (the refusal's message) and when
    (``time.time()`` of the first failure since the storage was last fine, and of the
    latest)."""

    message: str
    since: float
    last: float


class StorageHealth:
    """The storage state of one engine, as ``/healthz`` reports it (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._problem: StorageProblem | None = None

    def failed(self, error: CoalitionError, detail: str) -> None:
        """Record a storage failure; the first one since the storage was fine is logged."""
        now = time.time()
        with self._lock:
            first = self._problem is None
            since = now if self._problem is None else self._problem.since
            self._problem = StorageProblem(str(error), since, now)
        if first:
            log.error("%s [%s]", error, detail.splitlines()[0][:500] if detail else "")

    def recovered(self) -> None:
        """A write committed: the storage works again (logged once)."""
        if self._problem is None:
            return
        with self._lock:
            problem, self._problem = self._problem, None
        if problem is not None:
            log.warning("storage works again (failing since %.0f s)", time.time() - problem.since)

    def problem(self) -> StorageProblem | None:
        """The current problem, None when fine or ``FORGET_AFTER_S`` after the last one."""
        with self._lock:
            problem = self._problem
            if problem is not None and time.time() - problem.last > FORGET_AFTER_S:
                self._problem = problem = None
        return problem


_HEALTH: weakref.WeakKeyDictionary[Engine, StorageHealth] = weakref.WeakKeyDictionary()
_HEALTH_LOCK = threading.Lock()


def health_of(engine: Engine) -> StorageHealth:
    """The ``StorageHealth`` of ``engine`` (one per engine, made on first use)."""
    with _HEALTH_LOCK:
        health = _HEALTH.get(engine)
        if health is None:
            health = _HEALTH[engine] = StorageHealth()
        return health


def storage_error(exc: BaseException, engine: Engine | None) -> CoalitionError | None:
    """``classify(exc)``, recorded in ``engine``'s health when it is a storage failure."""
    error = classify(exc)
    if error is not None and engine is not None:
        original = getattr(exc, "orig", None) or exc
        health_of(engine).failed(error, f"{type(original).__name__}: {original}")
    return error


def handle_error(context: ExceptionContext) -> BaseException | None:
    """SQLAlchemy's ``handle_error`` hook: a storage failure is raised as its core error
    (the driver's error chained as its cause) in place of SQLAlchemy's wrapper. A failed
    pre-ping is left alone: the pool then reconnects by itself."""
    if context.is_pre_ping:
        return None
    return storage_error(context.original_exception, context.engine)
