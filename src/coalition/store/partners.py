"""The partner transport's table: message ids already seen, the replay guard.

A message is accepted once per ``(sender, message_id)``; rows older than the guard's
window are pruned, since a message that old is refused for its ``at`` anyway. Times are
integer microseconds since the Unix epoch (UTC), as in ``columns``.

Storage contract: ``(sender, message_id)`` is unique, so a second insert of a pair fails
with an integrity error (the replay, which ``node.partners.ReplayGuard`` reports); a row
never changes, and is deleted only once older than the window. Named like the partner
transport, ``node/partners.py``, whose ``ReplayGuard`` inserts and prunes the rows.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column
from sqlmodel import Field, SQLModel


class SeenMessageRow(SQLModel, table=True):
    """One partner message this node accepted (or refused after checking its signature)."""

    __tablename__ = "partner_seen_messages"

    sender: str = Field(primary_key=True, max_length=32)
    message_id: str = Field(primary_key=True, max_length=32)
    seen_at: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
