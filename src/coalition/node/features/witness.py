"""Witnessing: follow every partner's signed headers, cosign them, keep proof of faults.

One follower thread per partner reads its signed headers from a ``LedgerSource`` (in a
running node ``Ledger.WatchHeaders`` over the partner channel, ``api/grpc/ledger_source.py``)
and accepts a header only when it is signed by the key in force (the manifest key, then
each key a verified ``key-rotation`` entry put in force, ``ledger.rotation``), links to the last
header it accepted (``prev_hash``, ``first_index``, sizes, time) and a consistency proof
shows the partner's log at the new header extends the log at the last one (RFC 9162
§2.1.4). Accepted headers are stored, so a restarted follower resumes where it stopped;
each is cosigned in the C2SP ``tlog-cosignature/v1`` format over its checkpoint
(``ledger/note.py``) and sent back with a ``cosign`` message, and forwarded to the
other partners (``header-gossip``) so a partner showing different histories to
different witnesses is caught.

Two validly signed headers of one program at one height are an equivocation; a signed
header that does not extend the last accepted one is a fork. Both are stored with the
two signed headers as evidence, logged at ERROR, and the follower stops trusting that
partner: nothing newer is accepted or cosigned until an operator investigates.

With several processes per node, only the holder of the node's lease follows partners
(``node.leadership``): each follower checks ``held()`` before connecting and before
every header. Partner messages (``cosign``, ``header-gossip``) arrive at any process:
every decision on the witness tables runs through the sequencer, whose log-head lock
serialises the write transactions of all processes, so the in-process lock here only
spares a process contention and correctness never rests on it. Whether a partner is
halted (evidence stored) is read from the database, so every process agrees.

Key rotation: the follower reads the entries of every block it accepts (``block``),
checks them against the header's ``block_root`` and keeps the block's ``key-rotation``
entries, verified against the key in force, with the header (``witness_key_rotations``).
The next header MUST then be signed by the key the chain put in force at the position
it must occupy (the last accepted header's ``log_size``), whatever ``first_index`` it
claims, so a header signed by a retired (perhaps compromised) key after a rotation is
refused, and one at a verified height is evidence only if signed by the key in force there.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Connection

from coalition.errors import (
    CoalitionError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PartnerUnavailable,
    VerificationError,
)
from coalition.ledger.blocks import (
    SignedHeader,
    check_count,
    header_problem,
    link_problem,
)
from coalition.ledger.canonical import JsonObject, JsonValue, parse_json
from coalition.ledger.entries import check_program_id, format_time
from coalition.ledger.keys import SigningKey
from coalition.ledger.merkle import leaf_hash, root
from coalition.ledger.note import checkpoint_of, cosign, sign_note, verify_cosignature, witness_name
from coalition.ledger.proofs import verify_consistency_document
from coalition.ledger.rotation import KeyRotation, KeySchedule, rotation_of, rotations_in
from coalition.node.manifest import Manifest
from coalition.node.paging import MAX_PAGE, check_page_size
from coalition.node.service import NodeService
from coalition.store import witness as witness_store
from coalition.store.columns import from_micros, to_micros

log = logging.getLogger(__name__)

EQUIVOCATION = "equivocation"
FORK = "fork"
CALL_TIMEOUT_S = 10.0
GOSSIP_TIMEOUT_S = 3.0
GAP_BATCH = 1000
BACKOFF_S = (0.2, 10.0)
"""The follower's first and longest delay between attempts to follow a partner."""
FOLLOWER_WAIT_S = 0.5
"""How often a process without the node's lease looks whether it has it now."""
MAX_FUTURE_S = 300
"""A cosignature timestamped further ahead of our clock is refused (as partner messages)."""
MAX_STATUSES = 1000
"""Most witness statuses one ``statuses`` read returns (a page of the blocks view)."""


class PartnerInbox(Protocol):
    """What the witness needs of ``node.partners.PartnerInbox``."""

    def register(self, kind: str, handler: Callable[[str, JsonObject], Any]) -> None: ...


