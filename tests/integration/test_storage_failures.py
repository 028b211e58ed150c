"""Issue 11, class 3: a full disk, a read-only, unreachable or damaged database.

The disks here really fill: the SQLite file lives on a small tmpfs and the PostgreSQL
tables in a private instance's tablespace on one (``support.full_disk``), filled to the
last byte. Every test checks the promise, not only the status: a write refused for
storage is not acknowledged and leaves nothing (the same idempotency key, once space
returned, makes a new entry, not a replay), every acknowledged write is still there,
the node's threads live on, and the node resumes by itself when space returns.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from coalition.api.grpc.client import NodeClient, TransportError
from coalition.api.grpc.server import serve_grpc
from coalition.api.http.app import create_app
from coalition.cli import main
from coalition.errors import CoalitionError, StorageUnavailable
from coalition.node.auth import Authenticator
from coalition.node.config import SealerConfig
from coalition.node.service import NodeService
from coalition.store.db import make_engine

from support.databases import postgres_schema
from support.full_disk import (
    DiskFiller,
    PrivatePostgres,
    postgres_missing,
    postgres_on_tmpfs,
    small_tmpfs,
    tmpfs_missing,
)
from support.nodes import temporary_node
from support.processes import healthz, make_coalition

FAST_SEALER = SealerConfig(max_entries=1000, max_delay_ms=20)
ATTEMPTS = 20_000
"""Most writes a test tries before the full disk refuses one (a few hundred suffice)."""


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    problem = postgres_missing()
    if problem is not None:
        pytest.skip(f"no private PostgreSQL on a tmpfs here: {problem}")
    with postgres_on_tmpfs(48) as server:
        yield server


@dataclass
class FullDisk:
    """A node's database URL on a disk that ``disk`` fills and frees."""

    url: str
    disk: DiskFiller


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def full_disk(request: pytest.FixtureRequest) -> Iterator[FullDisk]:
    """A fresh database on a small disk: a SQLite file on a tmpfs of its own, or a
    PostgreSQL schema in the private instance's tablespace on a tmpfs."""
    if request.param == "sqlite":
        problem = tmpfs_missing()
        if problem is not None:
            pytest.skip(problem)
        with small_tmpfs(8) as folder:
            filler = DiskFiller(folder)
            try:
                yield FullDisk(f"sqlite:///{folder / 'node.db'}", filler)
            finally:
                filler.free()
        return
    server: PrivatePostgres = request.getfixturevalue("private_postgres")
    filler = DiskFiller(server.tablespace)
    try:
        with postgres_schema(server.url) as url:
            yield FullDisk(url, filler)
    finally:
        filler.free()


def enroll_until_refused(node: NodeService, prefix: str) -> tuple[list[str], str, Exception]:
    """Enroll ``prefix0``, ``prefix1`` ... until one is refused: the acknowledged members,
    the refused one and its error. Some writes still fit after the fill (free room in
    pages and the WAL), so it takes a few."""
    acknowledged: list[str] = []
    for n in range(ATTEMPTS):
        member = f"{prefix}{n}"
        try:
            node.points.enroll(member, idempotency_key=member)
        except CoalitionError as exc:
            return acknowledged, member, exc
        acknowledged.append(member)
    raise AssertionError(f"{ATTEMPTS} writes fitted on the full disk")


def assert_disk_full(error: BaseException) -> None:
    assert isinstance(error, StorageUnavailable), repr(error)
    assert "disk is full" in str(error)
    assert error.retry_after_s is not None and error.retry_after_s > 0


def assert_not_kept(node: NodeService, members: list[str]) -> None:
    """Each refused write left nothing: its key now makes a new entry, not a replay."""
    for member in members:
        result = node.points.enroll(member, idempotency_key=member)
        assert result.replayed is False, member


def assert_kept(node: NodeService, members: list[str]) -> None:
    """Each acknowledged write is there: its key replays it."""
    for member in members:
        assert node.points.enroll(member, idempotency_key=member).replayed is True, member


