"""Worker processes for the chain audit (``verify.workers.AuditWorkers``): each scans the
blocks it is given (``entry_scan``) and holds one shard of the replay split by account
(``verify.replay_shards``), so both the bulk checks and the replay use every core.

The processes are forked when the caller has one thread (no re-import, a plain script
works) and started from a forkserver (or spawned) otherwise, as the audit's pool. Each
worker reads one inbound queue in order and writes one outbound queue; both are
``multiprocessing.Queue``s, whose sends never block the sender (a feeder thread writes
the pipe), so the auditor handing work ahead and a worker answering cannot wait on
each other. Use it as a context manager, or call ``close``.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import queue
import threading
from collections import deque
from collections.abc import Sequence
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from types import TracebackType
from typing import Any

from coalition.points.replay import Replay
from coalition.verify.entry_scan import BlockScan, scan_block, scan_lines
from coalition.verify.replay_shards import ReplayShard, ShardSummary

_SCAN, _LOAD, _REPLAY, _FINISH, _STATES, _RESET, _STOP = range(7)
_SCANNED, _FAILED, _DECLINED, _SUMMARY, _STATE, _RESET_DONE = range(6)


def _serve(inbox: Queue[tuple[Any, ...]], outbox: Queue[tuple[Any, ...]]) -> None:
    """A worker's loop: every message in order; a replay message has no answer except
    one ``_DECLINED`` the first time the shard declines an op."""
    gc.disable()  # the scans and the replay make no reference cycles
    shard = ReplayShard()
    while True:
        message = inbox.get()
        what = message[0]
        if what == _SCAN:
            _, bodies, count, program, first, sealed_at, shards = message
            try:
                if isinstance(bodies, bytes):
                    scan = scan_lines(
                        bodies, count, program, first, sealed_at=sealed_at, shards=shards
                    )
                else:
                    scan = scan_block(
                        bodies, program, first, pack=True, sealed_at=sealed_at, shards=shards
                    )
                outbox.put((_SCANNED, scan))
            except Exception as exc:
                outbox.put((_FAILED, exc))
        elif what == _REPLAY:
            was = shard.declined
            if not shard.apply(message[1]) and not was:
                outbox.put((_DECLINED,))
        elif what == _LOAD:
            shard = ReplayShard(message[1])
        elif what == _FINISH:
            outbox.put((_SUMMARY, None if shard.declined else shard.summary()))
            shard = ReplayShard()  # the audit is over: free its state
        elif what == _STATES:
            outbox.put((_STATE, None if shard.declined else shard.state))
            shard = ReplayShard()
        elif what == _RESET:
            shard = ReplayShard()
            outbox.put((_RESET_DONE,))
        else:
            return


class _Job:
    __slots__ = ("done", "owner", "scan", "worker")

    def __init__(self, owner: ProcessWorkers, worker: int) -> None:
        self.owner = owner
        self.worker = worker
        self.scan: BlockScan | None = None
        self.done = False

    def result(self) -> BlockScan:
        while not self.done:
            self.owner._read(self.worker)
        assert self.scan is not None
        return self.scan


class WorkerDied(RuntimeError):
    """A worker process ended while the audit waited for it (killed, out of memory)."""


class ProcessWorkers:
    """``count`` worker processes (default: one per CPU), started when first given work
    (an audit of a short chain never needs them)."""

    def __init__(self, count: int | None = None) -> None:
        self._count = max(1, count if count is not None else (os.cpu_count() or 1))
        self._inboxes: list[Queue[tuple[Any, ...]]] = []
        self._outboxes: list[Queue[tuple[Any, ...]]] = []
        self._processes: list[BaseProcess] = []
        self._pending: list[deque[_Job]] = [deque() for _ in range(self._count)]
        self._summaries: dict[int, ShardSummary | None] = {}
        self._states: dict[int, Replay | None] = {}
        self._next = 0
        self._declined = False
        self._closed = False

    @property
    def count(self) -> int:
        return self._count

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (none before the first work)."""
        return [p.pid for p in self._processes if p.pid is not None]

    def _start(self) -> None:
        if self._processes or self._closed:
            return
        context = _context()
        for _ in range(self._count):
            inbox: Queue[tuple[Any, ...]] = context.Queue()
            outbox: Queue[tuple[Any, ...]] = context.Queue()
            process = context.Process(target=_serve, args=(inbox, outbox), daemon=True)  # type: ignore[attr-defined]
            process.start()
            self._inboxes.append(inbox)
            self._outboxes.append(outbox)
            self._processes.append(process)

    @property
    def declined(self) -> bool:
        return self._declined

    def scan(
        self,
        bodies: bytes | list[bytes],
        count: int,
        program: str,
        first: int,
        sealed_at: str,
        shards: int,
    ) -> _Job:
        self._start()
        worker = self._next
        self._next = (worker + 1) % self._count
        job = _Job(self, worker)
        self._pending[worker].append(job)
        self._inboxes[worker].put((_SCAN, bodies, count, program, first, sealed_at, shards))
        return job

    def load(self, states: Sequence[Replay]) -> None:
        self._start()
        for inbox, state in zip(self._inboxes, states, strict=True):
            inbox.put((_LOAD, state))

    def replay(self, ops: Sequence[bytes]) -> None:
        for inbox, part in zip(self._inboxes, ops, strict=True):
            inbox.put((_REPLAY, part))

    def finish(self) -> list[ShardSummary] | None:
        self._summaries.clear()
        for inbox in self._inboxes:
            inbox.put((_FINISH,))
        for worker in range(self._count):
            while worker not in self._summaries:
                self._read(worker)
        found = [self._summaries[w] for w in range(self._count)]
        if self._declined or any(s is None for s in found):
            return None
        return [s for s in found if s is not None]

    def states(self) -> list[Replay] | None:
        self._states.clear()
        for inbox in self._inboxes:
            inbox.put((_STATES,))
        for worker in range(len(self._inboxes)):
            while worker not in self._states:
                self._read(worker)
        found = [self._states[w] for w in range(len(self._inboxes))]
        self._states.clear()
        if self._declined or any(s is None for s in found):
            return None
        return [s for s in found if s is not None]

    def reset(self) -> None:
        for inbox in self._inboxes:
            inbox.put((_RESET,))
        for worker in range(len(self._outboxes)):
            while self._get(worker)[0] != _RESET_DONE:
                pass
            for job in self._pending[worker]:
                job.done = True  # never read: its audit was abandoned
            self._pending[worker].clear()
        self._declined = False
        self._summaries.clear()
        self._states.clear()

    def _read(self, worker: int) -> None:
        """Take the worker's next answer."""
        message = self._get(worker)
        what = message[0]
        if what == _DECLINED:
            self._declined = True
        elif what == _SUMMARY:
            self._summaries[worker] = message[1]
        elif what == _STATE:
            self._states[worker] = message[1]
        else:
            job = self._pending[worker].popleft()
            job.done = True
            if what == _FAILED:
                raise message[1]
            job.scan = message[1]

    def _get(self, worker: int) -> tuple[Any, ...]:
        """The worker's next message; WorkerDied when it ended instead."""
        while True:
            try:
                return self._outboxes[worker].get(timeout=1.0)
            except queue.Empty:
                process = self._processes[worker]
                if not process.is_alive():
                    raise WorkerDied(
                        f"audit worker {worker} (pid {process.pid}) ended with exit code "
                        f"{process.exitcode}"
                    ) from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for inbox in self._inboxes:
            inbox.put((_STOP,))
        for process in self._processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join()
        for channel in (*self._inboxes, *self._outboxes):
            channel.close()
            channel.join_thread()

    def __enter__(self) -> ProcessWorkers:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _context() -> BaseContext:
    methods = multiprocessing.get_all_start_methods()
    if threading.active_count() == 1 and "fork" in methods:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
