"""Brand nodes as real processes (``coalition run --config``) for fault tests.

``make_coalition`` writes a coalition into a temporary folder: a manifest, each brand's
``node.toml`` (from ``nodes/<brand>/node.toml``, with free ports on 127.0.0.1 and its
own SQLite file), then the keys and TLS material through the CLI (``coalition keygen
--manifest``, ``coalition tls-init --manifest``). Each ``BrandProcess`` can be started,
killed with SIGKILL and restarted on the same database and ports.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from coalition.api.grpc.client import NodeClient
from coalition.demo.nodes import free_ports
from coalition.errors import CoalitionError

REPO = Path(__file__).resolve().parents[2]
COALITION = [sys.executable, "-m", "coalition.cli"]


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
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    api_keys: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.folder / "node.toml"

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.database}"

    @property
    def log(self) -> Path:
        return self.folder / f"node-{self.starts}.log"

    def start(self, ready_timeout: float = 30.0) -> None:
        """Start ``coalition run`` and wait until its member API answers."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*COALITION, "run", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.folder,
            )
        self.wait_ready(ready_timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.program} exited with {self.proc.returncode}:\n{self.tail()}"
                )
            try:
                with NodeClient(self.grpc, None, timeout=1.0) as client:
                    if client.health() == "SERVING" and self._partner_listening():
                        return
            except (CoalitionError, OSError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.program} not ready after {timeout} s:\n{self.tail()}")

    def _partner_listening(self) -> bool:
        host, port = self.partner_grpc.rsplit(":", 1)
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return True
        except OSError:
            return False

    def kill9(self) -> None:
        """SIGKILL: no shutdown, nothing flushed beyond what was committed."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM and wait (the node seals what is pending); SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def client(self, role: str = "operator", timeout: float = 10.0) -> NodeClient:
        return NodeClient(self.grpc, self.api_keys[role], timeout=timeout)


@dataclass
class CoalitionProcesses:
    folder: Path
    manifest: Path
    brands: dict[str, BrandProcess]

    def stop_all(self) -> None:
        for brand in self.brands.values():
            brand.stop()


_TABLE = re.compile(r"^\[(?P<name>[a-z.]+)\]\s*$", re.MULTILINE)


def _brand_config(program: str, brand: BrandProcess, settings: dict[str, object]) -> str:
    """``nodes/<program>/node.toml`` with this test's database, addresses and settings."""
    text = (REPO / "nodes" / program / "node.toml").read_text()
    text = re.sub(r"(?m)^database = .*$", f'database = "{brand.database_url}"', text)
    text = re.sub(r"(?m)^grpc = .*$", f'grpc = "{brand.grpc}"', text)
    text = re.sub(r"(?m)^http = .*$", f'http = "{brand.http}"', text)
    text = re.sub(r"(?m)^expiry_interval_s = .*$", "expiry_interval_s = 3600", text)
    text = re.sub(r"(?m)^max_delay_ms = .*$", "max_delay_ms = 50", text)
    # Replace the [coalition] table (if any) with this test's.
    kept, skipping = [], False
    for line in text.splitlines():
        match = _TABLE.match(line)
        if match:
            skipping = match.group("name") == "coalition"
        if not skipping:
            kept.append(line)
    table = ["[coalition]", 'manifest = "../coalition.toml"']
    for key, value in settings.items():
        rendered = ("true" if value else "false") if isinstance(value, bool) else repr(value)
        table.append(f"{key} = {rendered}")
    return "\n".join(kept) + "\n\n" + "\n".join(table) + "\n"


def make_coalition(
    folder: Path,
    programs: tuple[str, ...] = ("skyair", "staybright"),
    *,
    members: tuple[str, ...] = (),
    **settings: object,
) -> CoalitionProcesses:
    """Write a coalition of ``programs`` under ``folder`` with keys and TLS; start nothing.

    ``settings`` go to every node's ``[coalition]`` table (e.g. ``abort_after_s=5``).
    """
    brands: dict[str, BrandProcess] = {}
    # All ports bound at once, so no two addresses get the same port (gRPC servers set
    # SO_REUSEPORT: two nodes on one port would both start and share its traffic).
    ports = iter(free_ports(3 * len(programs)))
    manifest = ['[coalition]\nname = "Fault-test coalition"\nca_cert = "tls/ca.pem"\n']
    manifest.append(f"witness_quorum = {len(programs) - 1}\n")
    for program in programs:
        brand = BrandProcess(
            program=program,
            folder=folder / program,
            grpc=f"127.0.0.1:{next(ports)}",
            http=f"127.0.0.1:{next(ports)}",
            partner_grpc=f"127.0.0.1:{next(ports)}",
            database=folder / program / "data" / f"{program}.db",
        )
        brand.database.parent.mkdir(parents=True)
        brand.config.write_text(_brand_config(program, brand, settings))
        brands[program] = brand
        manifest.append(
            f'[[partners]]\nprogram = "{program}"\nconfig = "{program}/node.toml"\n'
            f'grpc = "{brand.grpc}"\npartner_grpc = "{brand.partner_grpc}"\n'
            f'http = "{brand.http}"\npublic_key = "{program}/keys/public_key.pem"\n'
            'currency = "EUR"\n'
        )
    manifest_path = folder / "coalition.toml"
    manifest_path.write_text("\n".join(manifest))
    member_args = [arg for m in members for arg in ("--member", m)]
    run_cli("keygen", "--manifest", str(manifest_path), *member_args)
    run_cli("tls-init", "--manifest", str(manifest_path))
    for brand in brands.values():
        secrets = tomllib.loads((brand.folder / "keys" / "api-keys.secret.toml").read_text())
        for key in secrets.get("api_keys", []):
            brand.api_keys[str(key.get("role"))] = str(key["secret"])
            brand.api_keys[str(key["name"])] = str(key["secret"])
    return CoalitionProcesses(folder, manifest_path, brands)
