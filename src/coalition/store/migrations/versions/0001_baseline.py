"""The baseline: the schema as ``SQLModel.metadata.create_all`` made it before migrations.

Written out in full so it never changes when the table classes do; later revisions
change the schema from here. A database made by the old ``create_all`` (tables but no
``alembic_version``) is stamped at this revision after its tables are checked
(``coalition.store.schema``).
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("enrolled_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account"),
        sa.UniqueConstraint("member_id"),
    )
    op.create_table(
        "blocks",
        sa.Column(
            "height",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("header", sa.Text(), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.Column("log_size", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("height"),
        sa.UniqueConstraint("log_size"),
    )
    op.create_table(
        "coalition_agreements",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("version", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("from_program", sa.String(length=32), nullable=False),
        sa.Column("to_program", sa.String(length=32), nullable=False),
        sa.Column("signed", sa.Text(), nullable=False),
        sa.Column("valid_from", sa.BigInteger(), nullable=False),
        sa.Column("valid_until", sa.BigInteger(), nullable=False),
        sa.Column("entry_id", sa.String(length=48), nullable=False),
        sa.PrimaryKeyConstraint("id", "version"),
    )
    op.create_table(
        "coalition_conversion_answers",
        sa.Column("from_program", sa.String(length=32), nullable=False),
        sa.Column("conversion_id", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("entry_id", sa.String(length=48), nullable=False),
        sa.Column("value_minor", sa.BigInteger(), nullable=False),
        sa.Column("out_at", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("from_program", "conversion_id"),
    )
    op.create_index(
        "ix_conversion_answers_partner",
        "coalition_conversion_answers",
        ["from_program", "created_at"],
        unique=False,
    )
    op.create_table(
        "coalition_conversion_totals",
        sa.Column("partner", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("minor", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("partner", "state"),
    )
    op.create_table(
        "coalition_conversions",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("to_program", sa.String(length=32), nullable=False),
        sa.Column("to_member_id", sa.String(length=64), nullable=False),
        sa.Column("agreement_id", sa.String(length=128), nullable=False),
        sa.Column("agreement_version", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("credit", sa.BigInteger(), nullable=False),
        sa.Column("value_minor", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("out_entry", sa.String(length=48), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("final_entry", sa.String(length=48), nullable=True),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_conversions_cap",
        "coalition_conversions",
        ["account", "agreement_id", "created_at"],
        unique=False,
    )
    op.create_index(
        "ix_conversions_partner",
        "coalition_conversions",
        ["to_program", "created_at"],
        unique=False,
    )
    op.create_table(
        "coalition_holds",
        sa.Column("hold_id", sa.String(length=128), nullable=False),
        sa.Column("partner", sa.String(length=32), nullable=False),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("reference", sa.String(length=128), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("why", sa.String(length=16), nullable=True),
        sa.Column("hold_entry", sa.String(length=48), nullable=False),
        sa.Column("end_entry", sa.String(length=48), nullable=True),
        sa.Column("value_minor", sa.BigInteger(), nullable=True),
        sa.Column("receipt", sa.Text(), nullable=False),
        sa.Column("end_receipt", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("hold_id"),
    )
    op.create_index(
        "ix_coalition_holds_captured",
        "coalition_holds",
        ["partner", "status", "value_minor"],
        unique=False,
    )
    op.create_index(
        "ix_coalition_holds_due", "coalition_holds", ["status", "expires_at"], unique=False
    )
    op.create_table(
        "coalition_outbox",
        sa.Column("conversion_id", sa.String(length=128), nullable=False),
        sa.Column("to_program", sa.String(length=32), nullable=False),
        sa.Column("queued_at", sa.BigInteger(), nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("conversion_id"),
    )
    op.create_index(
        "ix_outbox_due", "coalition_outbox", ["to_program", "next_attempt_at"], unique=False
    )
    op.create_table(
        "coalition_partner_redemptions",
        sa.Column("hold_id", sa.String(length=128), nullable=False),
        sa.Column("program", sa.String(length=32), nullable=False),
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("reference", sa.String(length=128), nullable=False),
        sa.Column("expires_in_s", sa.BigInteger(), nullable=False),
        sa.Column("idem_key", sa.String(length=128), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
        sa.Column("agreement_id", sa.String(length=128), nullable=True),
        sa.Column("agreement_version", sa.BigInteger(), nullable=True),
        sa.Column("value_minor", sa.BigInteger(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("authorization", sa.Text(), nullable=True),
        sa.Column("capture", sa.Text(), nullable=True),
        sa.Column("release", sa.Text(), nullable=True),
        sa.Column("receipt_entry", sa.String(length=48), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("hold_id"),
        sa.UniqueConstraint("idem_key"),
    )
    op.create_index(
        "ix_coalition_partner_redemptions_captured",
        "coalition_partner_redemptions",
        ["program", "status", "value_minor"],
        unique=False,
    )
    op.create_table(
        "coalition_statements",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("party_a", sa.String(length=32), nullable=False),
        sa.Column("party_b", sa.String(length=32), nullable=False),
        sa.Column("period_start", sa.BigInteger(), nullable=False),
        sa.Column("period_end", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("signed", sa.Text(), nullable=False),
        sa.Column("entry_id", sa.String(length=48), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_coalition_statements_pair",
        "coalition_statements",
        ["party_a", "party_b", "period_start"],
        unique=False,
    )
    op.create_table(
        "entries",
        sa.Column(
            "log_index",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("entry_id", sa.String(length=48), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("to_account", sa.String(length=64), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("idem_key", sa.String(length=128), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("log_index"),
        sa.UniqueConstraint("entry_id"),
        sa.UniqueConstraint("idem_key"),
    )
    op.create_index(op.f("ix_entries_account"), "entries", ["account"], unique=False)
    op.create_index("ix_entries_kind", "entries", ["kind", "log_index"], unique=False)
    op.create_index(
        "ix_entries_to_account",
        "entries",
        ["to_account"],
        unique=False,
        sqlite_where=sa.text("to_account IS NOT NULL"),
        postgresql_where=sa.text("to_account IS NOT NULL"),
    )
    op.create_table(
        "lots",
        sa.Column("id", sa.String(length=48), nullable=False),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("qualifying", sa.BigInteger(), nullable=False),
        sa.Column("earned_at", sa.BigInteger(), nullable=False),
        sa.Column("available_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("ref", sa.String(length=160), nullable=True),
        sa.Column("reversed", sa.Boolean(), nullable=False),
        sa.CheckConstraint("remaining >= 0 AND remaining <= amount", name="ck_lots_remaining"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("ref"),
        sqlite_with_rowid=False,
    )
    op.create_index(
        "ix_lots_account_earned", "lots", ["account", "earned_at", "qualifying"], unique=False
    )
    op.create_index("ix_lots_expires_at", "lots", ["expires_at"], unique=False)
    op.create_table(
        "partner_seen_messages",
        sa.Column("sender", sa.String(length=32), nullable=False),
        sa.Column("message_id", sa.String(length=32), nullable=False),
        sa.Column("seen_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("sender", "message_id"),
    )
    op.create_index(
        op.f("ix_partner_seen_messages_seen_at"), "partner_seen_messages", ["seen_at"], unique=False
    )
    op.create_table(
        "tree_nodes",
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint("level", "idx"),
    )
    op.create_table(
        "witness_cosignatures",
        sa.Column("program", sa.String(length=64), nullable=False),
        sa.Column("height", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("witness", sa.String(length=64), nullable=False),
        sa.Column("header_hash", sa.String(length=64), nullable=False),
        sa.Column("cosignature", sa.Text(), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("delivered", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("program", "height", "witness"),
    )
    op.create_table(
        "witness_evidence",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("program", sa.String(length=64), nullable=False),
        sa.Column("height", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("first_hash", sa.String(length=64), nullable=False),
        sa.Column("second_hash", sa.String(length=64), nullable=False),
        sa.Column("first", sa.Text(), nullable=False),
        sa.Column("second", sa.Text(), nullable=False),
        sa.Column("detected_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("program", "first_hash", "second_hash", name="uq_witness_evidence"),
    )
    op.create_index(
        op.f("ix_witness_evidence_program"), "witness_evidence", ["program"], unique=False
    )
    op.create_table(
        "witness_gossip",
        sa.Column("program", sa.String(length=64), nullable=False),
        sa.Column("height", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("header_hash", sa.String(length=64), nullable=False),
        sa.Column("header", sa.Text(), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.Column("sender", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("program", "height", "header_hash"),
    )
    op.create_table(
        "witness_headers",
        sa.Column("program", sa.String(length=64), nullable=False),
        sa.Column("height", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("header_hash", sa.String(length=64), nullable=False),
        sa.Column("header", sa.Text(), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.Column("verified_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("program", "height"),
    )


def downgrade() -> None:
    op.drop_table("witness_headers")
    op.drop_table("witness_gossip")
    op.drop_index(op.f("ix_witness_evidence_program"), table_name="witness_evidence")
    op.drop_table("witness_evidence")
    op.drop_table("witness_cosignatures")
    op.drop_table("tree_nodes")
    op.drop_index(op.f("ix_partner_seen_messages_seen_at"), table_name="partner_seen_messages")
    op.drop_table("partner_seen_messages")
    op.drop_index("ix_lots_expires_at", table_name="lots")
    op.drop_index("ix_lots_account_earned", table_name="lots")
    op.drop_table("lots")
    op.drop_index(
        "ix_entries_to_account",
        table_name="entries",
        sqlite_where=sa.text("to_account IS NOT NULL"),
        postgresql_where=sa.text("to_account IS NOT NULL"),
    )
    op.drop_index("ix_entries_kind", table_name="entries")
    op.drop_index(op.f("ix_entries_account"), table_name="entries")
    op.drop_table("entries")
    op.drop_index("ix_coalition_statements_pair", table_name="coalition_statements")
    op.drop_table("coalition_statements")
    op.drop_index(
        "ix_coalition_partner_redemptions_captured", table_name="coalition_partner_redemptions"
    )
    op.drop_table("coalition_partner_redemptions")
    op.drop_index("ix_outbox_due", table_name="coalition_outbox")
    op.drop_table("coalition_outbox")
    op.drop_index("ix_coalition_holds_due", table_name="coalition_holds")
    op.drop_index("ix_coalition_holds_captured", table_name="coalition_holds")
    op.drop_table("coalition_holds")
    op.drop_index("ix_conversions_partner", table_name="coalition_conversions")
    op.drop_index("ix_conversions_cap", table_name="coalition_conversions")
    op.drop_table("coalition_conversions")
    op.drop_table("coalition_conversion_totals")
    op.drop_index("ix_conversion_answers_partner", table_name="coalition_conversion_answers")
    op.drop_table("coalition_conversion_answers")
    op.drop_table("coalition_agreements")
    op.drop_table("blocks")
    op.drop_table("accounts")
