"""Alembic's environment for the node's schema.

``coalition.store.schema`` runs it with the node's own connection, which already holds
the schema lock, in ``config.attributes["connection"]``. A developer writing a revision
runs Alembic's command line from the repository root (``[tool.alembic]`` in
pyproject.toml) on a scratch database: ``alembic -x url=sqlite:///scratch.db upgrade
head``, then ``alembic -x url=sqlite:///scratch.db revision --autogenerate -m "..."``
writes what the table classes changed since.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection
from sqlmodel import SQLModel

from coalition.store.db import make_engine  # importing it registers every table


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite rebuilds to ALTER
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    shared = context.config.attributes.get("connection")
    if shared is not None:
        _run(shared)
        return
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("name the database: alembic -x url=URL ...")
    engine = make_engine(url)
    with engine.connect() as connection:
        _run(connection)
        connection.commit()
    engine.dispose()


_main()
