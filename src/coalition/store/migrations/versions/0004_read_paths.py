"""Reads that cost a page, not the log: indexes ordered for keyset pagination and the
running flow totals of the explorer (docs/design-notes.md, "Reads that stay cheap as the
log grows").

- ``entries``: ``(account, log_index)`` and ``(to_account, log_index)`` replace the
  single-column account indexes, so a member's history newest first is an ordered range
  scan of one page (PostgreSQL had to sort the whole history before).
- ``lots``: ``(account, earned_at, id, qualifying)`` replaces ``(account, earned_at,
  qualifying)``: it still covers the tier query and also orders a member's lots by
  (earned_at, id), the lots page's cursor.
- ``coalition_statements``: ``(party_a, party_b, period_start, id)`` replaces the pair
  index, and ``(period_start, id)`` serves the unfiltered listing.
- ``flow_totals``: new, filled here from the chain's flow entries (``store.flows.rebuild``)
  and kept by the writer from then on.
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004_read_paths"
down_revision = "0003_write_path"
branch_labels = None
depends_on = None

_TO_ACCOUNT: dict[str, Any] = {
    "sqlite_where": sa.text("to_account IS NOT NULL"),
    "postgresql_where": sa.text("to_account IS NOT NULL"),
}


def upgrade() -> None:
    op.drop_index("ix_entries_account", table_name="entries")
    op.drop_index("ix_entries_to_account", table_name="entries", **_TO_ACCOUNT)
    op.create_index("ix_entries_account_log", "entries", ["account", "log_index"], unique=False)
    op.create_index(
        "ix_entries_to_account_log",
        "entries",
        ["to_account", "log_index"],
        unique=False,
        **_TO_ACCOUNT,
    )
    op.drop_index("ix_lots_account_earned", table_name="lots")
    op.create_index(
        "ix_lots_account_earned_id",
        "lots",
        ["account", "earned_at", "id", "qualifying"],
        unique=False,
    )
    op.drop_index("ix_coalition_statements_pair", table_name="coalition_statements")
    op.create_index(
        "ix_coalition_statements_pair_start",
        "coalition_statements",
        ["party_a", "party_b", "period_start", "id"],
        unique=False,
    )
    op.create_index(
        "ix_coalition_statements_start",
        "coalition_statements",
        ["period_start", "id"],
        unique=False,
    )
    op.create_table(
        "flow_totals",
        sa.Column("level", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("bucket", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("target", sa.String(length=32), nullable=False),
        sa.Column("currency", sa.String(length=8), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("points_out", sa.BigInteger(), nullable=False),
        sa.Column("points_in", sa.BigInteger(), nullable=False),
        sa.Column("value_minor", sa.BigInteger(), nullable=False),
        sa.Column("refunded", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("level", "bucket", "kind", "source", "target", "currency"),
    )
    from coalition.store import flows  # the fold of the running code: the rows it keeps

    flows.rebuild(op.get_bind())


def downgrade() -> None:
    op.drop_table("flow_totals")
    op.drop_index("ix_coalition_statements_start", table_name="coalition_statements")
    op.drop_index("ix_coalition_statements_pair_start", table_name="coalition_statements")
    op.create_index(
        "ix_coalition_statements_pair",
        "coalition_statements",
        ["party_a", "party_b", "period_start"],
        unique=False,
    )
    op.drop_index("ix_lots_account_earned_id", table_name="lots")
    op.create_index(
        "ix_lots_account_earned", "lots", ["account", "earned_at", "qualifying"], unique=False
    )
    op.drop_index("ix_entries_to_account_log", table_name="entries", **_TO_ACCOUNT)
    op.drop_index("ix_entries_account_log", table_name="entries")
    op.create_index("ix_entries_to_account", "entries", ["to_account"], unique=False, **_TO_ACCOUNT)
    op.create_index("ix_entries_account", "entries", ["account"], unique=False)