class PartnerClient(Protocol):
    """What the witness needs of ``node.partners.PartnerClient``."""

    def call(
        self, program: str, kind: str, body: JsonObject, timeout: float = ...
    ) -> tuple[str, JsonObject]: ...


class LedgerSourceFailed(PartnerUnavailable):
    """A partner's ledger could not be read through its source: unreachable, a deadline,
    the stream cancelled (``close``) or the call refused. ``str()`` is the status the
    follower shows (``"UNAVAILABLE: ..."``); ``details`` the transport's own words."""

    def __init__(self, code: str, details: str | None) -> None:
        super().__init__(f"{code}: {details}")
        self.details = details


class LedgerSource(Protocol):
    """One partner's ledger reads, as the follower uses them (``api.grpc.ledger_source``,
    or in memory in tests). A transport failure in any of them MUST be raised as
    ``LedgerSourceFailed``, never as the transport's own exception."""

    def watch(self, after_height: int) -> Iterator[SignedHeader]: ...

    def headers(self, start: int, limit: int) -> list[SignedHeader]: ...

    def consistency(self, first_height: int, second_height: int) -> JsonValue: ...

    def block(self, height: int) -> list[bytes]:
        """The canonical bytes of the entries of the block at ``height``."""
        ...

    def close(self) -> None: ...


class Fault(VerificationError):
    """The partner equivocated or forked and the evidence is stored: its follower stops."""


@dataclass(frozen=True, slots=True)
class Cosigner:
    """One cosignature of one of our headers."""

    witness: str
    timestamp: int
    cosignature: str


@dataclass(frozen=True, slots=True)
class WitnessStatus:
    """Who cosigned our header at ``height``; ``witnessed`` once ``quorum`` did."""

    height: int
    header_hash: str
    checkpoint: str
    note: str
    """The checkpoint signed by our key (type 0x01, name = origin) and every cosignature:
    a C2SP cosigned checkpoint any note verifier can check with our vkeys."""
    cosigners: tuple[Cosigner, ...]
    quorum: int
    witnessed: bool


@dataclass(frozen=True, slots=True)
class Evidence:
    """Two signed headers of ``program`` that cannot both be honest."""

    id: int
    program: str
    height: int
    kind: str
    reason: str
    first: JsonObject
    second: JsonObject
    detected_at: str


@dataclass(frozen=True, slots=True)
class FollowerStatus:
    """How far this node verified one partner's chain."""

    program: str
    verified_height: int | None
    halted: bool
    last_error: str | None


_GOSSIP_DIFFERS = "differs from a header a partner forwarded"


def _same(a: SignedHeader, b: SignedHeader) -> bool:
    return hmac.compare_digest(a.header.hash(), b.header.hash())


def _check_link(last: SignedHeader | None, signed: SignedHeader) -> str | None:
    """Why ``signed`` does not follow ``last`` (None: it does). Signatures checked before."""
    h = signed.header
    if last is None:
        return f"the first header is at height {h.height}" if h.height else header_problem(h)
    if h.height != last.header.height + 1:
        return f"height {h.height} does not follow {last.header.height}"
    return header_problem(h) or link_problem(last.header, h)


