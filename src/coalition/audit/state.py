"""The auditor's state file (``coalition.verify.state.AuditorState`` on disk).

Read before an audit, written after it: atomically (a temporary file renamed over it),
so a half-written state file never has the final name and a crash keeps the old one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from coalition.errors import CoalitionError, InvalidArgument
from coalition.ledger.canonical import parse_json
from coalition.verify.state import AuditorState


def load_state(path: Path) -> AuditorState:
    """The state in ``path``; empty when the file does not exist yet. InvalidArgument
    when it exists but is not a state file (never overwritten then)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return AuditorState()
    except OSError as exc:
        raise InvalidArgument(f"cannot read the state file {path}: {exc}") from None
    try:
        return AuditorState.from_json(parse_json(data))
    except CoalitionError as exc:
        raise InvalidArgument(f"{path} is not an auditor state file: {exc}") from None


def save_state(state: AuditorState, path: Path) -> None:
    """Write ``state`` to ``path`` atomically."""
    text = json.dumps(state.to_json(), indent=2, sort_keys=True) + "\n"
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
