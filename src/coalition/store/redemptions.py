"""Cross-brand redemptions (docs/coalition.md): both sides' records of a partner hold.

``coalition_holds`` is the issuing side's (A's) record of each hold a partner asked for:
its ``hold`` entry, its state and the signed answers A gave, returned verbatim on every
repeated request. ``coalition_partner_redemptions`` is the asking side's (B's) record of
each redemption its operator started at a partner, with the partner's signed receipts.
Named like the feature that owns both, ``node/features/redemptions.py``.

Storage contract: every function runs on the caller's ``Connection``, in the transaction
of the entry the row belongs to. ``hold_id`` is unique on each side, and a partner
redemption's ``idem_key`` too. A hold leaves ``held`` once, for ``captured`` or
``released`` (``finish_hold`` touches only held rows); a captured redemption is never
ended or deleted (``end_redemption`` and ``delete_pending`` skip it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, Connection, Index, Text, insert, select, update
from sqlmodel import Field, SQLModel

from coalition.ledger.canonical import JsonObject, canonical_json
from coalition.store.columns import from_micros, stored_object, to_micros


class HoldRow(SQLModel, table=True):
    """A hold this program made for a partner's redemption (issuing side)."""

    __tablename__ = "coalition_holds"
    __table_args__ = (Index("ix_coalition_holds_due", "status", "expires_at"),)

    hold_id: str = Field(primary_key=True, max_length=128)
    partner: str = Field(max_length=32)
    account: str = Field(max_length=64)
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))
    reference: str = Field(max_length=128)
    request_hash: str = Field(max_length=64)
    """What the partner asked (member, amount, reference, expiry): a repeat must match."""
    expires_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    status: str = Field(max_length=16)
    """``held``, ``captured`` or ``released``."""
    why: str | None = Field(default=None, max_length=16)
    """For a release: ``void`` or ``expired``."""
    hold_entry: str = Field(max_length=48)
    end_entry: str | None = Field(default=None, max_length=48)
    value_minor: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    receipt: str = Field(sa_column=Column(Text, nullable=False))
    """The signed ``hold-receipt`` (canonical JSON of ``{envelope, signature}``)."""
    end_receipt: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    """The signed capture or release receipt."""


class PartnerRedemptionRow(SQLModel, table=True):
    """A redemption this program's operator started at a partner (asking side)."""

    __tablename__ = "coalition_partner_redemptions"

    hold_id: str = Field(primary_key=True, max_length=128)
    program: str = Field(max_length=32)
    """The issuing partner, whose points the member spends here."""
    member_id: str = Field(max_length=64)
    """The member's id at the issuing partner (never written to a ledger entry)."""
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))
    reference: str = Field(max_length=128)
    expires_in_s: int = Field(sa_column=Column(BigInteger, nullable=False))
    idem_key: str = Field(max_length=128, unique=True)
    request_hash: str = Field(max_length=64)
    status: str = Field(max_length=16)
    """``pending`` (asked, no answer yet), ``authorized``, ``captured``, ``voided``,
    ``expired`` (released by the issuer's expiry) or ``refused``."""
    created_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    expires_at: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    agreement_id: str | None = Field(default=None, max_length=128)
    agreement_version: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    value_minor: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    currency: str | None = Field(default=None, max_length=3)
    authorization: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    capture: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    release: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    receipt_entry: str | None = Field(default=None, max_length=48)
    """This program's ``redemption-receipt`` entry, once captured."""
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


holds = HoldRow.__table__  # type: ignore[attr-defined]
partner_redemptions = PartnerRedemptionRow.__table__  # type: ignore[attr-defined]

# The credit-limit checks sum captured redemptions per partner (``conversions.
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


def _text(value: JsonObject) -> str:
    return canonical_json(value).decode()


def _object(text: str | None, what: str) -> JsonObject | None:
    return None if text is None else stored_object(text, what)


# --------------------------------------------------------------- holds (issuing side)


@dataclass(frozen=True, slots=True)
class Hold:
    """A row of ``coalition_holds`` with its signed receipts parsed."""

    hold_id: str
    partner: str
    account: str
    amount: int
    reference: str
    request_hash: str
    expires_at: datetime
    status: str
    why: str | None
    hold_entry: str
    end_entry: str | None
    value_minor: int | None
    receipt: JsonObject
    end_receipt: JsonObject | None


def _hold(row: Any) -> Hold:
    receipt = stored_object(row.receipt, "hold receipt")
    return Hold(
        hold_id=row.hold_id,
        partner=row.partner,
        account=row.account,
        amount=row.amount,
        reference=row.reference,
        request_hash=row.request_hash,
        expires_at=from_micros(row.expires_at),
        status=row.status,
        why=row.why,
        hold_entry=row.hold_entry,
        end_entry=row.end_entry,
        value_minor=row.value_minor,
        receipt=receipt,
        end_receipt=_object(row.end_receipt, "hold receipt"),
    )


def insert_hold(
    conn: Connection,
    *,
    hold_id: str,
    partner: str,
    account: str,
    amount: int,
    reference: str,
    request_hash: str,
    expires_at: datetime,
    hold_entry: str,
    receipt: JsonObject,
) -> None:
    conn.execute(
        insert(holds).values(
            hold_id=hold_id,
            partner=partner,
            account=account,
            amount=amount,
            reference=reference,
            request_hash=request_hash,
            expires_at=to_micros(expires_at),
            status="held",
            hold_entry=hold_entry,
            receipt=_text(receipt),
        )
    )


def hold(conn: Connection, hold_id: str) -> Hold | None:
    row = conn.execute(select(holds).where(holds.c.hold_id == hold_id)).first()
    return None if row is None else _hold(row)


