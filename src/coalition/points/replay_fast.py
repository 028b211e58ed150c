"""The replay's fast path for the common member kinds (enroll, earn, redeem, transfer,
expire, adjust): what an audit of a long chain spends most of its time on.

The fast path has two halves. ``prepare`` checks what needs no state (types, canonical
times, exactly the members ``points.model`` declares, positive parts, distinct lots,
totals) and reduces the entry to a small tuple of what the replay needs (cheap to ship
from a worker process with ``marshal``);
``apply_prepared`` checks what needs the state and applies the tuple. Together they
apply one entry to a ``Replay`` and report True only when
``Replay.apply_reference`` would accept the entry and leave exactly the same state
(accounts, lots, references, totals); it first checks everything the reference path
checks, in any order, and changes nothing before all checks passed. On any doubt (a
field of an unexpected type, a non-canonical time, a repeated lot, a rule broken) it
returns False having changed nothing, and the caller runs the reference path, which
raises the fault with its usual message. So the fast path decides nothing on its own:
it can only make the accepted case cheaper (tests/unit/test_replay_fast.py compares the
two on random and hostile entries).

Cheaper means: fields read once, exact types (``type(x) is int`` excludes ``bool`` as
the reference's ``isinstance`` tests do, and declines subclasses the reference would
take), each time matched once against ``entries.CANONICAL_TIME`` (the spelling every
entry uses) and parsed once, no per-entry closures, and the accounts' ``changed`` sets,
which ``apply_reference`` empties after every entry, never filled (nor cleared).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeAlias

from coalition.ledger.canonical import JsonObject, JsonValue
from coalition.ledger.entries import CANONICAL_TIME, ENTRY_TYPE
from coalition.points import model
from coalition.points.state import PROGRAM_ACCOUNT, Account, Lot, earn_ref


class Replay(Protocol):
    """The replay state the fast path reads and changes (``points.replay.Replay`` is one):
    a protocol, so the fast path depends on the state's shape, not on the reference."""

    accounts: dict[str, Account]
    refs: set[str]
    points_by_kind: Counter[str]
    entries: int


Prepared: TypeAlias = tuple[Any, ...]
"""What ``prepare`` makes of an entry: its kind first, then the fields its kind needs
(strings, integers, None and tuples of them, so ``marshal`` ships it)."""

_fromisoformat = datetime.fromisoformat
_canonical = CANONICAL_TIME.fullmatch


def _member_id(value: JsonValue) -> str | None:
    return value if type(value) is str and value != PROGRAM_ACCOUNT else None


def _time(value: JsonValue) -> str | None:
    """``value`` when it has the canonical time spelling (``entries.CANONICAL_TIME``),
    else None. Whether it names a real date-time (not 2026-02-30) is left to
    ``apply_prepared``, which parses every time before it changes anything."""
    return value if type(value) is str and _canonical(value) else None


def _parts(entry: JsonObject, *, transfer: bool = False) -> tuple[tuple[Any, ...], ...] | None:
    """The ``taken`` items as (lot, part) (transfer: (lot, part, new lot, expiry)) when
    each is well formed (exactly its struct's fields), every part positive and every lot
    (and new lot) distinct."""
    items = entry.get("taken")
    if type(items) is not list:
        return None
    out: list[tuple[Any, ...]] = []
    size = 4 if transfer else 2
    for item in items:
        if type(item) is not dict or len(item) != size:
            return None
        lot_id, part = item.get("lot"), item.get("amount")
        if type(lot_id) is not str or type(part) is not int or part <= 0:
            return None
        if transfer:
            new_lot, expires_at = item.get("new_lot"), _time(item.get("expires_at"))
            if type(new_lot) is not str or expires_at is None:
                return None
            out.append((lot_id, part, new_lot, expires_at))
        else:
            out.append((lot_id, part))
    if len(out) > 1:
        if len({p[0] for p in out}) != len(out):
            return None
        if transfer and len({p[2] for p in out}) != len(out):
            return None
    return tuple(out)


