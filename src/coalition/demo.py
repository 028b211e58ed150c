"""``coalition demo``: one brand's life in a minute, and the evidence that it happened.

In a temporary copy of ``nodes/skyair`` with time-compressed rules (purchases pend 2 s,
points expire after 10 s) it generates keys, runs the node as a real subprocess on free
127.0.0.1 ports and, over gRPC with operator and member API keys, enrolls members, earns,
spends, transfers, refunds, corrects, revokes and expires points. It then downloads and
verifies everything a partner or auditor would (signed header chain, an inclusion proof for
every entry, consistency from the first header to the last, a replay of every balance
against the node's own answers, the chain audit) and writes it to ``--out``.

The exit status is 0 only if every check passed; any failure is printed and gives 1.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from coalition.api.auth import Role
from coalition.api.grpc_client import NodeClient
from coalition.errors import CoalitionError, VerificationError
from coalition.keygen import KeyFiles, find_secret, generate_keys
from coalition.ledger.blocks import SignedHeader
from coalition.ledger.canonical import JsonObject, canonical_json
from coalition.ledger.chain import ChainVerifier
from coalition.ledger.entries import entry_leaf_hash, parse_time
from coalition.ledger.keys import VerifyKey
from coalition.ledger.proofs import verify_consistency_document, verify_inclusion_document
from coalition.node.config import NodeConfig, load_config
from coalition.node.views import PurchaseRow, WriteResult
from coalition.points.replay import Replay
from coalition.progress import Progress

PROGRAM = "skyair"
HOLDING = timedelta(seconds=2)
EXPIRY = timedelta(seconds=10)
OVERRIDES = {
    "grpc": '"127.0.0.1:0"',
    "http": '"127.0.0.1:0"',
    "sqlite_synchronous": '"NORMAL"',
    "expiry_interval_s": "3600",  # the demo runs expiry itself, at a moment it chooses
    "max_entries": "500",
    "max_delay_ms": "50",
    "holding_period": f'"{int(HOLDING.total_seconds())}s"',
    "expiry_period": f'"{int(EXPIRY.total_seconds())}s"',
}
CATEGORIES = ("flights", "flights", "upgrades", "partners", "")
PROOF_THREADS = 4


def _say(text: str) -> None:
    print(text, flush=True)


# --- the brand folder and the node process --------------------------------------------


def _template() -> Path:
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base / "nodes" / PROGRAM / "node.toml"
        if candidate.is_file():
            return candidate
    raise CoalitionError(f"cannot find nodes/{PROGRAM}/node.toml (run from the repository)")


def prepare_brand(folder: Path) -> Path:
    """Copy the SkyAir configuration into ``folder`` with the demo's overrides."""
    text = _template().read_text()
    for key, value in OVERRIDES.items():
        text, found = re.subn(rf"(?m)^{key}\s*=.*$", f"{key} = {value}", text, count=1)
        if not found:
            raise CoalitionError(f"the SkyAir template has no '{key} =' line to override")
    path = folder / PROGRAM / "node.toml"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path