def finish_hold(
    conn: Connection,
    hold_id: str,
    *,
    status: str,
    why: str | None,
    end_entry: str,
    value_minor: int | None,
    end_receipt: JsonObject,
) -> None:
    """Close a ``held`` hold (captured or released); the caller checked its state."""
    conn.execute(
        update(holds)
        .where(holds.c.hold_id == hold_id, holds.c.status == "held")
        .values(
            status=status,
            why=why,
            end_entry=end_entry,
            value_minor=value_minor,
            end_receipt=_text(end_receipt),
        )
    )


def due_holds(conn: Connection, now: datetime, limit: int) -> list[str]:
    """Ids of holds still ``held`` whose expiry time has come, soonest first."""
    query = (
        select(holds.c.hold_id)
        .where(holds.c.status == "held", holds.c.expires_at <= to_micros(now))
        .order_by(holds.c.expires_at, holds.c.hold_id)
        .limit(limit)
    )
    return [row.hold_id for row in conn.execute(query)]


# ---------------------------------------------------------- redemptions (asking side)


@dataclass(frozen=True, slots=True)
class PartnerRedemption:
    """A row of ``coalition_partner_redemptions`` with its signed receipts parsed."""

    hold_id: str
    program: str
    member_id: str
    amount: int
    reference: str
    expires_in_s: int
    idem_key: str
    request_hash: str
    status: str
    created_at: datetime
    expires_at: datetime | None
    agreement_id: str | None
    agreement_version: int | None
    value_minor: int | None
    currency: str | None
    authorization: JsonObject | None
    capture: JsonObject | None
    release: JsonObject | None
    receipt_entry: str | None
    reason: str | None


def _redemption(row: Any) -> PartnerRedemption:
    return PartnerRedemption(
        hold_id=row.hold_id,
        program=row.program,
        member_id=row.member_id,
        amount=row.amount,
        reference=row.reference,
        expires_in_s=row.expires_in_s,
        idem_key=row.idem_key,
        request_hash=row.request_hash,
        status=row.status,
        created_at=from_micros(row.created_at),
        expires_at=None if row.expires_at is None else from_micros(row.expires_at),
        agreement_id=row.agreement_id,
        agreement_version=row.agreement_version,
        value_minor=row.value_minor,
        currency=row.currency,
        authorization=_object(row.authorization, "hold receipt"),
        capture=_object(row.capture, "capture receipt"),
        release=_object(row.release, "release receipt"),
        receipt_entry=row.receipt_entry,
        reason=row.reason,
    )


def insert_redemption(
    conn: Connection,
    *,
    hold_id: str,
    program: str,
    member_id: str,
    amount: int,
    reference: str,
    expires_in_s: int,
    idem_key: str,
    request_hash: str,
    created_at: datetime,
) -> None:
    conn.execute(
        insert(partner_redemptions).values(
            hold_id=hold_id,
            program=program,
            member_id=member_id,
            amount=amount,
            reference=reference,
            expires_in_s=expires_in_s,
            idem_key=idem_key,
            request_hash=request_hash,
            status="pending",
            created_at=to_micros(created_at),
        )
    )


def redemption(conn: Connection, hold_id: str) -> PartnerRedemption | None:
    query = select(partner_redemptions).where(partner_redemptions.c.hold_id == hold_id)
    row = conn.execute(query).first()
    return None if row is None else _redemption(row)


def redemption_by_key(conn: Connection, idem_key: str) -> PartnerRedemption | None:
    query = select(partner_redemptions).where(partner_redemptions.c.idem_key == idem_key)
    row = conn.execute(query).first()
    return None if row is None else _redemption(row)


def authorize_redemption(
    conn: Connection,
    hold_id: str,
    *,
    expires_at: datetime,
    agreement: tuple[str, int],
    authorization: JsonObject,
) -> None:
    conn.execute(
        update(partner_redemptions)
        .where(partner_redemptions.c.hold_id == hold_id, partner_redemptions.c.status == "pending")
        .values(
            status="authorized",
            expires_at=to_micros(expires_at),
            agreement_id=agreement[0],
            agreement_version=agreement[1],
            authorization=_text(authorization),
        )
    )


def capture_redemption(
    conn: Connection,
    hold_id: str,
    *,
    value_minor: int,
    currency: str,
    capture: JsonObject,
    receipt_entry: str,
) -> None:
    conn.execute(
        update(partner_redemptions)
        .where(partner_redemptions.c.hold_id == hold_id)
        .values(
            status="captured",
            value_minor=value_minor,
            currency=currency,
            capture=_text(capture),
            receipt_entry=receipt_entry,
        )
    )


def end_redemption(
    conn: Connection,
    hold_id: str,
    *,
    status: str,
    reason: str | None,
    release: JsonObject | None = None,
) -> None:
    """Mark a redemption ``voided``, ``expired`` or ``refused`` (never a captured one)."""
    values: dict[str, Any] = {"status": status, "reason": reason}
    if release is not None:
        values["release"] = _text(release)
    conn.execute(
        update(partner_redemptions)
        .where(
            partner_redemptions.c.hold_id == hold_id,
            partner_redemptions.c.status != "captured",
        )
        .values(**values)
    )


def delete_pending(conn: Connection, hold_id: str) -> None:
    """Forget a redemption the partner refused outright (it holds nothing under its id)."""
    conn.execute(
        partner_redemptions.delete().where(
            partner_redemptions.c.hold_id == hold_id,
            partner_redemptions.c.status == "pending",
        )
    )