def _size(struct: type[model.Entry]) -> int:
    """How many members an entry of ``struct`` has when every field is present."""
    return len(struct.__struct_fields__) + 1  # + the ``kind`` tag


_ENROLL, _EARN, _LOT = (
    _size(model.Enroll),
    _size(model.Earn),
    len(model.EarnedLot.__struct_fields__),
)
_DEBIT, _TRANSFER = _size(model.Redeem), _size(model.Transfer)
_ADJUST_UP = _size(model.Adjust) - 1  # without ``taken``
_ADJUST_DOWN = _size(model.Adjust) - 2  # without ``lot`` and ``expires_at``
assert _size(model.Expire) == _DEBIT

_ENROLL_KIND, _EARN_KIND, _ADJUST_KIND, _TRANSFER_KIND, _EXPIRE_KIND = (
    model.kind_of(struct)
    for struct in (model.Enroll, model.Earn, model.Adjust, model.Transfer, model.Expire)
)
_DEBIT_KINDS = (model.kind_of(model.Redeem), _EXPIRE_KIND, _TRANSFER_KIND)
HANDLED = frozenset((_ENROLL_KIND, _EARN_KIND, _ADJUST_KIND, *_DEBIT_KINDS))
"""The kinds ``prepare`` has a fast path for (``kinds.FAST_KINDS`` says which it may
take: tests/unit/test_kinds.py checks the two agree)."""


def prepare(entry: JsonObject) -> Prepared | None:
    """The entry reduced for ``apply_prepared`` when its kind has a fast path and every
    check that needs no state passes, else None (the reference path must run).

    As ``model.parse_entry``, it takes only exact members: the envelope's types, each
    field present, none the kind does not declare (counted, every field being read)."""
    kind = entry.get("kind")
    account = _member_id(entry.get("account"))
    at = _time(entry.get("at"))
    amount = entry.get("amount")
    if account is None or at is None or type(kind) is not str:
        return None
    if (
        entry.get("type") != ENTRY_TYPE
        or type(entry.get("program")) is not str
        or type(entry.get("id")) is not str
        or type(entry.get("reason")) is not dict
    ):
        return None
    size = len(entry)
    if kind == _ENROLL_KIND:
        return (kind, account, at) if size == _ENROLL else None
    if type(amount) is not int:
        return None
    if kind == _EARN_KIND:
        spec = entry.get("lot")
        if amount <= 0 or size != _EARN or type(spec) is not dict or len(spec) != _LOT:
            return None
        lot_id, qualifying = spec.get("id"), spec.get("qualifying")
        available_at, expires_at = _time(spec.get("available_at")), _time(spec.get("expires_at"))
        if type(lot_id) is not str or type(qualifying) is not int:
            return None
        if available_at is None or expires_at is None:
            return None
        ref = earn_ref(entry.get("reason"))
        return (kind, account, amount, lot_id, qualifying, at, available_at, expires_at, ref)
    if kind == _ADJUST_KIND and amount > 0:
        lot_id, expires_at = entry.get("lot"), _time(entry.get("expires_at"))
        if type(lot_id) is not str or expires_at is None or size != _ADJUST_UP:
            return None
        return (kind, account, amount, at, lot_id, expires_at)
    if kind in _DEBIT_KINDS or (kind == _ADJUST_KIND and amount < 0):
        to = _member_id(entry.get("to")) if kind == _TRANSFER_KIND else None
        expected = (
            _TRANSFER
            if kind == _TRANSFER_KIND
            else _ADJUST_DOWN
            if kind == _ADJUST_KIND
            else _DEBIT
        )
        if size != expected:
            return None
        parts = _parts(entry, transfer=kind == _TRANSFER_KIND)
        if parts is None or (kind == _TRANSFER_KIND and to is None):
            return None
        if sum(p[1] for p in parts) != (-amount if kind == _ADJUST_KIND else amount):
            return None
        return (kind, account, amount, at, parts, to)
    return None


def _enroll(replay: Replay, p: Prepared) -> bool:
    _, account_id, at = p
    if account_id in replay.accounts:
        return False
    _fromisoformat(at)  # a real date-time, as the reference path demands
    replay.accounts[account_id] = Account(account_id)
    replay.entries += 1
    return True