class NodeProcess:
    """``coalition run`` as a child process; ``grpc`` is its bound address once ready."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if k != "COALITION_DATABASE_URL"}
        env["PYTHONUNBUFFERED"] = "1"
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
            [sys.executable, "-m", "coalition.cli", "run", "--config", str(config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            self.grpc = self._wait_ready(timeout=60)
        except BaseException:
            self._kill()
            raise

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"serving gRPC (\S+) and HTTP", self.log_path.read_text())
            if found:
                return found.group(1)
            if self.process.poll() is not None:
                raise CoalitionError(f"the node exited at start:\n{self.log_tail()}")
            time.sleep(0.05)
        raise CoalitionError(f"the node did not start within {timeout:.0f} s")

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, then wait; the node seals what is pending before it exits."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise CoalitionError("the node did not stop on SIGTERM; killed it") from None
        self._log.close()
        if self.process.returncode != 0:
            raise CoalitionError(
                f"the node exited with {self.process.returncode}:\n{self.log_tail()}"
            )

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.stop()
        else:
            self._kill()

    def _kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


def wait_healthy(client: NodeClient, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.health() == "SERVING":
                return
        except CoalitionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


# --- the scenario ---------------------------------------------------------------------


@dataclass
class Scenario:
    """Drives the operations and remembers what it needs to check afterwards."""

    operator: NodeClient
    target: str
    config: NodeConfig
    members: list[str]
    rng: random.Random = field(default_factory=lambda: random.Random(2026))
    entries: int = 0
    member_clients: dict[str, NodeClient] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def member(self, member_id: str) -> NodeClient:
        """A client holding ``member_id``'s own API key (member calls use member keys)."""
        if member_id not in self.member_clients:
            secret = find_secret(self.config, Role.MEMBER, member_id)
            self.member_clients[member_id] = NodeClient(self.target, secret)
        return self.member_clients[member_id]

    def wrote(self, result: WriteResult) -> JsonObject:
        if not result.replayed:
            self.entries += 1
        return result.entry

    def close(self) -> None:
        for client in self.member_clients.values():
            client.close()

    def onboard(self) -> list[JsonObject]:
        """Enroll everyone with a signup bonus, then 4 purchases each; the earns."""
        earns: list[JsonObject] = []
        with Progress("enroll + signup", len(self.members)) as bar:
            for m in self.members:
                self.wrote(self.operator.enroll(m, idempotency_key=f"enroll:{m}"))
                earns.append(
                    self.wrote(
                        self.operator.earn_reward(m, "signup", m, idempotency_key=f"signup:{m}")
                    )
                )
                bar.advance()
        purchases = [(m, n) for m in self.members for n in range(4)]
        with Progress("purchases (unary)", len(purchases)) as bar:
            for m, n in purchases:
                ref = f"PNR-{m}-{n}"
                spend = self.rng.randrange(4_900, 180_000)
                category = CATEGORIES[n % len(CATEGORIES)]
                earns.append(
                    self.wrote(
                        self.operator.earn_purchase(
                            m, ref, spend, category, idempotency_key=f"earn:{ref}"
                        )
                    )
                )
                bar.advance()
        return earns

    def spend(self) -> None:
        """Members redeem and transfer with their own keys; a refund; two corrections."""
        redeemers = self.members[: len(self.members) * 3 // 5]
        with Progress("redeem + transfer", len(redeemers) + len(self.members) // 3) as bar:
            for m in redeemers:
                client = self.member(m)
                amount = client.balance(m).spendable // 3
                if amount > 0:
                    ref = f"AWARD-{m}"
                    self.wrote(client.redeem(m, amount, ref, idempotency_key=f"redeem:{ref}"))
                bar.advance()
            for i, m in enumerate(self.members[: len(self.members) // 3]):
                to = self.members[-1 - i]
                client = self.member(m)
                amount = client.balance(m).spendable // 4
                if amount > 0 and to != m:
                    self.wrote(
                        client.transfer(m, to, amount, "family pooling", idempotency_key=f"tx:{m}")
                    )
                bar.advance()
        first = self.members[0]
        refund = self.wrote(
            self.operator.reverse_purchase(first, f"PNR-{first}-1", idempotency_key="refund:1")
        )
        self.notes.append(f"refund of PNR-{first}-1 clawed back {refund['amount']:,} points")
        second = self.members[1 % len(self.members)]
        self.wrote(
            self.operator.adjust(
                second,
                750,
                "agent-17",
                "missing miles claim, flight SA123",
                idempotency_key="adj:1",
            )
        )

    def engage(self, bulk_rows: int) -> None:
        """Reviews and referrals, a bulk partner feed (with two bad rows and a replayed
        prefix), and the revocation of a fraudulent review."""
        reviews = {}
        for m in self.members[::2]:
            reviews[m] = self.wrote(
                self.operator.earn_reward(m, "review", f"REV-{m}", idempotency_key=f"rev:{m}")
            )
        for m in self.members[1::5]:
            self.wrote(
                self.operator.earn_reward(m, "referral", f"REF-{m}", idempotency_key=f"ref:{m}")
            )
        with Progress("bulk feed (EarnBulk)", bulk_rows + 2) as bar:
            result = self.operator.earn_bulk(self._bulk(bulk_rows, bar, bad=True))
        self.entries += result.accepted
        self.notes.append(
            f"bulk feed: {result.accepted} accepted, {result.replayed} replayed, "
            f"{len(result.rejected)} rejected"
        )
        for error in result.rejected:
            self.notes.append(f"  rejected row {error.row}: {error.message}")
        if result.accepted != bulk_rows or len(result.rejected) != 2:
            raise VerificationError(f"the bulk feed gave an unexpected result: {result}")
        again = self.operator.earn_bulk(self._bulk(min(500, bulk_rows), None, bad=False))
        if again.replayed != min(500, bulk_rows) or again.accepted:
            raise VerificationError(f"re-sending bulk rows was not a replay: {again}")
        self.notes.append(f"re-sent {again.replayed} bulk rows: all replayed, none re-earned")
        cheat = self.members[2 % len(self.members)]
        review_id = str(reviews[cheat]["id"])
        self.wrote(
            self.operator.revoke(
                cheat, review_id, "agent-17", "review from a bot", idempotency_key="rev-cheat"
            )
        )

    def _bulk(self, rows: int, bar: Progress | None, bad: bool) -> Iterator[PurchaseRow]:
        """Deterministic rows (a re-send is the same request); with ``bad``, two rows
        the node must refuse: an unknown member and an already-used reference."""
        for n in range(rows):
            m = self.members[n % len(self.members)]
            spend = 900 + (n * 7919) % 59_100
            category = "partners" if n % 3 else "flights"
            yield PurchaseRow(m, f"BULK-{n:06d}", spend, category, f"bulk:{n}")
            if bar is not None and n % 100 == 99:
                bar.advance(100)
        if bad:
            yield PurchaseRow("nobody", "BULK-X1", 1000, "", "bulk:x1")
            yield PurchaseRow(self.members[0], "BULK-000000", 1000, "", "bulk:x2")
        if bar is not None:
            bar.advance(rows % 100 + (2 if bad else 0))


def _wait_until(moment: datetime, what: str) -> None:
    delay = (moment - datetime.now(UTC)).total_seconds()
    if delay > 0:
        _say(f"waiting {delay:.1f} s for {what} ...")
        time.sleep(delay)


def _lot_time(entries: list[JsonObject], key: str) -> datetime:
    times = []
    for entry in entries:
        lot = entry["lot"]
        assert isinstance(lot, dict)
        times.append(parse_time(str(lot[key])))
    return max(times)


# --- evidence -------------------------------------------------------------------------


@dataclass
class Evidence:
    headers: list[JsonObject]
    entries: list[JsonObject]
    proofs: int = 0


def settle(client: NodeClient, expected_entries: int, timeout: float = 30) -> JsonObject:
    """Wait until the latest signed header covers ``expected_entries`` entries."""
    deadline = time.monotonic() + timeout
    while True:
        latest = client.latest_header()
        size = 0 if latest is None else int(latest["header"]["log_size"])  # type: ignore[index,call-overload]
        if latest is not None and size >= expected_entries:
            if size != expected_entries:
                raise VerificationError(f"the log holds {size} entries, {expected_entries} written")
            return latest
        if time.monotonic() > deadline:
            raise VerificationError(f"only {size} of {expected_entries} entries were sealed")
        time.sleep(0.05)


def collect_chain(client: NodeClient, key: VerifyKey, last_height: int) -> Evidence:
    """Every signed header and block, checked link by link with ``ChainVerifier``."""
    headers: list[JsonObject] = []
    while len(headers) <= last_height:
        page = client.headers(len(headers), 1000)
        if not page:
            raise VerificationError(f"the node stopped listing headers at {len(headers)}")
        headers.extend(page)
    headers = headers[: last_height + 1]
    verifier = ChainVerifier(key, PROGRAM)
    entries: list[JsonObject] = []
    with Progress("verify chain", len(headers)) as bar:
        for height, signed_json in enumerate(headers):
            block_header, block_entries = client.block(height)
            if block_header != signed_json:
                raise VerificationError(f"block {height}: header differs from the listing")
            verifier.feed(
                SignedHeader.from_json(signed_json), [entry_leaf_hash(e) for e in block_entries]
            )
            entries.extend(block_entries)
            bar.advance()
    return Evidence(headers, entries)


def write_proofs(
    client: NodeClient, key: VerifyKey, evidence: Evidence, folder: Path, tree_size: int
) -> None:
    """Fetch, verify and write an inclusion proof of every entry at ``tree_size``."""
    folder.mkdir(parents=True)

    def one(index: int) -> None:
        entry = evidence.entries[index]
        doc = client.inclusion_proof(str(entry["id"]), tree_size)
        verify_inclusion_document(doc, key)
        if doc["entry"] != entry or doc["leaf_index"] != index:
            raise VerificationError(f"proof of entry {entry['id']} is for another leaf")
        (folder / f"{entry['id']}.json").write_text(json.dumps(doc, indent=1) + "\n")

    with (
        Progress("inclusion proofs", len(evidence.entries)) as bar,
        ThreadPoolExecutor(PROOF_THREADS) as pool,
    ):
        for _ in pool.map(one, range(len(evidence.entries))):
            bar.advance()
            evidence.proofs += 1


def check_balances(scenario: Scenario, replay: Replay) -> int:
    """Every member's balance from the node equals the replay of the chain; the supply."""
    total = 0
    for m in scenario.members:
        view = scenario.operator.balance(m)
        account = replay.accounts.get(view.account)
        replayed = None if account is None else account.held()
        if replayed != view.held:
            raise VerificationError(f"member {m}: node holds {view.held}, replay {replayed}")
        total += view.held
    if total != replay.supply():
        raise VerificationError(
            f"balances sum to {total}, the replayed supply is {replay.supply()}"
        )
    return total


def run_audit(target: str, auditor_key: str, public_key: VerifyKey, entries: int) -> JsonObject:
    """The independent chain audit over gRPC with the auditor's key, as its JSON report."""
    from coalition.audit.chain_audit import audit_chain
    from coalition.audit.sources import GrpcSource

    with GrpcSource(target, auditor_key) as source, Progress("audit", entries) as bar:
        report = audit_chain(source, public_key, program=PROGRAM, progress=bar.advance)
    return report.to_json()


# --- the whole demo -------------------------------------------------------------------


def _prepare_out(out: Path) -> None:
    if out.exists():
        known = {PROGRAM, "audit.json"}
        if not out.is_dir() or any(p.name not in known for p in out.iterdir()):
            raise CoalitionError(f"{out} exists and is not a demo output folder; not wiping it")
        shutil.rmtree(out)
    (out / PROGRAM).mkdir(parents=True)


def run_demo(out: Path, *, members: int = 50, bulk_rows: int = 3000) -> int:
    """Run the demo, write the evidence to ``out``; 0 only if every check passed."""
    if members < 3 or bulk_rows < 1:
        raise CoalitionError("the demo needs at least 3 members and 1 bulk row")
    started = time.monotonic()
    _prepare_out(out)
    member_ids = [f"M{n:04d}" for n in range(1, members + 1)]
    with tempfile.TemporaryDirectory(prefix="coalition-demo-") as tmp:
        config_path = prepare_brand(Path(tmp))
        config = load_config(config_path)
        files = generate_keys(config, members=member_ids)
        public_key = VerifyKey.from_pem(files.public_key.read_bytes())
        _say(f"{config.name}: keys generated (ledger key {public_key.key_id[:16]}); starting")
        try:
            with NodeProcess(config_path, Path(tmp) / "node.log") as node:
                summary = _drive(node, config, files, public_key, member_ids, bulk_rows, out)
        except CoalitionError as exc:
            _say(f"\nDEMO FAILED: {exc}")
            return 1
    summary.append(f"time          {time.monotonic() - started:.1f} s")
    _say("\n".join(summary))
    _say(
        f"\nevidence in {out}/ ; check a proof with:\n  coalition verify "
        f"{out}/{PROGRAM}/proofs/<entry id>.json --public-key {out}/{PROGRAM}/public_key.pem"
    )
    return 0


def _drive(
    node: NodeProcess,
    config: NodeConfig,
    files: KeyFiles,
    public_key: VerifyKey,
    member_ids: list[str],
    bulk_rows: int,
    out: Path,
) -> list[str]:
    operator_key = find_secret(config, Role.OPERATOR)
    with NodeClient(node.grpc, operator_key) as operator:
        wait_healthy(operator)
        if VerifyKey.from_pem(operator.public_key_pem().encode()) != public_key:
            raise VerificationError("the node serves a public key other than the generated one")
        _say(f"node up at gRPC {node.grpc}")
        scenario = Scenario(operator, node.grpc, config, member_ids)
        try:
            early = scenario.onboard()
            _wait_until(_lot_time(early, "available_at"), "the holding period to pass")
            scenario.spend()
            scenario.engage(bulk_rows)
            _wait_until(
                _lot_time(early, "expires_at") + timedelta(milliseconds=300),
                "the first points to expire",
            )
            expired = operator.run_expiry()
            scenario.entries += expired.entries
            if not expired.entries:
                raise VerificationError("no points expired")
            scenario.notes.append(
                f"expiry: {expired.points:,} points in {expired.entries:,} entries"
            )
            latest = settle(operator, scenario.entries)
            evidence = _write_evidence(operator, public_key, latest, files, out)
            replay = Replay()
            for entry in evidence.entries:
                replay.apply(entry)
            supply = check_balances(scenario, replay)
        finally:
            scenario.close()
        auditor_key = find_secret(config, Role.AUDITOR)
        report = run_audit(node.grpc, auditor_key, public_key, len(evidence.entries))
        (out / "audit.json").write_text(json.dumps(report, indent=2) + "\n")
        if report.get("ok") is not True:
            raise VerificationError(f"the audit failed: see {out / 'audit.json'}")
        if (report.get("supply"), report.get("entries")) != (supply, len(evidence.entries)):
            raise VerificationError("the audit's supply or entry count differs from the demo's")
    return _summary(scenario, evidence, replay, supply, report)


def _write_evidence(
    client: NodeClient, key: VerifyKey, latest: JsonObject, files: KeyFiles, out: Path
) -> Evidence:
    brand = out / PROGRAM
    shutil.copyfile(files.public_key, brand / "public_key.pem")
    last = SignedHeader.from_json(latest).header
    evidence = collect_chain(client, key, last.height)
    with (brand / "headers.jsonl").open("wb") as file:
        for signed in evidence.headers:
            file.write(canonical_json(signed) + b"\n")
    write_proofs(client, key, evidence, brand / "proofs", last.log_size)
    consistency = client.consistency_proof(0, last.height)
    verify_consistency_document(consistency, key)
    if consistency["second"] != latest["header"]:
        raise VerificationError("the consistency proof does not end at the latest header")
    (brand / "consistency.json").write_text(json.dumps(consistency, indent=2) + "\n")
    return evidence


def _summary(
    scenario: Scenario, evidence: Evidence, replay: Replay, supply: int, report: JsonObject
) -> list[str]:
    kinds = Counter(str(e["kind"]) for e in evidence.entries)
    points = replay.points_by_kind
    written_off = sum(int(e.get("written_off", 0)) for e in evidence.entries)  # type: ignore[call-overload]
    last: Any = evidence.headers[-1]["header"]
    return [
        "",
        f"== {scenario.config.name} ({PROGRAM}) ==",
        *scenario.notes,
        f"members       {len(scenario.members):,}",
        f"entries       {len(evidence.entries):,}: "
        + ", ".join(f"{k} {n:,}" for k, n in sorted(kinds.items())),
        f"earned        {points['earn']:,} points",
        f"redeemed      {points['redeem']:,}",
        f"transferred   {points['transfer']:,}",
        f"expired       {points['expire']:,}",
        f"clawed back   {points['reverse'] + points['revoke']:,} (refunds {points['reverse']:,}, "
        f"revocations {points['revoke']:,}, written off {written_off:,})",
        f"adjusted      {points['adjust']:+,d}",
        f"supply        {supply:,} points outstanding (node balances = chain replay)",
        f"blocks        {len(evidence.headers):,} signed headers, log size {last['log_size']:,}, "
        f"root {str(last['log_root'])[:16]}...",
        f"proofs        {evidence.proofs:,} inclusion proofs and 1 consistency proof verified",
        f"audit         {'ok' if report.get('ok') is True else 'FAILED'}",
    ]
