"""The transports sit below the composition root and above the node: nothing in
``coalition.api`` loads ``coalition.runtime``, and the node's partner messaging
(``node/partners.py``: inbox, client, transport protocol) loads neither grpc nor
``coalition.api`` (the gRPC partner transport is ``api.grpc.partner.GrpcTransport``); no
module of ``coalition.node`` loads grpc or the generated wire code at all (the witness's
gRPC ledger source is ``api.grpc.ledger_source``, handed in by the composition root)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
import types

import coalition.api
import coalition.node


def _loaded_after_importing(names: list[str]) -> list[str]:
    """The modules a fresh interpreter has loaded after importing ``names``."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded: list[str] = json.loads(result.stdout)
    return loaded


def _modules(package: types.ModuleType) -> list[str]:
    prefix = package.__name__ + "."
    return [m.name for m in pkgutil.walk_packages(package.__path__, prefix)]


def _api_modules() -> list[str]:
    return _modules(coalition.api)


def test_every_route_group_and_servicer_module_is_found() -> None:
    names = _api_modules()
    for feature in ("points", "ledger", "conversions", "agreements", "settlement", "witness"):
        assert f"coalition.api.http.{feature}" in names
        assert f"coalition.api.grpc.{feature}" in names


def test_the_transports_never_load_the_composition_root() -> None:
    loaded = _loaded_after_importing(_api_modules())
    assert "coalition.api.http.app" in loaded and "coalition.api.grpc.partner" in loaded
    assert [m for m in loaded if m.startswith("coalition.runtime")] == []


def test_partner_messaging_in_the_node_loads_no_transport() -> None:
    loaded = _loaded_after_importing(["coalition.node.partners"])
    assert "coalition.node.partners" in loaded
    bad = [m for m in loaded if m == "grpc" or m.startswith(("grpc.", "coalition.api"))]
    assert bad == []


def test_the_node_loads_no_grpc_and_no_wire_code() -> None:
    names = _modules(coalition.node)
    assert "coalition.node.features.witness" in names
    loaded = _loaded_after_importing(names)
    wire = ("grpc", "grpc_health", "coalition.v1", "coalition.api")
    bad = [m for m in loaded if m in wire or m.startswith(tuple(w + "." for w in wire))]
    assert bad == []
