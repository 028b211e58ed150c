"""Reads that cost a page, not the log (docs/design-notes.md, "Reads that stay cheap as
the log grows"), on SQLite and PostgreSQL: every paged read walked page by page gives the
whole list once, in order, with no gap and no duplicate; the explorer's flows, served
from the writer's running totals, equal the reference fold of the chain for every bucket
size and page; the database check catches a running total that drifted from the chain;
the blocks view's one witness request equals the per-block statuses."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from coalition.api.grpc.client import NodeClient
from coalition.api.grpc.server import serve_grpc
from coalition.api.http.app import create_app
from coalition.audit.db_check import check_database
from coalition.cli import main as cli_main
from coalition.errors import InvalidArgument, NotFound
from coalition.explorer.flows import conversion_flows, flows_of
from coalition.node.auth import Authenticator
from coalition.node.service import NodeService
from coalition.store import statements as statements_store
from coalition.store.flows import flow_totals

from support.coalition import (
    RunningCoalition,
    agreement_doc,
    coalition_nodes,
    ledger_entries,
    wait_for,
)
from support.databases import node_urls
from support.nodes import temporary_node

A, B = "skyair", "staybright"
FIXED = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
NEXT = re.compile(r'^<([^>]+)>; rel="next"$')


def walk(client: TestClient, path: str, headers: dict[str, str]) -> tuple[list[Any], int]:
    """Every item of a paged list route, following its ``Link: rel="next"`` headers; and
    how many pages that took."""
    items: list[Any] = []
    pages = 0
    url: str | None = path
    while url is not None:
        response = client.get(url, headers=headers)
        assert response.status_code == 200, response.text
        items += response.json()
        pages += 1
        link = response.headers.get("link")
        url = None if link is None else NEXT.match(link).group(1)  # type: ignore[union-attr]
        assert pages < 1000
    return items, pages


@pytest.fixture
def fixed_node(database_url: str) -> Iterator[NodeService]:
    """A node whose clock stands still: every lot is earned at the same microsecond, so a
    lots page turns on the id alone (the cursor's tie-break)."""
    with temporary_node(database_url, clock=lambda: FIXED) as service:
        yield service


@pytest.fixture
def client(fixed_node: NodeService, authenticator: Authenticator) -> Iterator[TestClient]:
    with TestClient(create_app(fixed_node, authenticator)) as test_client:
        yield test_client


def op(api_keys: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_keys['operator']}"}


def test_history_pages_have_no_gap_or_duplicate(
    fixed_node: NodeService, client: TestClient, api_keys: dict[str, str]
) -> None:
    points = fixed_node.points
    for member in ("alice", "bob"):
        points.enroll(member, idempotency_key=f"enroll-{member}")
    for n in range(23):
        points.adjust("alice", 100 + n, "ops", "credit", idempotency_key=f"adj-a-{n}")
        points.adjust("bob", 50, "ops", "credit", idempotency_key=f"adj-b-{n}")
        if n % 3 == 0:  # alice as ``to``: the second index of the history
            points.transfer("bob", "alice", 5, "gift", idempotency_key=f"gift-{n}")
    account = points.balance("alice").account
    touching = [
        e["id"]
        for e in ledger_entries(fixed_node)
        if account in (e["account"], e.get("to"))
    ]  # fmt: skip
    items, pages = walk(client, "/v1/members/alice/history?limit=7", op(api_keys))
    assert [item["entry"]["id"] for item in items] == touching[::-1]
    assert pages == len(touching) // 7 + 1
    first_page, older = points.history_page("alice", 7)
    assert [v.entry["id"] for v in first_page] == touching[::-1][:7] and older is not None
    rest, _ = points.history_page("alice", 1000, older)
    assert [v.entry["id"] for v in first_page + rest] == touching[::-1]
    assert client.get("/v1/members/alice/history?limit=0", headers=op(api_keys)).status_code == 400
    assert (
        client.get("/v1/members/alice/history?before=-1", headers=op(api_keys)).status_code == 400
    )


def test_lot_pages_have_no_gap_or_duplicate(
    fixed_node: NodeService, client: TestClient, api_keys: dict[str, str]
) -> None:
    points = fixed_node.points
    points.enroll("alice", idempotency_key="enroll-alice")
    for n in range(17):
        points.adjust("alice", 10 + n, "ops", "credit", idempotency_key=f"adj-{n}")
    points.redeem("alice", 25, "spend-1", idempotency_key="spend-1")  # lots change, stay listed
    everything = points.lots("alice")
    items, pages = walk(client, "/v1/members/alice/lots?limit=5", op(api_keys))
    assert [item["id"] for item in items] == [lot.id for lot in points.lots("alice")]
    assert len(items) == len(everything) == 17 and pages == 4
    assert items[0]["remaining"] != items[0]["amount"]  # the redeemed lot, as the list has it
    unknown = client.get("/v1/members/alice/lots?after=nolot", headers=op(api_keys))
    assert unknown.status_code == 404


def test_statement_pages_have_no_gap_or_duplicate(fixed_node: NodeService) -> None:
    """The store's page of statements (of all parties and of one pair) against the whole
    ordered listing; periods repeat, so the id breaks ties."""
    pairs = [("beanhouse", "skyair"), ("skyair", "staybright")]

    def record(tx: Any) -> None:
        for n in range(11):
            start = FIXED + timedelta(days=n // 2)
            statements_store.insert_statement(
                tx.conn,
                statement_id=f"st-{n:02d}-{pairs[n % 2][0]}",
                parties=pairs[n % 2],
                start=start,
                end=start + timedelta(days=1),
                currency="EUR",
                signed={"statement": {"n": n}, "signatures": {}},
                entry_id=f"e{n}",
            )

    fixed_node.sequencer.run(record)
    with fixed_node.sequencer.read() as conn:
        for parties in (None, *pairs):
            whole = [s.id for s in statements_store.statements_between(conn, parties)]
            walked: list[str] = []
            after = None
            while True:
                page = statements_store.statements_page(conn, parties, 3, after)
                assert page is not None
                walked += [s.id for s in page]
                if len(page) < 3:
                    break
                after = page[-1].id
            assert walked == whole and len(set(walked)) == len(whole) > 0
        assert statements_store.statements_page(conn, None, 3, "no-such") is None


# ------------------------------------------------------------------------------ flows


class Moving:
    """A clock both nodes read, which the test moves on: the flows land in many buckets
    while partner messages stay within the nodes' clock skew of each other."""

    def __init__(self) -> None:
        self.now = FIXED

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def pair(tmp_path: Path, database_url: str) -> Iterator[RunningCoalition]:
    """skyair and staybright, alice at skyair (20,000 points), bob at staybright; six
    conversions, one of them to a member unknown to staybright (enrolled on arrival)."""
    with ExitStack() as stack:
        urls = stack.enter_context(node_urls(database_url, tmp_path, (A, B)))
        clock = Moving()
        c = stack.enter_context(coalition_nodes(tmp_path, urls, clock=clock))
        c[A].agr.propose(agreement_doc(A, B, valid_from=FIXED - timedelta(days=1)))
        c[A].service.points.enroll("alice", idempotency_key="enroll-alice")
        c[A].service.points.adjust("alice", 20_000, "ops", "opening", idempotency_key="seed")
        c[B].service.points.enroll("bob", idempotency_key="enroll-bob")
        for n in range(6):
            member = "nobody" if n == 3 else "bob"
            view = c[A].conv.convert("alice", B, member, 500 + n, idempotency_key=f"conv-{n}")
            wait_for(lambda: c[A].conv.status("alice", view.id).status != "pending")  # noqa: B023
            clock.now += timedelta(minutes=50)
        yield c


@pytest.mark.parametrize("bucket_s", [60, 3600, 7200, 86400])
def test_flow_pages_equal_the_fold_of_the_chain(pair: RunningCoalition, bucket_s: int) -> None:
    for program in (A, B):
        ledger = pair[program].service.ledger
        reference = [
            f.to_json()
            for f in conversion_flows(ledger_entries(pair[program].service), program, bucket_s)
        ]
        assert reference and not any(f["refunded"] for f in reference)
        walked: list[Any] = []
        before = None
        while True:  # two buckets a page, newest page first
            totals, older = ledger.flow_page(bucket_s, 2, before)
            walked = [f.to_json() for f in flows_of(totals)] + walked
            if older is None:
                break
            before = datetime.fromtimestamp(older, UTC)
        assert walked == reference and reference


def test_the_database_check_catches_a_flow_total_that_drifted(pair: RunningCoalition) -> None:
    node = pair[A]
    assert check_database(node.url).ok
    with node.service.sequencer.engine.begin() as conn:
        conn.execute(update(flow_totals).where(flow_totals.c.level == 3600).values(value_minor=1))
    report = check_database(node.url)
    assert not report.ok
    assert {f["kind"] for f in report.to_json()["differences"]} == {"flow-total"}  # type: ignore[index, union-attr]
    assert "3600 s bucket" in report.render()


def test_flows_route_pages_and_refuses_a_bucket_it_cannot_sum(
    pair: RunningCoalition, authenticator: Authenticator, api_keys: dict[str, str]
) -> None:
    service = pair[A].service
    headers = {"Authorization": f"Bearer {api_keys['auditor']}"}
    with TestClient(create_app(service, authenticator)) as http:
        whole = http.get("/v1/explorer/flows?bucket_s=3600", headers=headers).json()
        assert whole["next_before"] is None
        first = http.get("/v1/explorer/flows?bucket_s=3600&limit=1", headers=headers).json()
        assert first["flows"] == [
            f for f in whole["flows"] if f["bucket"] == first["flows"][0]["bucket"]
        ]
        assert first["next_before"] == first["flows"][0]["bucket"]
        older = http.get(
            f"/v1/explorer/flows?bucket_s=3600&limit=1&before={first['next_before']}",
            headers=headers,
        ).json()
        assert older["flows"] and older["flows"][0]["bucket"] < first["next_before"]
        assert http.get("/v1/explorer/flows?bucket_s=90", headers=headers).status_code == 422
        bad = http.get("/v1/explorer/flows?before=yesterday", headers=headers)
        assert bad.status_code == 400


# ------------------------------------------------------------------ over gRPC and the CLI


@pytest.fixture
def grpc_port(fixed_node: NodeService, authenticator: Authenticator) -> Iterator[int]:
    server, bound = serve_grpc(fixed_node, authenticator, "127.0.0.1", 0)
    try:
        yield bound
    finally:
        server.stop(None).wait(10)


def test_grpc_lot_and_history_pages_have_no_gap_or_duplicate(
    fixed_node: NodeService,
    grpc_port: int,
    api_keys: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    points = fixed_node.points
    points.enroll("alice", idempotency_key="enroll-alice")
    for n in range(11):
        points.adjust("alice", 10 + n, "ops", "credit", idempotency_key=f"adj-{n}")
    lots = [lot.id for lot in points.lots("alice")]
    history = [v.entry["id"] for v in points.history("alice", 1000)]
    assert len(lots) == 11 and len(history) == 12
    client = NodeClient(f"127.0.0.1:{grpc_port}", api_keys["member"])
    try:
        walked, token, pages = [], None, 0
        while True:
            page, token = client.lots_page("alice", 4, token)
            walked += [lot.id for lot in page]
            pages += 1
            if token is None:
                break
        assert walked == lots and pages == 3
        assert [lot.id for lot in client.lots("alice")] == lots  # every page, followed
        newest, older = client.history_page("alice", 5)
        walked = [v.entry["id"] for v in newest]
        while older is not None:
            page, older = client.history_page("alice", 5, older)
            walked += [v.entry["id"] for v in page]
        assert walked == history
        with pytest.raises(InvalidArgument, match="page token"):
            client.history_page("alice", 5, "x")
        with pytest.raises(NotFound):
            client.lots_page("alice", 4, "no-such-lot")
        with pytest.raises(InvalidArgument, match="limit"):
            client.lots_page("alice", 1001)
    finally:
        client.close()

    address = ["--grpc", f"127.0.0.1:{grpc_port}", "--api-key", api_keys["member"]]
    assert cli_main(["history", "alice", "--limit", "5", *address]) == 0
    out, err = capsys.readouterr()
    first = [item["entry"]["id"] for item in json.loads(out)]
    token = err.split("next page: --page ")[1].split()[0]
    assert cli_main(["history", "alice", "--limit", "100", "--page", token, *address]) == 0
    out, err = capsys.readouterr()
    assert first + [item["entry"]["id"] for item in json.loads(out)] == history
    assert "next page" not in err
    assert cli_main(["lots", "alice", "--limit", "6", *address]) == 0
    out, err = capsys.readouterr()
    assert [lot["id"] for lot in json.loads(out)] == lots[:6] and "--page" in err
