"""The pure core (ledger/, points/) imports no transport, database or network client."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import coalition.ledger
import coalition.points

FORBIDDEN = (
    "grpc",
    "fastapi",
    "sqlmodel",
    "sqlalchemy",
    "starlette",
    "uvicorn",
    "psycopg",
    "httpx",
    "requests",
    "aiohttp",
    "urllib3",
    "http.client",
)


def _modules() -> list[str]:
    names = []
    for package in (coalition.ledger, coalition.points):
        names.append(package.__name__)
        names += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    return names


def test_core_modules_are_found() -> None:
    names = _modules()
    for expected in ("canonical", "merkle", "keys", "entries", "blocks", "proofs", "chain"):
        assert f"coalition.ledger.{expected}" in names


def test_core_imports_no_io_library() -> None:
    names = _modules()
    code = (
        "import importlib, json, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(result.stdout)
    bad = sorted(m for m in loaded for f in FORBIDDEN if m == f or m.startswith(f + "."))
    assert not bad, f"the pure core imports {bad}"
