"""What the hammer checks once the faults are healed: first a quiescent phase (every
conversion ends, every hold is captured or released, everything is sealed and witnessed),
then, with every node stopped cleanly, the databases and chains themselves.

**Lost** (``Verdict.lost``) is an acknowledged write that the chains do not hold exactly
once: an entry id missing or its idempotency key written twice, a conversion whose
convert-out is missing or that did not end exactly once (completed and credited once, or
refunded), a hold acknowledged but never ended, a capture or void acknowledged but not on
the issuer's chain. **Failures** are the other invariants: a refused write found in a
chain, a log that is not dense or not sealed, points created across chains (a convert-in
without its convert-out, a credit other than quoted, a refund of another amount, a hold
settled for another amount), ``coalition check`` (each database equals the replay of its
chain) and ``coalition audit --manifest`` (every chain, conversions and holds across
them at the signed rates, nothing open past its deadline, the witness quorum,
settlement, evidence).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import text

from coalition.audit.db_check import check_database
from coalition.demo.evidence import settled_header
from coalition.errors import CoalitionError
from coalition.ledger.canonical import JsonObject, parse_json
from coalition.store.db import make_engine
from hammerlib.cluster import Cluster, Program
from hammerlib.load import ENTRY_KINDS, Acks

QUIESCE_TIMEOUT_S = 600.0


@dataclass
class Verdict:
    lost: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    chains: dict[str, dict[str, Any]] = field(default_factory=dict)
    conversions: Counter[str] = field(default_factory=Counter)
    holds: Counter[str] = field(default_factory=Counter)

    def lose(self, what: str) -> None:
        self.lost.append(what)

    def fail(self, what: str) -> None:
        self.failures.append(what)


def _query(url: str, sql: str) -> list[Any]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)))
    finally:
        engine.dispose()


def _url(cluster: Cluster, program: str) -> str:
    return cluster.programs[program].brand.config.database_url


def _wait(condition: Callable[[], bool], what: str, deadline: float) -> None:
    began = time.monotonic()
    while not condition():
        if time.monotonic() > deadline:
            raise CoalitionError(f"timed out waiting for {what}")
        time.sleep(0.5)
    waited = time.monotonic() - began
    if waited > 5:
        print(f"quiescent phase: waited {waited:.1f} s for {what}", flush=True)


def _ended(url: str) -> bool:
    """Whether the database at ``url`` has no pending conversion and no held hold."""
    pending = "SELECT count(*) FROM coalition_conversions WHERE status = 'pending'"
    held = "SELECT count(*) FROM coalition_holds WHERE status = 'held'"
    return all(int(_query(url, sql)[0][0]) == 0 for sql in (pending, held))


def _witnessed(program: Program, height: object) -> bool:
    status = program.brand.api().get(f"/v1/blocks/{height}/witnesses")
    return bool(status["witnessed"])


def quiesce(cluster: Cluster) -> float:
    """Until no conversion is pending, no hold is held (the expiry jobs release those
    left to expire), every program's log is sealed and its newest header witnessed by
    the quorum; the seconds it took. CoalitionError when it does not within
    QUIESCE_TIMEOUT_S (then something is stuck, not slow: the hammer reports it)."""
    started = time.monotonic()
    deadline = started + QUIESCE_TIMEOUT_S
    for name in cluster.programs:
        ended = partial(_ended, _url(cluster, name))
        _wait(ended, f"{name}'s conversions and holds to end", deadline)
    for name, program in cluster.programs.items():
        latest = settled_header(program.brand.op(), quiet_s=1.0, timeout=60)
        header = latest["header"]
        assert isinstance(header, dict)
        witnessed = partial(_witnessed, program, header["height"])
        _wait(witnessed, f"{name}'s header {header['height']} to be witnessed", deadline)
    return time.monotonic() - started


@dataclass
class ChainRows:
    """One program's stored log as the checks need it."""

    entries: list[JsonObject]
    """The entry bodies in log order."""
    indexes: list[int]
    keys: dict[str, str | None]
    """Entry id -> the idempotency key it was written under."""
    sealed: int
    """The newest block's log size."""


