"""A real ``coalition run`` process on a misspelt configuration or manifest: it exits 1
with the message naming the key on stderr, prints no traceback, and creates no database
(before strict configuration a misspelt ``databse`` opened a fresh, empty ledger)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COALITION = [sys.executable, "-m", "coalition.cli"]


def coalition(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COALITION, *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )


@pytest.fixture
def brand(tmp_path: Path) -> Path:
    """SkyAir's folder and the demo manifest copied into ``tmp_path``, keys made."""
    shutil.copy(ROOT / "nodes" / "coalition.toml", tmp_path / "coalition.toml")
    (tmp_path / "skyair").mkdir()
    config = tmp_path / "skyair" / "node.toml"
    shutil.copy(ROOT / "nodes" / "skyair" / "node.toml", config)
    made = coalition("keygen", "--config", str(config), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    return config


def misspell(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def databases(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.suffix in (".db", ".db-wal") or "data" in p.parts
    )


@pytest.mark.parametrize(
    ("file", "old", "new", "message"),
    [
        (
            "skyair/node.toml",
            "database =",
            "databse =",
            "unknown key 'node.databse' in [node] (did you mean 'database'?)",
        ),
        (
            "skyair/node.toml",
            "max_entries = 1000",
            "max_entries = true",
            "sealer.max_entries must be an integer, not a boolean (true)",
        ),
        (
            "coalition.toml",
            "witness_quorum = 2",
            "witness_qorum = 2",
            "unknown key 'coalition.witness_qorum' in [coalition] (did you mean 'witness_quorum'?)",
        ),
    ],
)
def test_coalition_run_refuses_a_misspelt_file_before_opening_a_database(
    brand: Path, file: str, old: str, new: str, message: str
) -> None:
    folder = brand.parent.parent
    misspell(folder / file, old, new)
    result = coalition("run", "--config", str(brand), cwd=folder)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert f"error: {(folder / file).resolve()}: " in result.stderr
    assert "Traceback" not in result.stderr
    assert databases(folder) == []
