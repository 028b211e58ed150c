"""The auditor's state: the signed header each program had at the last sound audit.

``{"type": "coalition/auditor-state/v1", "programs": {P: {"signed_header": <signed
header object>, "audited_at": T}}}``. At the next audit that header must still be in
P's chain, unchanged (``audit_chain(trusted=...)``), so a history rewritten between two
audits is caught even when every header is re-signed. The state is advanced only for
programs audited sound. This module is the state as data; reading and writing its file
is ``coalition.audit.state``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from coalition.errors import InvalidArgument
from coalition.ledger.blocks import SignedHeader
from coalition.ledger.canonical import JsonObject, JsonValue
from coalition.ledger.entries import format_time

STATE_TYPE = "coalition/auditor-state/v1"


@dataclass(frozen=True, slots=True)
class Pinned:
    """A program's header at its last sound audit."""

    signed_header: SignedHeader
    audited_at: str


@dataclass(slots=True)
class AuditorState:
    """The pinned header of each program (programs never audited sound are absent)."""

    programs: dict[str, Pinned] = field(default_factory=dict)

    @classmethod
    def from_json(cls, doc: JsonValue) -> AuditorState:
        """The state a state document holds; InvalidArgument naming what is wrong."""
        if not isinstance(doc, dict) or doc.get("type") != STATE_TYPE:
            raise InvalidArgument(f"expected a {STATE_TYPE} document")
        programs = doc.get("programs")
        if not isinstance(programs, dict):
            raise InvalidArgument("'programs' must be an object")
        state = cls()
        for program, entry in programs.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("audited_at"), str):
                raise InvalidArgument(f"{program}: expected signed_header and audited_at")
            signed = SignedHeader.from_json(entry.get("signed_header"))
            if signed.header.program != program:
                raise InvalidArgument(f"{program}: the pinned header is {signed.header.program}'s")
            state.programs[program] = Pinned(signed, str(entry["audited_at"]))
        return state

    def to_json(self) -> JsonObject:
        programs: dict[str, JsonValue] = {
            program: {
                "signed_header": pinned.signed_header.to_json(),
                "audited_at": pinned.audited_at,
            }
            for program, pinned in sorted(self.programs.items())
        }
        return {"type": STATE_TYPE, "programs": programs}

    def trusted(self) -> dict[str, SignedHeader]:
        """Program -> the header its chain must still contain."""
        return {program: pinned.signed_header for program, pinned in self.programs.items()}

    def advance(self, program: str, signed: SignedHeader, at: datetime) -> None:
        """Pin ``signed`` for ``program`` (a newer header of a chain audited sound)."""
        self.programs[program] = Pinned(signed, format_time(at))
