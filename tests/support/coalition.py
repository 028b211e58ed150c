"""Several real partner nodes in one process, for tests of the coalition, built by the
composition root (``runtime.wiring.build_node``) from configuration files as
``coalition run`` builds them.

Each node has its own database, its own ``node.toml`` and key files (``coalition
keygen``'s) in a folder the caller owns (a test's ``tmp_path``), the coalition's
manifest and TLS material beside them, and every coalition feature; its mutual-TLS
partner server listens on 127.0.0.1 (a free port, named in the manifest). The member
transports are not served unless a test asks (``runtime.wiring.serve_member_api``).
Everything is stopped and closed when the context ends.
"""

from __future__ import annotations

import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from coalition.demo.processes import free_ports
from coalition.ledger.canonical import JsonObject
from coalition.ledger.entries import format_time
from coalition.ledger.keys import SigningKey
from coalition.node.config import NodeConfig, load_config
from coalition.node.features.agreements import Agreements
from coalition.node.features.conversions import Conversions
from coalition.node.features.redemptions import Redemptions
from coalition.node.features.settlement import Settlement
from coalition.node.features.witness import Witness
from coalition.node.manifest import Manifest
from coalition.node.partners import PartnerClient, PartnerInbox
from coalition.node.service import NodeService
from coalition.ops.keygen import generate_keys
from coalition.ops.tls import TlsFiles, generate_tls
from coalition.ops.tomlfiles import manifest_document, partner_table, write_toml
from coalition.runtime.wiring import CoalitionNode, Node, build_node
from coalition.store.columns import stored_object
from coalition.store.ledger import entries

from support.databases import at_current_schema

PROGRAMS = ("skyair", "staybright", "beanhouse")
RULES: dict[str, Any] = {"holding_period": "0s"}
"""The default ``[rules]`` table: purchases are spendable at once."""
STOP_GRACE_S = 0.0
"""Partner servers stop at once: the partners' header streams would hold each one for
the runner's grace (a test stops or restarts nodes often)."""
WITNESS_BACKOFF = (0.05, 0.5)
"""The witness's retry delays in tests (seconds): partners that start later are
followed within a fraction of a second."""


@dataclass
class PartnerNode:
    """One running partner node (``node``) and short names for its parts."""

    node: Node

    @property
    def coalition(self) -> CoalitionNode:
        assert self.node.coalition is not None
        return self.node.coalition

    @property
    def program(self) -> str:
        return self.node.program

    @property
    def config(self) -> NodeConfig:
        return self.node.config

    @property
    def url(self) -> str:
        return self.node.config.database_url

    @property
    def service(self) -> NodeService:
        return self.node.service

    @property
    def key(self) -> SigningKey:
        return self.node.service.signing_key

    @property
    def inbox(self) -> PartnerInbox:
        return self.coalition.inbox

    @property
    def client(self) -> PartnerClient:
        return self.coalition.client

    @property
    def tls(self) -> TlsFiles:
        return self.coalition.tls

    @property
    def port(self) -> int:
        return self.coalition.partner_port

    @property
    def agr(self) -> Agreements:
        return self.coalition.agreements

    @property
    def conv(self) -> Conversions:
        return self.coalition.conversions

    @property
    def redemptions(self) -> Redemptions:
        return self.coalition.redemptions

    @property
    def settlement(self) -> Settlement:
        return self.coalition.settlement

    @property
    def witness(self) -> Witness:
        """The witness (the coalition was started with ``witness=True``)."""
        assert self.coalition.witness is not None, "coalition_nodes(..., witness=True)"
        return self.coalition.witness

    def stop_partner_server(self) -> None:
        """Take the partner server down (partners calling it get PartnerUnavailable)."""
        self.coalition.stop_serving_partners(STOP_GRACE_S)

    def start_partner_server(self) -> None:
        """Bring the partner server back on the same port."""
        self.coalition.serve_partners()


