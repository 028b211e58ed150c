"""Brand nodes as real processes (``coalition run --config``) for fault tests and
benchmarks, on the one process harness (``coalition.demo.processes``).

``make_coalition`` writes a coalition into a folder: a manifest, each brand's
``node.toml`` (the demo's template for that brand, with free ports on 127.0.0.1 and its
own SQLite file, or the PostgreSQL database given), then the keys and TLS material
through the CLI (``coalition keygen --manifest``, ``coalition tls-init --manifest``). Each
``BrandProcess`` can be started, killed with SIGKILL and restarted on the same database
and ports.

A brand may run several processes of its node (``processes``, on PostgreSQL): all of
them ``coalition run --reuse-port`` on the one node.toml, sharing the partner port (the
manifest's one address, as behind a load balancer), each with member ports of its own
(``COALITION_GRPC_ADDRESS``/``COALITION_HTTP_ADDRESS``) so a test can call, kill and
stop each one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

from coalition.api.grpc.client import NodeClient
from coalition.demo.nodes import templates
from coalition.demo.processes import NodeProcess, free_ports
from coalition.ops.tomlfiles import manifest_document, partner_table, write_toml
from coalition.v1 import conversions_pb2, conversions_pb2_grpc

from support.coalition import agreement_doc

COALITION = [sys.executable, "-m", "coalition.cli"]
READY_TIMEOUT_S = 30.0


def run_cli(*args: str, timeout: float = 60) -> str:
    """Run ``coalition ARGS`` to completion; the output, or AssertionError with it."""
    result = subprocess.run(
        [*COALITION, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"coalition {' '.join(args)}: {result.stdout}{result.stderr}"
    return result.stdout


@dataclass
class BrandProcess:
    """One brand's node process, restartable on the same configuration."""

    program: str
    folder: Path
    grpc: str
    http: str
    partner_grpc: str
    database: Path
    node: NodeProcess
    api_keys: dict[str, str] = field(default_factory=dict)
    url: str | None = None
    """The PostgreSQL database, when not the SQLite file ``database``."""
    siblings: list[NodeProcess] = field(default_factory=list)
    """The node's other processes (``make_coalition(processes=...)``)."""

    @property
    def config(self) -> Path:
        return self.folder / "node.toml"

    @property
    def database_url(self) -> str:
        return self.url or f"sqlite:///{self.database}"

    @property
    def processes(self) -> list[NodeProcess]:
        """Every process of the node, ``node`` first."""
        return [self.node, *self.siblings]

    def start_all(self, ready_timeout: float = READY_TIMEOUT_S) -> None:
        """Start every process of the node, then wait until each is ready."""
        for process in self.processes:
            process.start()
        for process in self.processes:
            process.wait_ready(ready_timeout)

    @property
    def log(self) -> Path:
        return self.node.log_path

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.node.process

    @property
    def starts(self) -> int:
        return self.node.starts

    def start(self, ready_timeout: float = READY_TIMEOUT_S) -> None:
        """Start ``coalition run`` and wait until it is ready (``demo.processes``)."""
        self.node.start()
        self.node.wait_ready(ready_timeout)

    def kill9(self) -> None:
        """SIGKILL: no shutdown, nothing flushed beyond what was committed."""
        self.node.kill()

    def stop(self) -> None:
        """SIGTERM and wait for every process (the lease holder seals what is pending);
        SIGKILL if one hangs. A stopped (SIGSTOP) process is continued first."""
        failures = []
        for process in reversed(self.processes):
            if process.running:
                os.kill(process.pid, signal.SIGCONT)
            try:
                process.stop()
            except Exception as exc:
                failures.append(exc)
        if failures:
            raise failures[0]

    def tail(self, lines: int = 40) -> str:
        return self.node.log_tail(lines)

    def client(
        self, role: str = "operator", timeout: float = 10.0, process: NodeProcess | None = None
    ) -> NodeClient:
        """A client of the node (of one of its processes: ``process``)."""
        target = self.grpc if process is None else process.grpc
        return NodeClient(target, self.api_keys[role], timeout=timeout)


def healthz(process: NodeProcess, timeout: float = 2.0) -> dict[str, Any]:
    """``GET /healthz`` of one process (its pid, whether it seals, the log size)."""
    with urllib.request.urlopen(f"http://{process.http}/healthz", timeout=timeout) as reply:
        body = json.loads(reply.read())
    assert isinstance(body, dict)
    return body


@dataclass
class CoalitionProcesses:
    folder: Path
    manifest: Path
    brands: dict[str, BrandProcess]

    def stop_all(self) -> None:
        """Stop every brand; raise the first failure after trying them all."""
        failures = []
        for brand in self.brands.values():
            try:
                brand.stop()
            except Exception as exc:
                failures.append(exc)
        if failures:
            raise failures[0]


