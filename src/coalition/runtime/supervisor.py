"""``coalition run --processes N``: N worker processes of one node, on one host, sharing
its ports, kept running.

Each worker is ``coalition run --config FILE --worker-of PID``: the same node.toml, its
gRPC, HTTP and partner servers bound with SO_REUSEPORT (the kernel spreads connections
over the workers), the log's order, the sealer election and the background jobs kept
safe for several processes by the database (``node/sequencer.py``, ``node/sealer.py``).
The supervisor itself opens no database and serves nothing. It:

- refuses N > 1 on SQLite (one process owns a SQLite file: use PostgreSQL) and on a port
  0 (each worker would bind a different free port instead of sharing one), before any
  worker starts;
- forwards SIGTERM or SIGINT to every worker as SIGTERM, so each stops gracefully (the
  runner's shutdown order), and waits for them (SIGKILL after ``STOP_TIMEOUT_S``);
- forwards SIGHUP to every running worker, so each reloads the API keys (the runner's
  ``reload_api_keys``) and none restarts;
- restarts a worker that exits while the supervisor is not stopping, after a backoff
  that doubles from ``BACKOFF_S`` to ``BACKOFF_MAX_S`` and starts again once a worker
  ran for ``STABLE_S``; every exit and restart is logged. A worker that keeps failing
  at start (``QUICK_FAILURES`` exits in a row, each before ``STABLE_S``) is a
  configuration or database problem, not a crash to ride out: the supervisor stops the
  others and exits 1.

Workers run in their own process group, so a terminal's Ctrl-C reaches the supervisor
only (which stops them in order); a worker whose supervisor disappears (SIGKILL) stops
itself (``--worker-of``: it watches its parent).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from coalition.errors import FailedPrecondition, InvalidArgument
from coalition.node.config import NodeConfig, split_address
from coalition.store.db import sqlite_file

log = logging.getLogger("coalition.supervisor")

BACKOFF_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_S = 30.0
QUICK_FAILURES = 5
STOP_TIMEOUT_S = 60.0
POLL_S = 0.2


def check_processes(config: NodeConfig, processes: int) -> None:
    """Refuse a ``--processes`` count this configuration cannot run (InvalidArgument,
    FailedPrecondition), before anything starts."""
    if processes < 1:
        raise InvalidArgument(f"--processes must be at least 1, got {processes}")
    if processes == 1:
        return
    if sqlite_file(config.database_url) is not None or config.database_url.startswith("sqlite"):
        raise FailedPrecondition(
            f"--processes {processes}: {config.program}'s database is SQLite, which one "
            "process owns (a second writer would corrupt the log's order); run one process, "
            "or set [node] database to a postgresql:// URL to run several"
        )
    addresses = {"[node] grpc": config.grpc_address, "[node] http": config.http_address}
    if config.coalition is not None and config.coalition.partner_grpc_address:
        addresses["[coalition] partner_grpc"] = config.coalition.partner_grpc_address
    for key, address in addresses.items():
        if split_address(address)[1] == 0:
            raise InvalidArgument(
                f"--processes {processes} shares the node's ports, but {key} is {address!r}: "
                "port 0 would give every process a different free port; set a fixed port"
            )


@dataclass
class _Slot:
    """One worker's place: its current process, when it started, its failure streak."""

    number: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    next_start: float = 0.0


