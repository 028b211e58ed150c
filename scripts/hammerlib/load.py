"""The hammer's load: writers doing earns, redeems, conversions and partner holds
(authorize, then capture, void or let expire), and readers fetching inclusion and
consistency proofs and verifying them offline while the writes go on.

Every write carries an idempotency key. A call that gets no verdict (the process is
killed, stopped or restarting, PostgreSQL is down: a transport error, a timeout, a 5xx
or UNAVAILABLE) is sent again with the same key, to the next process of the program,
until it gets one, as a member's client behind a load balancer would. A verdict is
either an **acknowledgement**, recorded in ``Acks`` with what the node answered (the
entry id, the conversion or hold id), or a **refusal** (4xx / INVALID_ARGUMENT,
FAILED_PRECONDITION, NOT_FOUND ...), counted by kind. After the run every
acknowledgement must be found in the chains exactly once (``checks``).

Readers keep, per program, the last signed header they verified and demand a consistency
proof from it to the newest one (an auditor's state, as in immudb), so a history
rewritten across a crash would fail the proof.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from coalition.api.grpc.client import NodeClient
from coalition.demo.nodes import Rest
from coalition.demo.scenario import RATES, agreement_document
from coalition.errors import (
    CoalitionError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    VerificationError,
)
from coalition.ledger.canonical import JsonObject
from coalition.ledger.keys import VerifyKey
from coalition.ledger.proofs import verify_consistency_document, verify_inclusion_document
from coalition.node.views import WriteResult
from hammerlib.cluster import Cluster

T = TypeVar("T")

CALL_TIMEOUT_S = 5.0
"""A call's own deadline; past it the call is sent again (same key)."""
ANSWER_TIMEOUT_S = 180.0
"""How long one operation keeps trying for a verdict before it is reported unanswered."""
SEED_POINTS = 100_000
REFUSALS = (InvalidArgument, NotFound, FailedPrecondition, PermissionDenied, Unauthenticated)
"""Verdicts that refuse: the request was judged and changed nothing. Anything else
(``TransportError``, ``PartnerUnavailable``, ``ResourceExhausted``, a 5xx, a partner's
answer that failed verification) is no verdict: the call is sent again."""
RETRY_HINTS = ("retry",)
"""A FAILED_PRECONDITION whose message asks for a retry (a key in use concurrently, a
redemption not yet authorized) is no verdict either."""
ENTRY_KINDS = frozenset({"enroll", "adjust", "earn", "redeem", "transfer"})
"""Acknowledgements whose ``ref`` is an entry id."""
MIX = (
    ("earn", 30),
    ("redeem", 20),
    ("convert", 25),
    ("hold", 20),
    ("transfer", 5),
    ("stranger", 2),
)
"""Operation kinds and their weights; ``stranger`` is a redeem by a member nobody enrolled,
which every node must refuse (NOT_FOUND) without writing anything."""


@dataclass(frozen=True)
class Ack:
    """One acknowledged write: ``program`` answered ``kind`` under ``key`` with ``ref``
    (an entry id; a conversion id for ``convert``; a hold id for holds)."""

    program: str
    kind: str
    key: str
    ref: str
    detail: tuple[str, ...] = ()


@dataclass
class Acks:
    """What the coalition told the hammer, shared by every thread."""

    acks: list[Ack] = field(default_factory=list)
    done: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    unanswered: list[str] = field(default_factory=list)
    refused_keys: list[tuple[str, str]] = field(default_factory=list)
    """(program, idempotency key) of every entry write refused: none may be in a chain."""
    unexpected: list[str] = field(default_factory=list)
    """Refusals the hammer's requests should never get (it sends only valid ones)."""
    last_refusal: dict[str, str] = field(default_factory=dict)
    proofs: Counter[str] = field(default_factory=Counter)
    proof_failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ack(self, ack: Ack) -> None:
        with self.lock:
            self.acks.append(ack)
            self.done[ack.kind] += 1

    def refuse(self, kind: str, exc: CoalitionError) -> None:
        with self.lock:
            self.refused[kind] += 1
            self.last_refusal[kind] = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, (InvalidArgument, PermissionDenied, Unauthenticated)) or (
                "idempotency" in str(exc).lower()
            ):
                self.unexpected.append(f"{kind}: {type(exc).__name__}: {exc}")

    def note(self, counter: str, kind: str) -> None:
        with self.lock:
            getattr(self, counter)[kind] += 1

    def of(self, kind: str) -> list[Ack]:
        with self.lock:
            return [a for a in self.acks if a.kind == kind]

    def entries_of(self, program: str, newest: int) -> list[Ack]:
        """The newest ``newest`` acknowledgements of ``program`` naming an entry id."""
        with self.lock:
            found = [a for a in self.acks[-20 * newest :] if a.program == program]
        return [a for a in found if a.kind in ENTRY_KINDS][-newest:]


