"""Where an audit reads a chain from: a node's database, or a live node over gRPC.

Both implement ``coalition.verify.source.ChainSource`` (and the evidence and cosignature
interfaces): they hand out raw data only, the verifier checks everything itself.
Sources are read-only.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

from sqlalchemy import Engine, inspect

from coalition.errors import CoalitionError, InvalidArgument
from coalition.ledger.canonical import JsonObject, canonical_json
from coalition.ledger.keys import VerifyKey
from coalition.ledger.merkle import consistency_coords, consistency_from_nodes, expand_nodes
from coalition.ledger.merkle import stored_coords as stored_node_coords
from coalition.ledger.proofs import consistency_document
from coalition.node.bundle_export import stored_evidence
from coalition.store import ledger as ledger_store
from coalition.store.db import make_engine, normalise_url
from coalition.store.ledger import TREE_STRIDE, signed_header_from_row
from coalition.store.witness import cosignature_lines, witness_cosignatures, witness_evidence
from coalition.verify.evidence import RawEvidence
from coalition.verify.source import RawEntry, RawHeader


def existing_database(url: str) -> Engine:
    """An engine on a node's existing database; InvalidArgument if a SQLite file is missing
    (opening it would create an empty one)."""
    url = normalise_url(url)
    if url.startswith("sqlite:///") and ":memory:" not in url:
        path = Path(url.removeprefix("sqlite:///").split("?", 1)[0])
        if not path.is_file():
            raise InvalidArgument(f"no database file at {path}")
    return make_engine(url)


class DatabaseSource:
    """A node's database, read directly (SQLite file or PostgreSQL URL).

    Entry rows are fetched in chunks of ``chunk`` log indexes, since an audit asks for
    blocks in order; memory stays bounded by the chunk whatever the log size.
    """

    def __init__(self, url: str, *, chunk: int = 5000) -> None:
        self._engine = existing_database(url)
        self._chunk = chunk
        self._buffer: dict[int, RawEntry] = {}
        self._buffered = (0, 0)

    def public_key(self) -> VerifyKey | None:
        return None

    def latest_header(self) -> RawHeader | None:
        with self._engine.connect() as conn:
            row = ledger_store.last_block(conn)
        return None if row is None else RawHeader(*row)

    def headers(self, start: int, limit: int) -> list[RawHeader]:
        with self._engine.connect() as conn:
            return [RawHeader(*row) for row in ledger_store.block_rows(conn, start, limit)]

    def block_entries(self, height: int, first_index: int, count: int) -> list[RawEntry]:
        end = first_index + count
        lo, hi = self._buffered
        if not (lo <= first_index and end <= hi):
            hi = max(end, first_index + self._chunk)
            with self._engine.connect() as conn:
                rows = ledger_store.entry_bodies(conn, first_index, hi)
            self._buffer = {i: RawEntry(i, body.encode(), leaf) for i, body, leaf in rows}
            self._buffered = (first_index, hi)
        return [self._buffer[i] for i in range(first_index, end) if i in self._buffer]

    def consistency_proof(self, first_height: int, second_height: int) -> JsonObject | None:
        """Built from the stored tree nodes, as the node itself would serve it."""
        with self._engine.connect() as conn:
            rows = [ledger_store.block_rows(conn, h, 1) for h in (first_height, second_height)]
            if any(
                not r or r[0][0] != h
                for r, h in zip(rows, (first_height, second_height), strict=True)
            ):
                return None
            first, second = (signed_header_from_row(r[0][1], r[0][2]) for r in rows)
            size1, size2 = first.header.log_size, second.header.log_size
            coords = consistency_coords(size1, size2)
            stored = ledger_store.read_nodes(conn, stored_node_coords(coords, TREE_STRIDE))
        nodes = expand_nodes(coords, stored, TREE_STRIDE)  # InvalidArgument: a node is gone
        return consistency_document(first, second, consistency_from_nodes(size1, size2, nodes))

    def evidence(self) -> list[RawEvidence] | None:
        """The ``witness_evidence`` rows as stored (None: the database has no such table)."""
        with self._engine.connect() as conn:
            if not inspect(conn).has_table(witness_evidence.name):
                return None
            return stored_evidence(conn)

    def cosignatures(self, start: int, end: int) -> dict[int, list[str]] | None:
        """The node's ``witness_cosignatures`` rows for its own program's headers (the
        program named by the header at height 0), lines by height; None: no such table."""
        with self._engine.connect() as conn:
            if not inspect(conn).has_table(witness_cosignatures.name):
                return None
            first = ledger_store.block_rows(conn, 0, 1)
            if not first or first[0][0] != 0:
                return {}
            try:
                program = signed_header_from_row(first[0][1], first[0][2]).header.program
            except CoalitionError:
                return {}  # the chain audit reports the header
            return cosignature_lines(conn, program, start, end)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> DatabaseSource:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _raw_header(obj: JsonObject, fallback_height: int) -> RawHeader:
    header, signature = obj.get("header"), obj.get("signature")
    if not isinstance(header, dict) or not isinstance(signature, str):
        raise InvalidArgument("the node sent a signed header without header or signature")
    height = header.get("height")
    h = height if isinstance(height, int) and not isinstance(height, bool) else fallback_height
    return RawHeader(h, canonical_json(header).decode(), signature)


class GrpcSource:
    """A live node's Ledger service (``coalition.api.grpc.client.NodeClient``).

    The node sends parsed entries, so the bytes audited are their canonical encoding and
    there are no stored leaf hashes or log indexes to compare with.
    """

    def __init__(self, target: str, api_key: str | None, *, timeout: float = 30.0) -> None:
        from coalition.api.grpc.client import NodeClient

        self._client = NodeClient(target, api_key, timeout=timeout)
        self._target, self._api_key, self._timeout = target, api_key, timeout

    def public_key(self) -> VerifyKey | None:
        return VerifyKey.from_pem(self._client.public_key_pem().encode("ascii"))

    def latest_header(self) -> RawHeader | None:
        latest = self._client.latest_header()
        return None if latest is None else _raw_header(latest, 0)

    def headers(self, start: int, limit: int) -> list[RawHeader]:
        limit = min(limit, 10_000)
        found = self._client.headers(start, limit)
        return [_raw_header(obj, start + n) for n, obj in enumerate(found)]

    def block_entries(self, height: int, first_index: int, count: int) -> list[RawEntry]:
        _, bodies = self._client.block(height)
        return [RawEntry(None, canonical_json(body)) for body in bodies]

    def consistency_proof(self, first_height: int, second_height: int) -> JsonObject | None:
        return self._client.consistency_proof(first_height, second_height)

    def evidence(self) -> list[RawEvidence] | None:
        """``coalition.v1.Witness/ListEquivocations`` (None: the node runs no witness)."""
        import grpc

        from coalition.api.grpc.client import TransportError
        from coalition.v1 import witness_pb2, witness_pb2_grpc

        metadata = (("authorization", f"Bearer {self._api_key}"),) if self._api_key else ()
        with grpc.insecure_channel(self._target) as channel:
            try:
                reply = witness_pb2_grpc.WitnessStub(channel).ListEquivocations(
                    witness_pb2.ListEquivocationsRequest(), metadata=metadata, timeout=self._timeout
                )
            except grpc.RpcError as exc:
                code: grpc.StatusCode = exc.code()
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    return None
                raise TransportError(code, exc.details() or "") from None
        return [
            RawEvidence(
                id=e.id,
                program=e.program,
                height=e.height,
                kind=e.kind,
                reason=e.reason,
                first=e.first_signed_header_json.decode(errors="replace"),  # bad: bogus
                second=e.second_signed_header_json.decode(errors="replace"),
                detected_at=e.detected_at or None,
            )
            for e in reply.equivocations
        ]

    def cosignatures(self, start: int, end: int) -> dict[int, list[str]] | None:
        """``coalition.v1.Witness/GetWitnesses`` for each height (None: the node runs no
        witness). The node lists only cosignatures it verified; the auditor verifies
        them again."""
        import grpc

        from coalition.api.grpc.client import TransportError
        from coalition.v1 import witness_pb2, witness_pb2_grpc

        metadata = (("authorization", f"Bearer {self._api_key}"),) if self._api_key else ()
        found: dict[int, list[str]] = {}
        with grpc.insecure_channel(self._target) as channel:
            stub = witness_pb2_grpc.WitnessStub(channel)
            for height in range(start, end):
                try:
                    reply = stub.GetWitnesses(
                        witness_pb2.GetWitnessesRequest(height=height),
                        metadata=metadata,
                        timeout=self._timeout,
                    )
                except grpc.RpcError as exc:
                    code: grpc.StatusCode = exc.code()
                    if code == grpc.StatusCode.UNIMPLEMENTED:
                        return None
                    if code == grpc.StatusCode.NOT_FOUND:
                        continue
                    raise TransportError(code, exc.details() or "") from None
                lines = [c.cosignature for c in reply.cosigners]
                if lines:
                    found[height] = lines
        return found

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> GrpcSource:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
