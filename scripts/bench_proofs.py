#!/usr/bin/env python3
"""Benchmark of proof generation and verification on a log of 1,000,000 entries.

    .venv/bin/python scripts/bench_proofs.py                 # build (about a minute), measure
    .venv/bin/python scripts/bench_proofs.py --reuse         # reuse the cached log if present
    .venv/bin/python scripts/bench_proofs.py --entries 100000 --samples 5000

**Building** (untimed): earn-shaped entry bodies (a real ``operations.earn_purchase`` body
used as a template, with a fresh id, account and reference per entry) are inserted as
``entries`` rows with their canonical bytes and leaf hashes, in chunks; after each chunk
the real ``Sealer`` of a ``NodeService`` is told about them (``sealer.added``, after the
log's head is moved past them) and ``flush()`` seals them into signed blocks of 1,000
entries, writing the tree nodes through ``CompactRange`` exactly as the running node
does. The database (SQLite) and the signing key are cached in ``--dir`` (default:
``$TMPDIR/coalition-bench-proofs``); ``--reuse`` takes them as they are when they hold a
log of the requested size.

**Measuring**: a fresh ``NodeService`` opened on the cached database (default engine
settings) serves every proof from the stored tree data, as in production:

* ``LedgerService.inclusion_proof`` for random entries (the whole call: entry lookup,
  header, stored-node fetch, path assembly, document);
* the path alone: stored-node fetch plus Merkle assembly, and the Merkle part alone;
* ``proofs.verify_inclusion_document`` (entry checks, leaf hash, RFC 9162 path, one
  Ed25519 signature), the bare ``merkle.verify_inclusion`` and a bare Ed25519 verify of
  the same header, measured in the same run;
* ``LedgerService.consistency_proof`` between random block heights and
  ``proofs.verify_consistency_document`` (two signatures) and ``merkle.verify_consistency``.
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import insert, select

from coalition.ledger.canonical import canonical_json
from coalition.ledger.entries import entry_leaf_hash
from coalition.ledger.keys import SigningKey
from coalition.ledger.merkle import (
    expand_nodes,
    inclusion_coords,
    inclusion_from_nodes,
    leaf_hash,
    stored_coords,
    verify_consistency,
    verify_inclusion,
)
from coalition.ledger.proofs import verify_consistency_document, verify_inclusion_document
from coalition.node.config import SealerConfig
from coalition.node.service import NodeService
from coalition.points.accounts import account_id
from coalition.points.rules import ProgramRules
from coalition.runtime.wiring import open_service
from coalition.store import ledger as ledger_store
from coalition.store.ledger import TREE_STRIDE, entries, set_head_to_log

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine, write_json

PROGRAM = "benchair"
SECRET = b"bench-account-secret-0123456789"
CHUNK = 50_000
BLOCK = 1000


def _service(url: str, key: SigningKey, synchronous: str = "FULL") -> NodeService:
    sealer = SealerConfig(max_entries=BLOCK)
    return open_service(
        url, PROGRAM, key, SECRET, ProgramRules(), sealer, sqlite_synchronous=synchronous
    )


def _template(folder: Path, key: SigningKey) -> dict[str, Any]:
    """One real earn entry, written by a throwaway node through the public service API."""
    path = folder / "template.db"
    path.unlink(missing_ok=True)
    service = _service(f"sqlite:///{path}", key, "OFF")
    try:
        service.points.enroll("M000001", idempotency_key="enroll:1")
        entry = service.points.earn_purchase(
            "M000001", "P-00000000", 12_345, idempotency_key="earn:1"
        ).entry
    finally:
        service.close()
        path.unlink(missing_ok=True)
    return entry


def build(folder: Path, size: int) -> None:
    """Write a log of ``size`` entries through the real sealer (synchronous=OFF: only the
    content matters for the read benchmark)."""
    for name in ("log.db", "log.db-wal", "log.db-shm", "meta.json"):
        (folder / name).unlink(missing_ok=True)
    key = SigningKey.generate()
    (folder / "key.pem").write_bytes(key.to_pem())
    url = f"sqlite:///{folder / 'log.db'}"
    service = _service(url, key, "OFF")
    template = _template(folder, key)
    t0 = time.perf_counter()
    try:
        for start in range(0, size, CHUNK):
            rows = []
            for index in range(start, min(size, start + CHUNK)):
                body = copy.deepcopy(template)
                entry_id = uuid.uuid4().hex
                body["id"] = entry_id
                body["account"] = account_id(SECRET, f"M{index % 20_000:06d}")
                body["lot"]["id"] = entry_id
                body["reason"]["reference"] = f"P-{index:08d}"
                data = canonical_json(body)
                rows.append(
                    {
                        "log_index": index,
                        "entry_id": entry_id,
                        "kind": "earn",
                        "account": body["account"],
                        "to_account": None,
                        "body": data.decode(),
                        "leaf_hash": leaf_hash(data),
                        "idem_key": None,
                        "request_hash": None,
                    }
                )
            with service.sequencer.engine.begin() as conn:
                conn.execute(insert(entries), rows)
                set_head_to_log(conn)
            service.sealer.added(len(rows))
            service.ledger.flush()
            done = start + len(rows)
            print(
                f"\r  built {done:,}/{size:,} entries ({time.perf_counter() - t0:.0f} s)",
                end="",
                flush=True,
            )
        print()
        last = service.ledger.latest_header()
        assert last is not None and last.header.log_size == size
    finally:
        service.close()
    (folder / "meta.json").write_text(json.dumps({"size": size, "block": BLOCK}))


T = TypeVar("T")


def field(doc: object, path: str, kind: type[T]) -> T:
    """``doc[a][b]...`` for ``path`` "a.b...", which must be a ``kind``: the proof documents
    are JSON, and a timing that read a wrong field would time nothing."""
    value = doc
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            raise KeyError(f"proof document without {path}")
        value = value[key]
    if not isinstance(value, kind):
        raise TypeError(f"proof document's {path} is not {kind.__name__}")
    return value


def hashes(doc: object) -> list[bytes]:
    """The document's proof path as bytes."""
    path = field(doc, "path", list)
    if not all(isinstance(h, str) for h in path):
        raise TypeError("proof document's path holds a non-string")
    return [bytes.fromhex(h) for h in path]


