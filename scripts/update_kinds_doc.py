#!/usr/bin/env python3
"""Write the kinds table of docs/proofs.md from the registry (``points.kinds``).

    .venv/bin/python scripts/update_kinds_doc.py          # rewrite the table in place
    .venv/bin/python scripts/update_kinds_doc.py --check  # exit 1 when it is stale

The table sits between the ``<!-- kinds:begin -->`` and ``<!-- kinds:end -->`` lines;
tests/unit/test_kinds.py fails while it differs from ``kinds.markdown_table()``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from coalition.points.kinds import markdown_table

DOC = Path(__file__).resolve().parent.parent / "docs" / "proofs.md"
BEGIN, END = "<!-- kinds:begin -->\n", "<!-- kinds:end -->\n"


def with_table(text: str) -> str:
    """``text`` with the part between the markers replaced by the registry's table."""
    head, found, rest = text.partition(BEGIN)
    _, found_end, tail = rest.partition(END)
    if not found or not found_end:
        raise SystemExit(f"{DOC}: the {BEGIN.strip()} / {END.strip()} markers are missing")
    return head + BEGIN + markdown_table() + END + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether it is stale")
    args = parser.parse_args(argv)
    text = DOC.read_text(encoding="utf-8")
    wanted = with_table(text)
    if args.check:
        if wanted != text:
            print(f"{DOC} is stale: run scripts/update_kinds_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
