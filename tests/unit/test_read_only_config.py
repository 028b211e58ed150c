"""The configuration of several processes of one node: ``[node] read_only`` with its
``primary`` (a process on a PostgreSQL hot standby) read strictly, and the counts
``coalition run --processes`` refuses before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from coalition.errors import FailedPrecondition, InvalidArgument
from coalition.node.config import load_config
from coalition.node.read_only import read_only_refusal
from coalition.node.strict_toml import ConfigError
from coalition.runtime.supervisor import check_processes

PG = "postgresql://postgres@127.0.0.1:5432/standby"


@pytest.fixture(autouse=True)
def _no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COALITION_DATABASE_URL", "COALITION_GRPC_ADDRESS", "COALITION_HTTP_ADDRESS"):
        monkeypatch.delenv(name, raising=False)


def node_toml(tmp_path: Path, node: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(f'[program]\nid = "skyair"\n[node]\n{node}\n')
    return path


def refused(path: Path, key: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == key
    return str(caught.value)


def test_a_read_only_process_names_its_primary(tmp_path: Path) -> None:
    config = load_config(
        node_toml(tmp_path, f'database = "{PG}"\nread_only = true\nprimary = "10.0.0.1:50051"')
    )
    assert config.read_only and config.primary == "10.0.0.1:50051"
    assert not config.reuse_port


def test_the_default_is_a_writing_process(tmp_path: Path) -> None:
    config = load_config(node_toml(tmp_path, f'database = "{PG}"'))
    assert not config.read_only and config.primary is None


def test_read_only_without_a_primary_is_refused(tmp_path: Path) -> None:
    message = refused(node_toml(tmp_path, f'database = "{PG}"\nread_only = true'), "node.primary")
    assert "needs node.primary" in message


def test_a_primary_without_read_only_is_refused(tmp_path: Path) -> None:
    path = node_toml(tmp_path, f'database = "{PG}"\nprimary = "10.0.0.1:50051"')
    assert "only for a read-only process" in refused(path, "node.primary")


def test_read_only_on_sqlite_is_refused(tmp_path: Path) -> None:
    path = node_toml(tmp_path, 'read_only = true\nprimary = "10.0.0.1:50051"')
    assert "serves a PostgreSQL hot standby" in refused(path, "node.read_only")


def test_read_only_must_be_a_boolean_and_primary_not_empty(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_config(node_toml(tmp_path, f'database = "{PG}"\nread_only = "yes"\nprimary = "x:1"'))
    with pytest.raises(ConfigError):
        load_config(node_toml(tmp_path, f'database = "{PG}"\nread_only = true\nprimary = ""'))


def test_the_refusal_names_the_primary() -> None:
    refusal = read_only_refusal("skyair", "primary.example:50051")
    assert isinstance(refusal, FailedPrecondition)
    assert "read-only" in str(refusal) and "primary.example:50051" in str(refusal)


def test_processes_counts(tmp_path: Path) -> None:
    sqlite = load_config(node_toml(tmp_path, 'grpc = "127.0.0.1:7001"'))
    check_processes(sqlite, 1)  # one process on SQLite: today's node
    with pytest.raises(FailedPrecondition, match="SQLite, which one process owns"):
        check_processes(sqlite, 2)
    with pytest.raises(InvalidArgument, match="at least 1"):
        check_processes(sqlite, 0)
    pg = load_config(node_toml(tmp_path, f'database = "{PG}"\nhttp = "127.0.0.1:0"'))
    with pytest.raises(InvalidArgument, match=r"\[node\] http is '127.0.0.1:0'"):
        check_processes(pg, 3)
    check_processes(load_config(node_toml(tmp_path, f'database = "{PG}"')), 3)