@dataclass
class RunningCoalition:
    """The running nodes, by program, and the manifest with their real ports."""

    folder: Path
    manifest: Manifest
    nodes: dict[str, PartnerNode] = field(default_factory=dict)
    clock: Callable[[], datetime] | None = None

    def __getitem__(self, program: str) -> PartnerNode:
        return self.nodes[program]

    def restart(
        self, program: str, *, start_features: bool = True, database_url: str | None = None
    ) -> PartnerNode:
        """Close ``program``'s node as a stop would, then build it again from its
        configuration: same key and partner port, same database (its outbox resumes from
        it) unless ``database_url`` names another, written into its ``node.toml``."""
        old = self.nodes[program]
        old.node.close(STOP_GRACE_S)
        config = old.config
        if database_url is not None:
            path = self.folder / program / "node.toml"
            document = tomllib.loads(path.read_text(encoding="utf-8"))
            document["node"]["database"] = database_url
            config = load_config(write_toml(path, document))
        node = self.nodes[program] = _started(config, self.clock, start_features)
        return node


def write_manifest(
    folder: Path, keys: Mapping[str, SigningKey], *, witness_quorum: int = 1
) -> Manifest:
    """A manifest in ``folder`` for the programs of ``keys`` (their public keys written to
    ``<program>/keys/public_key.pem``; member and partner addresses where nothing
    listens) and the coalition's TLS material; for tests of the partner protocol that
    need no node."""
    partners = []
    for n, (program, key) in enumerate(keys.items()):
        public_key = folder / program / "keys" / "public_key.pem"
        public_key.parent.mkdir(parents=True, exist_ok=True)
        public_key.write_bytes(key.public_key.to_pem())
        partners.append(
            partner_table(
                program,
                grpc=f"127.0.0.1:{41000 + n}",
                partner_grpc=f"127.0.0.1:{42000 + n}",
                http=f"127.0.0.1:{43000 + n}",
                public_key=f"{program}/keys/public_key.pem",
            )
        )
    document = manifest_document("Test coalition", partners, witness_quorum=witness_quorum)
    manifest = Manifest.load(write_toml(folder / "coalition.toml", document))
    generate_tls(manifest)
    return manifest


def coalition_configs(
    folder: Path,
    urls: Mapping[str, str],
    *,
    credit_limits: Mapping[tuple[str, str], int] | None = None,
    abort_after_s: float = 30.0,
    rules: Mapping[str, Any] | None = None,
    witness: bool = False,
    witness_quorum: int = 1,
) -> dict[str, NodeConfig]:
    """Write a coalition of the programs of ``urls`` under ``folder``: each program's
    ``node.toml`` (database ``urls[program]``, ``rules`` as its ``[rules]`` table, a
    free partner port) and keys, the manifest (``coalition.toml``) and the TLS material.
    Returns each program's configuration as the node will read it."""
    programs = list(urls)
    ports = free_ports(len(programs))
    configs: dict[str, NodeConfig] = {}
    partners = []
    for n, program in enumerate(programs):
        partner_grpc = f"127.0.0.1:{ports[n]}"
        document = {
            "program": {"id": program},
            "node": {"database": urls[program], "sqlite_synchronous": "NORMAL"},
            "sealer": {"max_entries": 1000, "max_delay_ms": 50},
            "rules": dict(RULES if rules is None else rules),
            "coalition": {
                "manifest": "../coalition.toml",
                "partner_grpc": partner_grpc,
                "abort_after_s": abort_after_s,
                "witness": witness,
            },
        }
        path = write_toml(folder / program / "node.toml", document)
        configs[program] = load_config(path)
        generate_keys(configs[program])
        partners.append(
            partner_table(
                program,
                grpc=f"127.0.0.1:{41000 + n}",  # member addresses: nothing listens there
                partner_grpc=partner_grpc,
                http=f"127.0.0.1:{43000 + n}",
                public_key=f"{program}/keys/public_key.pem",
            )
        )
    manifest = manifest_document(
        "Test coalition", partners, witness_quorum=witness_quorum, credit_limits=credit_limits
    )
    generate_tls(Manifest.load(write_toml(folder / "coalition.toml", manifest)))
    return configs


