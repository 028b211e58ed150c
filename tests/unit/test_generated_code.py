"""Committed generated files must match a fresh generation (Trillian-style): the gRPC code
and its typed stubs from proto/, docker-compose.yml from nodes/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_compose.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_modules_import_from_the_package() -> None:
    from coalition.v1 import ledger_pb2_grpc, points_pb2, points_pb2_grpc

    assert points_pb2.DESCRIPTOR.package == "coalition.v1"
    assert hasattr(points_pb2_grpc, "PointsServicer")
    assert hasattr(ledger_pb2_grpc, "LedgerServicer")


def test_check_reports_an_edited_or_extra_file(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None
    assert spec.loader is not None
    gen_proto = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_proto)

    fresh = gen_proto.generate(tmp_path / "fresh")
    committed = tmp_path / "committed"
    committed.mkdir()
    for path in fresh.iterdir():
        (committed / path.name).write_bytes(path.read_bytes())
    assert gen_proto.stale_files(fresh, committed) == []

    edited = committed / "points_pb2.py"
    edited.write_bytes(edited.read_bytes() + b"# hand edit\n")
    stub = committed / "ledger_pb2_grpc.pyi"
    stub.write_bytes(stub.read_bytes().replace(b"def ", b"def  ", 1))
    (committed / "old_pb2.py").write_text("# from a deleted proto\n")
    (committed / "witness_pb2_grpc.pyi").unlink()
    assert gen_proto.stale_files(fresh, committed) == [
        "ledger_pb2_grpc.pyi",
        "old_pb2.py",
        "points_pb2.py",
        "witness_pb2_grpc.pyi",
    ]


def test_every_generated_module_has_its_typed_stub() -> None:
    package = ROOT / "src" / "coalition" / "v1"
    modules = {p.stem for p in package.glob("*_pb2*.py")}
    assert modules and modules == {p.stem for p in package.glob("*_pb2*.pyi")}
