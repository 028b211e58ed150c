"""A small running coalition with the explorer served over HTTP, for the browser tests
and for regenerating the screenshots (scripts/explorer_screenshots.py).

Three real nodes (SQLite, mutual-TLS partner gRPC on free ports) built as ``coalition
run`` builds them, with every coalition feature, witnesses cosigning each other's
headers, conversions both ways, a captured cross-brand redemption and an agreed
settlement statement; skyair's member API (REST with the explorer, and gRPC) listens on
127.0.0.1 on free ports.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from coalition.node.auth import ApiKey, Authenticator, Role, key_digest
from coalition.node.features.redemptions import Redemptions
from coalition.node.features.settlement import Settlement
from coalition.node.features.witness import Witness
from coalition.runtime.wiring import serve_member_api

from support.coalition import RunningCoalition, agreement_doc, coalition_nodes
from support.coalition import wait_for as wait_until

A, B, C = "skyair", "staybright", "beanhouse"
AUDITOR_KEY = "explorer-auditor-key"
MEMBER_ID = "alice"
MEMBER_KEY = "explorer-alice-key"


@dataclass
class Site:
    """The running coalition and skyair's explorer."""

    coalition: RunningCoalition
    base_url: str
    witnesses: dict[str, Witness]
    redemptions: dict[str, Redemptions]
    settlement: dict[str, Settlement]
    statement_start: datetime
    statement_end: datetime

    @property
    def explorer_url(self) -> str:
        return f"{self.base_url}/explorer/"


def _authenticator() -> Authenticator:
    return Authenticator(
        [
            ApiKey("audit", key_digest(AUDITOR_KEY), Role.AUDITOR),
            ApiKey("alice", key_digest(MEMBER_KEY), Role.MEMBER, MEMBER_ID),
        ]
    )


def _populate(site: Site) -> None:
    """Agreements, members, conversions both ways, a redemption and a statement."""
    coalition = site.coalition
    coalition[A].agr.propose(agreement_doc(A, B, rate=(3, 2), point_value=(1, 1)))
    coalition[B].agr.propose(agreement_doc(B, A, rate=(1, 2), point_value=(2, 1)))
    coalition[A].agr.propose(agreement_doc(A, C, rate=(2, 1), point_value=(1, 2)))
    for program, node in coalition.nodes.items():
        for member in (MEMBER_ID, "bob"):
            node.service.points.enroll(member, idempotency_key=f"enroll-{program}-{member}")
            node.service.points.adjust(
                member, 5000, "ops", "opening", idempotency_key=f"{program}-{member}"
            )
    node_a, node_b = coalition[A], coalition[B]
    node_a.service.points.earn_purchase(MEMBER_ID, "PNR-EXPLORE", 48_000, idempotency_key="earn-1")
    conversions = [
        node_a.conv.convert(MEMBER_ID, B, MEMBER_ID, 1000, idempotency_key="a-b-1"),
        node_a.conv.convert(MEMBER_ID, B, "bob", 400, idempotency_key="a-b-2"),
        node_a.conv.convert("bob", C, MEMBER_ID, 600, idempotency_key="a-c-1"),
    ]
    back = node_b.conv.convert("bob", A, "bob", 800, idempotency_key="b-a-1")
    # beanhouse has no member "nobody": the credit enrols it (no enrolment oracle).
    conversions.append(node_a.conv.convert("bob", C, "nobody", 200, idempotency_key="a-c-2"))
    wait_until(
        lambda: (
            all(node_a.conv.status(c.member_id, c.id).status == "completed" for c in conversions)
            and node_b.conv.status("bob", back.id).status == "completed"
        ),
        what="the conversions to complete",
    )
    # A member of skyair spends 300 skyair points at staybright.
    held = site.redemptions[B].authorize(A, "bob", 300, "HOTEL-1", 600, idempotency_key="h1")
    site.redemptions[B].capture(held.hold_id)
    time.sleep(0.01)
    site.statement_end = datetime.now(UTC)
    time.sleep(0.01)
    site.settlement[A].propose(B, site.statement_start, site.statement_end)
    for node in coalition.nodes.values():
        node.service.ledger.flush()


@contextmanager
def running_site(folder: Path) -> Iterator[Site]:
    """Start the coalition in ``folder``, fill it, serve skyair's explorer; stop it all."""
    urls = {p: f"sqlite:///{folder / p}.db" for p in (A, B, C)}
    with ExitStack() as stack:
        coalition = stack.enter_context(coalition_nodes(folder, urls, witness=True))
        witnesses = {p: node.witness for p, node in coalition.nodes.items()}
        redemptions = {p: node.redemptions for p, node in coalition.nodes.items()}
        settlement = {p: node.settlement for p, node in coalition.nodes.items()}
        start = datetime.now(UTC) - timedelta(seconds=1)
        site = Site(coalition, "", witnesses, redemptions, settlement, start, start)
        _populate(site)

        node_a = coalition[A]
        servers = serve_member_api(node_a.node, _authenticator(), "127.0.0.1:0", "127.0.0.1:0")
        stack.callback(servers.stop)
        port = servers.http_port
        site.base_url = f"http://127.0.0.1:{port}"
        latest = node_a.service.ledger.latest_header()
        assert latest is not None
        wait_until(
            lambda: witnesses[A].status(latest.header.height).witnessed,
            what="skyair's newest block to be witnessed",
        )
        yield site