def no_verdict(exc: CoalitionError) -> bool:
    if isinstance(exc, FailedPrecondition):
        return any(hint in str(exc).lower() for hint in RETRY_HINTS)
    return not isinstance(exc, REFUSALS)


@dataclass
class Endpoints:
    """One thread's clients of every process of every program (made on first use, made
    anew after a call got no verdict, so no reconnect backoff is waited out)."""

    cluster: Cluster
    grpc: dict[tuple[str, int], NodeClient] = field(default_factory=dict)
    rest: dict[tuple[str, int], Rest] = field(default_factory=dict)

    def count(self, program: str) -> int:
        return len(self.cluster.programs[program].processes)

    def client(self, program: str, n: int) -> NodeClient:
        if (program, n) not in self.grpc:
            p = self.cluster.programs[program]
            self.grpc[(program, n)] = NodeClient(
                p.processes[n].grpc, p.operator_key, timeout=CALL_TIMEOUT_S
            )
        return self.grpc[(program, n)]

    def api(self, program: str, n: int) -> Rest:
        if (program, n) not in self.rest:
            p = self.cluster.programs[program]
            self.rest[(program, n)] = Rest(
                p.processes[n].http, p.operator_key, timeout=CALL_TIMEOUT_S
            )
        return self.rest[(program, n)]

    def reset(self, program: str, n: int) -> None:
        client = self.grpc.pop((program, n), None)
        if client is not None:
            client.close()

    def close(self) -> None:
        for client in self.grpc.values():
            client.close()
        self.grpc.clear()


@dataclass
class Caller:
    """Sends one operation until it gets a verdict (the module's rule)."""

    endpoints: Endpoints
    acks: Acks
    rng: random.Random
    give_up: threading.Event

    def call(self, program: str, kind: str, send: Callable[[int], T]) -> T | None:
        """``send(process index)`` until a verdict: its result, or None when refused (or
        unanswered after ANSWER_TIMEOUT_S, or when ``give_up`` is set)."""
        at = self.rng.randrange(self.endpoints.count(program))
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while True:
            try:
                return send(at)
            except CoalitionError as exc:
                if not no_verdict(exc):
                    self.acks.refuse(kind, exc)
                    return None
                self.endpoints.reset(program, at)
                self.acks.note("retries", kind)
                if time.monotonic() > deadline or self.give_up.is_set():
                    with self.acks.lock:
                        self.acks.unanswered.append(f"{program} {kind}: {exc}")
                    return None
                at = (at + 1) % self.endpoints.count(program)
                time.sleep(0.05 + self.rng.random() * 0.2)

    def write(
        self, program: str, kind: str, write: Callable[[NodeClient], WriteResult]
    ) -> WriteResult | None:
        """A gRPC write (``write(client)``) to ``program`` until its verdict."""
        return self.call(program, kind, lambda n: write(self.endpoints.client(program, n)))

    def post(self, program: str, kind: str, path: str, body: JsonObject) -> Any:
        """``POST path`` to ``program``'s REST API until its verdict (None: refused)."""
        return self.call(program, kind, lambda n: self.endpoints.api(program, n).post(path, body))


def members(count: int) -> list[str]:
    return [f"H{n:03d}" for n in range(count)]


def onboard(cluster: Cluster, acks: Acks, member_ids: list[str]) -> None:
    """Every member enrolled in every program with SEED_POINTS (an operator adjust; the
    programs side by side), and a rate agreement both ways between every pair (a large
    daily cap: the hammer converts more than the demo's), before any fault."""
    with ThreadPoolExecutor(len(cluster.programs)) as pool:
        for done in [pool.submit(_enroll, cluster, acks, p, member_ids) for p in cluster.programs]:
            done.result()
    cluster.wait_connected()
    endpoints = Endpoints(cluster)
    caller = Caller(endpoints, acks, random.Random(0), threading.Event())
    try:
        now = datetime.now(UTC)
        for (a, b), (rate, value) in RATES.items():
            document = agreement_document(a, b, rate, value, now)
            document["daily_cap_points"] = 10**12
            signed = caller.post(a, "agreement", "/v1/agreements", document)
            if signed is None or set(signed["signatures"]) != {a, b}:
                raise CoalitionError(f"agreement {a}->{b} was not signed by both")
    finally:
        endpoints.close()


