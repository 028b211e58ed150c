"""The pure core (ledger/, points/) imports no transport, database or network client, and
the verifier (verify/) imports only the standard library, cryptography, msgspec (the typed
entries' parser), orjson (the canonical JSON encoder and the fast canonical-form check)
and the pure core."""

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


VERIFIER_MAY_IMPORT = (
    "coalition.ledger",
    "coalition.points",
    "coalition.verify",
    "cryptography",
    "msgspec",
    "orjson",
)
"""Besides the standard library, ``coalition`` itself and ``coalition.errors``."""


def _verifier_modules() -> list[str]:
    import coalition.verify

    package = coalition.verify
    return [package.__name__] + [
        m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
    ]


def _fresh_modules(imports: list[str]) -> list[str]:
    """``sys.modules`` of a fresh interpreter after importing ``imports``."""
    return _fresh_modules_each([imports])[0]


_FORKED = """
import importlib, json, os, sys
for imports in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        for name in imports:
            importlib.import_module(name)
        os.write(write, json.dumps(sorted(sys.modules)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        loaded = answer.read()
    _, status = os.waitpid(pid, 0)
    if status != 0:
        sys.exit(f"importing {imports} failed")
    print(loaded)
"""


def _fresh_modules_each(import_lists: list[list[str]]) -> list[list[str]]:
    """``_fresh_modules`` of each list, in one interpreter that forks a child per list
    before importing anything of its own (one interpreter start, not one per module)."""
    result = subprocess.run(
        [sys.executable, "-c", _FORKED, json.dumps(import_lists)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(answers) == len(import_lists)
    return answers


def _outside_closure(loaded: list[str], baseline: set[str]) -> list[str]:
    """What ``loaded`` holds beyond the standard library, the verifier's allowed packages
    and what the interpreter, ``cryptography``, ``msgspec`` and ``orjson`` load by themselves
    (``baseline``)."""
    allowed = {"coalition", "coalition.errors", "__mp_main__"}  # multiprocessing's __main__
    return sorted(
        name
        for name in loaded
        if name.split(".")[0] not in sys.stdlib_module_names
        and name not in allowed
        and name not in baseline
        and not any(name == p or name.startswith(p + ".") for p in VERIFIER_MAY_IMPORT)
    )


def test_verifier_modules_are_found() -> None:
    names = _verifier_modules()
    for expected in (
        "chain_audit",
        "cross_chain",
        "settlement_audit",
        "witness_quorum",
        "evidence",
        "bundle_format",
        "source",
        "state",
        "coalition_audit",
    ):
        assert f"coalition.verify.{expected}" in names


def test_the_verifier_imports_only_stdlib_cryptography_and_the_pure_core() -> None:
    """Each module of ``coalition.verify``, imported alone in a fresh interpreter, loads
    nothing but the standard library, ``cryptography`` (and what it loads), ``msgspec``,
    ``orjson`` and ``coalition.ledger``, ``points``, ``verify``, ``errors``: no SQLAlchemy, grpc,
    FastAPI, pydantic, nor anything of node/, store/, api/, audit/, runtime/, ops/."""
    names = _verifier_modules()
    everything = _fresh_modules_each([[name] for name in names])
    third_parties = [
        [m for m in loaded if m.split(".")[0] in ("cryptography", "msgspec", "orjson")]
        for loaded in everything
    ]
    baselines = _fresh_modules_each(third_parties)
    for name, loaded, baseline in zip(names, everything, baselines, strict=True):
        bad = _outside_closure(loaded, set(baseline))
        assert not bad, f"{name} imports {bad}"


def test_the_closure_check_catches_a_node_import() -> None:
    """The check above is not vacuous: a module of node/ (and what it drags in) fails it."""
    loaded = _fresh_modules(["coalition.verify", "coalition.node.sealer"])
    bad = _outside_closure(loaded, set(_fresh_modules(["cryptography"])))
    assert "coalition.node.sealer" in bad and "sqlalchemy" in bad
