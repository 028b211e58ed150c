"""The demo's nodes: a work folder written from the demo's templates with free ports,
``coalition run`` child processes (``demo.processes``), and the clients a scenario
drives them with.

Also used by ``coalition scenario`` (nodes that run elsewhere, e.g. docker compose) and
by the tests that run the coalition's topology for real.
"""

from __future__ import annotations

import json
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

from coalition.api.errors import http_error_kind
from coalition.api.grpc.client import NodeClient
from coalition.demo.processes import NodeProcess, free_ports, wait_ready
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
from coalition.ops.tomlfiles import manifest_document, partner_table, write_toml

TEMPLATES = "templates"
"""The demo coalition shipped in this package: a copy of the repository's ``nodes/``
(its manifest and each brand's ``node.toml``); tests/unit/test_demo_templates.py checks
that the two agree."""

NODE_OVERRIDES: dict[str, dict[str, object]] = {
    "node": {"sqlite_synchronous": "NORMAL", "expiry_interval_s": 1},
    "sealer": {"max_entries": 500, "max_delay_ms": 50},
    "rules": {"holding_period": "1s"},
}
"""What the demo changes in each brand's configuration: time-compressed rules, prompt
release of expired partner holds, smaller blocks."""


def say(text: str) -> None:
    print(text, flush=True)


# --- the work folder ------------------------------------------------------------------


@contextmanager
def templates() -> Iterator[Path]:
    """The folder of the demo's templates (a real folder while the context lasts, even
    when the package is installed as a zip)."""
    with as_file(files("coalition.demo").joinpath(TEMPLATES)) as folder:
        yield Path(folder)


def template_programs() -> tuple[str, ...]:
    """The programs of the demo coalition, in the manifest's order."""
    with templates() as folder:
        return Manifest.load(folder / "coalition.toml").programs


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


def _brand_document(template: Path, addresses: Addresses, abort_after_s: float) -> dict[str, Any]:
    """The template with the demo's overrides, addresses and ``[coalition]`` table, so the
    copy also runs by itself (``coalition run --config <out>/work/<brand>/node.toml``)."""
    document = tomllib.loads(template.read_text(encoding="utf-8"))
    for table, values in NODE_OVERRIDES.items():
        document.setdefault(table, {}).update(values)
    document["node"].update(grpc=addresses.grpc, http=addresses.http)
    document["coalition"] = {
        "manifest": "../coalition.toml",
        "partner_grpc": addresses.partner_grpc,
        "abort_after_s": abort_after_s,
    }
    return document


def prepare_coalition(work: Path, *, abort_after_s: float = 30.0) -> Path:
    """Write the demo coalition into ``work`` with free ports; the manifest copy's path.

    The manifest copy names the chosen ports (partners find each other through it, and
    ``load_brands`` passes them to each node as environment overrides, as a container
    would); each brand's ``node.toml`` copy names them too, so it also runs by itself.
    """
    with templates() as folder:
        source = Manifest.load(folder / "coalition.toml")
        ports = free_ports(3 * len(source.partners))
        partners = []
        for n, partner in enumerate(source.partners):
            if partner.config is None:
                raise CoalitionError(f"{source.path}: partner {partner.program} names no config")
            grpc, partner_grpc, http = (f"127.0.0.1:{p}" for p in ports[3 * n : 3 * n + 3])
            addresses = Addresses(grpc, partner_grpc, http)
            document = _brand_document(partner.config, addresses, abort_after_s)
            write_toml(work / partner.program / "node.toml", document)
            partners.append(
                partner_table(
                    partner.program,
                    name=partner.name,
                    config=f"{partner.program}/node.toml",
                    grpc=grpc,
                    partner_grpc=partner_grpc,
                    http=http,
                    public_key=f"{partner.program}/keys/public_key.pem",
                    currency=partner.currency,
                )
            )
    manifest = manifest_document(
        source.name,
        partners,
        witness_quorum=source.witness_quorum,
        credit_limits=source.credit_limits,
    )
    comment = (
        "The demo's copy of nodes/coalition.toml, with free ports (written by coalition demo)."
    )
    return write_toml(work / "coalition.toml", manifest, comment=comment)


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
        wait_ready(self.addresses.grpc, self.addresses.http, process=self.node)
        self.connect()
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
            node = NodeProcess(
                info.config,
                grpc=info.grpc,
                http=info.http,
                log_path=logs / f"{info.program}.log",
                env=overrides,
            )
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
