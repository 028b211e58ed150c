"""The replay split by account across shards (worker processes, in ``coalition.audit``),
so a long chain's replay is not one process's sequential work.

Every fast-path entry (``points.replay_fast.prepare``'s tuple) touches one account, except
a transfer (a debit of the sender, new lots for the receiver), and an earn also claims a
reference that must be unique across the program. ``split`` turns a block's tuples into
one list of ops per shard: each entry's op on the shard owning its account
(``shard_of``), a transfer's receiving half on the receiver's shard, an earn's reference
on the shard owning the reference. Each shard applies its ops in log order
(``replay_fast.apply_ops``) to the accounts and references it owns.

Why the outcome is the sequential replay's when no op is declined: every op that reads
or changes an account runs on the shard owning it, in log order, so by induction each
account (and each shard's set of references) is, before an entry's op, what the
sequential replay has before that entry; each op makes exactly the checks of its half
of ``apply_prepared``, so the entry is taken sequentially iff all its ops are taken, and
then changes the same state. Per-kind totals and entry counts add up. When any op is
declined (a fault, or a case the fast path leaves to the reference) the shards' states
are no longer the sequential one: the caller MUST then replay the chain sequentially,
which names the faults exactly as before (``chain_audit`` reruns the audit). When no op
was declined but the next entries cannot be split (a kind off the fast path), the
shards' states together are the sequential state so far (``merge_states``), and the
replay goes on sequentially from there.
"""

from __future__ import annotations

import marshal
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from coalition.points import model
from coalition.points.replay import Replay
from coalition.points.replay_fast import Prepared, apply_ops

_EARN, _TRANSFER = model.kind_of(model.Earn), model.kind_of(model.Transfer)


def shard_of(key: str, shards: int) -> int:
    """The shard owning an account or a reference: the same in every process (CRC-32,
    not ``hash``, which each interpreter seeds differently)."""
    return zlib.crc32(key.encode()) % shards


def split(items: Sequence[Prepared], shards: int) -> list[list[tuple[str, Prepared]]]:
    """One block's tuples as ops per shard, in log order (see the module docstring)."""
    ops: list[list[tuple[str, Prepared]]] = [[] for _ in range(shards)]
    for p in items:
        kind = p[0]
        ops[shard_of(p[1], shards)].append((kind, p))
        if kind == _EARN:
            if p[8] is not None:
                ops[shard_of(p[8], shards)].append(("ref", (p[8],)))
        elif kind == _TRANSFER:
            ops[shard_of(p[5], shards)].append(("transfer-in", p))
    return ops


def split_state(replay: Replay, shards: int) -> list[Replay]:
    """The accounts and references of a replay so far as each shard's starting state
    (totals stay with the caller: a shard counts from zero). Only for a replay that took
    the fast path for every entry: it holds no conversion or hold state."""
    states = [Replay() for _ in range(shards)]
    for account_id, account in replay.accounts.items():
        states[shard_of(account_id, shards)].accounts[account_id] = account
    for ref in replay.refs:
        states[shard_of(ref, shards)].refs.add(ref)
    return states


@dataclass(frozen=True, slots=True)
class ShardSummary:
    """What a shard's replay adds to the audit report."""

    accounts: int
    supply: int
    points_by_kind: dict[str, int]
    entries: int


class ReplayShard:
    """One shard's replay: ops applied in order until one is declined, then nothing more
    (the chain is to be replayed sequentially)."""

    def __init__(self, state: Replay | None = None) -> None:
        self.state = state if state is not None else Replay()
        self.declined = False

    def apply(self, packed: bytes) -> bool:
        """Apply a block's ops for this shard (``marshal``led); False once any op of any
        block so far was declined."""
        if not self.declined:
            ops: list[tuple[str, Prepared]] = marshal.loads(packed)  # noqa: S302  (our own workers' output)
            self.declined = apply_ops(self.state, ops) < len(ops)
        return not self.declined

    def summary(self) -> ShardSummary:
        state = self.state
        return ShardSummary(
            len(state.accounts), state.supply(), dict(state.points_by_kind), state.entries
        )


def merge_states(base: Replay, states: Sequence[Replay]) -> None:
    """Add the shards' states to ``base`` (the state they were split from, whose totals
    they did not count): its accounts, references, totals and count become the
    sequential replay's after the last op the shards took (none declined)."""
    for state in states:
        base.accounts.update(state.accounts)
        base.refs |= state.refs
        base.points_by_kind.update(state.points_by_kind)
        base.entries += state.entries


def merged(base: Replay, summaries: Sequence[ShardSummary]) -> ShardSummary:
    """The report's figures: the caller's totals before the split plus every shard's."""
    kinds: Counter[str] = Counter(base.points_by_kind)
    for s in summaries:
        kinds.update(s.points_by_kind)
    return ShardSummary(
        sum(s.accounts for s in summaries),
        sum(s.supply for s in summaries),
        dict(kinds),
        base.entries + sum(s.entries for s in summaries),
    )
