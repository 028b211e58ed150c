"""What the benchmarks under ``scripts/`` share: the machine line, CPU of processes
(``/proc``), medians and percentiles, the bare gRPC round trip baseline, single writes
over gRPC and REST from client processes, node processes of one ``node.toml``
(``coalition.demo.processes``), scratch PostgreSQL databases, ``pgbench`` and the JSON
output.

A benchmark reports each figure against a baseline measured **in the same run** (the
machine is shared and noisy; only ratios compare across runs) and the CPU the node's
processes (and, on PostgreSQL, the benchmark database's backends) spent per operation.
CPU is read from ``/proc/<pid>/stat`` before and after a timed phase, so it counts every
thread of the process; a process must not exit during the phase.

Not a module of the package: the scripts import it with ``scripts/`` on ``sys.path``
(the folder of the script being run).
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import create_engine, text

from coalition.audit import DatabaseSource, audit_chain
from coalition.demo.processes import NodeProcess, free_ports, wait_ready
from coalition.ledger.keys import VerifyKey
from coalition.store.db import normalise_url

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_URL = os.environ.get(
    "COALITION_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
"""The PostgreSQL server the benchmarks use (the tests' variable): scratch databases are
created on it and dropped afterwards."""

Figures = dict[str, float]


def machine() -> str:
    """One line naming the machine and the versions that matter for the figures."""
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import cryptography
    import sqlalchemy

    return (
        f"CPU {cpu}, {os.cpu_count()} cores; Python {platform.python_version()}; "
        f"SQLite {sqlite3.sqlite_version}; SQLAlchemy {sqlalchemy.__version__}; "
        f"cryptography {cryptography.__version__}; {platform.system()} {platform.release()}"
    )


# --- CPU ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``), every thread."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def context_switches(pid: int) -> int:
    """Context switches (voluntary and not) of process ``pid``'s live threads so far
    (``/proc/<pid>/task/*/status``): a thread that ends takes its count with it, so a
    phase's difference undercounts when threads come and go during it."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:  # the thread ended while we looked
            continue
        total += sum(int(n) for n in re.findall(r"^\w*ctxt_switches:\s+(\d+)$", text, re.M))
    return total


def own_cpu_seconds() -> float:
    """CPU of this process so far, every thread (what an in-process node spends)."""
    return cpu_seconds(os.getpid())


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (``/proc/stat``)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(values) / os.sysconf("SC_CLK_TCK")
    idle = (values[3] + values[4]) / os.sysconf("SC_CLK_TCK")
    return total - idle, total


class BackendCpu:
    """CPU of the PostgreSQL backends serving the databases ``datnames``, sampled in a
    thread.

    Backends are found in ``pg_stat_activity`` (through a connection to ``admin_url``,
    which needs a role that sees other sessions) every ``interval`` s and their CPU read
    from ``/proc``; the total is, per backend, its last sample minus its first. So a
    backend that starts and ends between two samples is missed, and up to ``interval`` s
    of each backend that exits before ``stop`` is: "where measurable", a lower bound. It
    reads nothing when the server is not on this machine (the total stays 0, ``seen`` 0).
    """

    def __init__(self, admin_url: str, datnames: Sequence[str], interval: float = 0.1) -> None:
        self._admin_url = admin_url
        self._datnames = list(datnames)
        self._interval = interval
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self, conn: Any) -> None:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = ANY(%s) AND pid <> pg_backend_pid()",
            (self._datnames,),
        ).fetchall()
        for (pid,) in rows:
            try:
                value = cpu_seconds(int(pid))
            except (OSError, IndexError, ValueError):
                continue
            self._first.setdefault(pid, value)
            self._last[pid] = value

    def _run(self) -> None:
        import psycopg

        with psycopg.connect(libpq_url(self._admin_url), autocommit=True) as conn:
            while True:
                self._sample(conn)
                if self._stop.wait(self._interval):
                    self._sample(conn)
                    return

    def start(self) -> BackendCpu:
        self._thread = threading.Thread(target=self._run, name="backend-cpu", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> float:
        """Stop sampling; the backends' CPU seconds over the sampled interval."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        return sum(self._last[pid] - first for pid, first in self._first.items())

    @property
    def seen(self) -> int:
        return len(self._first)


def measured(
    run: Callable[[], Figures],
    pids: Mapping[str, Sequence[int]],
    backends: tuple[str, Sequence[str]] | None = None,
) -> Figures:
    """``run()``'s figures (it MUST return ``count``, the operations done) plus CPU per
    operation in ms: ``cpu_node_ms`` of every process in ``pids`` and, with more than one
    group, ``cpu_NAME_ms`` of each group; ``switches_node``, their context switches per
    operation (``context_switches``); how busy the machine was; and with ``backends``
    = (admin URL, database names) the CPU of those databases' PostgreSQL backends
    (``cpu_pg_ms``, see ``BackendCpu``). The processes MUST outlive ``run``."""
    sampler = BackendCpu(*backends).start() if backends is not None else None
    every = [p for group in pids.values() for p in group]
    before = {name: sum(cpu_seconds(p) for p in group) for name, group in pids.items()}
    switches_before = sum(context_switches(p) for p in every)
    busy_before = machine_busy()
    result = run()
    after = {name: sum(cpu_seconds(p) for p in group) for name, group in pids.items()}
    switches_after = sum(context_switches(p) for p in every)
    busy_after = machine_busy()
    count = result["count"]
    spent = {name: (after[name] - before[name]) * 1000 / count for name in pids}
    result["cpu_node_ms"] = sum(spent.values())
    result["switches_node"] = (switches_after - switches_before) / count
    if len(pids) > 1:
        result.update({f"cpu_{name}_ms": value for name, value in spent.items()})
    busy, total = busy_after[0] - busy_before[0], busy_after[1] - busy_before[1]
    result["machine_busy"] = busy / total if total else 0.0
    if sampler is not None:
        result["cpu_pg_ms"] = sampler.stop() * 1000 / count
    return result


# --- figures --------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def summary(count: int, elapsed: float, latencies: Sequence[float]) -> Figures:
    """Throughput and latency figures (ms) of ``count`` operations in ``elapsed`` s."""
    return {
        "count": count,
        "per_s": count / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
    }


def median_of(runs: Sequence[Figures]) -> Figures:
    """Figure by figure, the median over ``runs`` (each the same keys)."""
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def split(clients: int, procs: int) -> list[int]:
    """``clients`` threads spread over ``procs`` processes, as evenly as possible."""
    return [clients // procs + (1 if p < clients % procs else 0) for p in range(procs)]


def line(name: str, r: Figures, width: int = 18) -> str:
    """One printed line of a phase's figures."""
    text = (
        f"{name:{width}} {r['per_s']:8,.0f}/s   p50 {r['p50_ms']:7.2f} ms   "
        f"p99 {r['p99_ms']:7.2f} ms"
    )
    if "cpu_node_ms" in r:
        text += f"   node CPU/op {r['cpu_node_ms']:5.2f} ms"
    if "switches_node" in r:
        text += f"   switches/op {r['switches_node']:5.1f}"
    if "cpu_pg_ms" in r:
        text += f"   PostgreSQL CPU/op {r['cpu_pg_ms']:5.2f} ms"
    if "machine_busy" in r:
        text += f"   machine busy {r['machine_busy']:.0%}"
    if r.get("errors"):
        text += f"   ERRORS {r['errors']:.0f}"
    return text


def write_json(path: Path | None, document: dict[str, Any]) -> None:
    """Write the figures (with the machine line) to ``path`` when one was given."""
    if path is not None:
        path.write_text(json.dumps({"machine": machine(), **document}, indent=2) + "\n")


# --- the bare gRPC round trip ---------------------------------------------------------


def health_worker(
    targets: Sequence[str],
    tls: tuple[bytes, bytes, bytes, str] | None,
    calls: int,
    threads: int,
) -> list[float]:
    """``calls`` ``grpc.health.v1.Health/Check`` round trips from ``threads`` threads (one
    channel each, spread over ``targets``); latencies in s. ``tls`` is (CA, certificate,
    key, server name) for a mutual-TLS channel."""
    latencies: list[float] = []
    lock = threading.Lock()

    def run(n: int, count: int) -> None:
        target = targets[n % len(targets)]
        if tls is None:
            channel = grpc.insecure_channel(target)
        else:
            ca, cert, key, name = tls
            credentials = grpc.ssl_channel_credentials(ca, key, cert)
            channel = grpc.secure_channel(
                target, credentials, options=[("grpc.ssl_target_name_override", name)]
            )
        stub = health_pb2_grpc.HealthStub(channel)
        stub.Check(health_pb2.HealthCheckRequest(), timeout=10)  # connect first, untimed
        mine = []
        for _ in range(count):
            began = time.perf_counter()
            stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
            mine.append(time.perf_counter() - began)
        channel.close()
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=run, args=(n, calls // threads)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return latencies


def bare(
    pool: ProcessPoolExecutor,
    targets: Sequence[str],
    tls: tuple[bytes, bytes, bytes, str] | None,
    calls: int,
    clients: int,
    procs: int,
) -> Figures:
    """The bare gRPC round trip: ``calls`` Health/Check calls from ``clients`` threads in
    ``procs`` client processes of ``pool``; the same clients as the benchmark's own."""
    threads = [t for t in split(clients, procs) if t]
    began = time.perf_counter()
    futures = [
        pool.submit(health_worker, targets, tls, max(t, calls * t // clients), t) for t in threads
    ]
    latencies = [x for f in futures for x in f.result()]
    return summary(len(latencies), time.perf_counter() - began, latencies)


# --- node processes -------------------------------------------------------------------


@dataclass
class NodeGroup:
    """``processes`` ``coalition run`` processes of one ``node.toml``, one database.

    Each process gets its own member gRPC and HTTP ports through the environment
    (``COALITION_GRPC_ADDRESS``, ``COALITION_HTTP_ADDRESS``; the first keeps the file's
    when ``first`` names them) and ``COALITION_DATABASE_URL``. With ``partner_grpc`` the
    first process binds that partner port (the one the manifest names, so partners call
    it) and every other one a free port of its own (``COALITION_PARTNER_GRPC_ADDRESS``):
    the node's servers refuse a shared port, so until ``coalition run --processes N``
    shares them, the partners' calls reach the first process only, while every process
    serves members and delivers its own outbox. The first process starts alone and is
    ready before the others start, so only one creates the schema.
    """

    config: Path
    database_url: str
    processes: int = 1
    first: tuple[str, str] | None = None
    partner_grpc: str | None = None
    nodes: list[NodeProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        ports = iter(free_ports(3 * self.processes))
        for n in range(self.processes):
            grpc_addr, http_addr, partner = (f"127.0.0.1:{next(ports)}" for _ in range(3))
            if n == 0 and self.first is not None:
                grpc_addr, http_addr = self.first
            env = {
                "COALITION_DATABASE_URL": self.database_url,
                "COALITION_GRPC_ADDRESS": grpc_addr,
                "COALITION_HTTP_ADDRESS": http_addr,
            }
            if self.partner_grpc is not None:
                env["COALITION_PARTNER_GRPC_ADDRESS"] = self.partner_grpc if n == 0 else partner
            log = self.config.parent / f"node-{n + 1}.log"
            self.nodes.append(
                NodeProcess(self.config, grpc=grpc_addr, http=http_addr, log_path=log, env=env)
            )

    @property
    def grpc(self) -> list[str]:
        return [n.grpc for n in self.nodes]

    @property
    def http(self) -> list[str]:
        return [n.http for n in self.nodes]

    @property
    def pids(self) -> list[int]:
        return [n.process.pid for n in self.nodes if n.process is not None]

    def start(self, timeout: float = 60.0) -> None:
        self.nodes[0].start()
        self.nodes[0].wait_ready(timeout)
        for node in self.nodes[1:]:
            node.start()
        for node in self.nodes[1:]:
            wait_ready(node.grpc, node.http, timeout, process=node)

    def stop(self) -> None:
        """SIGTERM every process, then wait for each; the first failure afterwards."""
        for node in self.nodes:
            node.terminate()
        failures = []
        for node in self.nodes:
            try:
                node.stop()
            except Exception as exc:
                failures.append(exc)
        if failures:
            raise failures[0]


def standalone_config(folder: Path, program: str = "skyair", sealer_ms: int | None = None) -> Path:
    """The demo's ``node.toml`` of ``program`` run alone (no coalition table) in
    ``folder``, its SQLite file there, keys made by ``coalition keygen``; with
    ``sealer_ms`` the sealer's ``max_delay_ms``. The path of the file."""
    from coalition.demo.nodes import templates
    from coalition.ops.tomlfiles import write_toml

    with templates() as source:
        document = tomllib.loads((source / program / "node.toml").read_text(encoding="utf-8"))
    document.pop("coalition", None)
    document["node"]["database"] = f"sqlite:///{folder / 'data' / f'{program}.db'}"
    document["node"]["expiry_interval_s"] = 3600
    if sealer_ms is not None:
        document["sealer"]["max_delay_ms"] = sealer_ms
    (folder / "data").mkdir(parents=True, exist_ok=True)
    config = write_toml(folder / "node.toml", document)
    subprocess.run(
        [sys.executable, "-m", "coalition.cli", "keygen", "--config", str(config)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return config


# --- PostgreSQL -----------------------------------------------------------------------


def libpq_url(url: str) -> str:
    """``url`` without SQLAlchemy's ``+driver`` suffix (what psycopg and pgbench take)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme=parts.scheme.split("+", 1)[0]))


def with_database(url: str, name: str) -> str:
    """``url`` naming database ``name`` instead of its own."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@contextmanager
def scratch_database(base_url: str = POSTGRES_URL, prefix: str = "bench") -> Iterator[str]:
    """A fresh PostgreSQL database on ``base_url``'s server (its URL), dropped afterwards
    (``WITH (FORCE)``: also when a killed process left sessions behind)."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq_url(base_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(base_url, name)
    finally:
        with psycopg.connect(libpq_url(base_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def pgbench(base_url: str, clients: int, threads: int, seconds: float, scale: int = 1) -> Figures:
    """``pgbench -c CLIENTS -j THREADS -T SECONDS`` TPC-B (the built-in script) on a scratch
    database of ``base_url``'s server initialised with ``pgbench -i -s SCALE`` (untimed):
    transactions/s, latency p50/p99 from the per-transaction log, the backends' CPU per
    transaction (``BackendCpu``) and how busy the machine was."""
    if shutil.which("pgbench") is None:
        raise SystemExit("pgbench is not on PATH (the PostgreSQL client tools)")
    with scratch_database(base_url, prefix="pgbench") as url:
        target = libpq_url(url)
        subprocess.run(
            ["pgbench", "-i", "-q", "-s", str(scale), target],
            check=True,
            capture_output=True,
            timeout=600,
        )
        folder = Path(tempfile.mkdtemp(prefix="pgbench-log-"))
        try:
            command = ["pgbench", "-n", "-c", str(clients), "-j", str(threads)]
            command += ["-T", str(max(1, round(seconds))), "-l", "--log-prefix"]
            command += [str(folder / "tx"), target]
            sampler = BackendCpu(libpq_url(base_url), [database_name(url)]).start()
            before = machine_busy()
            result = subprocess.run(
                command, check=True, capture_output=True, text=True, timeout=seconds + 120
            )
            after = machine_busy()
            backend_cpu = sampler.stop()
            latencies = [
                int(row.split()[2]) / 1e6
                for log in folder.glob("tx*")
                for row in log.read_text().splitlines()
                if row.strip()
            ]
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", result.stdout)
    if match is None or not latencies:
        raise SystemExit(f"pgbench printed no rate:\n{result.stdout}\n{result.stderr}")
    figures = summary(len(latencies), 1.0, latencies)
    figures["per_s"] = float(match.group(1))
    figures["cpu_pg_ms"] = backend_cpu * 1000 / len(latencies)
    busy, total = after[0] - before[0], after[1] - before[1]
    figures["machine_busy"] = busy / total if total else 0.0
    return figures


# --- single writes over gRPC and REST ---------------------------------------------------


@dataclass(frozen=True)
class Writes:
    """What a phase of single writes calls (sent to the client processes as is).

    ``op`` is ``redeem`` (1 point, ``Points.Redeem`` / ``POST .../redemptions``) or
    ``earn`` (one purchase, ``Points.EarnPurchase`` / ``POST .../earn``); call ``n`` goes
    to member ``member_format % (n % members)`` with idempotency key ``TAG-OP-TRANSPORT-n``
    (so no phase replays another's writes). Thread ``t`` of a client process uses target
    ``t`` (mod the targets), so channels spread over a node's processes.
    """

    op: str
    transport: str
    targets: tuple[str, ...]
    api_key: str
    members: int
    tag: str
    member_format: str

    def request(self, n: int) -> Any:
        """Call ``n``'s request: a protobuf message (gRPC) or (path, JSON body) (REST)."""
        who = self.member_format % (n % self.members)
        key = f"{self.tag}-{self.op}-{self.transport}-{n}"
        if self.op == "redeem":
            fields: dict[str, Any] = {"amount": 1, "reference": key}
        else:
            fields = {"reference": key, "spend_minor": 1000, "category": "flights"}
        if self.transport == "rest":
            path = f"/v1/members/{who}/{'redemptions' if self.op == 'redeem' else 'earn'}"
            return path, json.dumps({**fields, "idempotency_key": key}).encode()
        from coalition.v1 import points_pb2

        kind = points_pb2.RedeemRequest if self.op == "redeem" else points_pb2.EarnPurchaseRequest
        return kind(member_id=who, idempotency_key=key, **fields)

    def rotated(self, by: int) -> Writes:
        """The same writes with the targets' list rotated by ``by`` (one per process)."""
        k = by % len(self.targets)
        return replace(self, targets=self.targets[k:] + self.targets[:k])


def _grpc_writes(writes: Writes, target: str, part: list[int]) -> tuple[list[float], list[str]]:
    from coalition.v1 import points_pb2_grpc

    metadata = (("authorization", f"Bearer {writes.api_key}"),)
    latencies, errors = [], []
    with grpc.insecure_channel(target) as channel:
        stub = points_pb2_grpc.PointsStub(channel)
        call = stub.Redeem if writes.op == "redeem" else stub.EarnPurchase
        for n in part:
            request = writes.request(n)
            began = time.perf_counter()
            try:
                call(request, metadata=metadata, timeout=30)
            except grpc.RpcError as exc:
                errors.append(f"{exc.code().name}: {exc.details()}")
                continue
            latencies.append(time.perf_counter() - began)
    return latencies, errors


def _rest_writes(writes: Writes, target: str, part: list[int]) -> tuple[list[float], list[str]]:
    headers = {"Authorization": f"Bearer {writes.api_key}", "Content-Type": "application/json"}
    latencies, errors = [], []
    host, port = target.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.connect()  # no Nagle on our side: a request is one segment, never held for an ACK
    assert conn.sock is not None
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for n in part:
        path, body = writes.request(n)
        began = time.perf_counter()
        try:
            conn.request("POST", path, body, headers)
            reply = conn.getresponse()
            data = reply.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        if not 200 <= reply.status < 300:
            errors.append(f"HTTP {reply.status}: {data[:200].decode(errors='replace')}")
            continue
        latencies.append(time.perf_counter() - began)
    conn.close()
    return latencies, errors


def write_worker(writes: Writes, numbers: list[int], threads: int) -> tuple[list[float], list[str]]:
    """Calls ``numbers`` of ``writes`` from ``threads`` threads (one channel or keep-alive
    HTTP connection each): (latencies of the acknowledged calls in s, errors)."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    one = _grpc_writes if writes.transport == "grpc" else _rest_writes

    def run(t: int, part: list[int]) -> None:
        mine, failed = one(writes, writes.targets[t % len(writes.targets)], part)
        with lock:
            latencies.extend(mine)
            errors.extend(failed)

    parts = [numbers[t::threads] for t in range(threads)]
    workers = [threading.Thread(target=run, args=(t, p)) for t, p in enumerate(parts) if p]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return latencies, errors


def write_run(
    pool: ProcessPoolExecutor, writes: Writes, count: int, clients: int, procs: int
) -> Figures:
    """``count`` calls of ``writes`` by ``clients`` threads in ``procs`` processes of
    ``pool``: the figures of the acknowledged calls and ``errors``, the failed ones (the
    first printed). SystemExit when every call failed."""
    threads = [t for t in split(clients, procs) if t]
    numbers = list(range(count))
    began = time.perf_counter()
    futures = [
        pool.submit(write_worker, writes.rotated(p), numbers[p :: len(threads)], t)
        for p, t in enumerate(threads)
    ]
    done = [f.result() for f in futures]
    elapsed = time.perf_counter() - began
    latencies = [x for lat, _ in done for x in lat]
    errors = [e for _, err in done for e in err]
    what = f"{writes.op} over {writes.transport}"
    if not latencies:
        raise SystemExit(f"{what}: every call failed, e.g. {errors[:3]}")
    result = summary(len(latencies), elapsed, latencies)
    result["errors"] = len(errors)
    if errors:
        print(f"  {what}: {len(errors)} calls failed, e.g. {errors[0]}")
    return result


def log_problems(url: str, public_key: VerifyKey) -> tuple[int, list[str]]:
    """The number of entries in the node's log at ``url`` and what is wrong with it: not
    dense, or the chain not sound (``audit_chain``). The benchmarks' closing check."""
    engine = create_engine(normalise_url(url))
    try:
        with engine.connect() as conn:
            count, top = conn.execute(text("SELECT count(*), max(log_index) FROM entries")).one()
    finally:
        engine.dispose()
    problems = []
    if top is None or top + 1 != count:
        problems.append(f"log not dense: {count} entries, highest index {top}")
    source = DatabaseSource(url)
    try:
        report = audit_chain(source, public_key)
    finally:
        source.close()
    if not report.ok:
        problems.append(report.render())
    return int(count), problems
