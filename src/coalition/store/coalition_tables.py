"""The tables of rate agreements and conversions (docs/coalition.md).

``coalition_agreements`` holds every agreement version both partners signed, as
recorded by an ``agreement`` entry. ``coalition_conversions`` is the source side's view
of each conversion it started (``pending`` until B's receipt or signed rejection);
``coalition_conversion_answers`` is the target side's single answer per conversion id,
the signed receipt or rejection it returns on every redelivery, so a conversion is
credited at most once. ``coalition_conversion_totals`` keeps running sums of those rows
per partner, so a credit-limit check reads one row however long the history is.
``coalition_outbox`` lists the conversions still to deliver; it
is durable, so a restarted node resumes them. Every row is written in the transaction
of the entry it belongs to. Times are integer microseconds since the Unix epoch (UTC).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Text
from sqlmodel import Field, SQLModel

from coalition.store.redemption_tables import holds, partner_redemptions


class AgreementRow(SQLModel, table=True):
    """One version of a rate agreement signed by both partners."""

    __tablename__ = "coalition_agreements"

    id: str = Field(primary_key=True, max_length=128)
    version: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    from_program: str = Field(max_length=32)
    to_program: str = Field(max_length=32)
    signed: str = Field(sa_column=Column(Text, nullable=False))
    """``{"agreement": doc, "signatures": {...}}`` as canonical JSON."""
    valid_from: int = Field(sa_column=Column(BigInteger, nullable=False))
    valid_until: int = Field(sa_column=Column(BigInteger, nullable=False))
    entry_id: str = Field(max_length=48)


class ConversionRow(SQLModel, table=True):
    """A conversion this node started (source side): the member's quote and its status."""

    __tablename__ = "coalition_conversions"
    __table_args__ = (
        # The daily cap: one member's conversions under one agreement in a day.
        Index("ix_conversions_cap", "account", "agreement_id", "created_at"),
        # The credit limit: what is unsettled towards one partner.
        Index("ix_conversions_partner", "to_program", "created_at"),
    )

    id: str = Field(primary_key=True, max_length=128)
    account: str = Field(max_length=64)
    member_id: str = Field(max_length=64)
    to_program: str = Field(max_length=32)
    to_member_id: str = Field(max_length=64)
    agreement_id: str = Field(max_length=128)
    agreement_version: int = Field(sa_column=Column(BigInteger, nullable=False))
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))
    credit: int = Field(sa_column=Column(BigInteger, nullable=False))
    value_minor: int = Field(sa_column=Column(BigInteger, nullable=False))
    created_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    out_entry: str = Field(max_length=48)
    status: str = Field(max_length=16)
    """``pending``, ``completed`` or ``refunded``."""
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    final_entry: str | None = Field(default=None, max_length=48)
    finished_at: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


class ConversionAnswerRow(SQLModel, table=True):
    """The target side's one answer to a partner's conversion: credited or rejected."""

    __tablename__ = "coalition_conversion_answers"
    __table_args__ = (Index("ix_conversion_answers_partner", "from_program", "created_at"),)

    from_program: str = Field(primary_key=True, max_length=32)
    conversion_id: str = Field(primary_key=True, max_length=128)
    status: str = Field(max_length=16)
    """``credited`` or ``rejected`` (an abort is recorded as ``rejected``)."""
    entry_id: str = Field(max_length=48)
    """The ``convert-in`` or ``convert-reject`` entry."""
    value_minor: int = Field(sa_column=Column(BigInteger, nullable=False))
    """What the source owes for a credited conversion (0 when rejected)."""
    out_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    """The time of the source's convert-out (0 when unknown: an abort of an unseen one)."""
    created_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    answer: str = Field(sa_column=Column(Text, nullable=False))
    """The signed receipt or rejection, ``{"envelope", "signature"}`` as JSON."""


class ConversionTotalRow(SQLModel, table=True):
    """The sum of ``value_minor`` over this node's conversion rows of one partner in one
    state, updated in the transaction of every row change; created from the rows the first
    time a writer reads it (so a database from before this table needs no migration)."""

    __tablename__ = "coalition_conversion_totals"

    partner: str = Field(primary_key=True, max_length=32)
    state: str = Field(primary_key=True, max_length=16)
    """``pending`` or ``completed`` (conversions to ``partner``), ``credited`` (answers to
    conversions from ``partner``)."""
    minor: int = Field(sa_column=Column(BigInteger, nullable=False))


class OutboxRow(SQLModel, table=True):
    """A conversion still to deliver to its target; deleted when the answer is recorded."""

    __tablename__ = "coalition_outbox"
    __table_args__ = (Index("ix_outbox_due", "to_program", "next_attempt_at"),)

    conversion_id: str = Field(primary_key=True, max_length=128)
    to_program: str = Field(max_length=32)
    queued_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    """Wall-clock time the conversion was written: the abort deadline counts from it."""
    next_attempt_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    attempts: int = Field(default=0)
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


agreements = AgreementRow.__table__  # type: ignore[attr-defined]
conversions = ConversionRow.__table__  # type: ignore[attr-defined]
conversion_answers = ConversionAnswerRow.__table__  # type: ignore[attr-defined]
# The credit-limit checks sum captured redemptions per partner (``conversion_repo.
# unsettled``): covering indexes on the redemption tables keep that a short index read.
ix_holds_captured = Index(
    "ix_coalition_holds_captured", holds.c.partner, holds.c.status, holds.c.value_minor
)
ix_redemptions_captured = Index(
    "ix_coalition_partner_redemptions_captured",
    partner_redemptions.c.program,
    partner_redemptions.c.status,
    partner_redemptions.c.value_minor,
)

conversion_totals = ConversionTotalRow.__table__  # type: ignore[attr-defined]
outbox = OutboxRow.__table__  # type: ignore[attr-defined]
