"""The auditor's state file: the signed header each program had at the last sound audit.

``{"type": "coalition/auditor-state/v1", "programs": {P: {"signed_header": <signed
header object>, "audited_at": T}}}``. At the next audit that header must still be in
P's chain, unchanged (``audit_chain(trusted=...)``), so a history rewritten between two
audits is caught even when every header is re-signed. The file is written atomically
(a temporary file renamed over it) and advanced only for programs audited sound.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from coalition.errors import CoalitionError, InvalidArgument
from coalition.ledger.blocks import SignedHeader
from coalition.ledger.canonical import JsonObject, JsonValue, parse_json
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
    def load(cls, path: Path) -> AuditorState:
        """The state in ``path``; empty when the file does not exist yet. InvalidArgument
        when it exists but is not a state file (never overwritten then)."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise InvalidArgument(f"cannot read the state file {path}: {exc}") from None
        try:
            return cls.from_json(parse_json(data))
        except CoalitionError as exc:
            raise InvalidArgument(f"{path} is not an auditor state file: {exc}") from None

    @classmethod
    def from_json(cls, doc: JsonValue) -> AuditorState:
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

    def save(self, path: Path) -> None:
        """Write atomically: a half-written state file never has the final name."""
        text = json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"
        folder = path.parent if str(path.parent) else Path(".")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