class Supervisor:
    """N workers of one node (the module's rules); ``run()`` until stopped."""

    def __init__(
        self,
        config_path: Path,
        processes: int,
        *,
        command: Callable[[int], list[str]] | None = None,
        backoff: tuple[float, float] = (BACKOFF_S, BACKOFF_MAX_S),
        stable_s: float = STABLE_S,
    ) -> None:
        """``command(supervisor_pid)`` is a worker's argv (default: ``coalition run``)."""
        self.config_path = config_path
        self.processes = processes
        self._command = command or self._coalition_run
        self._backoff = backoff
        self._stable_s = stable_s
        self._slots = [_Slot(n) for n in range(1, processes + 1)]
        self.stop_event = threading.Event()
        self.failed = False

    def _coalition_run(self, pid: int) -> list[str]:
        run = [sys.executable, "-m", "coalition.cli", "run"]
        return [*run, "--config", str(self.config_path), f"--worker-of={pid}"]

    @property
    def pids(self) -> list[int]:
        """The running workers' pids."""
        return [s.process.pid for s in self._slots if s.process and s.process.poll() is None]

    def _start(self, slot: _Slot) -> None:
        slot.process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
            self._command(os.getpid()), process_group=0
        )
        slot.started = time.monotonic()
        log.info("worker %d started (pid %d)", slot.number, slot.process.pid)

    def _reap(self, slot: _Slot, now: float) -> None:
        """A worker exited while not stopping: schedule its restart, or give up."""
        assert slot.process is not None
        code, pid, ran = slot.process.returncode, slot.process.pid, now - slot.started
        slot.process = None
        slot.failures = 1 if ran >= self._stable_s else slot.failures + 1
        if slot.failures >= QUICK_FAILURES:
            log.error(
                "worker %d (pid %d) exited with %s after %.1f s, its %d exit in a row within "
                "%.0f s of starting: not restarting; stopping the other workers",
                slot.number, pid, code, ran, slot.failures, self._stable_s,
            )  # fmt: skip
            self.failed = True
            self.stop_event.set()
            return
        base, most = self._backoff
        delay = min(most, base * 2 ** (slot.failures - 1))
        slot.next_start = now + delay
        log.warning(
            "worker %d (pid %d) exited with %s after %.1f s; restarting it in %.1f s",
            slot.number, pid, code, ran, delay,
        )  # fmt: skip

    def run(self) -> int:
        """Start the workers, keep them running until ``stop_event`` (or SIGTERM/SIGINT
        when called from the main thread), stop them; 0 when every worker stopped cleanly
        and none kept failing, else 1."""
        restore = (
            self._on_signals() if threading.current_thread() is threading.main_thread() else None
        )
        try:
            log.info("supervising %d workers of %s", self.processes, self.config_path)
            while not self.stop_event.is_set():
                now = time.monotonic()
                for slot in self._slots:
                    if self.stop_event.is_set():
                        break
                    if slot.process is None:
                        if now >= slot.next_start:
                            self._start(slot)
                    elif slot.process.poll() is not None:
                        self._reap(slot, now)
                self.stop_event.wait(POLL_S)
            clean = self._stop_all()
        finally:
            if restore is not None:
                restore()
        return 0 if clean and not self.failed else 1

    def _stop_all(self) -> bool:
        """SIGTERM every running worker, wait (SIGKILL after ``STOP_TIMEOUT_S``); True when
        each exited 0."""
        running = [s for s in self._slots if s.process is not None]
        for slot in running:
            assert slot.process is not None
            if slot.process.poll() is None:
                slot.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        clean = True
        for slot in running:
            assert slot.process is not None
            try:
                code = slot.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d (pid %d) hangs: killing it", slot.number, slot.process.pid)
                slot.process.kill()
                code = slot.process.wait()
            if code != 0:
                clean = False
            log.info("worker %d (pid %d) stopped (exit %s)", slot.number, slot.process.pid, code)
        return clean

    def _on_signals(self) -> Callable[[], None]:
        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s, stopping the workers", signal.Signals(signum).name)
            self.stop_event.set()

        def forward_hup(_signum: int, _frame: FrameType | None) -> None:
            running = [s.process for s in self._slots if s.process and s.process.poll() is None]
            log.info("received SIGHUP, asking %d workers to reload their API keys", len(running))
            for process in running:
                process.send_signal(signal.SIGHUP)

        old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        old[signal.SIGHUP] = signal.signal(signal.SIGHUP, forward_hup)

        def restore() -> None:
            for sig, previous in old.items():
                signal.signal(sig, previous)

        return restore


def watch_parent(parent: int, stop: threading.Event, interval: float = 0.5) -> threading.Thread:
    """A daemon thread that sets ``stop`` once this process's parent is no longer
    ``parent`` (the supervisor died and the worker was re-parented)."""

    def watch() -> None:
        while not stop.wait(interval):
            if os.getppid() != parent:
                log.warning("the supervisor (pid %d) is gone; stopping this worker", parent)
                stop.set()
                return

    thread = threading.Thread(target=watch, name="watch-supervisor", daemon=True)
    thread.start()
    return thread