def read_chain(url: str) -> ChainRows:
    rows = _query(url, "SELECT log_index, entry_id, idem_key, body FROM entries ORDER BY log_index")
    entries = []
    for row in rows:
        body = parse_json(row.body)
        assert isinstance(body, dict)
        entries.append(body)
    sealed = _query(url, "SELECT max(log_size) FROM blocks")[0][0] or 0
    return ChainRows(
        entries,
        [int(r.log_index) for r in rows],
        {str(r.entry_id): None if r.idem_key is None else str(r.idem_key) for r in rows},
        int(sealed),
    )


def _part(entry: JsonObject, name: str) -> dict[str, Any]:
    value = entry.get(name)
    return value if isinstance(value, dict) else {}


def _by(entries: list[JsonObject], kind: str, part: str) -> dict[str, list[JsonObject]]:
    found: dict[str, list[JsonObject]] = defaultdict(list)
    for entry in entries:
        if entry.get("kind") == kind:
            found[str(_part(entry, part).get("id"))].append(entry)
    return found


def check_stopped(cluster: Cluster, acks: Acks, report_dir: Path) -> Verdict:
    """The module's checks on the stopped coalition: its chains (``check_chains``), then
    ``coalition check`` and ``coalition audit --manifest``."""
    verdict = check_chains({p: read_chain(_url(cluster, p)) for p in cluster.programs}, acks)
    _tools(cluster, report_dir, verdict)
    return verdict


def check_chains(rows: dict[str, ChainRows], acks: Acks) -> Verdict:
    """What the chains in ``rows`` say of every acknowledgement in ``acks`` (the module's
    rules; no I/O)."""
    verdict = Verdict()
    for program, chain in rows.items():
        if chain.indexes != list(range(len(chain.indexes))):
            verdict.fail(f"{program}'s log is not dense")
        if chain.sealed != len(chain.entries):
            verdict.fail(f"{program}: {len(chain.entries) - chain.sealed} entries left unsealed")
        verdict.chains[program] = {
            "entries": len(chain.entries),
            "kinds": dict(Counter(str(e.get("kind")) for e in chain.entries)),
        }
    answered: dict[tuple[str, str], str] = {}
    for ack in acks.acks:
        if ack.kind not in ENTRY_KINDS:
            continue
        other = answered.setdefault((ack.program, ack.ref), ack.key)
        if other != ack.key:
            verdict.fail(f"{ack.program} answered both {other} and {ack.key} with {ack.ref}")
        keys = rows[ack.program].keys
        if ack.ref not in keys:
            verdict.lose(f"{ack.program}: acknowledged {ack.kind} {ack.key} ({ack.ref}) is missing")
        elif not (keys[ack.ref] or "").endswith(ack.key):
            verdict.lose(
                f"{ack.program}: acknowledged {ack.kind} {ack.key} answered with {ack.ref}, "
                f"which was written under {keys[ack.ref]!r}"
            )
    for program, key in acks.refused_keys:
        if any((k or "").endswith(key) for k in rows[program].keys.values()):
            verdict.fail(f"{program} refused the write {key} but its chain holds it")
    chains = {program: chain.entries for program, chain in rows.items()}
    _check_conversions(chains, acks, verdict)
    _check_holds(chains, acks, verdict)
    return verdict


def _check_conversions(chains: dict[str, list[JsonObject]], acks: Acks, verdict: Verdict) -> None:
    outs = {p: _by(e, "convert-out", "conversion") for p, e in chains.items()}
    completes = {p: _by(e, "convert-complete", "conversion") for p, e in chains.items()}
    refunds = {p: _by(e, "convert-refund", "conversion") for p, e in chains.items()}
    ins = {p: _by(e, "convert-in", "conversion") for p, e in chains.items()}
    for ack in acks.of("convert"):
        source, cid, (target, _member) = ack.program, ack.ref, ack.detail
        out = outs[source].get(cid, [])
        ended = len(completes[source].get(cid, [])) + len(refunds[source].get(cid, []))
        credited = ins[target].get(cid, [])
        if len(out) != 1:
            verdict.lose(f"conversion {cid} ({ack.key}) has {len(out)} convert-out at {source}")
            continue
        if ended != 1:
            verdict.lose(f"conversion {cid} ended {ended} times at {source}")
            continue
        if cid in completes[source]:
            verdict.conversions["completed"] += 1
            if len(credited) != 1:
                verdict.lose(f"completed conversion {cid} credited {len(credited)} times")
        else:
            verdict.conversions["refunded"] += 1
            refund = refunds[source][cid][0]
            if credited:
                verdict.fail(f"conversion {cid} was refunded at {source} and credited at {target}")
            if refund.get("amount") != out[0].get("amount"):
                verdict.fail(
                    f"conversion {cid} refunded {refund.get('amount')} of {out[0]['amount']}"
                )
    for target, credits in ins.items():
        for cid, found in credits.items():
            source = str(_part(found[0], "conversion").get("from_program"))
            out = outs.get(source, {}).get(cid, [])
            if len(found) > 1:
                verdict.fail(f"{target} credited conversion {cid} {len(found)} times")
            if len(out) != 1:
                verdict.fail(
                    f"{target} credited conversion {cid}, which left {source} {len(out)} times"
                )
            elif found[0].get("amount") != _part(out[0], "conversion").get("credit"):
                verdict.fail(
                    f"{target} credited {found[0].get('amount')} for {cid}, quoted otherwise"
                )
            elif cid not in completes.get(source, {}):
                verdict.fail(f"{target} credited conversion {cid}, which {source} did not complete")