def test_full_disk_refuses_writes_keeps_the_node_up_and_resumes_when_space_returns(
    full_disk: FullDisk,
) -> None:
    with temporary_node(full_disk.url, sealer=FAST_SEALER) as node:
        for n in range(20):
            node.points.enroll(f"before{n}", idempotency_key=f"before{n}")
        node.sealer.flush()
        full_disk.disk.fill()

        acknowledged, refused, error = enroll_until_refused(node, "full")
        assert_disk_full(error)
        problem = node.storage.problem()
        assert problem is not None and "disk is full" in problem.message

        # The group commit: callers queued behind one leader all get the clear error
        # (or, if their batch still fitted, an acknowledged entry): nothing in between.
        outcomes: dict[str, BaseException | None] = {}
        start = threading.Barrier(8)

        def write(member: str) -> None:
            start.wait()
            try:
                node.points.enroll(member, idempotency_key=member)
                outcomes[member] = None
            except BaseException as exc:
                outcomes[member] = exc

        with node.sequencer._writer:  # the callers queue into one batch meanwhile
            threads = [threading.Thread(target=write, args=(f"group{n}",)) for n in range(8)]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 10
            while node.sequencer.waiting < 7 and time.monotonic() < deadline:
                time.sleep(0.005)  # one leads (its batch taken), seven queue behind it
        for thread in threads:
            thread.join(30)
        group_refused = [m for m, exc in outcomes.items() if exc is not None]
        for member in group_refused:
            assert_disk_full(outcomes[member])  # type: ignore[arg-type]
        assert group_refused, "a batch of eight writes fitted on the full disk"
        acknowledged += [m for m, exc in outcomes.items() if exc is None]

        # The node's threads live on while the disk stays full.
        time.sleep(0.3)
        assert node.sealer._thread is not None and node.sealer._thread.is_alive()

        full_disk.disk.free()
        assert_not_kept(node, [refused, *group_refused])
        assert_kept(node, acknowledged)
        assert node.storage.problem() is None
        latest = node.sealer.flush()
        assert latest is not None and latest.header.log_size == node.sequencer.next_index
        url = full_disk.url
    assert _coalition("check", "--database", url).returncode == 0


def test_full_disk_answers_rest_503_and_grpc_unavailable_and_healthz_says_so(
    full_disk: FullDisk, authenticator: Authenticator, api_keys: dict[str, str]
) -> None:
    operator = {"Authorization": f"Bearer {api_keys['operator']}"}
    with temporary_node(full_disk.url, sealer=FAST_SEALER) as node:
        server, port = serve_grpc(node, authenticator, "127.0.0.1", 0)
        try:
            with (
                TestClient(create_app(node, authenticator)) as http,
                NodeClient(f"127.0.0.1:{port}", api_keys["operator"]) as client,
            ):
                full_disk.disk.fill()
                for n in range(ATTEMPTS):
                    body = {"member_id": f"rest{n}", "idempotency_key": f"rest{n}"}
                    answer = http.post("/v1/members", json=body, headers=operator)
                    if answer.status_code != 201:
                        break
                assert answer.status_code == 503, answer.text
                assert answer.headers["content-type"] == "application/json"
                assert answer.headers["retry-after"] == "5"
                assert answer.json()["error"] == "storage_unavailable"
                assert "disk is full" in answer.json()["message"]
                refused_rest = body["member_id"]

                health = http.get("/healthz")
                assert health.status_code == 200
                assert health.json()["status"] == "degraded"
                assert "disk is full" in health.json()["storage"]["problem"]

                for n in range(ATTEMPTS):
                    try:
                        client.enroll(f"grpc{n}", idempotency_key=f"grpc{n}")
                    except TransportError as exc:
                        refusal = exc
                        break
                assert refusal.code == grpc.StatusCode.UNAVAILABLE
                assert "disk is full" in str(refusal)
                refused_grpc = f"grpc{n}"

                full_disk.disk.free()
                body = {"member_id": refused_rest, "idempotency_key": refused_rest}
                again = http.post("/v1/members", json=body, headers=operator)
                assert again.status_code == 201 and again.json()["replayed"] is False
                assert client.enroll(refused_grpc, idempotency_key=refused_grpc).replayed is False
                assert http.get("/healthz").json()["status"] == "ok"
        finally:
            server.stop(None).wait(10)


