"""The demo's nodes: a work folder copied from ``nodes/`` with free ports, ``coalition run``
child processes, and the clients a scenario drives them with.

Also used by ``coalition scenario`` (nodes that run elsewhere, e.g. docker compose) and
by the tests that run the coalition's topology for real.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coalition.api.errors import http_error_kind
from coalition.api.grpc.client import NodeClient
from coalition.errors import (
    CoalitionError,
    FailedPrecondition,
    VerificationError,
)
from coalition.ledger.canonical import JsonObject
from coalition.ledger.keys import VerifyKey
from coalition.node.auth import Role
from coalition.node.config import NodeConfig, load_config
from coalition.node.manifest import Manifest
from coalition.ops.keygen import KeyFiles, find_secret

OVERRIDES = {
    "sqlite_synchronous": '"NORMAL"',
    "expiry_interval_s": "1",  # releases expired partner holds promptly
    "max_entries": "500",
    "max_delay_ms": "50",
    "holding_period": '"1s"',
}
READY_TIMEOUT_S = 60.0


def say(text: str) -> None:
    print(text, flush=True)


# --- the work folder ------------------------------------------------------------------


def template_manifest() -> Path:
    """``nodes/coalition.toml`` of the repository (from its root or the source tree)."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base / "nodes" / "coalition.toml"
        if candidate.is_file():
            return candidate
    raise CoalitionError("cannot find nodes/coalition.toml (run from the repository)")


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 right now (all bound at once)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


@dataclass(frozen=True)
class Addresses:
    grpc: str
    partner_grpc: str
    http: str

    def env(self) -> dict[str, str]:
        return {
            "COALITION_GRPC_ADDRESS": self.grpc,
            "COALITION_PARTNER_GRPC_ADDRESS": self.partner_grpc,
            "COALITION_HTTP_ADDRESS": self.http,
        }


def _toml(value: object) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)


def _brand_toml(template: Path, addresses: Addresses, abort_after_s: float) -> str:
    """The template with the demo's overrides and addresses, so the copy also runs by
    itself (``coalition run --config <out>/work/<brand>/node.toml``)."""
    text = template.read_text()
    overrides = OVERRIDES | {"grpc": _toml(addresses.grpc), "http": _toml(addresses.http)}
    for key, value in overrides.items():
        text, found = re.subn(rf"(?m)^{key}\s*=.*$", f"{key} = {value}", text, count=1)
        if not found:
            raise CoalitionError(f"{template} has no '{key} =' line to override")
    text = re.sub(r"(?m)^\[coalition\]\s*$\n(?:^(?!\[).*$\n?)*", "", text)
    table = [
        "[coalition]",
        'manifest = "../coalition.toml"',
        f"partner_grpc = {_toml(addresses.partner_grpc)}",
        f"abort_after_s = {abort_after_s}",
    ]
    return text.rstrip() + "\n\n" + "\n".join(table) + "\n"


def prepare_coalition(work: Path, *, abort_after_s: float = 30.0) -> Path:
    """Copy the demo coalition into ``work`` with free ports; the manifest copy's path.

    The manifest copy names the chosen ports (partners find each other through it, and
    ``load_brands`` passes them to each node as environment overrides, as a container
    would); each brand's ``node.toml`` copy names them too, so it also runs by itself.
    """
    source = Manifest.load(template_manifest())
    ports = free_ports(3 * len(source.partners))
    addresses: dict[str, Addresses] = {}
    lines = [
        "# The demo's copy of nodes/coalition.toml, with free ports (written by coalition demo).",
        "[coalition]",
        f"name = {_toml(source.name)}",
        'ca_cert = "tls/ca.pem"',
        f"witness_quorum = {source.witness_quorum}",
    ]
    for n, partner in enumerate(source.partners):
        if partner.config is None:
            raise CoalitionError(f"{source.path}: partner {partner.program} names no config")
        grpc, partner_grpc, http = (f"127.0.0.1:{p}" for p in ports[3 * n : 3 * n + 3])
        addresses[partner.program] = Addresses(grpc, partner_grpc, http)
        folder = work / partner.program
        folder.mkdir(parents=True)
        toml = _brand_toml(partner.config, addresses[partner.program], abort_after_s)
        (folder / "node.toml").write_text(toml)
        lines += [
            "",
            "[[partners]]",
            f"program = {_toml(partner.program)}",
            f"name = {_toml(partner.name)}",
            f'config = "{partner.program}/node.toml"',
            f"grpc = {_toml(grpc)}",
            f"partner_grpc = {_toml(partner_grpc)}",
            f"http = {_toml(http)}",
            f'public_key = "{partner.program}/keys/public_key.pem"',
            f"currency = {_toml(partner.currency)}",
        ]
    for (creditor, debtor), limit in source.credit_limits.items():
        lines += [
            "",
            "[[credit_limits]]",
            f"creditor = {_toml(creditor)}",
            f"debtor = {_toml(debtor)}",
            f"limit_minor = {limit}",
        ]
    manifest = work / "coalition.toml"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


