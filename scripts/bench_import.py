#!/usr/bin/env python3
"""End-to-end benchmark of ``coalition import-csv`` on 1,000,000 rows against a live node.

    .venv/bin/python scripts/bench_import.py                  # 1,000,000 rows, 20,000 members
    .venv/bin/python scripts/bench_import.py --rows 20000 --members 2000
    .venv/bin/python scripts/bench_import.py --keep /tmp/run  # work there and keep it

In a temporary folder: a copy of ``nodes/skyair/node.toml`` with only its gRPC and HTTP
addresses changed to free ``127.0.0.1`` ports (so that ``--config`` finds the node) and
without its ``[coalition]`` table (one node alone: no partners to reach); everything else
as shipped: SQLite WAL with ``synchronous=FULL``, blocks of 1,000 entries or 200 ms, the
real rules; then
``coalition keygen``, and ``coalition run`` as a subprocess (the demo's ``NodeProcess``,
ready when it logs that it serves).
Untimed: enrolling ``--members`` members over gRPC from a few threads, and writing the
CSV with ``scripts/make_purchases_csv.py``.

**Timed**:

* ``coalition import-csv FILE --config ...`` as a subprocess, from its start to its exit
  (interpreter start, the line count for the progress bar, CSV parsing, the EarnBulk
  streams, every row committed by the node); its progress bar goes to stderr as it would
  for a user. Its ``accepted / replayed / rejected`` summary must be ``rows / 0 / 0``.
  Also reported: the time until the node's latest signed header covers every entry
  (import plus sealing), checked with ``NodeClient.latest_header``.
* ``coalition audit --config ... --json FILE`` (signatures, links, roots, consistency,
  replay of every balance from the node's database) as a subprocess; it must pass and
  count every entry.

Finally the node is stopped with SIGTERM (it seals what is pending and must exit 0). Any
failure exits non-zero; the node process is killed if the script fails on the way.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from coalition.api.grpc.client import NodeClient
from coalition.demo.processes import NodeProcess
from coalition.errors import CoalitionError
from coalition.ledger.blocks import SignedHeader
from coalition.node.auth import Role
from coalition.node.config import load_config
from coalition.ops.keygen import find_secret

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine

ROOT = Path(__file__).resolve().parents[1]
PROGRAM = "skyair"
ENROLL_THREADS = 4
SUMMARY = re.compile(r"^accepted (\d+), replayed (\d+), rejected (\d+)$", re.MULTILINE)


class BenchFailed(Exception):
    pass


def coalition(*args: str) -> list[str]:
    """The ``coalition`` command line, run with this interpreter."""
    return [sys.executable, "-m", "coalition.cli", *args]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prepare_brand(folder: Path) -> Path:
    """Copy SkyAir's node.toml, changing only the gRPC and HTTP addresses to free ports
    (real ones, not port 0: the CLI commands read the address from the file) and leaving
    out the ``[coalition]`` table."""
    text = (ROOT / "nodes" / PROGRAM / "node.toml").read_text()
    text, found = re.subn(r"(?ms)^\[coalition\]$.*?(?=^\[)", "", text)
    if found != 1 or "coalition" in tomllib.loads(text):
        raise BenchFailed(f"nodes/{PROGRAM}/node.toml has no single [coalition] table")
    for key in ("grpc", "http"):
        address = f'{key} = "127.0.0.1:{free_port()}"'
        text, found = re.subn(rf'(?m)^{key}\s*=\s*"[^"]*"', address, text)
        if found != 1:
            raise BenchFailed(f"nodes/{PROGRAM}/node.toml has no single '{key} =' line")
    path = folder / PROGRAM / "node.toml"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path


def run(
    cmd: list[str], what: str, *, stdout: int | None = None, stderr: int | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, text=True, check=False, stdout=stdout, stderr=stderr)
    if done.returncode != 0:
        out = (done.stdout or "").strip()
        raise BenchFailed(f"{what} exited with {done.returncode}" + (f":\n{out}" if out else ""))
    return done


def enroll(target: str, key: str, members: int) -> int:
    """Enroll M0001..M<members> (the ids make_purchases_csv.py uses); entries written."""
    ids = [f"M{n:04d}" for n in range(1, members + 1)]
    clients = [NodeClient(target, key, timeout=60) for _ in range(ENROLL_THREADS)]
    try:

        def one(i: int) -> bool:
            result = clients[i % ENROLL_THREADS].enroll(ids[i], idempotency_key=f"enroll:{ids[i]}")
            return not result.replayed

        with ThreadPoolExecutor(ENROLL_THREADS) as pool:
            return sum(pool.map(one, range(members), chunksize=64))
    finally:
        for client in clients:
            client.close()


def latest_header(client: NodeClient) -> SignedHeader | None:
    latest = client.latest_header()
    return None if latest is None else SignedHeader.from_json(latest)


def log_size(client: NodeClient) -> int:
    latest = latest_header(client)
    return 0 if latest is None else latest.header.log_size


def wait_covered(client: NodeClient, expected_entries: int, timeout: float) -> SignedHeader:
    """Wait until the latest signed header covers exactly ``expected_entries`` entries."""
    deadline = time.monotonic() + timeout
    while True:
        latest = latest_header(client)
        size = 0 if latest is None else latest.header.log_size
        if latest is not None and size >= expected_entries:
            if size != expected_entries:
                raise BenchFailed(f"the log holds {size} entries, {expected_entries} written")
            return latest
        if time.monotonic() > deadline:
            raise BenchFailed(f"only {size} of {expected_entries} entries were sealed")
        time.sleep(0.05)


def wait_sealed(client: NodeClient, timeout: float = 60) -> int:
    """Wait until the signed log stops growing (everything written so far is sealed)."""
    deadline = time.monotonic() + timeout
    size, since = log_size(client), time.monotonic()
    while time.monotonic() - since < 1.0:
        if time.monotonic() > deadline:
            raise BenchFailed("the node's log kept growing")
        time.sleep(0.1)
        now = log_size(client)
        if now != size:
            size, since = now, time.monotonic()
    return size


@contextmanager
def running_node(config_path: Path, log_path: Path) -> Iterator[NodeProcess]:
    """``coalition run`` for the block, ready (gRPC health SERVING, /healthz answering):
    then SIGTERM, after which the node must seal what is pending and exit 0; killed at
    once if the block fails."""
    config = load_config(config_path)
    node = NodeProcess(
        config_path, grpc=config.grpc_address, http=config.http_address, log_path=log_path
    )
    node.start()
    try:
        node.wait_ready()
        yield node
    except BaseException:
        node.kill()
        raise
    node.stop()


def bench(folder: Path, rows: int, members: int) -> list[str]:
    config_path = prepare_brand(folder)
    config = load_config(config_path)
    quiet = subprocess.PIPE
    run(coalition("keygen", "--config", str(config_path)), "keygen", stdout=quiet, stderr=quiet)
    csv_path = folder / "purchases.csv"
    t0 = time.perf_counter()
    run(
        [
            sys.executable,
            str(ROOT / "scripts" / "make_purchases_csv.py"),
            str(rows),
            "--members",
            str(members),
            "--out",
            str(csv_path),
        ],
        "make_purchases_csv.py",
    )
    size_mb = csv_path.stat().st_size / 1e6
    print(f"CSV: {rows:,} rows, {size_mb:.1f} MB in {time.perf_counter() - t0:.1f} s (not timed)")
    lines: list[str] = []
    target = config.grpc_address
    with running_node(config_path, folder / "node.log"):
        with NodeClient(target, find_secret(config, Role.OPERATOR), timeout=30) as client:
            print(f"node up at gRPC {target} (log {folder / 'node.log'})")
            t0 = time.perf_counter()
            written = enroll(target, find_secret(config, Role.OPERATOR), members)
            base = wait_sealed(client)
            print(
                f"enrolled {members:,} members ({written:,} entries, log size {base:,}) in "
                f"{time.perf_counter() - t0:.1f} s over gRPC, {ENROLL_THREADS} threads "
                "(not timed)"
            )

            cmd = ["coalition", "import-csv", str(csv_path), "--config", str(config_path)]
            print("$ " + " ".join(cmd), flush=True)
            t0 = time.perf_counter()
            done = run(coalition(*cmd[1:]), "coalition import-csv", stdout=subprocess.PIPE)
            import_s = time.perf_counter() - t0
            sys.stdout.write(done.stdout)
            found = SUMMARY.search(done.stdout)
            if found is None:
                raise BenchFailed(f"no summary line in the import's output:\n{done.stdout}")
            accepted, replayed, rejected = (int(g) for g in found.groups())
            if (accepted, replayed, rejected) != (rows, 0, 0):
                raise BenchFailed(
                    f"expected {rows} accepted, 0 replayed, 0 rejected; got {accepted}, "
                    f"{replayed}, {rejected}"
                )
            header = wait_covered(client, base + accepted, timeout=120).header
            sealed_s = time.perf_counter() - t0
            print(
                f"sealed: latest header height {header.height}, log size "
                f"{header.log_size:,} = {base:,} + {accepted:,} "
                f"({sealed_s:.1f} s after the import started)"
            )

        report_path = folder / "audit.json"
        cmd = ["coalition", "audit", "--config", str(config_path), "--json", str(report_path)]
        print("$ " + " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        done = run(coalition(*cmd[1:]), "coalition audit", stdout=subprocess.PIPE)
        audit_s = time.perf_counter() - t0
        report = json.loads(report_path.read_text())
        if report.get("ok") is not True or report.get("entries") != base + accepted:
            raise BenchFailed(
                f"the audit did not pass over {base + accepted} entries: ok={report.get('ok')}, "
                f"entries={report.get('entries')} (see {report_path})"
            )
        audited = int(report["entries"])
        print(done.stdout.rstrip())
        print("stopping the node (SIGTERM) ...", flush=True)
    # running_node sent SIGTERM and required exit status 0.
    lines += [
        "",
        f"machine: {machine()}",
        f"workload: {rows:,} CSV rows over {members:,} members, node.toml as shipped "
        "(SQLite WAL synchronous=FULL, blocks of 1,000 / 200 ms), node as a subprocess",
        f"import-csv: {import_s:8.1f} s  {rows / import_s:>10,.0f} rows/s "
        f"(accepted {accepted:,}, replayed {replayed}, rejected {rejected})",
        f"  + sealed: {sealed_s:8.1f} s  {rows / sealed_s:>10,.0f} rows/s "
        "(until the latest signed header covers every entry)",
        f"audit:      {audit_s:8.1f} s  {audited / audit_s:>10,.0f} entries/s "
        f"({audited:,} entries, ok)",
        "node stopped with SIGTERM, exit status 0",
    ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="CSV rows to import")
    parser.add_argument("--members", type=int, default=20_000, help="members to enroll")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (must not exist)")
    args = parser.parse_args()
    if args.rows < 1 or args.members < 1:
        parser.error("rows and members must be positive")
    if args.keep:
        folder = Path(args.keep)
        if folder.exists():
            parser.error(f"{folder} exists; give a new folder to --keep")
        folder.mkdir(parents=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix="coalition-bench-import-"))
    started = time.perf_counter()
    try:
        lines = bench(folder, args.rows, args.members)
    except (BenchFailed, CoalitionError) as exc:
        print(f"\nBENCH FAILED: {exc}", file=sys.stderr)
        if args.keep:
            print(f"(folder kept: {folder})", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print("\n".join(lines))
    print(f"total wall time {time.perf_counter() - started:.0f} s")
    if args.keep:
        print(f"folder kept: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
