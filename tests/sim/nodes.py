"""The nodes of a run: a coalition built once per process (keys, TLS, manifest,
migrated databases with the agreements and members recorded), copied for every seed,
and each node's life: started as ``coalition run`` builds it, stepped by the scheduler,
crashed, restarted."""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from coalition.node.config import NodeConfig
from coalition.node.features.conversions import Conversions
from coalition.node.features.redemptions import Redemptions
from coalition.node.features.settlement import Settlement
from coalition.node.features.witness import Witness
from coalition.node.manifest import Manifest
from coalition.node.sealer import SEAL_BLOCKS
from coalition.node.service import NodeService
from coalition.runtime.wiring import CoalitionNode, Node, PartnerLinks, build_node

from sim.clock import EPOCH, SimClock
from sim.network import CALM, SimNetwork
from sim.trace import Trace
from support.coalition import agreement_doc, coalition_configs

PROGRAMS = ("skyair", "staybright", "beanhouse")
MEMBERS = tuple(f"member-{n}" for n in range(5))
"""Enrolled at every program (a member converts to the same id at the partner)."""
RULES = {"holding_period": "0s", "expiry_period": "900s"}
"""Points are spendable at once and expire 15 simulated minutes after they are earned."""
ABORT_AFTER_S = 20.0
"""The outbox sends ``abort`` for a conversion undelivered this long (simulated)."""
VALUE = {"skyair": 4, "staybright": 2, "beanhouse": 1}
"""Each program's point in a common unit: the rate ``A -> B`` is ``VALUE[A] / VALUE[B]``,
so no cycle of conversions creates points (the agreements' own check)."""
TEMPLATE_S = 60.0
"""Simulated seconds the template's set-up takes: every run starts this long after EPOCH."""


@dataclass(frozen=True)
class Template:
    """The coalition every run starts from: configurations and the databases' files."""

    folder: Path
    configs: dict[str, NodeConfig]
    manifest: Manifest

    def database(self, program: str) -> Path:
        return self.folder / "databases" / f"{program}.db"


def build_template(folder: Path) -> Template:
    """Write the coalition under ``folder`` and record, over a calm simulated network,
    an agreement for every ordered pair of programs and every member at every program."""
    databases = folder / "databases"
    urls = {p: f"sqlite:///{databases / p}.db" for p in PROGRAMS}
    configs = coalition_configs(
        folder, urls, abort_after_s=ABORT_AFTER_S, rules=RULES, witness=True
    )
    manifest = Manifest.load(folder / "coalition.toml")
    clock = SimClock(EPOCH)
    trace = Trace()
    network = SimNetwork(random.Random(0), clock, trace)
    network.faults = CALM
    nodes = {p: SimNode(p, configs[p], clock, network) for p in PROGRAMS}
    try:
        for node in nodes.values():
            node.start()
        for source in PROGRAMS:
            for target in PROGRAMS:
                if source != target:
                    doc = agreement_doc(
                        source,
                        target,
                        rate=(VALUE[source], VALUE[target]),
                        valid_from=EPOCH - timedelta(days=1),
                    )
                    nodes[source].coalition.agreements.propose(doc)
        for node in nodes.values():
            for member in MEMBERS:
                node.service.points.enroll(member, idempotency_key=f"enroll-{member}")
        clock.advance(TEMPLATE_S)
    finally:
        for node in nodes.values():
            node.stop()
    return Template(folder, configs, manifest)


def copy_databases(template: Template, folder: Path) -> dict[str, NodeConfig]:
    """Fresh copies of the template's databases under ``folder``; the configurations
    that name them."""
    folder.mkdir(parents=True, exist_ok=True)
    configs = {}
    for program, config in template.configs.items():
        target = folder / f"{program}.db"
        shutil.copyfile(template.database(program), target)
        configs[program] = replace(config, database_url=f"sqlite:///{target}")
    return configs


class SimNode:
    """One partner node of a run: built from its configuration as ``coalition run``
    builds it, with the simulator's clock and network instead of the host's, and none of
    its threads started: the scheduler calls each background job's single step."""

    def __init__(
        self, program: str, config: NodeConfig, clock: SimClock, network: SimNetwork
    ) -> None:
        self.program = program
        self.config = config
        self._clock = clock
        self._network = network
        self._node: Node | None = None
        self.crashes = 0

    @property
    def up(self) -> bool:
        return self._node is not None

    @property
    def node(self) -> Node:
        assert self._node is not None, f"{self.program} is down"
        return self._node

    @property
    def service(self) -> NodeService:
        return self.node.service

    @property
    def coalition(self) -> CoalitionNode:
        coalition = self.node.coalition
        assert coalition is not None
        return coalition

    @property
    def conversions(self) -> Conversions:
        return self.coalition.conversions

    @property
    def redemptions(self) -> Redemptions:
        return self.coalition.redemptions

    @property
    def settlement(self) -> Settlement:
        return self.coalition.settlement

    @property
    def witness(self) -> Witness:
        witness = self.coalition.witness
        assert witness is not None
        return witness

    # --- life ----------------------------------------------------------------------------

    def start(self) -> None:
        """Build the node from its configuration and database and join the network."""
        assert self._node is None
        network, program = self._network, self.program
        links = PartnerLinks(
            network.transport(program), lambda partner: network.source(program, partner)
        )
        node = build_node(
            self.config, clock=self._clock.now, monotonic=self._clock.monotonic, links=links
        )
        self._node = node
        node.service.leadership.try_acquire()
        assert node.coalition is not None
        network.attach(node.coalition.inbox, node.service)

    def crash(self) -> None:
        """Lose everything in memory, as a killed process does; the database stays."""
        self._network.detach(self.program)
        node, self._node = self.node, None
        node.service.abandon()
        self.crashes += 1

    def stop(self) -> None:
        """Stop cleanly (seal what is pending, give the lease up), as SIGTERM does."""
        if self._node is not None:
            self._network.detach(self.program)
            node, self._node = self._node, None
            node.close(0.0)

    # --- the background jobs, one step each -----------------------------------------------

    def seal(self) -> int:
        """The sealer's step: renew the lease, seal what is pending; blocks sealed."""
        service = self.service
        if not service.leadership.try_acquire():
            return 0
        blocks = 0
        while service.sealer.seal(SEAL_BLOCKS) is not None:
            blocks += 1
        return blocks

    def deliver(self) -> None:
        """The outbox's step: one pass over every partner."""
        self.conversions.outbox.run_once()

    def follow(self, partner: str) -> int:
        """The witness's step for one partner: headers newly verified and cosigned."""
        return self.witness.catch_up(partner)

    def expire(self) -> str | None:
        """The scheduled job: expire due points, release expired holds; what it did."""
        expired = self.service.points.run_expiry()
        released = self.redemptions.release_expired()
        if not expired.points and not released:
            return None
        return f"expired {expired.points} points, released {released} holds"