def timed(fn: Callable[[], object], reps: int = 1) -> float:
    """Seconds for one call (the mean over ``reps`` back-to-back calls)."""
    t0 = time.perf_counter_ns()
    for _ in range(reps):
        fn()
    return (time.perf_counter_ns() - t0) / reps / 1e9


def stats(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="log size")
    parser.add_argument("--samples", type=int, default=2000, help="random proofs of each kind")
    parser.add_argument("--reuse", action="store_true", help="reuse the cached log if present")
    parser.add_argument(
        "--dir",
        default=str(Path(tempfile.gettempdir()) / "coalition-bench-proofs"),
        help="cache folder for the log database and its key",
    )
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}")

    meta_path = folder / "meta.json"
    cached = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if args.reuse and cached.get("size") == args.entries and (folder / "log.db").exists():
        print(f"reusing the log of {args.entries:,} entries in {folder}")
    else:
        print(f"building a log of {args.entries:,} entries in {folder} (untimed) ...")
        t0 = time.perf_counter()
        build(folder, args.entries)
        print(f"  built in {time.perf_counter() - t0:.0f} s")

    key = SigningKey.from_pem((folder / "key.pem").read_bytes())
    verify_key = key.public_key
    service = _service(f"sqlite:///{folder / 'log.db'}", key)
    rng = random.Random(7)
    try:
        last = service.ledger.latest_header()
        assert last is not None
        size, height = last.header.log_size, last.header.height
        root = bytes.fromhex(last.header.log_root)
        indexes = [rng.randrange(size) for _ in range(args.samples)]
        with service.sequencer.read() as conn:
            found: dict[int, str] = dict(
                conn.execute(
                    select(entries.c.log_index, entries.c.entry_id).where(
                        entries.c.log_index.in_(sorted(set(indexes)))
                    )
                ).all()
            )
        ids = [found[i] for i in indexes]
        print(
            f"log: {size:,} entries in {height + 1:,} blocks; tree stride {TREE_STRIDE}; "
            f"{args.samples:,} random samples each\n"
        )
        results: list[tuple[str, float, float, str]] = []

        # Warm up caches (SQLite pages, SQLAlchemy statement cache) as a running node is.
        for entry_id in ids[:50]:
            service.ledger.inclusion_proof(entry_id)

        # Inclusion proof: the whole service call.
        gen = [timed(partial(service.ledger.inclusion_proof, e)) for e in ids]
        results.append(("inclusion proof, LedgerService.inclusion_proof", *stats(gen), "< 1 ms"))

        # The path alone: stored-node fetch + Merkle assembly, on one open connection.
        with service.sequencer.read() as conn:

            def path(i: int) -> list[bytes]:
                coords = inclusion_coords(i, size)
                stored = ledger_store.read_nodes(conn, stored_coords(coords, TREE_STRIDE))
                return inclusion_from_nodes(i, size, expand_nodes(coords, stored, TREE_STRIDE))

            fetch = [timed(partial(path, i)) for i in indexes]
            stored_sets = [
                ledger_store.read_nodes(conn, stored_coords(inclusion_coords(i, size), TREE_STRIDE))
                for i in indexes
            ]
        results.append(("  path: stored-node fetch + merkle", *stats(fetch), ""))

        def merkle_only(i: int, stored: dict[Any, bytes]) -> list[bytes]:
            coords = inclusion_coords(i, size)
            stored_coords(coords, TREE_STRIDE)
            return inclusion_from_nodes(i, size, expand_nodes(coords, stored, TREE_STRIDE))

        pure = [
            timed(partial(merkle_only, i, s), 20) for i, s in zip(indexes, stored_sets, strict=True)
        ]
        results.append(("  path: merkle only (nodes in memory)", *stats(pure), ""))

        # Verification.
        docs = [service.ledger.inclusion_proof(e) for e in ids[:500]]
        for doc in docs[:20]:
            verify_inclusion_document(doc, verify_key)
        ver = [timed(partial(verify_inclusion_document, d, verify_key), 5) for d in docs]
        results.append(("inclusion document verify", *stats(ver), "< 0.2 ms"))
        leafs = [entry_leaf_hash(field(d, "entry", dict)) for d in docs]
        bare = [
            timed(
                partial(verify_inclusion, lf, field(d, "leaf_index", int), size, hashes(d), root),
                50,
            )
            for d, lf in zip(docs, leafs, strict=True)
        ]
        results.append(("  RFC 9162 path only, merkle.verify_inclusion", *stats(bare), ""))
        lh = [timed(partial(entry_leaf_hash, field(d, "entry", dict)), 20) for d in docs]
        results.append(("  entry leaf hash (canonical JSON + SHA-256)", *stats(lh), ""))
        message = canonical_json(last.header.to_json())
        sig = base64.b64decode(last.signature)
        ed = [timed(partial(verify_key.verify, message, sig), 5) for _ in range(500)]
        results.append(("  bare Ed25519 verify (same run)", *stats(ed), ""))

        # Consistency proofs between random heights.
        pairs = []
        for _ in range(args.samples):
            a, b = rng.randrange(height + 1), rng.randrange(height + 1)
            pairs.append((min(a, b), max(a, b)))
        cgen = [timed(partial(service.ledger.consistency_proof, a, b)) for a, b in pairs]
        results.append(("consistency proof, LedgerService.consistency_proof", *stats(cgen), ""))
        cdocs = [service.ledger.consistency_proof(a, b) for a, b in pairs[:500]]
        cver = [timed(partial(verify_consistency_document, d, verify_key), 5) for d in cdocs]
        results.append(("consistency document verify (2 signatures)", *stats(cver), ""))
        cbare = []
        for d in cdocs:
            s1, s2 = field(d, "first.log_size", int), field(d, "second.log_size", int)
            if s1 == s2:
                continue
            r1 = bytes.fromhex(field(d, "first.log_root", str))
            r2 = bytes.fromhex(field(d, "second.log_root", str))
            cbare.append(timed(partial(verify_consistency, s1, s2, hashes(d), r1, r2), 50))
        results.append(("  RFC 9162 path only, merkle.verify_consistency", *stats(cbare), ""))
        doc_bytes = statistics.median(len(canonical_json(d)) for d in docs)
        path_len = statistics.median(len(hashes(d)) for d in docs)
    finally:
        service.close()

    print(f"{'operation':52}{'median ms':>11}{'p99 ms':>10}  target")
    for name, med, p99, target in results:
        print(f"{name:52}{med:>11.4f}{p99:>10.4f}  {target}")
    print(
        f"\ninclusion document: median {doc_bytes:.0f} bytes of canonical JSON, "
        f"{path_len:.0f} path hashes"
    )
    bare_ed25519 = next(med for name, med, _, _ in results if "bare Ed25519" in name)
    write_json(
        args.json,
        {
            "entries": size,
            "samples": args.samples,
            "operations": {
                name.strip(): {"median_ms": med, "p99_ms": p99, "target": target}
                for name, med, p99, target in results
            },
            "ratios": {
                "inclusion_proof/bare_ed25519_verify": results[0][1] / bare_ed25519,
            },
            "inclusion_document_bytes": doc_bytes,
            "path_hashes": path_len,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