def _check_holds(chains: dict[str, list[JsonObject]], acks: Acks, verdict: Verdict) -> None:
    holds = {p: _by(e, "hold", "hold") for p, e in chains.items()}
    captures = {p: _by(e, "hold-capture", "hold") for p, e in chains.items()}
    releases = {p: _by(e, "hold-release", "hold") for p, e in chains.items()}
    receipts = {p: _by(e, "redemption-receipt", "hold") for p, e in chains.items()}
    ended = {(a.program, a.ref): a.kind for a in acks.acks if a.kind in ("capture", "void")}
    for ack in acks.of("hold"):
        shop, hold_id, (issuer, intent, _status) = ack.program, ack.ref, ack.detail
        held = holds[issuer].get(hold_id, [])
        took = captures[issuer].get(hold_id, [])
        gave = releases[issuer].get(hold_id, [])
        if len(held) != 1:
            verdict.lose(f"hold {hold_id} ({ack.key}) is on {issuer}'s chain {len(held)} times")
            continue
        if len(took) + len(gave) != 1:
            verdict.lose(f"hold {hold_id} ended {len(took) + len(gave)} times at {issuer}")
            continue
        amount = held[0].get("amount")
        end = (took or gave)[0]
        if end.get("amount") != amount:
            verdict.fail(f"hold {hold_id} of {amount} ended with {end.get('amount')}")
        acked = ended.get((shop, hold_id))
        if took:
            verdict.holds["captured"] += 1
            got = receipts[shop].get(hold_id, [])
            if len(got) != 1 or _part(got[0], "hold").get("amount") != amount:
                verdict.lose(f"captured hold {hold_id}: {len(got)} redemption-receipts at {shop}")
            if acked == "void":
                verdict.fail(f"hold {hold_id} was voided (acknowledged) but captured")
        else:
            why = _part(gave[0], "hold").get("why")
            verdict.holds[f"released ({why})"] += 1
            if acked == "capture":
                verdict.lose(f"hold {hold_id}'s capture was acknowledged but it was released")
            if intent == "expire" and why != "expired":
                verdict.fail(f"hold {hold_id} left to expire was released for {why}")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coalition.cli", *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def _tools(cluster: Cluster, report_dir: Path, verdict: Verdict) -> None:
    """``coalition check``'s replay of every database (in this process: it is the same
    function), then ``coalition audit --manifest`` as an auditor runs it."""
    for name in cluster.programs:
        check = check_database(_url(cluster, name))
        if not check.ok:
            verdict.fail(f"coalition check {name}: {check.render()[-1500:]}")
    audit_json = report_dir / "coalition_audit.json"
    done = _cli(
        "audit",
        *("--manifest", str(cluster.manifest_path), "--from", "database"),
        *("--pending-grace", "0", "--json", str(audit_json)),
    )
    if done.returncode != 0:
        verdict.fail(f"coalition audit --manifest: {done.stdout[-3000:]}{done.stderr[-1500:]}")
    elif audit_json.exists():
        report = json.loads(audit_json.read_text())
        supply = {
            p: c.get("supply")
            for p, c in (report.get("chains") or {}).items()
            if isinstance(c, dict)
        }
        for program, value in supply.items():
            if program in verdict.chains:
                verdict.chains[program]["supply"] = value
