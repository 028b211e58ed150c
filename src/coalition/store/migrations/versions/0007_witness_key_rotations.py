"""Witness key rotations: ``witness_key_rotations``.

The ``key-rotation`` entries a witness found in the blocks of a partner's verified
headers, so that after a restart it verifies the partner's next header with the key in
force (``ledger.rotation``) without reading the partner's chain again. See
``store.witness`` and ``node.features.witness``.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_witness_key_rotations"
down_revision = "0006_api_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "witness_key_rotations",
        sa.Column("program", sa.String(length=64), nullable=False),
        sa.Column("epoch", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("log_index", sa.BigInteger(), nullable=False),
        sa.Column("entry", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("program", "epoch"),
    )


def downgrade() -> None:
    op.drop_table("witness_key_rotations")
