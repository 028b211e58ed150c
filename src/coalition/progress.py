"""A small text progress bar for long commands (imports, audits, the demo).

It writes to stderr, redraws at most ten times a second, and prints plain lines instead
when stderr is not a terminal, so logs and CI output stay readable.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TextIO


class Progress:
    """``with Progress("import", total) as bar: bar.advance(n)``."""

    def __init__(self, label: str, total: int | None, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._last_line_pct = -1
        self._last_line_done = -1

    def __enter__(self) -> Progress:
        self._draw(force=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._draw(force=True)
        if self._tty:
            self._stream.write("\n")
        self._stream.flush()

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._draw()

    def _line(self) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = self.done / elapsed
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            return (
                f"{self.label:<22} [{bar:<30}] {self.done:>10,}/{self.total:,} "
                f"{frac:6.1%} {rate:>10,.0f}/s"
            )
        return f"{self.label:<22} {self.done:>10,} {rate:>10,.0f}/s"

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._tty:
            if force or now - self._last_draw >= 0.1:
                self._stream.write("\r" + self._line())
                self._stream.flush()
                self._last_draw = now
            return
        # Plain lines: one per 10% step, plus the first and the last, never the same twice.
        pct = int(self.done * 10 / self.total) * 10 if self.total else -1
        if self.done == self._last_line_done:
            return
        if force or (pct != self._last_line_pct and pct >= 0):
            self._stream.write(self._line() + "\n")
            self._last_line_pct = pct
            self._last_line_done = self.done
            self._last_draw = now


@contextmanager
def phase(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A bar for one phase, as its ``advance``: what ``coalition.verify.audit_all`` takes
    as ``progress`` (the verifier prints nothing itself)."""
    with Progress(label, total) as bar:
        yield bar.advance
