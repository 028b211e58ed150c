"""Leadership: which process of a node seals and runs the single-runner background jobs.

Several processes may serve one node on one PostgreSQL database. Exactly one of them at a
time holds the node's lease (``store.leases``, name ``LEASE``): it seals blocks and runs
the jobs that must not run twice at once (the outbox's sweep, witness following, expiry,
the release of expired holds). A small thread renews the lease every ``renew_s``
seconds for ``lease_s`` seconds, in the database's clock, so when the holder dies
(SIGKILL) or stalls (SIGSTOP) another process takes it over within
``lease_s + renew_s`` seconds (4 s with the defaults), its fencing token one higher.

Contract:

- ``held()`` is this process's belief, valid until ``lease_s - SAFETY_S`` seconds
  after the start of the last successful renewal (measured on the monotonic clock, which
  keeps running while a process is stopped). A job loop MAY rely on it to skip work; a
  job whose write must never happen twice MUST also call ``fence(conn)`` inside its own
  write transaction and write only when it returns True (the sealer does).
- ``fence(conn)`` locks the lease row in the caller's transaction and checks holder,
  token and expiry in the database, so a holder woken after losing the lease cannot
  write: the new holder's takeover bumped the token.
- On SQLite there is one process (``store.db.lock_sqlite_file``): the lease is taken at
  start and always renewed, the same code path.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from sqlalchemy import Connection, Engine

from coalition.store import leases as leases_store
from coalition.store.failures import is_storage_failure

log = logging.getLogger(__name__)

LEASE = "sealer"
"""The one lease of a node: its holder seals and runs the background jobs."""

LEASE_S = 3.0
RENEW_S = 1.0
SAFETY_S = 0.5
"""``held()`` turns False this long before the lease could expire in the database."""


def holder_name() -> str:
    """Who a process is in the lease table: host, pid and a random suffix (several
    services in one test process are distinct holders)."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Leadership:
    """This process's claim on the node's lease, renewed in the background."""

    def __init__(
        self,
        engine: Engine,
        *,
        lease_s: float = LEASE_S,
        renew_s: float = RENEW_S,
        holder: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall_us: Callable[[], int] | None = None,
    ) -> None:
        """``monotonic`` and ``wall_us`` (the simulator's clock) replace this process's
        monotonic clock and, on SQLite only, the host's clock the lease is dated by."""
        if not 0 < renew_s < lease_s - SAFETY_S:
            raise ValueError("renew_s must be below lease_s - SAFETY_S")
        self._named = holder
        self._pid = os.getpid()
        self.holder = holder or holder_name()
        self._engine = engine
        self._lease_us = int(lease_s * 1_000_000)
        self._lease_s = lease_s
        self._renew_s = renew_s
        self._lock = threading.Lock()
        self._token: int | None = None
        self._valid_until = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[bool], None]] = []
        self._monotonic = monotonic
        self._wall_us = wall_us

    def _sqlite_now(self) -> int | None:
        return None if self._wall_us is None else self._wall_us()

    @property
    def token(self) -> int | None:
        """The fencing token of the lease this process last held (None: never held)."""
        return self._token

    def held(self) -> bool:
        """Whether this process holds the lease, by its own clock (see the contract)."""
        with self._lock:
            return self._token is not None and self._monotonic() < self._valid_until

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(held)`` from the renewing thread when ``held()`` changes."""
        self._listeners.append(listener)

    def try_acquire(self) -> bool:
        """One round: take or renew the lease now; whether this process holds it. A
        database failure counts as not renewed (``held()`` lapses on its own)."""
        if os.getpid() != self._pid:  # a forked child is another holder, never its parent
            with self._lock:
                self._pid, self._token, self._valid_until = os.getpid(), None, 0.0
                self.holder = self._named or holder_name()
        was = self.held()
        started = self._monotonic()
        try:
            with self._engine.begin() as conn:
                lease = leases_store.acquire(
                    conn, LEASE, self.holder, self._lease_us, sqlite_now_us=self._sqlite_now()
                )
        except Exception as exc:
            if is_storage_failure(exc):  # a full disk: one line a second, not a traceback
                log.warning("renewing the %s lease failed: %s", LEASE, exc)
            else:
                log.exception("renewing the %s lease failed", LEASE)
            lease = None
            now = self.held()
        else:
            with self._lock:
                if lease is None:
                    self._valid_until = 0.0
                else:
                    if lease.token != self._token:
                        log.info(
                            "%s holds the %s lease (token %d)", self.holder, LEASE, lease.token
                        )
                    self._token = lease.token
                    self._valid_until = started + self._lease_s - SAFETY_S
            now = lease is not None
        if now != was:
            for listener in self._listeners:
                listener(now)
        return now

    def fence(self, conn: Connection) -> bool:
        """In the caller's write transaction: lock the lease row and say whether this
        process still holds it with its token, unexpired (see the contract)."""
        token = self._token
        if token is None:
            return False
        return leases_store.check_fence(
            conn, LEASE, self.holder, token, sqlite_now_us=self._sqlite_now()
        )

    def start(self) -> None:
        """Try once now (a lone process leads from its first moment), then keep renewing
        or trying every ``renew_s`` seconds in a daemon thread until ``stop``."""
        if self._thread is not None:
            return
        self._stop.clear()
        self.try_acquire()
        self._thread = threading.Thread(target=self._run, name="leadership", daemon=True)
        self._thread.start()

    def pause(self) -> None:
        """Stop renewing without letting the lease go (what a stalled process looks like
        to the others; tests)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def stop(self) -> None:
        """Stop renewing and, if held, let the lease lapse now so another process takes
        over at its next try."""
        self.pause()
        if self._token is None:
            return
        with self._lock:
            self._valid_until = 0.0
        try:
            with self._engine.begin() as conn:
                leases_store.release(conn, LEASE, self.holder, sqlite_now_us=self._sqlite_now())
        except Exception:
            log.exception("releasing the %s lease failed; it expires on its own", LEASE)

    def _run(self) -> None:
        while not self._stop.wait(self._renew_s):
            self.try_acquire()