def _earn(replay: Replay, p: Prepared) -> bool:
    """An earn: its lot (``_earn_lot``) and its reference, unique across the program."""
    ref = p[8]
    if ref is not None and ref in replay.refs:
        return False
    if not _earn_lot(replay, p):
        return False
    if ref is not None:
        replay.refs.add(ref)
    return True


def _adjust_up(replay: Replay, p: Prepared) -> bool:
    kind, account_id, amount, at, lot_id, expires_at = p
    account = replay.accounts.get(account_id)
    if account is None or lot_id in account.lots:
        return False
    now = _fromisoformat(at)
    lot = Lot(lot_id, account.id, amount, amount, 0, now, now, _fromisoformat(expires_at))
    account.lots[lot_id] = lot
    replay.points_by_kind[kind] += amount
    replay.entries += 1
    return True


def _debit(replay: Replay, p: Prepared) -> bool:
    """redeem, transfer, expire and negative adjust: every lot debited as a whole check
    first (each lot present and holding the part; spendable for redeem and transfer,
    expired for expire), then the debits and the transfer's new lots."""
    kind, account_id, amount, at, parts, to = p
    account = replay.accounts.get(account_id)
    if account is None:
        return False
    target = None
    if to is not None:
        target = replay.accounts.get(to)
        if target is None or target.id == account.id:
            return False
    now = _fromisoformat(at)
    lots = account.lots
    taken: list[Lot] = []
    for part in parts:
        lot = lots.get(part[0])
        if lot is None or part[1] > lot.remaining:
            return False
        if kind == _EXPIRE_KIND:
            if lot.expires_at > now:
                return False
        elif kind != _ADJUST_KIND and not lot.available_at <= now < lot.expires_at:
            return False
        taken.append(lot)
    if target is not None:
        if any(part[2] in target.lots for part in parts):
            return False
        expiry = [_fromisoformat(part[3]) for part in parts]
    for lot, part in zip(taken, parts, strict=True):
        lot.remaining -= part[1]
    if target is not None:
        for (_, part_amount, new_lot, _), expires_at in zip(parts, expiry, strict=True):
            target.lots[new_lot] = Lot(
                new_lot, target.id, part_amount, part_amount, 0, now, now, expires_at
            )
    replay.points_by_kind[kind] += amount
    replay.entries += 1
    return True


def _earn_lot(replay: Replay, p: Prepared) -> bool:
    """``_earn`` without the reference: a shard of a replay split by account opens the
    lot; the reference's uniqueness is ``_claim_ref``'s, in the shard owning it."""
    kind, account_id, amount, lot_id, qualifying, at, available_at, expires_at, ref = p
    account = replay.accounts.get(account_id)
    if account is None or lot_id in account.lots:
        return False
    account.lots[lot_id] = Lot(
        lot_id,
        account.id,
        amount,
        amount,
        qualifying,
        _fromisoformat(at),
        _fromisoformat(available_at),
        _fromisoformat(expires_at),
        ref,
    )
    replay.points_by_kind[kind] += amount
    replay.entries += 1
    return True


def _claim_ref(replay: Replay, p: Prepared) -> bool:
    """An earn's reference (``p == (ref,)``), unique across the program: the other half
    of ``_earn_lot``."""
    ref = p[0]
    if ref in replay.refs:
        return False
    replay.refs.add(ref)
    return True


def _transfer_out(replay: Replay, p: Prepared) -> bool:
    """A transfer's debit of the sender (``_debit`` without the receiver's half, which is
    ``_transfer_in``'s in the receiver's shard)."""
    kind, account_id, amount, at, parts, to = p
    account = replay.accounts.get(account_id)
    if account is None or to == account_id:
        return False
    now = _fromisoformat(at)
    lots = account.lots
    taken: list[Lot] = []
    for part in parts:
        lot = lots.get(part[0])
        if lot is None or part[1] > lot.remaining or not lot.available_at <= now < lot.expires_at:
            return False
        taken.append(lot)
    for lot, part in zip(taken, parts, strict=True):
        lot.remaining -= part[1]
    replay.points_by_kind[kind] += amount
    replay.entries += 1
    return True


