"""Outbox claims: ``coalition_outbox.claimed_by`` and ``claim_until``.

Every process of a node delivers the conversions it wrote itself (the row is claimed in
the convert-out's own transaction); the lease holder takes over rows whose claim lapsed
(a killed process) or that have none (rows from before this revision). See
``store.conversions`` ("outbox") and ``node.features.outbox``.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_outbox_claims"
down_revision = "0004_read_paths"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("coalition_outbox") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("claim_until", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("coalition_outbox") as batch:
        batch.drop_column("claim_until")
        batch.drop_column("claimed_by")