def _started(
    config: NodeConfig, clock: Callable[[], datetime] | None, start_features: bool
) -> PartnerNode:
    """A node built from ``config``, sealing and serving partners; its features running
    if ``start_features``."""
    at_current_schema(config.database_url)
    node = build_node(config, clock=clock, witness_backoff=WITNESS_BACKOFF)
    try:
        node.service.start()
        assert node.coalition is not None
        node.coalition.serve_partners()
        if start_features:
            node.coalition.start_features()
    except BaseException:
        node.close()
        raise
    return PartnerNode(node)


@contextmanager
def coalition_nodes(
    folder: Path,
    urls: Mapping[str, str],
    *,
    credit_limits: Mapping[tuple[str, str], int] | None = None,
    abort_after_s: float = 30.0,
    rules: Mapping[str, Any] | None = None,
    witness: bool = False,
    witness_quorum: int = 1,
    start_features: bool = True,
    clock: Callable[[], datetime] | None = None,
) -> Iterator[RunningCoalition]:
    """Start one node per program of ``urls`` (``coalition_configs``), each serving its
    partners, with every feature running unless ``start_features`` is False (then a
    test starts what it needs: ``node.coalition.start_features()``, ``node.witness``).
    The witness exists only with ``witness=True``."""
    configs = coalition_configs(
        folder,
        urls,
        credit_limits=credit_limits,
        abort_after_s=abort_after_s,
        rules=rules,
        witness=witness,
        witness_quorum=witness_quorum,
    )
    coalition = RunningCoalition(folder, Manifest.load(folder / "coalition.toml"), clock=clock)
    try:
        for program, config in configs.items():
            coalition.nodes[program] = _started(config, clock, start_features=False)
        if start_features:
            for node in coalition.nodes.values():
                node.coalition.start_features()
        yield coalition
    finally:
        for node in coalition.nodes.values():
            if node.node.coalition is not None:
                node.node.coalition.stop_features()  # all stop sending before any closes
        for node in coalition.nodes.values():
            node.node.close(STOP_GRACE_S)


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Poll ``predicate`` every 20 ms; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.02)


def ledger_entries(service: NodeService, kind: str | None = None) -> list[JsonObject]:
    """The node's entries in log order (sealed or not), optionally of one kind."""
    query = select(entries.c.body).order_by(entries.c.log_index)
    if kind is not None:
        query = query.where(entries.c.kind == kind)
    with service.sequencer.read() as conn:
        return [stored_object(row.body) for row in conn.execute(query)]


def entry_kinds(service: NodeService) -> Counter[str]:
    """How many entries of each kind the node wrote."""
    return Counter(str(entry["kind"]) for entry in ledger_entries(service))


def agreement_doc(
    from_program: str,
    to_program: str,
    *,
    agreement_id: str | None = None,
    version: int = 1,
    rate: tuple[int, int] = (3, 2),
    fee_bps: int = 100,
    min_points: int = 100,
    max_points: int = 100_000,
    daily_cap_points: int = 200_000,
    point_value: tuple[int, int] = (1, 1),
    valid_from: datetime | None = None,
    valid_until: datetime | None = None,
    proposed_by: str | None = None,
) -> JsonObject:
    """A rate agreement document valid from a day ago for a year (unless told)."""
    now = datetime.now().astimezone()
    start = valid_from or now - timedelta(days=1)
    return {
        "type": "coalition.agreement.v1",
        "id": agreement_id or f"{from_program}-{to_program}",
        "version": version,
        "from_program": from_program,
        "to_program": to_program,
        "rate": list(rate),
        "fee_bps": fee_bps,
        "min_points": min_points,
        "max_points": max_points,
        "daily_cap_points": daily_cap_points,
        "point_value": list(point_value),
        "currency": "EUR",
        "valid_from": format_time(start),
        "valid_until": format_time(valid_until or start + timedelta(days=365)),
        "proposed_by": proposed_by or from_program,
    }
