"""The random workload of a run: what members and partner systems ask of the nodes.

Each operation picks its node, members and amounts from the run's generator; a refusal
(a CoalitionError: too few points, a partner unreachable, a cap) is an outcome, traced
like a success. What a later operation needs (holds to capture or void, idempotency
keys to retry, statement periods) is remembered here; the points each acknowledged earn
issued are counted for the conservation invariant."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

from coalition.errors import CoalitionError, PartnerUnavailable
from coalition.ledger.canonical import JsonObject
from coalition.ledger.entries import parse_time

from sim.clock import EPOCH, SimClock
from sim.nodes import MEMBERS, SimNode
from sim.trace import Trace


@dataclass
class _Redemption:
    """A cross-brand redemption asked at ``asker`` of ``issuer``'s member."""

    asker: str
    issuer: str
    key: str
    args: tuple[str, int, str, int]
    hold_id: str | None = None
    status: str = "pending"


@dataclass
class Workload:
    rng: random.Random
    nodes: dict[str, SimNode]
    clock: SimClock
    trace: Trace
    issued: Counter[str] = field(default_factory=Counter)
    """Points issued by acknowledged earns, by program."""
    ops: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    _conversions: list[tuple[str, str, tuple[str, str, str, int]]] = field(default_factory=list)
    redemptions: list[_Redemption] = field(default_factory=list)
    _n: int = 0

    def _key(self, what: str) -> str:
        self._n += 1
        return f"sim-{what}-{self._n}"

    def _up(self) -> list[SimNode]:
        return [node for node in self.nodes.values() if node.up]

    def _other(self, program: str) -> str:
        return self.rng.choice([p for p in self.nodes if p != program])

    def step(self) -> None:
        """One operation, chosen by weight, on a node that is up."""
        up = self._up()
        if not up:
            return
        node = self.rng.choice(up)
        choices = (
            (self.earn, 5),
            (self.convert, 5),
            (self.retry_conversion, 1),
            (self.authorize, 3),
            (self.finish_redemption, 3),
            (self.statement, 1),
        )
        operation = self.rng.choices([c[0] for c in choices], [c[1] for c in choices])[0]
        name = operation.__name__
        self.ops[name] += 1
        try:
            outcome = operation(node)
        except CoalitionError as exc:
            self.refused[name] += 1
            self.trace.note(f"op {name} at {node.program}: {type(exc).__name__}: {exc}")
        else:
            self.trace.note(f"op {name} at {node.program}: {outcome}")

    # --- operations ------------------------------------------------------------------------

    def earn(self, node: SimNode) -> str:
        member = self.rng.choice(MEMBERS)
        spend = self.rng.randint(5_000, 150_000)
        key = self._key("earn")
        result = node.service.points.earn_purchase(
            member, f"receipt-{key}", spend, idempotency_key=key
        )
        amount = _amount(result.entry)
        self.issued[node.program] += amount
        return f"{member} earned {amount}"

    def convert(self, node: SimNode) -> str:
        member = self.rng.choice(MEMBERS)
        args = (member, self._other(node.program), member, self.rng.randint(100, 900))
        key = self._key("convert")
        self._conversions.append((node.program, key, args))
        return self._convert(node, key, args)

    def retry_conversion(self, node: SimNode) -> str:
        """The same request with the same idempotency key again (a client's retry)."""
        mine = [(k, a) for p, k, a in self._conversions if p == node.program]
        if not mine:
            return "nothing to retry"
        key, args = self.rng.choice(mine)
        return self._convert(node, key, args)

    def _convert(self, node: SimNode, key: str, args: tuple[str, str, str, int]) -> str:
        member, to_program, to_member, amount = args
        view = node.conversions.convert(member, to_program, to_member, amount, idempotency_key=key)
        return f"conversion {view.id} of {amount} to {to_program}: {view.status}"

    def authorize(self, node: SimNode) -> str:
        issuer = self._other(node.program)
        member = self.rng.choice(MEMBERS)
        args = (member, self.rng.randint(50, 400), self._key("ref"), self.rng.randint(20, 240))
        found = _Redemption(node.program, issuer, self._key("hold"), args)
        self.redemptions.append(found)
        return self._authorize(node, found)

    def _authorize(self, node: SimNode, found: _Redemption) -> str:
        member, amount, reference, expires_in_s = found.args
        try:
            view = node.redemptions.authorize(
                found.issuer, member, amount, reference, expires_in_s, idempotency_key=found.key
            )
        except CoalitionError as exc:
            if not _retryable(exc):
                found.status = "refused"  # nothing stays behind: the key is free again
            raise
        found.hold_id, found.status = view.hold_id, view.status
        return f"hold {view.hold_id} of {amount} at {found.issuer}: {view.status}"

    def finish_redemption(self, node: SimNode, *, capture: bool | None = None) -> str:
        """Capture or void one of this node's open redemptions (or ask again for one whose
        authorization went unanswered)."""
        open_ = [r for r in self.redemptions if r.asker == node.program and _open(r)]
        if not open_:
            return "no open redemption"
        found = self.rng.choice(open_)
        return self.resolve(node, found, capture=capture)

    def resolve(self, node: SimNode, found: _Redemption, *, capture: bool | None = None) -> str:
        if found.status == "pending" or found.hold_id is None:
            return self._authorize(node, found)
        capture = self.rng.random() < 0.5 if capture is None else capture
        action = node.redemptions.capture if capture else node.redemptions.void
        try:
            view = action(found.hold_id)
        except CoalitionError:
            found.status = node.redemptions.get(found.hold_id).status
            raise
        found.status = view.status
        return f"{'capture' if capture else 'void'} of hold {found.hold_id}: {view.status}"

    def statement(self, node: SimNode) -> str:
        return self.agree(node, self._other(node.program))

    def agree(self, node: SimNode, partner: str) -> str:
        """Agree with ``partner`` the statement of the period since the pair's last one
        recorded here (what an operator proposes), to the whole minute before the last."""
        recorded = [parse_time(v.end) for v in node.settlement.statements(partner)]
        start = max(recorded, default=EPOCH)
        end = (self.clock.now() - timedelta(minutes=1)).replace(second=0, microsecond=0)
        if end <= start:
            return "no period to settle yet"
        signed = node.settlement.propose(partner, start, end)
        statement = signed.get("statement")
        assert isinstance(statement, dict)
        return f"statement {statement.get('id')} with {partner} agreed"

    # --- the calm phase -----------------------------------------------------------------

    def open_redemptions(self) -> list[_Redemption]:
        return [r for r in self.redemptions if _open(r)]


def _open(found: _Redemption) -> bool:
    return found.status in ("pending", "authorized")


def _retryable(exc: CoalitionError) -> bool:
    """Whether a refused authorization stays ``pending`` (to be asked again)."""
    return isinstance(exc, PartnerUnavailable)


def _amount(entry: JsonObject) -> int:
    amount = entry.get("amount")
    assert isinstance(amount, int)
    return amount