def _brand_document(
    template: Path, brand: BrandProcess, settings: dict[str, Any], max_delay_ms: int
) -> dict[str, Any]:
    """The brand's template with this test's database, addresses and ``[coalition]``."""
    document = tomllib.loads(template.read_text(encoding="utf-8"))
    document["node"].update(
        database=brand.database_url, grpc=brand.grpc, http=brand.http, expiry_interval_s=3600
    )
    document["sealer"]["max_delay_ms"] = max_delay_ms
    document["coalition"] = {"manifest": "../coalition.toml", **settings}
    return document


def make_coalition(
    folder: Path,
    programs: tuple[str, ...] = ("skyair", "staybright"),
    *,
    members: tuple[str, ...] = (),
    database_urls: Mapping[str, str] | None = None,
    processes: Mapping[str, int] | None = None,
    max_delay_ms: int = 50,
    **settings: Any,
) -> CoalitionProcesses:
    """Write a coalition of ``programs`` under ``folder`` with keys and TLS; start nothing.

    ``settings`` go to every node's ``[coalition]`` table (e.g. ``abort_after_s=5``);
    ``database_urls`` gives programs a PostgreSQL database, ``processes`` the number of
    processes of a program's node (more than one needs PostgreSQL; the module's rules);
    ``max_delay_ms`` is every sealer's.
    """
    brands: dict[str, BrandProcess] = {}
    counts = {p: (processes or {}).get(p, 1) for p in programs}
    ports = iter(free_ports(sum(1 + 2 * n for n in counts.values())))
    partners = []
    with templates() as source:
        for program in programs:
            grpc, http, partner_grpc = (f"127.0.0.1:{next(ports)}" for _ in range(3))
            shared = ("--reuse-port",) if counts[program] > 1 else ()
            brand = BrandProcess(
                program=program,
                folder=folder / program,
                grpc=grpc,
                http=http,
                partner_grpc=partner_grpc,
                database=folder / program / "data" / f"{program}.db",
                node=NodeProcess(
                    folder / program / "node.toml",
                    grpc=grpc,
                    http=http,
                    log_path=folder / program / "node.log",
                    args=shared,
                ),
                url=(database_urls or {}).get(program),
            )
            for n in range(2, counts[program] + 1):
                grpc_n, http_n = (f"127.0.0.1:{next(ports)}" for _ in range(2))
                env = {"COALITION_GRPC_ADDRESS": grpc_n, "COALITION_HTTP_ADDRESS": http_n}
                brand.siblings.append(
                    NodeProcess(
                        brand.config,
                        grpc=grpc_n,
                        http=http_n,
                        log_path=folder / program / f"node-{n}.log",
                        env=env,
                        args=shared,
                    )
                )
            brand.database.parent.mkdir(parents=True)
            document = _brand_document(
                source / program / "node.toml", brand, settings, max_delay_ms
            )
            write_toml(brand.config, document)
            brands[program] = brand
            partners.append(
                partner_table(
                    program,
                    config=f"{program}/node.toml",
                    grpc=grpc,
                    partner_grpc=partner_grpc,
                    http=http,
                    public_key=f"{program}/keys/public_key.pem",
                )
            )
    manifest = manifest_document("Fault-test coalition", partners, witness_quorum=len(programs) - 1)
    manifest_path = write_toml(folder / "coalition.toml", manifest)
    member_args = [arg for m in members for arg in ("--member", m)]
    run_cli("keygen", "--manifest", str(manifest_path), *member_args)
    run_cli("tls-init", "--manifest", str(manifest_path))
    for brand in brands.values():
        secrets = tomllib.loads((brand.folder / "keys" / "api-keys.secret.toml").read_text())
        for key in secrets.get("api_keys", []):
            brand.api_keys[str(key.get("role"))] = str(key["secret"])
            brand.api_keys[str(key["name"])] = str(key["secret"])
    return CoalitionProcesses(folder, manifest_path, brands)


CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]
"""gRPC channel options of a client that reconnects quickly to a restarted node."""
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
"""Codes a caller retries on (the node is down or restarting)."""


def operator_metadata(brand: BrandProcess) -> tuple[tuple[str, str], ...]:
    """gRPC metadata with ``brand``'s operator key."""
    return (("authorization", f"Bearer {brand.api_keys['operator']}"),)


def propose_agreement(source: BrandProcess, to_program: str, timeout: float = 30.0) -> None:
    """Propose at ``source`` an agreement to ``to_program`` valid from five minutes ago for
    a day, which the partner countersigns; retried while the node's channel to it warms."""
    now = datetime.now(UTC)
    document = agreement_doc(
        source.program,
        to_program,
        daily_cap_points=10**9,
        valid_from=now - timedelta(minutes=5),
        valid_until=now + timedelta(days=1),
    )
    request = conversions_pb2.ProposeAgreementRequest(agreement_json=json.dumps(document).encode())
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(source.grpc, options=CHANNEL_OPTIONS) as channel:
        stub = conversions_pb2_grpc.AgreementsStub(channel)
        while True:
            try:
                stub.ProposeAgreement(request, metadata=operator_metadata(source), timeout=10)
                return
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE or time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
