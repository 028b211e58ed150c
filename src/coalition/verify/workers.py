"""What the chain audit asks of worker processes, as an interface: the verifier starts
no process itself for it (``coalition.audit.workers.ProcessWorkers`` is the
implementation, in the auditor's I/O layer); it hands each worker pure functions' inputs
(``entry_scan.scan_lines``/``scan_block`` of a block, ``replay_shards.ReplayShard``'s
ops) and reads their outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from coalition.points.replay import Replay
from coalition.verify.entry_scan import BlockScan
from coalition.verify.replay_shards import ShardSummary


class ScanJob(Protocol):
    def result(self) -> BlockScan:
        """The scan, once the worker is done (re-raises what the scan raised)."""


class AuditWorkers(Protocol):
    """``count`` worker processes, worker ``i`` also holding shard ``i`` of a replay split
    by account. Calls come from one thread. Per shard, ops run in the order given."""

    @property
    def count(self) -> int: ...

    @property
    def declined(self) -> bool:
        """Whether a shard is known to have declined an op (known early, not at once)."""

    def scan(
        self,
        bodies: bytes | list[bytes],
        count: int,
        program: str,
        first: int,
        sealed_at: str,
        shards: int,
    ) -> ScanJob:
        """``scan_lines`` (``bodies`` as lines) or ``scan_block(pack=True)`` (a list) of
        one block, ``shards`` as those take it, in some worker."""

    def load(self, states: Sequence[Replay]) -> None:
        """Start shard ``i``'s replay from ``states[i]`` (``replay_shards.split_state``)."""

    def replay(self, ops: Sequence[bytes]) -> None:
        """Give shard ``i`` the ops ``ops[i]`` of the next block (``BlockScan.shard_ops``)."""

    def states(self) -> list[Replay] | None:
        """Each shard's state once it applied everything given (the shards then forget
        it); None when any shard declined an op."""

    def finish(self) -> list[ShardSummary] | None:
        """Each shard's summary once it applied everything given; None when any shard
        declined an op (the chain MUST then be replayed sequentially)."""

    def reset(self) -> None:
        """Forget every scan not yet read and every shard's state, ready for another
        audit."""
