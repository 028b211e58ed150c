"""Shared fixtures: every storage test runs on SQLite and on PostgreSQL.

In CI (``CI=true``) an unreachable PostgreSQL fails the PostgreSQL tests; elsewhere they
are skipped with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from coalition.node.auth import ApiKey, Authenticator, Role, key_digest
from coalition.node.service import NodeService
from coalition.store.db import normalise_url

from support.databases import POSTGRES_URL, postgres_schema
from support.nodes import temporary_node

API_KEYS = {
    "operator": "op-secret-key",
    "auditor": "audit-secret-key",
    "member": "alice-secret-key",
}


def _postgres_reachable() -> str | None:
    try:
        engine = create_engine(normalise_url(POSTGRES_URL), connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session")
def postgres_available() -> None:
    problem = _postgres_reachable()
    if problem is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is unreachable in CI: {problem}")
    pytest.skip(f"PostgreSQL at {POSTGRES_URL} is unreachable: {problem}")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a new PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'node.db'}"
        return
    request.getfixturevalue("postgres_available")
    with postgres_schema() as url:
        yield url


@pytest.fixture
def node(database_url: str) -> Iterator[NodeService]:
    """A started node (program ``testair``) with rewards configured, on both databases."""
    with temporary_node(database_url) as service:
        yield service


@pytest.fixture
def api_keys() -> dict[str, str]:
    """Secrets per role; the member key belongs to member ``alice``."""
    return dict(API_KEYS)


@pytest.fixture
def authenticator() -> Authenticator:
    return Authenticator(
        [
            ApiKey("ops", key_digest(API_KEYS["operator"]), Role.OPERATOR),
            ApiKey("audit", key_digest(API_KEYS["auditor"]), Role.AUDITOR),
            ApiKey("alice", key_digest(API_KEYS["member"]), Role.MEMBER, "alice"),
        ]
    )