def _coalition(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coalition.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _coalition_here(
    capsys: pytest.CaptureFixture[str], *args: str
) -> subprocess.CompletedProcess[str]:
    """``coalition ARGS`` in this process (faster; the tests that must see that no signal
    kills the tool run it as a process, ``_coalition``)."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["coalition", *args], code, out, err)


def assert_one_line_failure(done: subprocess.CompletedProcess[str], expected: str) -> None:
    """A CLI failure: non-zero exit, no signal, no traceback, and one line on stderr
    naming ``expected`` (after the progress bar's, if it had started)."""
    assert done.returncode > 0, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert expected in lines[-1], done.stderr
    assert not [line for line in lines[:-1] if expected in line], done.stderr


@pytest.mark.skipif(tmpfs_missing() is not None, reason=str(tmpfs_missing()))
def test_cli_tools_on_a_full_disk_fail_with_one_line(tmp_path: Path) -> None:
    with small_tmpfs(8) as folder:
        url = f"sqlite:///{folder / 'node.db'}"
        with temporary_node(url) as node:
            for n in range(20):
                node.points.enroll(f"m{n}", idempotency_key=f"m{n}")
            key = tmp_path / "public.pem"
            key.write_bytes(node.public_key.to_pem())
        filler = DiskFiller(folder)
        filler.fill()
        try:
            # With the node stopped the WAL index is gone: a reader must make it, and
            # the full disk refuses (SQLite's SQLITE_IOERR_SHMSIZE).
            for args in (
                ("check", "--database", url),
                ("audit", "--database", url, "--public-key", str(key)),
                ("bundle", "--database", url, "--program", "testair", "--public-key", str(key)),
            ):
                out = ["--out", str(folder / "bundle.json")] if args[0] == "bundle" else []
                assert_one_line_failure(_coalition(*args, *out), "storage unavailable")
        finally:
            filler.free()


def read_only_url(url: str, folder: Path) -> str:
    """``url``'s database opened read-only: SQLite's ``mode=ro`` (root ignores file modes,
    so a chmod would prove nothing here), PostgreSQL's ``default_transaction_read_only``."""
    if url.startswith("sqlite"):
        return f"sqlite:///file:{url.removeprefix('sqlite:///')}?mode=ro&uri=true"
    assert "options=-csearch_path" in url
    return url + "%20-cdefault_transaction_read_only%3Don"


def test_read_only_database_answers_503_and_serves_reads(
    database_url: str, tmp_path: Path, authenticator: Authenticator, api_keys: dict[str, str]
) -> None:
    with temporary_node(database_url) as node:
        node.points.enroll("alice", idempotency_key="alice")
        key, secret, rules = node.signing_key, b"test-account-secret-0123456789", node.rules
    engine = make_engine(read_only_url(database_url, tmp_path))
    node = NodeService(engine, "testair", key, secret, rules, FAST_SEALER)
    node.start()  # the lease cannot be written: logged, and the node serves on
    operator = {"Authorization": f"Bearer {api_keys['operator']}"}
    try:
        with TestClient(create_app(node, authenticator)) as http:
            balance = http.get("/v1/members/alice/balance", headers=operator)
            assert balance.status_code == 200, balance.text
            body = {"member_id": "bob", "idempotency_key": "bob"}
            refused = http.post("/v1/members", json=body, headers=operator)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"] == "storage_unavailable"
            assert "read-only" in refused.json()["message"]
            assert refused.headers["retry-after"] == "5"
            assert http.get("/healthz").json()["status"] == "degraded"
    finally:
        node.close()
    with temporary_node(database_url, key=key) as node:
        assert node.points.enroll("bob", idempotency_key="bob").replayed is False


def root_page_damaged(database: Path, copy: Path, table: str) -> None:
    """``copy``: ``database`` with the page type byte of ``table``'s root page zeroed (a
    damaged page, as a bad sector or a torn write leaves one)."""
    source = sqlite3.connect(database)
    try:
        source.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (root,) = source.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)
        ).fetchone()
        (page_size,) = source.execute("PRAGMA page_size").fetchone()
    finally:
        source.close()
    data = bytearray(database.read_bytes())
    data[(root - 1) * page_size] = 0
    copy.write_bytes(bytes(data))


