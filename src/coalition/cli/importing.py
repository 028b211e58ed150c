"""``coalition import-csv``: earn for every purchase of a CSV file, streamed to a running
node through EarnBulk in chunks; bad lines are reported by line number and never sent."""

from __future__ import annotations

import argparse
import csv
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coalition.cli.client import add_client_command, with_client
from coalition.errors import InvalidArgument

if TYPE_CHECKING:
    from coalition.api.grpc.client import NodeClient
    from coalition.node.views import PurchaseRow, RowError

CSV_COLUMNS = ("member_id", "reference", "spend_minor", "category", "idempotency_key")
IMPORT_CHUNK_ROWS = 50_000
"""Rows per EarnBulk stream: a failed call loses at most one chunk's summary, and a rerun
replays what was committed (every row carries its idempotency key)."""
SHOWN_REJECTIONS = 10


def count_data_lines(path: Path) -> int:
    """Lines after the header, counted in 1 MiB blocks (for the progress total)."""
    lines, last = 0, b"\n"
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return max(lines + (last != b"\n") - 1, 0)


@dataclasses.dataclass
class _CsvRows:
    """Purchase rows read lazily from an open CSV reader; unparsable lines are kept aside
    with their line number and never sent. ``line_of_row`` maps the rows sent since the
    last ``clear`` to their line numbers."""

    reader: csv.DictReader[str]
    bad: list[tuple[int, str, str]] = dataclasses.field(default_factory=list)
    line_of_row: list[int] = dataclasses.field(default_factory=list)

    def __iter__(self) -> Iterator[PurchaseRow]:
        from coalition.node.views import PurchaseRow

        for record in self.reader:
            line = self.reader.line_num
            key = (record.get("idempotency_key") or "").strip()
            if None in record or None in record.values():
                self.bad.append((line, key, f"expected the {len(CSV_COLUMNS)} columns"))
                continue
            try:
                spend = int(record["spend_minor"].strip())
            except ValueError:
                message = f"spend_minor {record['spend_minor']!r} is not an integer"
                self.bad.append((line, key, message))
                continue
            self.line_of_row.append(line)
            yield PurchaseRow(
                record["member_id"].strip(),
                record["reference"].strip(),
                spend,
                record["category"].strip(),
                key,
            )


def import_csv(
    client: NodeClient,
    path: Path,
    chunk_rows: int = IMPORT_CHUNK_ROWS,
    progress: Callable[[int], None] | None = None,
) -> tuple[int, int, list[tuple[int, str, str]]]:
    """Stream ``path`` through EarnBulk, one call per ``chunk_rows`` rows.

    Returns (accepted, replayed, rejected rows as (line, idempotency key, message) in line
    order). Memory is bounded by one chunk's line numbers plus the rejected rows, whatever
    the file size.
    """
    if chunk_rows < 1:
        raise InvalidArgument("chunk rows must be positive")
    accepted = replayed = 0
    rejected: list[tuple[int, str, str]] = []
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        _check_columns(path, reader)
        source = _CsvRows(reader)
        rows = iter(source)
        while True:
            source.line_of_row.clear()
            bad_before = len(source.bad)
            result = client.earn_bulk(_counted(islice(rows, chunk_rows), progress))
            if progress is not None:
                progress(len(source.bad) - bad_before)
            accepted += result.accepted
            replayed += result.replayed
            rejected.extend(_located(result.rejected, source.line_of_row))
            if len(source.line_of_row) < chunk_rows:
                break
    rejected.extend(source.bad)
    rejected.sort()
    return accepted, replayed, rejected


def _check_columns(path: Path, reader: csv.DictReader[str]) -> None:
    missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise InvalidArgument(f"{path}: missing CSV columns: {', '.join(missing)}")


def _counted(
    rows: Iterator[PurchaseRow], progress: Callable[[int], None] | None
) -> Iterator[PurchaseRow]:
    n = 0
    for n, row in enumerate(rows, start=1):
        if progress is not None and n % 1000 == 0:
            progress(1000)
        yield row
    if progress is not None:
        progress(n % 1000)


def _located(errors: Sequence[RowError], lines: Sequence[int]) -> Iterator[tuple[int, str, str]]:
    for error in errors:
        yield lines[error.row - 1], error.idempotency_key, error.message


def _cmd_import_csv(client: NodeClient, args: argparse.Namespace) -> int:
    from coalition.progress import Progress

    path = Path(args.file)
    if not path.is_file():
        raise InvalidArgument(f"no CSV file at {path}")
    with path.open(newline="", encoding="utf-8") as file:
        _check_columns(path, csv.DictReader(file))  # before drawing a progress bar
    with Progress("import " + path.name, count_data_lines(path)) as bar:
        accepted, replayed, rejected = import_csv(client, path, args.chunk_rows, bar.advance)
    print(f"accepted {accepted}, replayed {replayed}, rejected {len(rejected)}")
    for line, key, message in rejected[:SHOWN_REJECTIONS]:
        print(f"  line {line} (key {key or '-'}): {message}")
    if len(rejected) > SHOWN_REJECTIONS:
        print(f"  ... and {len(rejected) - SHOWN_REJECTIONS} more")
    return 1 if rejected else 0


def add_commands(sub: Any, conn: argparse.ArgumentParser) -> None:
    """Add ``import-csv``; ``conn`` is the connection options' parent."""
    p = add_client_command(
        sub, "import-csv", "earn for every purchase of a CSV file (EarnBulk stream)", conn
    )
    p.add_argument("file", help="columns: " + ",".join(CSV_COLUMNS))
    p.add_argument("--chunk-rows", type=int, default=IMPORT_CHUNK_ROWS)
    p.set_defaults(func=with_client(_cmd_import_csv))
