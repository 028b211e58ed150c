"""The log's order kept by the database: the ``log_head`` row and the ``leases`` table.

``log_head`` holds the index the next entry gets; every write transaction locks it first
(``store.ledger.take_head``), so several processes of one node append one dense log.
An existing database starts it after its newest entry. ``leases`` elects the one
process that seals and runs the background jobs (``store.leases``).
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_log_order"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "log_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("next_index", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute(
        "INSERT INTO log_head (id, next_index)"
        " SELECT 1, COALESCE(MAX(log_index) + 1, 0) FROM entries"
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_table("log_head")