def test_damaged_page_gives_503_on_the_node_and_one_line_from_the_cli_tools(
    tmp_path: Path,
    authenticator: Authenticator,
    api_keys: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    database, damaged, lots = tmp_path / "node.db", tmp_path / "damaged.db", tmp_path / "lots.db"
    with temporary_node(f"sqlite:///{database}") as node:
        for n in range(20):
            node.points.enroll(f"m{n}", idempotency_key=f"m{n}")
        pem = tmp_path / "public.pem"
        pem.write_bytes(node.public_key.to_pem())
        key, secret, rules = node.signing_key, b"test-account-secret-0123456789", node.rules
    root_page_damaged(database, damaged, "entries")
    root_page_damaged(database, lots, "accounts")
    url = f"sqlite:///{damaged}"
    check = _coalition_here(capsys, "check", "--database", url)
    assert_one_line_failure(check, "the database file is damaged")
    bundle = ("bundle", "--database", url, "--program", "testair", "--public-key", str(pem))
    done = _coalition_here(capsys, *bundle, "--out", str(tmp_path / "bundle.json"))
    assert_one_line_failure(done, "the database file is damaged")
    # The audit reads what it can and reports the damage as a fault of its report.
    audit = _coalition_here(capsys, "audit", "--database", url, "--public-key", str(pem))
    assert audit.returncode == 1 and "Traceback" not in audit.stderr, audit.stderr
    assert "FAILED" in audit.stdout and "the database file is damaged" in audit.stdout

    lots_url = f"sqlite:///{lots}"
    node = NodeService(make_engine(lots_url), "testair", key, secret, rules, FAST_SEALER)
    operator = {"Authorization": f"Bearer {api_keys['operator']}"}
    try:
        with TestClient(create_app(node, authenticator)) as http:
            answer = http.get("/v1/members/m1/balance", headers=operator)
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"] == "corrupt_database"
            assert "restore it from a backup" in answer.json()["message"]
            assert "retry-after" not in answer.headers  # a retry does not mend a page
    finally:
        node.close()


@pytest.mark.postgres
def test_unreachable_postgres_answers_503_and_the_node_resumes_when_it_returns(
    private_postgres: PrivatePostgres, authenticator: Authenticator, api_keys: dict[str, str]
) -> None:
    operator = {"Authorization": f"Bearer {api_keys['operator']}"}
    # A database of its own (the node migrates it): a schema's admin connection would
    # not outlive the restart below.
    private_postgres.psql("CREATE DATABASE unreachable")
    url = private_postgres.url.rsplit("/", 1)[0] + "/unreachable"
    with temporary_node(url) as node, TestClient(create_app(node, authenticator)) as http:
        node.points.enroll("before", idempotency_key="before")
        private_postgres.stop()
        try:
            body = {"member_id": "during", "idempotency_key": "during"}
            refused = http.post("/v1/members", json=body, headers=operator)
            assert refused.status_code == 503, refused.text
            assert "cannot be reached" in refused.json()["message"]
            assert "127.0.0.1" not in refused.json()["message"]  # no host for a member
            assert http.get("/healthz").json()["status"] == "degraded"
            time.sleep(1.5)  # the lease renewal and the sealer meet the outage too
            assert node.sealer._thread is not None and node.sealer._thread.is_alive()
        finally:
            private_postgres.start()
        again = http.post("/v1/members", json=body, headers=operator)
        assert again.status_code == 201, again.text
        assert again.json()["replayed"] is False
        assert node.points.enroll("before", idempotency_key="before").replayed is True
        assert http.get("/healthz").json()["status"] == "ok"


@pytest.mark.skipif(tmpfs_missing() is not None, reason=str(tmpfs_missing()))
def test_coalition_run_stays_up_on_a_full_disk_restarts_on_it_and_resumes() -> None:
    with small_tmpfs(64) as folder:
        brand = make_coalition(folder, ("skyair", "staybright")).brands["skyair"]
        filler = DiskFiller(folder)
        brand.start()
        try:
            with brand.client() as client:
                client.enroll("before", idempotency_key="before")
                filler.fill()
                for n in range(ATTEMPTS):
                    try:
                        client.enroll(f"full{n}", idempotency_key=f"full{n}")
                    except TransportError as exc:
                        refusal = exc
                        break
                assert refusal.code == grpc.StatusCode.UNAVAILABLE, refusal
                assert "disk is full" in str(refusal)
                assert healthz(brand.node)["status"] == "degraded"
            # Stopped and started again while the disk stays full: it comes up.
            brand.stop()
            brand.start()
            assert healthz(brand.node)["status"] in ("ok", "degraded")
            with brand.client() as client:
                filler.free()
                assert client.enroll(f"full{n}", idempotency_key=f"full{n}").replayed is False
                assert client.enroll("before", idempotency_key="before").replayed is True
            assert healthz(brand.node)["status"] == "ok"
        finally:
            filler.free()
            brand.stop()


@pytest.mark.postgres
def test_damaged_postgres_page_gives_503_and_one_line_from_coalition_check(
    private_postgres: PrivatePostgres, authenticator: Authenticator, api_keys: dict[str, str]
) -> None:
    private_postgres.psql("CREATE DATABASE damaged")
    url = private_postgres.url.rsplit("/", 1)[0] + "/damaged"
    with temporary_node(url) as node:
        node.points.enroll("alice", idempotency_key="alice")
        key = node.signing_key
        with node.sequencer.read() as conn:
            relative = conn.execute(text("SELECT pg_relation_filepath('accounts')")).scalar_one()
    private_postgres.psql("CHECKPOINT")  # the page on disk, so the WAL replay keeps away
    private_postgres.stop()
    page = private_postgres.data / relative
    data = bytearray(page.read_bytes())
    data[12:16] = b"\xff\xff\xff\xff"  # pd_lower, pd_upper past the page: "invalid page"
    page.write_bytes(bytes(data))
    private_postgres.start()
    with (
        temporary_node(url, key=key) as node,
        TestClient(create_app(node, authenticator)) as http,
    ):
        operator = {"Authorization": f"Bearer {api_keys['operator']}"}
        answer = http.get("/v1/members/alice/balance", headers=operator)
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "corrupt_database"
        assert "XX001" in answer.json()["message"]
    assert_one_line_failure(_coalition("check", "--database", url), "the database file is damaged")
