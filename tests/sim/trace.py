"""The run's trace: every decision of the scheduler and every outcome, hashed.

Random identifiers (conversion, hold, entry and message ids, account ids: 12 or more hex digits)
are renamed ``#1``, ``#2``, ... in order of first appearance, so two runs of one seed
hash alike exactly when they made the same decisions and saw the same outcomes."""

from __future__ import annotations

import hashlib
import re
from collections import deque

_RANDOM_ID = re.compile(r"\b[0-9a-f]{12,}\b")


class Trace:
    def __init__(self, keep: int = 400) -> None:
        self._hash = hashlib.sha256()
        self._names: dict[str, str] = {}
        self.tail: deque[str] = deque(maxlen=keep)
        """The newest lines (printed with a failure)."""
        self.events = 0

    def _rename(self, found: re.Match[str]) -> str:
        return self._names.setdefault(found.group(0), f"#{len(self._names) + 1}")

    def aside(self, text: str) -> None:
        """A line for the reader only, not hashed (a report with timings in it); its ids
        renamed as in the trace."""
        self.tail.append(_RANDOM_ID.sub(self._rename, text))

    def note(self, text: str) -> None:
        line = _RANDOM_ID.sub(self._rename, text)
        self._hash.update(line.encode() + b"\n")
        self.tail.append(line)
        self.events += 1

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()