def _enroll(cluster: Cluster, acks: Acks, program: str, member_ids: list[str]) -> None:
    endpoints = Endpoints(cluster)
    caller = Caller(endpoints, acks, random.Random(program), threading.Event())
    seed = partial(NodeClient.adjust, amount=SEED_POINTS, operator="hammer", note="seed")
    try:
        for m in member_ids:
            writes = (
                ("enroll", f"enroll:{m}", partial(NodeClient.enroll, member_id=m)),
                ("adjust", f"seed:{m}", partial(seed, member_id=m)),
            )
            for kind, key, write in writes:
                result = caller.write(program, kind, partial(write, idempotency_key=key))
                if result is None:
                    raise CoalitionError(
                        f"{program} refused the {kind} of {m}: {acks.last_refusal}"
                    )
                acks.ack(Ack(program, kind, key, str(result.entry["id"])))
    finally:
        endpoints.close()


class Writer(threading.Thread):
    """One writer: random operations of MIX on random members until ``stop``; the
    operation in flight when ``stop`` is set is finished (sent until its verdict)."""

    def __init__(
        self,
        n: int,
        cluster: Cluster,
        acks: Acks,
        seed: int,
        member_ids: list[str],
        stop: threading.Event,
        give_up: threading.Event,
    ) -> None:
        super().__init__(name=f"writer-{n}", daemon=True)
        self.n = n
        self.cluster = cluster
        self.acks = acks
        self.stop = stop
        self.rng = random.Random(f"{seed}:writer:{n}")
        self.endpoints = Endpoints(cluster)
        self.caller = Caller(self.endpoints, acks, self.rng, give_up)
        self.programs = list(cluster.programs)
        self.members = member_ids
        self.k = 0
        self.failure: BaseException | None = None

    def run(self) -> None:
        kinds = [kind for kind, _ in MIX]
        weights = [weight for _, weight in MIX]
        try:
            while not self.stop.is_set():
                kind = self.rng.choices(kinds, weights)[0]
                getattr(self, f"_{kind}")(f"hm{self.n}-{self.k}")
                self.k += 1
        except BaseException as exc:  # reported by the hammer, never swallowed
            self.failure = exc
        finally:
            self.endpoints.close()

    def _pick(self) -> tuple[str, str]:
        return self.rng.choice(self.programs), self.rng.choice(self.members)

    def _entry(self, program: str, kind: str, key: str, write: Callable[[NodeClient], Any]) -> None:
        refused = self.acks.refused[kind]
        result = self.caller.call(program, kind, lambda n: write(self.endpoints.client(program, n)))
        if result is not None:
            self.acks.ack(Ack(program, kind, key, str(result.entry["id"])))
        elif self.acks.refused[kind] > refused:
            with self.acks.lock:
                self.acks.refused_keys.append((program, key))

    def _stranger(self, key: str) -> None:
        program = self.rng.choice(self.programs)
        nobody = f"X{key}"
        self._entry(
            program,
            "stranger",
            key,
            lambda c: c.redeem(nobody, 10, f"rdm-{key}", idempotency_key=key),
        )

    def _earn(self, key: str) -> None:
        program, m = self._pick()
        spend = self.rng.randrange(500, 20_000)
        self._entry(
            program,
            "earn",
            key,
            lambda c: c.earn_purchase(m, f"buy-{key}", spend, idempotency_key=key),
        )

    def _redeem(self, key: str) -> None:
        program, m = self._pick()
        amount = self.rng.randrange(10, 2_000)
        self._entry(
            program, "redeem", key, lambda c: c.redeem(m, amount, f"rdm-{key}", idempotency_key=key)
        )

    def _transfer(self, key: str) -> None:
        program, m = self._pick()
        to = self.rng.choice([x for x in self.members if x != m])
        amount = self.rng.randrange(1, 500)
        self._entry(
            program,
            "transfer",
            key,
            lambda c: c.transfer(m, to, amount, "hammer", idempotency_key=key),
        )

    def _convert(self, key: str) -> None:
        source, target = self.rng.sample(self.programs, 2)
        m = self.rng.choice(self.members)
        body: JsonObject = {
            "to_program": target,
            "to_member_id": m,
            "amount": self.rng.randrange(100, 3_000),
            "idempotency_key": key,
        }
        path = f"/v1/members/{m}/conversions"
        view = self.caller.call(
            source, "convert", lambda n: self.endpoints.api(source, n).post(path, body)
        )
        if view is not None:
            self.acks.ack(Ack(source, "convert", key, str(view["id"]), (target, m)))

    def _hold(self, key: str) -> None:
        issuer, shop = self.rng.sample(self.programs, 2)
        m = self.rng.choice(self.members)
        intent = self.rng.choices(("capture", "void", "expire"), (60, 30, 10))[0]
        body: JsonObject = {
            "program": issuer,
            "member_id": m,
            "amount": self.rng.randrange(10, 1_000),
            "reference": f"shop-{key}",
            "expires_in_s": 3 if intent == "expire" else 600,
            "idempotency_key": key,
        }
        held = self.caller.call(
            shop,
            "hold",
            lambda n: self.endpoints.api(shop, n).post("/v1/partner-redemptions", body),
        )
        if held is None:
            return
        hold_id = str(held["hold_id"])
        self.acks.ack(Ack(shop, "hold", key, hold_id, (issuer, intent, str(held["status"]))))
        if intent == "expire":
            return
        path = f"/v1/partner-redemptions/{hold_id}/{intent}"
        done = self.caller.call(shop, intent, lambda n: self.endpoints.api(shop, n).post(path, {}))
        if done is not None:
            self.acks.ack(Ack(shop, intent, key, hold_id, (issuer, str(done["status"]))))


