"""A read-only process of a node: the writer of a hot standby, which writes nothing.

A process configured ``[node] read_only = true`` reads a PostgreSQL hot standby (a
streaming replica of the primary's database). It serves every read the primary serves,
as of what the standby has replayed, and MUST refuse every write before it reaches the
database (the standby would refuse it too, but with a database error, not a reason):
every write of the node goes through ``Sequencer.run`` (the sequencer's contract), so
``ReadOnlySequencer.run`` is the one place that refuses them, with FailedPrecondition
(gRPC FAILED_PRECONDITION, HTTP 409) naming the primary that takes them. It never seals:
``close`` releases the database without sealing what is pending.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, TypeVar

from coalition.errors import FailedPrecondition
from coalition.node.sequencer import Sequencer, Transaction

T = TypeVar("T")


def read_only_refusal(program: str, primary: str) -> FailedPrecondition:
    """What a write to a read-only process of ``program`` raises."""
    return FailedPrecondition(
        f"this process of {program} is read-only (it serves a hot standby): "
        f"send writes to the primary at {primary}"
    )


class ReadOnlySequencer(Sequencer):
    """A sequencer whose every write is refused with the primary's address."""

    def __init__(self, primary: str, *args: Any, **kwargs: Any) -> None:
        """``primary``: where writes go; the rest are ``Sequencer``'s arguments."""
        self.primary = primary
        super().__init__(*args, **kwargs)

    def refusal(self) -> FailedPrecondition:
        return read_only_refusal(self.program, self.primary)

    def run(
        self, work: Callable[[Transaction], T], *, accounts: Collection[str] | None = None
    ) -> T:
        """Refuse: this process writes nothing (the module's contract)."""
        raise self.refusal()

    def close(self) -> None:
        """Release the database; nothing is sealed here (the primary seals)."""
        self.engine.dispose()
