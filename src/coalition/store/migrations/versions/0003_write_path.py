"""The write path's index: ``ix_lots_debit``, a debit's FIFO read as one range.

The lots with points left (a partial index on ``remaining > 0``), per account in debit
order (``points.state.debit_order``: expiry time, earn time, id), so a debit reads the
first few rows of one index range instead of every lot of the member
(``store.members.debit_account``); spent lots leave the index.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_write_path"
down_revision = "0002_log_order"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_lots_debit",
        "lots",
        ["account", "expires_at", "earned_at", "id"],
        unique=False,
        sqlite_where=sa.text("remaining > 0"),
        postgresql_where=sa.text("remaining > 0"),
    )


def downgrade() -> None:
    op.drop_index("ix_lots_debit", table_name="lots")