# --- node processes -------------------------------------------------------------------


class NodeProcess:
    """``coalition run`` as a child process, started with ``env`` overrides."""

    def __init__(self, config_path: Path, log_path: Path, env: dict[str, str]) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self._env = env
        self.process: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._offset = 0
        self._terminated = False

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COALITION_")}
        env.update(self._env, PYTHONUNBUFFERED="1")
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._terminated = False
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
            [sys.executable, "-m", "coalition.cli", "run", "--config", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Until this run logs that it serves (the log line comes after every server)."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.log_path.open("rb") as file:
                file.seek(self._offset)
                if b"serving gRPC" in file.read():
                    return
            if self.process.poll() is not None:
                raise CoalitionError(
                    f"{self.config_path.parent.name} exited at start:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        raise CoalitionError(f"{self.config_path.parent.name} did not start within {timeout:.0f} s")

    def kill(self) -> None:
        """SIGKILL: no shutdown at all (what a power cut does to the process)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def terminate(self) -> None:
        """Send SIGTERM once (a second one would find the default handler restored)."""
        if self.process is not None and not self._terminated and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self._terminated = True

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, then wait; the node seals what is pending before it exits."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise CoalitionError(
                    f"{self.config_path.parent.name} did not stop on SIGTERM; killed it"
                ) from None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.process.returncode != 0:
            raise CoalitionError(
                f"{self.config_path.parent.name} exited with {self.process.returncode}:\n"
                f"{self.log_tail()}"
            )


def wait_healthy(client: NodeClient, timeout: float = 30) -> None:
    """Until the node's health service says SERVING; CoalitionError after ``timeout`` s,
    whether the node stays unreachable or keeps answering another status."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = client.health()
            if status == "SERVING":
                return
        except CoalitionError:
            if time.monotonic() > deadline:
                raise
        else:
            if time.monotonic() > deadline:
                raise CoalitionError(f"the node reports {status}, not SERVING, after {timeout} s")
        time.sleep(0.1)


# --- a small REST client (the coalition features' routes) -----------------------------


class Rest:
    """JSON over HTTP with an API key, standard library only (the image has no httpx)."""

    def __init__(self, address: str, api_key: str, timeout: float = 30.0) -> None:
        self.base = f"http://{address}"
        self._key = api_key
        self._timeout = timeout

    def call(
        self, method: str, path: str, body: JsonObject | None = None, *, raw: bool = False
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 (http to our own node)
            self.base + path, data=data, method=method
        )
        request.add_header("Authorization", f"Bearer {self._key}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as reply:  # noqa: S310
                data = reply.read()
                return data.decode() if raw else json.loads(data or b"null")
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            try:
                message = str(json.loads(text).get("message", text))
            except (ValueError, AttributeError):
                message = text
            kind = http_error_kind(exc.code) or CoalitionError
            raise kind(f"{method} {path}: {exc.code} {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise CoalitionError(f"{method} {path}: {exc}") from None

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def get_text(self, path: str) -> str:
        return str(self.call("GET", path, raw=True))

    def post(self, path: str, body: JsonObject) -> Any:
        return self.call("POST", path, body)


# --- the brands -----------------------------------------------------------------------


@dataclass
class Brand:
    """One partner of the demo: its files, its process and its clients."""

    program: str
    config: NodeConfig
    files: KeyFiles
    public_key: VerifyKey
    addresses: Addresses
    node: NodeProcess | None
    """The child process, when the demo runs the node (None for a coalition that runs
    elsewhere, e.g. docker compose)."""
    operator: NodeClient | None = None
    rest: Rest | None = None

    @property
    def name(self) -> str:
        return self.config.name

    def connect(self) -> None:
        key = find_secret(self.config, Role.OPERATOR)
        self.close()
        self.operator = NodeClient(self.addresses.grpc, key)
        self.rest = Rest(self.addresses.http, key)

    def op(self) -> NodeClient:
        assert self.operator is not None
        return self.operator

    def api(self) -> Rest:
        assert self.rest is not None
        return self.rest

    def member_rest(self, member_id: str) -> Rest:
        return Rest(self.addresses.http, find_secret(self.config, Role.MEMBER, member_id))

    def process(self) -> NodeProcess:
        if self.node is None:
            raise FailedPrecondition(f"{self.program} runs elsewhere; the demo cannot restart it")
        return self.node

    def start(self) -> None:
        self.process().start()

    def ready(self) -> None:
        if self.node is not None:
            self.node.wait_ready()
        self.connect()
        wait_healthy(self.op())
        served = VerifyKey.from_pem(self.op().public_key_pem().encode())
        if served != self.public_key:
            raise VerificationError(f"{self.program} serves another public key than its own")

    def close(self) -> None:
        if self.operator is not None:
            self.operator.close()
            self.operator = None


def start_brands(brands: list[Brand]) -> None:
    """Start every node at once (they find each other through the manifest)."""
    for brand in brands:
        if brand.node is not None:
            brand.start()
    for brand in brands:
        brand.ready()


def wait_connected(brands: list[Brand], timeout: float = 30) -> None:
    """Until every node's witness verified a header of every partner: the mutual-TLS
    channels between all of them are up (a partner that started later is reached)."""
    deadline = time.monotonic() + timeout
    for brand in brands:
        while True:
            followers = brand.api().get("/v1/witness/followers")
            behind = [f["program"] for f in followers if f["verified_height"] is None]
            if not behind:
                break
            if time.monotonic() > deadline:
                errors = "; ".join(f"{f['program']}: {f['last_error']}" for f in followers)
                raise CoalitionError(f"{brand.program} cannot follow {behind}: {errors}")
            time.sleep(0.2)


def stop_brands(brands: list[Brand]) -> None:
    """SIGTERM every node at once (each waits out its partners' streams), then wait."""
    for brand in brands:
        brand.close()
        if brand.node is not None:
            brand.node.terminate()
    for brand in brands:
        if brand.node is not None:
            brand.node.stop()


def load_brands(
    manifest: Manifest,
    logs: Path | None = None,
    env: Mapping[str, Mapping[str, str]] | None = None,
) -> list[Brand]:
    """A Brand per partner of ``manifest`` (each must name its ``config``). With ``logs``,
    each gets a NodeProcess listening on the manifest's addresses, with ``env[program]``
    as more environment overrides (e.g. ``COALITION_DATABASE_URL``)."""
    brands = []
    for info in manifest.partners:
        if info.config is None:
            raise CoalitionError(f"{manifest.path}: partner {info.program} names no config")
        config = load_config(info.config)
        files = KeyFiles.for_config(config)
        addresses = Addresses(info.grpc, info.partner_grpc, info.http)
        node = None
        if logs is not None:
            overrides = addresses.env() | dict((env or {}).get(info.program, {}))
            node = NodeProcess(info.config, logs / f"{info.program}.log", overrides)
        brands.append(
            Brand(
                program=info.program,
                config=config,
                files=files,
                public_key=manifest.public_key(info.program),
                addresses=addresses,
                node=node,
            )
        )
    return brands