def _transfer_in(replay: Replay, p: Prepared) -> bool:
    """A transfer's new lots in the receiver (``_debit``'s second half)."""
    _kind, account_id, _amount, at, parts, to = p
    target = replay.accounts.get(to)
    if target is None or to == account_id or any(part[2] in target.lots for part in parts):
        return False
    now = _fromisoformat(at)
    expiry = [_fromisoformat(part[3]) for part in parts]
    for (_, part_amount, new_lot, _), expires_at in zip(parts, expiry, strict=True):
        target.lots[new_lot] = Lot(
            new_lot, target.id, part_amount, part_amount, 0, now, now, expires_at
        )
    return True


def _adjust(replay: Replay, p: Prepared) -> bool:
    return _adjust_up(replay, p) if p[2] > 0 else _debit(replay, p)


_STEPS: dict[str, Callable[[Replay, Prepared], bool]] = {
    _EARN_KIND: _earn,
    _ENROLL_KIND: _enroll,
    _ADJUST_KIND: _adjust,
    **dict.fromkeys(_DEBIT_KINDS, _debit),
}
assert set(_STEPS) == HANDLED


def apply_prepared(replay: Replay, prepared: Prepared) -> bool:
    """Apply what ``prepare`` made of an entry when the state allows it, and say so;
    False: nothing changed, ``Replay.apply_reference`` must run on the entry.

    Each kind's step parses its times before it changes anything, so a time that is no
    real date-time (``ValueError``) leaves the state as it was."""
    step = _STEPS.get(prepared[0])
    try:
        return step is not None and step(replay, prepared)
    except ValueError:
        return False


def apply_run(replay: Replay, items: Sequence[object], start: int) -> int:
    """``apply_prepared`` of ``items[start]``, ``items[start + 1]``, ... in order while
    each is a ``Prepared`` tuple the state takes; the position of the first that is not
    (another value, or a tuple ``apply_prepared`` declines: nothing of it changed), or
    ``len(items)``. One call per block instead of one per entry: the replay loop of a
    long audit."""
    steps = _STEPS
    end = len(items)
    n = start
    while n < end:
        prepared = items[n]
        if type(prepared) is not tuple:
            return n
        step = steps.get(prepared[0])
        try:
            if step is None or not step(replay, prepared):
                return n
        except ValueError:
            return n
        n += 1
    return end


SHARD_STEPS: dict[str, Callable[[Replay, Prepared], bool]] = {
    **_STEPS,
    _EARN_KIND: _earn_lot,
    _TRANSFER_KIND: _transfer_out,
    "ref": _claim_ref,
    "transfer-in": _transfer_in,
}
"""The steps of a replay split by account (``verify.replay_shards``), by op code: each
entry kind's step on the shard owning the entry's account, except that an earn's
reference (code ``ref``, the tuple ``(ref,)``) goes to the shard owning the reference and a
transfer's new lots (code ``transfer-in``) to the receiver's shard. The entry is accepted
as ``apply_prepared`` would accept it only if every one of its ops is: the caller MUST
treat any declined op as "replay this chain the sequential way"."""


def apply_ops(replay: Replay, ops: Sequence[tuple[str, Prepared]]) -> int:
    """``SHARD_STEPS`` of each ``(code, prepared)`` in order while each is taken; the
    position of the first declined (nothing of it changed), or ``len(ops)``."""
    steps = SHARD_STEPS
    for n, (code, prepared) in enumerate(ops):
        try:
            if not steps[code](replay, prepared):
                return n
        except (KeyError, ValueError):
            return n
    return len(ops)


def apply_fast(replay: Replay, entry: JsonObject) -> bool:
    """``prepare`` then ``apply_prepared``: True when the entry was applied."""
    prepared = prepare(entry)
    return prepared is not None and apply_prepared(replay, prepared)
