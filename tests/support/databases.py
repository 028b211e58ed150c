"""Databases for tests: a fresh PostgreSQL schema per test, or a SQLite file per node.

A test node's database starts at this code's schema by copying one migrated once per
test process (``at_current_schema``), instead of running every migration again for each
test: a SQLite file copied, a PostgreSQL schema's ``pg_dump`` replayed in one round trip.
The migrations themselves stay tested where they are the subject (tests/integration/
test_migrations.py, and every ``coalition run`` process, which migrates its own store).
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import unquote

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from coalition.store.db import make_engine, normalise_url
from coalition.store.schema import upgrade_schema

log = logging.getLogger(__name__)

POSTGRES_URL = os.environ.get(
    "COALITION_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@contextmanager
def postgres_schema(base_url: str = POSTGRES_URL) -> Iterator[str]:
    """A URL whose connections use a fresh schema, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalise_url(base_url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        sep = "&" if "?" in base_url else "?"
        yield f"{base_url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        admin.dispose()


@contextmanager
def node_urls(database_url: str, folder: Path, programs: Sequence[str]) -> Iterator[dict[str, str]]:
    """One database per program: SQLite files in ``folder``, or fresh PostgreSQL schemas
    (the first program uses ``database_url`` itself) when it is a PostgreSQL URL."""
    if not database_url.startswith("postgres"):
        yield {p: f"sqlite:///{folder / p}.db" for p in programs}
        return
    with ExitStack() as stack:
        urls = {programs[0]: database_url}
        for program in programs[1:]:
            urls[program] = stack.enter_context(postgres_schema())
        yield urls


@contextmanager
def postgres_databases(
    programs: Sequence[str], base_url: str = POSTGRES_URL
) -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL database per program on the test server (each a node's whole
    database, as ``coalition run`` processes use it), dropped afterwards (FORCE: a node
    process killed by a failing test may still hold connections)."""
    admin = create_engine(normalise_url(base_url), isolation_level="AUTOCOMMIT")
    suffix = uuid.uuid4().hex[:10]
    names = {p: f"coalition_{p}_{suffix}" for p in programs}
    base = make_url(base_url)
    try:
        with admin.connect() as conn:
            for name in names.values():
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield {
            p: base.set(database=name).render_as_string(hide_password=False)
            for p, name in names.items()
        }
    finally:
        with admin.connect() as conn:
            for name in names.values():
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# --- fresh databases at this code's schema, copied from one migrated template ---------------

_TEMPLATE_LOCK = threading.Lock()
_SQLITE_TEMPLATE: list[Path] = []
_POSTGRES_TEMPLATES: dict[str, str | None] = {}
_SCHEMA_OPTION = re.compile(r"options=-csearch_path%3D(\w+)")
_PLACEHOLDER = "coalition_template_schema"


def at_current_schema(url: str) -> None:
    """Give the database at ``url`` this code's schema if it has none yet: a missing or
    empty SQLite file becomes a copy of a migrated template, an empty PostgreSQL schema
    (as ``postgres_schema`` makes) gets a migrated schema's dump replayed. Anything else
    (a database with tables, a whole PostgreSQL database) is left to the node's own
    migration on open."""
    if url.startswith("sqlite"):
        if not url.startswith("sqlite:///") or ":memory:" in url:
            return
        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists() or path.stat().st_size == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(_sqlite_template(), path)
        return
    found = _SCHEMA_OPTION.search(url)
    if found is None:
        return
    schema = unquote(found.group(1))
    base = url[: found.start()].rstrip("?&")
    dump = _postgres_template(base)
    if dump is None:
        return
    admin = create_engine(normalise_url(base), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            tables = conn.execute(
                text("SELECT count(*) FROM information_schema.tables WHERE table_schema = :s"),
                {"s": schema},
            ).scalar()
            if tables == 0:
                conn.exec_driver_sql(dump.replace(_PLACEHOLDER, schema))
    finally:
        admin.dispose()


def _sqlite_template() -> Path:
    with _TEMPLATE_LOCK:
        if not _SQLITE_TEMPLATE:
            folder = Path(tempfile.mkdtemp(prefix="coalition-template-"))
            atexit.register(shutil.rmtree, folder, True)
            engine = make_engine(f"sqlite:///{folder / 'template.db'}")
            try:
                upgrade_schema(engine)
            finally:
                engine.dispose()  # checkpoints the WAL: the file alone is the database
            _SQLITE_TEMPLATE.append(folder / "template.db")
        return _SQLITE_TEMPLATE[0]


def _postgres_template(base_url: str) -> str | None:
    """The SQL that recreates a migrated schema (named ``_PLACEHOLDER``), made once per
    server; None when ``pg_dump`` is missing or fails (nodes then migrate as usual)."""
    with _TEMPLATE_LOCK:
        if base_url not in _POSTGRES_TEMPLATES:
            _POSTGRES_TEMPLATES[base_url] = _dump_migrated_schema(base_url)
        return _POSTGRES_TEMPLATES[base_url]


def _dump_migrated_schema(base_url: str) -> str | None:
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        log.warning("no pg_dump: each PostgreSQL test schema is migrated from scratch")
        return None
    with postgres_schema(base_url) as url:
        schema = _SCHEMA_OPTION.search(url).group(1)  # type: ignore[union-attr]
        engine = make_engine(url)
        try:
            upgrade_schema(engine)
        finally:
            engine.dispose()
        server = make_url(normalise_url(base_url))
        command = [pg_dump, "--schema", schema, "--no-owner", "--no-privileges", "--inserts"]
        command += ["--dbname", server.set(drivername="postgresql").render_as_string(False)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        log.warning("pg_dump failed (%s): test schemas are migrated", done.stderr.strip())
        return None
    # psql meta-commands (``\restrict``) are not SQL; the schema's name becomes a token.
    lines = [
        line
        for line in done.stdout.splitlines()
        if not line.startswith("\\") and line != f"CREATE SCHEMA {schema};"  # made by the caller
    ]
    return "\n".join(lines).replace(schema, _PLACEHOLDER)
