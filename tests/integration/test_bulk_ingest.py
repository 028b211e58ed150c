"""The bulk earn's fast path against the reference path (SQLite and PostgreSQL): the same
purchases through ``earn_bulk`` and one ``earn_purchase`` at a time give byte-identical
entries, lots, accounts, blocks and tree nodes, the same refusals, and a chain that audits;
and the batched lookups (one bind per list) see what was committed before, in earlier
chunks of the same call included."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from datetime import timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from coalition.audit.db_check import check_database
from coalition.audit.sources import DatabaseSource
from coalition.errors import CoalitionError
from coalition.ledger.keys import SigningKey
from coalition.node import sequencer
from coalition.node.config import SealerConfig
from coalition.node.service import NodeService
from coalition.node.views import PurchaseRow
from coalition.points.rules import ProgramRules, Tier
from coalition.store import ledger as ledger_store
from coalition.store import members as members_store
from coalition.store.flows import flow_totals
from coalition.store.ledger import blocks, entries, log_head, tree_nodes
from coalition.store.members import accounts, lots
from coalition.verify.chain_audit import audit_chain

from support.databases import node_urls
from support.nodes import Clock, temporary_node

RULES = ProgramRules(
    categories={"flights": Fraction(2), "partners": Fraction(1)},
    tiers=(Tier("base", 0, Fraction(1)), Tier("silver", 300, Fraction(3, 2))),
    holding_period=timedelta(days=14),
)
MEMBERS = ("ann", "ben", "cy", "dee")
SEALER = SealerConfig(max_entries=5, max_delay_ms=60_000)  # blocks cut by count or flush


def _purchases() -> list[PurchaseRow]:
    """Purchases that cross a tier within a batch and across batches, with refusals the
    two paths draw an entry id for alike (a used reference, a spend that earns nothing)
    and replays and conflicts of idempotency keys; refusals only the reference path
    draws an id for (unknown member, malformed row) come last."""
    rows = [
        PurchaseRow(
            MEMBERS[n % 4], f"P-{n}", 2_000 + 700 * n, ("flights", "partners", "")[n % 3], f"k{n}"
        )
        for n in range(40)
    ]
    rows[9] = PurchaseRow("ben", "P-3", 5_000, "", "k9-used-ref")  # P-3 earned already
    rows[17] = PurchaseRow("cy", "P-17", 1, "", "k17")  # earns no points
    rows.append(rows[5])  # the same key and request: a replay
    rows.append(PurchaseRow("ann", "P-99", 4_000, "", "k6"))  # k6 with another request
    rows.append(PurchaseRow("nobody", "P-100", 4_000, "", "k100"))
    rows.append(PurchaseRow("ann", "P-101", 4_000, "", "bad key"))
    return rows


def _counter_ids() -> Callable[[int], list[str]]:
    """Entry ids from a counter, so two nodes fed the same input get the same ids."""
    counter = itertools.count(1)

    def ids(count: int) -> list[str]:
        return [f"{next(counter):032x}" for _ in range(count)]

    return ids


def _tables(url_service: NodeService) -> dict[str, list[tuple[Any, ...]]]:
    with url_service.sequencer.read() as conn:
        return {
            table.name: [
                tuple(row) for row in conn.execute(select(table).order_by(*table.primary_key))
            ]
            for table in (entries, lots, accounts, blocks, tree_nodes, log_head, flow_totals)
        }


@pytest.fixture
def urls(database_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    with node_urls(database_url, tmp_path, ["bulk", "reference"]) as found:
        yield found


def _node(url: str, key: SigningKey, clock: Clock) -> Any:
    return temporary_node(url, rules=RULES, sealer=SEALER, clock=clock, key=key, start=False)


def _enroll(service: NodeService) -> None:
    for member in MEMBERS:
        service.points.enroll(member, idempotency_key=f"enroll-{member}")


def test_bulk_earn_writes_what_one_earn_at_a_time_writes(
    urls: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = SigningKey.generate()
    rows = _purchases()
    clock = Clock()

    monkeypatch.setattr(sequencer, "new_entry_ids", _counter_ids())
    with _node(urls["bulk"], key, clock) as bulk:
        _enroll(bulk)
        result = bulk.points.earn_bulk(rows, batch_size=7)
        bulk.ledger.flush()
        bulk_tables = _tables(bulk)

    monkeypatch.setattr(sequencer, "new_entry_ids", _counter_ids())
    refused: dict[int, str] = {}
    accepted = replayed = 0
    with _node(urls["reference"], key, clock) as ref:
        _enroll(ref)
        for number, row in enumerate(rows, start=1):
            try:
                written = ref.points.earn_purchase(
                    row.member_id,
                    row.reference,
                    row.spend_minor,
                    row.category,
                    idempotency_key=row.idempotency_key,
                )
            except CoalitionError as exc:
                refused[number] = str(exc)
                continue
            replayed += written.replayed
            accepted += not written.replayed
        ref.ledger.flush()
        ref_tables = _tables(ref)

    assert (result.accepted, result.replayed) == (accepted, replayed) == (38, 1)
    assert {err.row: err.message for err in result.rejected} == refused
    assert sorted(refused) == [10, 18, 42, 43, 44]
    assert len(bulk_tables["blocks"]) > 5  # several blocks, several stored tree levels
    for name, stored in ref_tables.items():
        assert bulk_tables[name] == stored, f"table {name} differs"

    report = check_database(urls["bulk"])
    assert report.ok, report.render()
    with DatabaseSource(urls["bulk"]) as source:
        audit = audit_chain(source, key.public_key, program="testair")
    assert audit.ok, audit.render()


def test_batched_lookups_see_earlier_commits_and_bind_one_list(
    database_url: str, clock: Clock
) -> None:
    with temporary_node(database_url, rules=RULES, clock=clock) as service:
        _enroll(service)
        first = service.points.earn_bulk(
            [PurchaseRow("ann", f"L-{n}", 10_000, "", f"l{n}") for n in range(6_000)],
            batch_size=5_000,
        )
        assert first.accepted == 6_000
        with service.sequencer.read() as conn:
            keys = [f"l{n}" for n in range(0, 7_000, 3)]
            hashes = ledger_store.request_hashes(conn, keys)
            assert sorted(hashes) == sorted(k for k in keys if int(k[1:]) < 6_000)
            refs = members_store.used_refs(
                conn, ["purchase:L-0", "purchase:L-5999", "purchase:L-6000"]
            )
            assert refs == {"purchase:L-0", "purchase:L-5999"}
            since = clock() - RULES.tier_window
            found = members_store.members_with_qualifying(conn, ["ann", "ben", "zed"], since)
            assert found["ben"][1] == 0 and "zed" not in found
            assert found["ann"][1] == service.points.balance("ann").qualifying
            assert members_store.members_with_qualifying(conn, [], since) == {}
            assert ledger_store.request_hashes(conn, []) == {}
            assert members_store.used_refs(conn, []) == set()
        again = service.points.earn_bulk(
            [PurchaseRow("ann", f"L-{n}", 10_000, "", f"l{n}") for n in range(5_990, 6_010)]
        )
        assert (again.accepted, again.replayed, again.rejected) == (10, 10, [])


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_the_sealer_seals_full_blocks_together_as_one_at_a_time_would(
    urls: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = SigningKey.generate()
    clock = Clock()
    rows = [PurchaseRow(MEMBERS[n % 4], f"S-{n}", 5_000, "", f"s{n}") for n in range(19)]
    stored: dict[str, list[tuple[Any, ...]]] = {}
    for name, blocks_per_seal in (("bulk", 16), ("reference", 1)):
        monkeypatch.setattr(sequencer, "new_entry_ids", _counter_ids())
        with _node(urls[name], key, clock) as service:
            _enroll(service)
            assert service.points.earn_bulk(rows).accepted == 19  # 23 entries pending
            assert service.sealer.leadership.try_acquire()  # not started: take the lease
            sizes = []
            while (header := service.sealer.seal(blocks_per_seal)) is not None:
                sizes.append(header.header.log_size)
            with service.sequencer.read() as conn:
                stored[name] = [tuple(r) for r in conn.execute(select(blocks).order_by("height"))]
        if name == "bulk":  # four full blocks in one transaction, then the partial one
            assert sizes == [20, 23]
        else:
            assert sizes == [5, 10, 15, 20, 23]
    assert stored["bulk"] == stored["reference"]
    with DatabaseSource(urls["bulk"]) as source:
        audit = audit_chain(source, key.public_key, program="testair")
    assert audit.ok, audit.render()