class Reader(threading.Thread):
    """Fetches an inclusion proof of a random acknowledged entry and a consistency proof
    from the last header it verified to the newest, and verifies both offline with the
    program's public key (``coalition.ledger.proofs``, what ``coalition verify`` runs)."""

    def __init__(
        self, n: int, cluster: Cluster, acks: Acks, seed: int, stop: threading.Event
    ) -> None:
        super().__init__(name=f"reader-{n}", daemon=True)
        self.cluster = cluster
        self.acks = acks
        self.stop = stop
        self.rng = random.Random(f"{seed}:reader:{n}")
        self.keys = {p: cluster.manifest.public_key(p) for p in cluster.programs}
        self.trusted: dict[str, JsonObject] = {}
        self.clients: dict[tuple[str, int], NodeClient] = {}
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                program = self.rng.choice(list(self.cluster.programs))
                n = self.rng.randrange(len(self.cluster.programs[program].processes))
                try:
                    self._round(program, n)
                except CoalitionError as exc:
                    if isinstance(exc, VerificationError):
                        self._fail(f"{program}: {exc}")
                    else:
                        self.acks.note("proofs", "skipped (no answer)")
                    client = self.clients.pop((program, n), None)
                    if client is not None:
                        client.close()
                    time.sleep(0.2)
        except BaseException as exc:
            self.failure = exc
        finally:
            for client in self.clients.values():
                client.close()

    def _fail(self, what: str) -> None:
        with self.acks.lock:
            self.acks.proof_failures.append(what)

    def _client(self, program: str, n: int) -> NodeClient:
        if (program, n) not in self.clients:
            p = self.cluster.programs[program]
            self.clients[(program, n)] = NodeClient(
                p.processes[n].grpc, p.auditor_key, timeout=CALL_TIMEOUT_S
            )
        return self.clients[(program, n)]

    def _round(self, program: str, n: int) -> None:
        client = self._client(program, n)
        key: VerifyKey = self.keys[program]
        latest = client.latest_header()
        if latest is None:
            return
        header = latest["header"]
        assert isinstance(header, dict)
        self._consistency(client, program, key, latest)
        written = self.acks.entries_of(program, 2000)
        if not written:
            return
        ack = self.rng.choice(written)
        try:
            doc = client.inclusion_proof(ack.ref, int(header["log_size"]))  # type: ignore[arg-type]
        except (NotFound, FailedPrecondition, InvalidArgument):
            self.acks.note("proofs", "skipped (not sealed yet)")
            return
        try:
            verify_inclusion_document(doc, key)
        except (VerificationError, InvalidArgument) as exc:
            self._fail(f"{program}: inclusion proof of {ack.ref}: {exc}")
            return
        entry = doc["entry"]
        if not isinstance(entry, dict) or entry.get("id") != ack.ref:
            self._fail(f"{program}: the inclusion proof of {ack.ref} is for another entry")
            return
        self.acks.note("proofs", "inclusion")

    def _consistency(
        self, client: NodeClient, program: str, key: VerifyKey, latest: JsonObject
    ) -> None:
        """From the last header verified to ``latest``: the node must prove append-only."""
        header = latest["header"]
        assert isinstance(header, dict)
        before = self.trusted.get(program)
        if before is None:  # the first proof checks its signature and that it is this one
            self.trusted[program] = header
            return
        first, second = int(before["height"]), int(header["height"])  # type: ignore[arg-type]
        if second < first:
            self._fail(f"{program} serves height {second} after {first} was verified")
            return
        doc = client.consistency_proof(first, second)
        try:
            verify_consistency_document(doc, key)
        except (VerificationError, InvalidArgument) as exc:
            self._fail(f"{program}: consistency {first} -> {second}: {exc}")
            return
        if doc["first"] != before:
            self._fail(f"{program}: header {first} differs from the one verified before")
            return
        self.trusted[program] = header if doc["second"] == header else before
        self.acks.note("proofs", "consistency")
