"""The coalition the hammer runs: the demo's three programs as real ``coalition run``
processes, each on its own SQLite file, or on PostgreSQL with several processes per
program.

The work folder is the demo's (``coalition.demo.nodes.prepare_coalition``: the manifest
and each brand's ``node.toml`` with free ports, keys and TLS material; the sealer waits
``SEALER_DELAY_MS``). On PostgreSQL
each ``node.toml`` names its database (so ``coalition audit --from database`` and
``coalition check --config`` read the same one), and every process of a program runs
``--reuse-port`` on it: the first on the manifest's addresses, the others with member
ports of their own (``COALITION_GRPC_ADDRESS``/``COALITION_HTTP_ADDRESS``) and the shared
partner port, as behind a load balancer. The first process of a program starts alone and
is ready before its siblings start, so only one creates the schema.
"""

from __future__ import annotations

import os
import signal
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from coalition.demo.nodes import Brand, load_brands, prepare_coalition, wait_connected
from coalition.demo.processes import NodeProcess, free_ports
from coalition.errors import CoalitionError
from coalition.node.auth import Role
from coalition.node.manifest import Manifest
from coalition.ops.keygen import find_secret, generate_coalition_keys
from coalition.ops.tls import generate_tls
from coalition.ops.tomlfiles import write_toml

from support.private_postgres import PrivatePostgres

ABORT_AFTER_S = 8.0
"""How long a source waits for a conversion's receipt before it asks the target to abort
(short, so the hammer's quiescent phase sees every conversion end)."""
SEALER_DELAY_MS = 200
"""The sealer's ``max_delay_ms`` (the demo's is 50): fewer, larger blocks, so the
witnesses, which verify and cosign every header with a few partner calls each, keep up
on a loaded machine and the quiescent phase does not wait minutes for them."""
READY_TIMEOUT_S = 180.0
"""How long a process may take to become ready (long: on a loaded machine the start of
six processes on two cores has taken more than 90 s)."""


@dataclass
class Program:
    """One program of the coalition: its brand (files, keys, addresses) and processes."""

    brand: Brand
    processes: list[NodeProcess]
    operator_key: str
    auditor_key: str

    @property
    def name(self) -> str:
        return self.brand.program


@dataclass
class Cluster:
    work: Path
    manifest_path: Path
    programs: dict[str, Program]
    postgres: PrivatePostgres | None = None
    database_urls: dict[str, str] = field(default_factory=dict)

    @property
    def manifest(self) -> Manifest:
        return Manifest.load(self.manifest_path)

    def every_process(self) -> list[tuple[str, int, NodeProcess]]:
        return [
            (name, n, process)
            for name, program in self.programs.items()
            for n, process in enumerate(program.processes)
        ]

    def start(self) -> None:
        """Start every program (first processes, then their siblings); wait until ready."""
        for program in self.programs.values():
            program.processes[0].start()
        for program in self.programs.values():
            program.processes[0].wait_ready(READY_TIMEOUT_S)
        for program in self.programs.values():
            for process in program.processes[1:]:
                process.start()
        for program in self.programs.values():
            for process in program.processes[1:]:
                process.wait_ready(READY_TIMEOUT_S)
        for program in self.programs.values():
            program.brand.connect()

    def wait_connected(self) -> None:
        """Until every node's witness verified a header of every partner (each program
        must have sealed one: ``onboard`` does)."""
        wait_connected([p.brand for p in self.programs.values()], timeout=60)

    def heal(self) -> None:
        """Undo every fault: PostgreSQL up, stopped processes continued, dead ones started;
        then wait until every process is ready."""
        if self.postgres is not None and not self.postgres.running:
            self.postgres.start()
        for _, _, process in self.every_process():
            if process.running:
                os.kill(process.pid, signal.SIGCONT)
            else:
                process.start()
        for _, _, process in self.every_process():
            process.wait_ready(READY_TIMEOUT_S)

    def stop(self) -> list[str]:
        """SIGTERM every process (SIGCONT first), then wait for each; the failures."""
        failures = []
        for program in self.programs.values():
            program.brand.close()
        for _, _, process in self.every_process():
            if process.running:
                os.kill(process.pid, signal.SIGCONT)
                process.terminate()
        for name, n, process in self.every_process():
            try:
                process.stop()
            except CoalitionError as exc:
                failures.append(f"{name} process {n} did not stop cleanly: {exc}")
        return failures

    def kill_all(self) -> None:
        for _, _, process in self.every_process():
            process.kill()
        if self.postgres is not None:
            self.postgres.remove()


def make_cluster(work: Path, *, postgres: PrivatePostgres | None, processes: int) -> Cluster:
    """Write the demo coalition into ``work`` (keys, TLS), one database per program (a
    SQLite file, or a database of ``postgres``) and ``processes`` processes per program
    (more than one only on PostgreSQL); start nothing."""
    if processes > 1 and postgres is None:
        raise CoalitionError("several processes of a node need PostgreSQL (--postgres)")
    manifest_path = prepare_coalition(work, abort_after_s=ABORT_AFTER_S)
    generate_coalition_keys(manifest_path)
    generate_tls(Manifest.load(manifest_path))
    urls: dict[str, str] = {}
    for partner in Manifest.load(manifest_path).partners:
        assert partner.config is not None
        document = tomllib.loads(partner.config.read_text(encoding="utf-8"))
        document["sealer"]["max_delay_ms"] = SEALER_DELAY_MS
        if postgres is not None:
            urls[partner.program] = postgres.create_database(partner.program)
            document["node"]["database"] = urls[partner.program]
        write_toml(partner.config, document)
    manifest = Manifest.load(manifest_path)
    logs = work / "logs"
    brands = load_brands(manifest, logs)
    programs: dict[str, Program] = {}
    shared = ("--reuse-port",) if processes > 1 else ()
    for brand in brands:
        first = brand.process()
        if shared:
            first = NodeProcess(
                first.config_path,
                grpc=brand.addresses.grpc,
                http=brand.addresses.http,
                log_path=first.log_path,
                env=brand.addresses.env(),
                args=shared,
            )
            brand.node = first
        siblings = []
        ports = iter(free_ports(2 * (processes - 1)))
        for n in range(2, processes + 1):
            grpc, http = (f"127.0.0.1:{next(ports)}" for _ in range(2))
            env = brand.addresses.env() | {
                "COALITION_GRPC_ADDRESS": grpc,
                "COALITION_HTTP_ADDRESS": http,
            }
            siblings.append(
                NodeProcess(
                    first.config_path,
                    grpc=grpc,
                    http=http,
                    log_path=logs / f"{brand.program}-{n}.log",
                    env=env,
                    args=shared,
                )
            )
        programs[brand.program] = Program(
            brand,
            [first, *siblings],
            operator_key=find_secret(brand.config, Role.OPERATOR),
            auditor_key=find_secret(brand.config, Role.AUDITOR),
        )
    return Cluster(work, manifest_path, programs, postgres, urls)