class Witness:
    """Follows, verifies and cosigns every partner's headers; serves our cosignatures.

    Built like every coalition feature from ``(service, manifest, client)``; ``key`` is the
    node's ledger signing key (cosignatures are made with it, key type 0x04), found on
    the client or the service when not given. ``sources(program)`` opens a partner's
    LedgerSource (the composition root passes the gRPC one; tests one in memory).
    """

    def __init__(
        self,
        service: NodeService,
        manifest: Manifest,
        client: PartnerClient,
        *,
        sources: Callable[[str], LedgerSource],
        key: SigningKey | None = None,
        clock: Callable[[], datetime] | None = None,
        backoff: tuple[float, float] = BACKOFF_S,
    ) -> None:
        signing_key = key if key is not None else service.signing_key
        if signing_key.public_key != manifest.public_key(service.program):
            raise FailedPrecondition(
                f"the signing key is not {service.program}'s key in the manifest"
            )
        self._service = service
        self._manifest = manifest
        self._client = client
        self._key = signing_key
        self._program = service.program
        self._sequencer = service.sequencer
        self._sources = sources
        self._clock = clock or (lambda: datetime.now(UTC))
        self._backoff = backoff
        self._lock = threading.RLock()  # one decision at a time on the witness tables
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._active: dict[str, LedgerSource] = {}
        self._errors: dict[str, str] = {}
        with self._sequencer.read() as conn:
            self._halted: set[str] = witness_store.programs_with_evidence(conn)

    @property
    def name(self) -> str:
        return witness_name(self._program)

    # --- life cycle -----------------------------------------------------------------------

    def register(self, inbox: PartnerInbox) -> None:
        inbox.register("cosign", self.on_cosign)
        inbox.register("header-gossip", self.on_gossip)

    def start(self) -> None:
        """One follower thread per other partner."""
        self._stop.clear()
        for partner in self._manifest.others(self._program):
            thread = threading.Thread(
                target=self._follow_forever,
                args=(partner.program,),
                name=f"witness-{partner.program}",
                daemon=True,
            )
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        with self._lock:
            active = list(self._active.values())
        for source in active:
            source.close()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    # --- the follower -----------------------------------------------------------------------

    def _leading(self) -> bool:
        return self._service.leadership.held()

    def halted(self, program: str) -> bool:
        """Whether evidence against ``program`` is stored (by any process of this node)."""
        if program not in self._halted:
            with self._sequencer.read() as conn:
                if program in witness_store.programs_with_evidence(conn):
                    self._halted.add(program)
        return program in self._halted

    def _follow_forever(self, program: str) -> None:
        """Follow ``program`` until ``stop`` or evidence against it. Any failure on the
        way (the partner, the network, this node's own database) is logged and retried
        with backoff: the thread MUST NOT die of it, or this node would silently stop
        witnessing ``program`` until it restarts."""
        delay = self._backoff[0]
        while not self._stop.is_set():
            if not self._leading():
                self._stop.wait(FOLLOWER_WAIT_S)
                continue
            try:
                halted = self.halted(program)
            except Exception as exc:  # its database is down: retry, never die silently
                self._errors[program] = f"{type(exc).__name__}: {exc}"
                log.warning("witness: cannot read its evidence about %s: %s", program, exc)
                self._stop.wait(delay)
                delay = min(delay * 2, self._backoff[1])
                continue
            if halted:
                log.error("witness: not following %s any more: it equivocated or forked", program)
                return
            try:
                source = self._sources(program)
            except CoalitionError as exc:
                self._errors[program] = str(exc)
                log.warning("witness: cannot reach %s: %s", program, exc)
                self._stop.wait(delay)
                delay = min(delay * 2, self._backoff[1])
                continue
            with self._lock:
                self._active[program] = source
            if self._stop.is_set():
                source.close()
            try:
                self._deliver_pending(program)
                last = self.last_verified(program)
                for signed in source.watch(-1 if last is None else last.header.height):
                    if self._stop.is_set() or not self._leading():
                        break
                    self.accept(program, signed, source)
                    self._errors.pop(program, None)
                    delay = self._backoff[0]
            except Fault as exc:
                self._errors[program] = str(exc)
                return
            except LedgerSourceFailed as exc:
                if not self._stop.is_set():
                    self._errors[program] = str(exc)
                    log.warning("witness: %s's header stream failed: %s", program, exc.details)
            except CoalitionError as exc:
                self._errors[program] = str(exc)
                log.warning("witness: refused a header from %s: %s", program, exc)
            except Exception as exc:  # a database outage or a bug: retry, never die silently
                # Ledger readers see the kind only: the text may carry a database's address,
                # a file path or SQL (issue 11, class 9); the log keeps it.
                self._errors[program] = f"internal error ({type(exc).__name__}); see the node log"
                log.exception("witness: following %s failed", program)
            finally:
                with self._lock:
                    self._active.pop(program, None)
                source.close()
            self._stop.wait(delay)
            delay = min(delay * 2, self._backoff[1])

    def catch_up(self, program: str, limit: int = GAP_BATCH) -> int:
        """One step of following ``program``, in the caller's thread (the simulator's
        scheduler; the background loop follows a header stream instead, through the same
        ``accept``): deliver the cosignatures not delivered yet, then verify and cosign the
        headers sealed after the last one verified, up to ``limit``; how many were new.
        Raises what ``accept`` raises (Fault after storing evidence) and the source's
        LedgerSourceFailed; follows nothing of a program that equivocated or forked."""
        if self.halted(program):
            return 0
        source = self._sources(program)
        try:
            self._deliver_pending(program)
            last = self.last_verified(program)
            start = 0 if last is None else last.header.height + 1
            return sum(
                self.accept(program, signed, source) for signed in source.headers(start, limit)
            )
        finally:
            source.close()

    def last_verified(self, program: str) -> SignedHeader | None:
        with self._sequencer.read() as conn:
            return witness_store.last_header(conn, program)

    def accept(self, program: str, signed: SignedHeader, source: LedgerSource) -> bool:
        """Verify the next header of ``program`` and cosign it; False if already known.

        Raises VerificationError for a header that proves nothing (bad signature, wrong
        program), Fault after storing evidence of an equivocation or a fork.
        """
        if signed.header.program != program:
            raise VerificationError(f"{program}'s stream sent a header of {signed.header.program}")
        height = signed.header.height
        with self._sequencer.read() as conn:
            stored = witness_store.header_at(conn, program, height)
            last = witness_store.last_header(conn, program)
        if stored is not None:
            self._verify(program, signed, stored.header.first_index)
            self._check_trusted(program)
            if _same(stored, signed):
                return False
            self._fault(EQUIVOCATION, f"two signed headers at height {height}", stored, signed)
        expected = 0 if last is None else last.header.height + 1
        if height > expected:
            for missing in source.headers(expected, min(height - expected, GAP_BATCH)):
                if missing.header.height >= height:
                    break
                self.accept(program, missing, source)
            with self._sequencer.read() as conn:
                last = witness_store.last_header(conn, program)
            if (0 if last is None else last.header.height + 1) != height:
                raise VerificationError(f"{program} did not serve the headers before {height}")
        self._verify(program, signed, 0 if last is None else last.header.log_size)
        self._check_trusted(program)
        if last is not None:
            self._check_consistency(program, last, signed, source.consistency)
        reason = _check_link(last, signed)
        if reason is not None:
            first = last if last is not None else signed
            self._fault(FORK, reason, first, signed)
        rotations = self._block_rotations(program, signed, source)
        # Under the lock, so a header forwarded meanwhile is either compared here or
        # compares itself with the stored header (on_gossip).
        with self._lock:
            cosig = self._sequencer.run(lambda tx: self._store_verified(tx.conn, signed, rotations))
        if cosig is None:
            raise Fault(f"{program} equivocation at height {height}: {_GOSSIP_DIFFERS}")
        self._deliver(program, [cosig], signed)
        self._gossip(program, signed)
        return True

    def _check_trusted(self, program: str) -> None:
        if self.halted(program):
            raise Fault(f"{program} equivocated or forked; its headers are no longer trusted")

    def schedule(self, program: str) -> KeySchedule:
        """``program``'s keys as far as this node verified its chain: the manifest key,
        then the stored rotations (read from the database on every call, so every
        process of the node agrees, whichever followed the partner)."""
        if program == self._program:
            return self._service.key_schedule()
        schedule = KeySchedule(program, self._manifest.public_key(program))
        with self._sequencer.read() as conn:
            stored = witness_store.key_rotations(conn, program)
        for index, entry in stored:
            rotation = rotation_of(parse_json(entry))
            if rotation is None:
                raise VerificationError(f"a stored key rotation of {program} is not one")
            schedule.apply(rotation, index)
        return schedule

    def _verify(self, program: str, signed: SignedHeader, position: int) -> None:
        """VerificationError unless ``signed`` is signed by the key in force at log index
        ``position``, where its block must start (not where it claims to)."""
        key = self.schedule(program).key_at(position)
        try:
            signed.verify(key)
        except VerificationError as exc:
            raise VerificationError(
                f"{program}'s header at height {signed.header.height} is not signed by its "
                f"key in force ({key.key_id[:16]}): {exc}"
            ) from None

    def _block_rotations(
        self, program: str, signed: SignedHeader, source: LedgerSource
    ) -> list[tuple[int, KeyRotation, bytes]]:
        """The key rotations in the block of ``signed`` (read from ``source``, checked
        against its ``block_root``), each verified against the key in force before it."""
        h = signed.header
        if h.entry_count == 0:
            return []
        bodies = source.block(h.height)
        if len(bodies) != h.entry_count or not hmac.compare_digest(
            root([leaf_hash(b) for b in bodies]).hex(), h.block_root
        ):
            raise VerificationError(
                f"{program} served entries for height {h.height} that its header does not commit to"
            )
        found = rotations_in(bodies, h.first_index)
        if not found:
            return []
        schedule = self.schedule(program)
        out = []
        for index, rotation in found:
            schedule.apply(rotation, index)  # VerificationError: not from the key in force
            out.append((index, rotation, bodies[index - h.first_index]))
        log.info("witness: %s rotated its ledger key in block %d", program, h.height)
        return out

    def _store_verified(
        self,
        conn: Connection,
        signed: SignedHeader,
        rotations: list[tuple[int, KeyRotation, bytes]],
    ) -> witness_store.StoredCosignature | None:
        """Store a verified header and our cosignature of it; None (and evidence stored)
        when a partner forwarded another header at its height."""
        program, height = signed.header.program, signed.header.height
        conflict = next(
            (g for g in witness_store.gossip_at(conn, program, height) if not _same(g, signed)),
            None,
        )
        if conflict is not None:
            self._record(conn, EQUIVOCATION, _GOSSIP_DIFFERS, conflict, signed)
            return None
        witness_store.insert_header(conn, signed, to_micros(self._clock()))
        for index, rotation, entry in rotations:
            witness_store.insert_key_rotation(conn, program, rotation.epoch, index, entry)
        witness_store.drop_gossip(conn, program, height)
        cosig = self._cosign(signed)
        witness_store.save_cosignature(conn, cosig)
        return cosig

    def _check_consistency(
        self,
        program: str,
        last: SignedHeader,
        signed: SignedHeader,
        consistency: Callable[[int, int], JsonValue],
    ) -> None:
        """The partner's consistency proof from ``last`` to ``signed``; a fault if it fails."""
        key = self.schedule(program)
        doc = consistency(last.header.height, signed.header.height)
        if not isinstance(doc, dict):
            raise VerificationError(f"{program} sent a consistency proof that is not an object")
        try:
            first = SignedHeader.from_json(
                {"header": doc["first"], "signature": doc["first_signature"]}
            )
            second = SignedHeader.from_json(
                {"header": doc["second"], "signature": doc["second_signature"]}
            )
            first.verify(key.key_for(first.header))
            second.verify(key.key_for(second.header))
        except (KeyError, InvalidArgument) as exc:
            raise VerificationError(
                f"{program} sent a malformed consistency proof: {exc}"
            ) from None
        # Signed headers served for heights we know: any difference is an equivocation.
        if not _same(first, last):
            self._fault(
                EQUIVOCATION, "the consistency proof starts from another header", last, first
            )
        if not _same(second, signed):
            self._fault(
                EQUIVOCATION, "the consistency proof ends at another header", signed, second
            )
        try:
            verify_consistency_document(doc, key)
        except CoalitionError as exc:
            self._fault(
                FORK,
                f"consistency proof from height {last.header.height} fails: {exc}",
                last,
                signed,
            )

    def _fault(self, kind: str, reason: str, first: SignedHeader, second: SignedHeader) -> None:
        with self._lock:
            self._sequencer.run(lambda tx: self._record(tx.conn, kind, reason, first, second))
        raise Fault(f"{second.header.program} {kind} at height {second.header.height}: {reason}")

    def _record(
        self, conn: Connection, kind: str, reason: str, first: SignedHeader, second: SignedHeader
    ) -> None:
        program = second.header.program
        if witness_store.save_evidence(conn, kind, reason, first, second, to_micros(self._clock())):
            log.error(
                "witness: %s by %s at height %d: %s (headers %s and %s stored as evidence)",
                kind.upper(),
                program,
                second.header.height,
                reason,
                first.header.hash()[:16],
                second.header.hash()[:16],
            )
        if program != self._program:
            self._halted.add(program)

    def _cosign(self, signed: SignedHeader) -> witness_store.StoredCosignature:
        timestamp = int(self._clock().timestamp())
        line = cosign(checkpoint_of(signed), self._key, self.name, timestamp)
        h = signed.header
        return witness_store.StoredCosignature(
            program=h.program,
            height=h.height,
            witness=self._program,
            header_hash=h.hash(),
            cosignature=line,
            timestamp=timestamp,
            delivered=False,
        )

    def _deliver_pending(self, program: str) -> None:
        with self._sequencer.read() as conn:
            pending = witness_store.undelivered(conn, program, self._program)
            headers = [witness_store.header_at(conn, program, c.height) for c in pending]
        for cosig, signed in zip(pending, headers, strict=True):
            if signed is not None:
                self._deliver(program, [cosig], signed)

    def _deliver(
        self, program: str, cosigs: list[witness_store.StoredCosignature], signed: SignedHeader
    ) -> None:
        for cosig in cosigs:
            body: JsonObject = {
                "program": program,
                "height": cosig.height,
                "cosignature": cosig.cosignature,
                "header_hash": cosig.header_hash,
                "header": signed.to_json(),
            }
            try:
                self._client.call(program, "cosign", body, CALL_TIMEOUT_S)
            except CoalitionError as exc:
                log.warning("witness: %s refused or missed our cosignature: %s", program, exc)
                continue
            self._mark_delivered(program, cosig.height)

    def _mark_delivered(self, program: str, height: int) -> None:
        self._sequencer.run(
            lambda tx: witness_store.mark_delivered(tx.conn, program, height, self._program)
        )

    def _gossip(self, program: str, signed: SignedHeader) -> None:
        body: JsonObject = {"header": signed.to_json()}
        for partner in self._manifest.others(self._program):
            if partner.program == program or self._stop.is_set():
                continue
            try:
                self._client.call(partner.program, "header-gossip", body, GOSSIP_TIMEOUT_S)
            except CoalitionError as exc:
                log.debug("witness: gossip to %s failed: %s", partner.program, exc)

    # --- partner messages -----------------------------------------------------------------

    def _our_header(self, height: int) -> SignedHeader:
        found = self._service.ledger.headers(height, 1)
        if not found or found[0].header.height != height:
            raise NotFound(f"{self._program} has no block at height {height}")
        return found[0]

    def on_cosign(self, sender: str, body: JsonObject) -> tuple[str, JsonObject]:
        """A partner's cosignature of one of our headers: verify it and keep it."""
        if sender == self._program:
            raise InvalidArgument("a node does not cosign its own headers")
        program, height, line = body.get("program"), body.get("height"), body.get("cosignature")
        header_hash = body.get("header_hash")
        if program != self._program:
            raise InvalidArgument(f"this node is {self._program}, not {program!r}")
        height = check_count(height, "height")
        if not isinstance(line, str) or not isinstance(header_hash, str):
            raise InvalidArgument("cosign needs cosignature and header_hash strings")
        ours = self._our_header(height)
        if "header" in body:
            theirs = SignedHeader.from_json(body["header"])
            if theirs.header.height != height:
                raise InvalidArgument("the cosigned header is not at the given height")
            self._check_foreign_view(theirs)
        if not hmac.compare_digest(header_hash, ours.header.hash()):
            raise FailedPrecondition(f"header_hash is not the hash of our header at {height}")
        cosig = verify_cosignature(
            checkpoint_of(ours), line, self._manifest.public_key(sender), witness_name(sender)
        )
        if cosig.timestamp > self._clock().timestamp() + MAX_FUTURE_S:
            raise VerificationError(f"the cosignature's time {cosig.timestamp} is in the future")
        stored = witness_store.StoredCosignature(
            program=self._program,
            height=height,
            witness=sender,
            header_hash=ours.header.hash(),
            cosignature=cosig.line,
            timestamp=cosig.timestamp,
            delivered=True,
        )

        def save(conn: Connection) -> int:
            witness_store.save_cosignature(conn, stored)
            return len(witness_store.cosignatures(conn, self._program, height))

        with self._lock:
            count = self._sequencer.run(lambda tx: save(tx.conn))
        return "cosign-ack", {"program": self._program, "height": height, "cosigners": count}

    def _check_foreign_view(self, theirs: SignedHeader) -> None:
        """A partner's copy of one of our headers: it must be ours (else, evidence)."""
        if theirs.header.program != self._program:
            raise InvalidArgument("the header is not one of ours")
        theirs.verify(self._service.key_schedule().key_for(theirs.header))
        ours = self._our_header(theirs.header.height)
        if not _same(ours, theirs):
            reason = "a partner holds another header of ours"
            with self._lock:
                self._sequencer.run(
                    lambda tx: self._record(tx.conn, EQUIVOCATION, reason, ours, theirs)
                )
            raise FailedPrecondition(
                f"the header at height {theirs.header.height} is not ours: equivocation recorded"
            )

    def on_gossip(self, sender: str, body: JsonObject) -> tuple[str, JsonObject]:
        """A signed header a partner saw: compare it with what we verified or were sent."""
        if set(body) != {"header"}:
            raise InvalidArgument("header-gossip carries exactly one field, header")
        signed = SignedHeader.from_json(body["header"])
        program = signed.header.program
        try:
            schedule = self.schedule(program)
        except NotFound:
            raise InvalidArgument(f"{program!r} is not a partner") from None
        signed.verify(schedule.key_for(signed.header))
        if program == self._program:
            try:
                self._check_foreign_view(signed)
            except NotFound:
                return "header-gossip-reply", {"status": "unknown"}
            except FailedPrecondition:
                return "header-gossip-reply", {"status": EQUIVOCATION}
            return "header-gossip-reply", {"status": "consistent"}
        with self._lock:
            status = self._sequencer.run(lambda tx: self._compare_gossip(tx.conn, sender, signed))
        return "header-gossip-reply", {"status": status}

    def _compare_gossip(self, conn: Connection, sender: str, signed: SignedHeader) -> str:
        """Compare a forwarded header with the one stored or forwarded before at its
        height (evidence if they differ); keep it while none is verified there."""
        program, height = signed.header.program, signed.header.height
        status = "unknown"
        stored = witness_store.header_at(conn, program, height)
        known = [stored] if stored is not None else witness_store.gossip_at(conn, program, height)
        for other in known:
            if _same(other, signed):
                status = "consistent"
            else:
                self._record(conn, EQUIVOCATION, f"forwarded by {sender}", other, signed)
                status = EQUIVOCATION
                break
        if stored is None:
            witness_store.insert_gossip(conn, signed, sender, to_micros(self._clock()))
        return status

    # --- reads ----------------------------------------------------------------------------

    def status(self, height: int) -> WitnessStatus:
        """Who cosigned our header at ``height`` (NotFound if there is none)."""
        ours = self._our_header(height)
        with self._sequencer.read() as conn:
            rows = witness_store.cosignatures(conn, self._program, height)
        return self._status_of(ours, rows)

    def statuses(self, start: int, limit: int) -> list[WitnessStatus]:
        """``status`` of each of our headers from height ``start``, up to ``limit`` (1..1000)
        of them, oldest first: one read of the headers and one of their cosignatures, so a
        page of the blocks view costs one request, not one per block."""
        if not isinstance(limit, int) or not 1 <= limit <= MAX_STATUSES:
            raise InvalidArgument(f"limit must be 1..{MAX_STATUSES}, got {limit!r}")
        headers = self._service.ledger.headers(start, limit)
        if not headers:
            return []
        first, last = headers[0].header.height, headers[-1].header.height
        with self._sequencer.read() as conn:
            rows = witness_store.cosignatures_between(conn, self._program, first, last + 1)
        schedule = self._service.key_schedule()  # one read for the page's note signers
        return [self._status_of(h, rows.get(h.header.height, []), schedule) for h in headers]

    def _status_of(
        self,
        ours: SignedHeader,
        rows: list[witness_store.StoredCosignature],
        schedule: KeySchedule | None = None,
    ) -> WitnessStatus:
        header_hash = ours.header.hash()
        checkpoint = checkpoint_of(ours)
        cosigners: list[Cosigner] = []
        for row in rows:
            if row.header_hash != header_hash:
                continue
            try:  # re-verified on every read: a tampered row never counts
                verify_cosignature(
                    checkpoint,
                    row.cosignature,
                    self._manifest.public_key(row.witness),
                    witness_name(row.witness),
                )
            except CoalitionError as exc:
                log.error("witness: stored cosignature of %s does not verify: %s", row.witness, exc)
                continue
            cosigners.append(Cosigner(row.witness, row.timestamp, row.cosignature))
        signer = self._service.header_signing_key(ours.header, schedule)  # the key in force
        note = sign_note(checkpoint, signer, checkpoint.split("\n", 1)[0])
        note += "".join(c.cosignature for c in cosigners)
        quorum = self._manifest.witness_quorum
        return WitnessStatus(
            height=ours.header.height,
            header_hash=header_hash,
            checkpoint=checkpoint,
            note=note,
            cosigners=tuple(cosigners),
            quorum=quorum,
            witnessed=len(cosigners) >= quorum,
        )

    def equivocations(
        self, program: str | None = None, limit: int = MAX_PAGE, after: int | None = None
    ) -> list[Evidence]:
        """Stored evidence of equivocations and forks, oldest first, up to ``limit``
        (1..1000) of them with an id above ``after``: one page, however much is stored."""
        check_page_size(limit)
        if program is not None:
            check_program_id(program)  # before it is looked up
        if after is not None and (not isinstance(after, int) or after < 0):
            raise InvalidArgument(f"after must be an evidence id >= 0, got {after!r}")
        with self._sequencer.read() as conn:
            rows = witness_store.evidence(conn, program, limit, after)
        return [
            Evidence(
                id=row.id,
                program=row.program,
                height=row.height,
                kind=row.kind,
                reason=row.reason,
                first=row.first.to_json(),
                second=row.second.to_json(),
                detected_at=format_time(from_micros(row.detected_at)),
            )
            for row in rows
        ]

    def followers(self) -> list[FollowerStatus]:
        """How far each partner's chain was verified, and whether it is still trusted."""
        result = []
        for partner in self._manifest.others(self._program):
            last = self.last_verified(partner.program)
            result.append(
                FollowerStatus(
                    program=partner.program,
                    verified_height=None if last is None else last.header.height,
                    halted=self.halted(partner.program),
                    last_error=self._errors.get(partner.program),
                )
            )
        return result
