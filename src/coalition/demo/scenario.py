"""``coalition demo``: a three-brand coalition at work, and the evidence that it happened.

In a fresh work folder (``<out>/work``) it copies the demo coalition of ``nodes/`` (the
manifest and each brand's ``node.toml``, with time-compressed rules and free 127.0.0.1
ports), generates every brand's keys and the coalition's TLS material, and runs each
node as a real ``coalition run`` process with its own SQLite database. Over the member
APIs (gRPC and REST, operator and member keys) it then enrolls and rewards members in
every program, has the partners propose and countersign rate agreements (and shows a
gaining cycle refused), lets members convert points between programs, spends points of
one brand at another (authorize, capture, void), kills one partner with SIGKILL in the
middle of the conversions and restarts it, waits until no conversion is pending, and
settles: a statement for each pair, signed by both, and the coalition's netting.

It finally verifies what an auditor would: each chain (signed header chain, inclusion
proof of every entry, consistency proof, the independent chain audit) and the three
chains against each other (``audit.cross_chain``), and writes it all to ``--out``.
The exit status is 0 only if every check passed; any failure is printed and gives 1.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from coalition.demo.evidence import (
    Chain,
    audit_bundles,
    check_sealed_after_stop,
    export_chain,
    run_chain_audit,
    run_cross_chain_audit,
    witness_evidence,
)
from coalition.demo.nodes import (
    Brand,
    load_brands,
    prepare_coalition,
    say,
    start_brands,
    stop_brands,
    template_programs,
    wait_connected,
)
from coalition.errors import (
    CoalitionError,
    FailedPrecondition,
    InvalidArgument,
    VerificationError,
)
from coalition.ledger.canonical import JsonObject
from coalition.ledger.entries import format_time, parse_time
from coalition.node.auth import Role
from coalition.node.manifest import Manifest
from coalition.node.views import PurchaseRow
from coalition.ops.keygen import find_secret, generate_coalition_keys
from coalition.points import model
from coalition.points.replay import Replay
from coalition.progress import Progress

MEMBER_KEYS = 3
REDEEM_POINTS = 100
VICTIM = "staybright"
"""The partner killed with SIGKILL during the conversions, then restarted."""
ROTATED = "beanhouse"
"""The partner whose ledger key is rotated before the conversions."""


# --- the scenario ---------------------------------------------------------------------


@dataclass
class Scenario:
    """Drives the operations and remembers what the summary reports."""

    brands: dict[str, Brand]
    members: list[str]
    rng: random.Random = field(default_factory=lambda: random.Random(2026))
    notes: list[str] = field(default_factory=list)
    agreements: int = 0
    conversions: dict[str, tuple[str, str]] = field(default_factory=dict)
    """conversion id -> (source program, member)."""
    refused: list[str] = field(default_factory=list)
    member_keys: bool = True
    """Whether the first MEMBER_KEYS members convert with their own API keys."""
    run: str = field(default_factory=lambda: f"{int(time.time()):x}")
    """Tags this run's purchases, conversions and redemptions: a scenario run again
    against the same nodes makes new ones (enrollments replay)."""
    expiring: tuple[str, str, str, str] | None = None
    """(issuer, spending program, member, hold id) of the hold left to expire."""
    statements: list[dict[str, Any]] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.notes.append(text)
        say(text)

    def onboard(self, purchases: int) -> None:
        """Every member enrolls in every program with a signup reward, then each program
        receives ``purchases`` purchases through its bulk feed (EarnBulk)."""
        brands = list(self.brands.values())
        with Progress("enroll + signup", len(brands) * len(self.members)) as bar:
            for brand in brands:
                op = brand.op()
                for m in self.members:
                    op.enroll(m, idempotency_key=f"enroll:{m}")
                    op.earn_reward(m, "signup", m, idempotency_key=f"signup:{m}")
                    bar.advance()
        with Progress("purchases (EarnBulk)", len(brands) * purchases) as bar:
            for brand in brands:
                result = brand.op().earn_bulk(self._purchases(brand, purchases, bar))
                if result.accepted != purchases or result.rejected:
                    raise VerificationError(f"{brand.program}'s bulk feed: {result}")

    def _purchases(self, brand: Brand, count: int, bar: Progress) -> Iterator[PurchaseRow]:
        top = min(brand.config.rules.max_spend_minor, 60_000)
        for n in range(count):
            m = self.members[n % len(self.members)]
            spend = self.rng.randrange(min(500, top), top + 1)
            ref = f"{brand.program}-{self.run}-{n:06d}"
            yield PurchaseRow(m, ref, spend, "", f"buy:{self.run}:{n}")
            bar.advance()

    # --- rate agreements -------------------------------------------------------------

    def agree(self) -> None:
        """Each pair agrees rates both ways (no cycle gains); then a gaining proposal is
        refused by the proposer's own check before anything is signed."""
        now = datetime.now(UTC)
        for (a, b), (rate, value) in RATES.items():
            if a in self.brands and b in self.brands:
                recorded = self.brands[a].api().get("/v1/agreements")
                if any(r["in_force"] and r["to_program"] == b for r in recorded):
                    self.agreements += 1  # a scenario run again: the agreement stands
                    continue
                doc = agreement_document(a, b, rate, value, now)
                signed = self.brands[a].api().post("/v1/agreements", doc)
                if set(signed["signatures"]) != {a, b}:
                    raise VerificationError(f"agreement {a}->{b} is not signed by both")
                self.agreements += 1
        self.note(f"agreements     {self.agreements} rate agreements signed by both partners")
        a, b = GAINING
        try:
            self.brands[a].api().post(
                "/v1/agreements", agreement_document(a, b, (1, 5), (1, 10), now, 2, 0)
            )
        except FailedPrecondition as exc:
            self.note(f"refused        {a}->{b} at 1:5 without fee: {exc}")
        else:
            raise VerificationError("a gaining cycle of agreements was accepted")

    # --- key rotation ------------------------------------------------------------------

    def rotate_key(self, program: str) -> None:
        """Rotate ``program``'s ledger key as its operator would on SQLite: stop the node
        (it seals what is pending), ``coalition ledger rotate-key`` (the rotation entry,
        signed by the old key, sealed in a block of its own), start it again. Every later
        header is signed by the new key; partners' witnesses follow from the chain."""
        from coalition.runtime.key_rotation import rotate_ledger_key

        brand = self.brands[program]
        brand.close()
        brand.process().stop()
        done = rotate_ledger_key(brand.config)
        brand.start()
        brand.ready()
        self.note(
            f"rotated        {program}'s ledger key to {done.key_id[:16]} (epoch {done.epoch}); "
            f"headers after height {done.sealed_height} are signed by it"
        )

    # --- conversions -------------------------------------------------------------------

    def convert(self, count: int, victim: str | None) -> None:
        """``count`` conversions between random programs; ``victim`` (if any) is killed
        with SIGKILL a third of the way and restarted two thirds of the way."""
        programs = list(self.brands)
        balances = {
            (p, m): self.brands[p].op().balance(m).spendable for p in programs for m in self.members
        }
        plan = []
        for n in range(count):
            m = self.members[n % len(self.members)]
            source, target = self.rng.sample(programs, 2)
            plan.append((n, m, source, target))
        kill_at, restart_at = count // 3, 2 * count // 3
        retry: list[tuple[int, str, str, str, int]] = []
        waited = 0
        with Progress("conversions", count) as bar:
            for n, m, source, target in plan:
                if n == kill_at and victim:
                    self.brands[victim].process().kill()
                    self.note(f"killed         {victim} with SIGKILL after {n} conversions")
                if n == restart_at and victim:
                    self._restart(victim, retry)
                amount = min(max(100, balances[(source, m)] // 5), 5000)
                if balances[(source, m)] < amount:
                    bar.advance()
                    continue
                balances[(source, m)] -= amount
                if source == victim and kill_at <= n < restart_at:
                    retry.append((n, m, source, target, amount))  # its members wait
                else:
                    if target == victim and kill_at <= n < restart_at:
                        waited += 1  # accepted by the source; its outbox retries
                    self._convert_one(n, m, source, target, amount, retry)
                bar.advance()
        if victim and retry:
            self._restart(victim, retry)
        if retry:
            raise VerificationError(f"{len(retry)} conversion requests got no answer")
        if victim:
            self.note(f"outboxes       {waited} conversions into {victim} waited while it was down")
        self._convert_one(count, self.members[0], programs[0], programs[1], 100, retry, "NOBODY")
        self.note(
            f"conversions    {len(self.conversions):,} requested (one for a member "
            f"{programs[1]} does not know: it is enrolled on arrival, so a member learns "
            "nothing of who is enrolled)"
        )

    def _convert_one(
        self,
        n: int,
        member: str,
        source: str,
        target: str,
        amount: int,
        retry: list[tuple[int, str, str, str, int]],
        to_member: str | None = None,
    ) -> None:
        brand = self.brands[source]
        own_key = self.member_keys and member in self.members[:MEMBER_KEYS]
        rest = brand.member_rest(member) if own_key else brand.api()
        body: JsonObject = {
            "to_program": target,
            "to_member_id": to_member or member,
            "amount": amount,
            "idempotency_key": f"convert:{self.run}:{n}",
        }
        try:
            view = rest.post(f"/v1/members/{member}/conversions", body)
        except (FailedPrecondition, InvalidArgument) as exc:
            self.refused.append(f"{source}->{target} {amount}: {exc}")
            return
        except CoalitionError:
            retry.append((n, member, source, target, amount))  # no answer: retry, same key
            return
        self.conversions[view["id"]] = (source, member)

    def _restart(self, victim: str, retry: list[tuple[int, str, str, str, int]]) -> None:
        brand = self.brands[victim]
        node = brand.process()
        if node.process is not None and node.process.poll() is None:
            return
        started = time.monotonic()
        brand.close()
        brand.start()
        brand.ready()
        self.note(f"restarted      {victim} in {time.monotonic() - started:.1f} s")
        pending, retry[:] = list(retry), []
        for n, m, source, target, amount in pending:
            self._convert_one(n, m, source, target, amount, retry)
        if retry:
            raise VerificationError(f"{len(retry)} conversions got no answer after the restart")
        self.note(
            f"sent           {len(pending)} conversions asked of {victim} while it was down "
            "(or unanswered), with their idempotency keys"
        )

    def wait_conversions(self, timeout: float = 90) -> Counter[str]:
        """Poll every conversion until none is pending; the count by final status."""
        deadline = time.monotonic() + timeout
        final: dict[str, str] = {}
        with Progress("conversions settled", len(self.conversions)) as bar:
            while len(final) < len(self.conversions):
                for cid, (source, member) in self.conversions.items():
                    if cid in final:
                        continue
                    view = self.brands[source].api().get(f"/v1/members/{member}/conversions/{cid}")
                    if view["status"] != "pending":
                        final[cid] = view["status"]
                        bar.advance()
                if len(final) < len(self.conversions):
                    if time.monotonic() > deadline:
                        raise VerificationError(
                            f"{len(self.conversions) - len(final)} conversions still pending "
                            f"after {timeout:.0f} s"
                        )
                    time.sleep(0.5)
        counts = Counter(final.values())
        self.note(
            "conversions    "
            + ", ".join(f"{n:,} {status}" for status, n in sorted(counts.items()))
            + (f"; {len(self.refused)} refused at the source" if self.refused else "")
        )
        return counts

    # --- cross-brand redemptions ------------------------------------------------------

    def redeem_across(self, count: int) -> None:
        """Members of one program spend its points at another: the spending partner asks
        the issuer to hold, then captures; one redemption is voided, and one hold runs
        out (released by the issuer's expiry job; capturing it then is refused)."""
        programs = list(self.brands)
        done: Counter[str] = Counter()
        with Progress("partner redemptions", count + 2) as bar:
            for n in range(count + 2):
                issuer, shop, m = self._redeemer(programs)
                body: JsonObject = {
                    "program": issuer,
                    "member_id": m,
                    "amount": REDEEM_POINTS,
                    "reference": f"SHOP-{self.run}-{shop}-{n}",
                    "expires_in_s": 2 if n == count + 1 else 600,
                    "idempotency_key": f"redeem-at:{self.run}:{shop}:{n}",
                }
                rest = self.brands[shop].api()
                held = rest.post("/v1/partner-redemptions", body)
                if held["status"] != "authorized":
                    raise VerificationError(f"hold {held['hold_id']} is {held['status']}")
                path = f"/v1/partner-redemptions/{held['hold_id']}"
                if n == count:
                    final = rest.post(path + "/void", {})
                elif n == count + 1:
                    self.expiring = (issuer, shop, m, held["hold_id"])
                    final = {"status": "left to expire"}
                else:
                    final = rest.post(path + "/capture", {})
                done[final["status"]] += 1
                bar.advance()
        self.note(
            "redemptions    "
            + ", ".join(f"{n} {status}" for status, n in sorted(done.items()))
            + " across brands"
        )

    def _redeemer(self, programs: list[str]) -> tuple[str, str, str]:
        """(issuer, spending partner, member) for a member with points to spend."""
        for _ in range(50):
            issuer, shop = self.rng.sample(programs, 2)
            m = self.rng.choice(self.members)
            if self.brands[issuer].op().balance(m).spendable >= REDEEM_POINTS:
                return issuer, shop, m
        raise VerificationError(f"no member has {REDEEM_POINTS} spendable points to redeem")

    def check_expired_hold(self) -> None:
        """Past its ``expires_at`` the short hold cannot be captured, and the issuer's
        expiry job releases it (the member gets the points back)."""
        assert self.expiring is not None
        issuer, shop, member, hold_id = self.expiring
        timeout = self.brands[issuer].config.expiry_interval_s + 15  # the issuer's job
        rest = self.brands[shop].api()
        path = f"/v1/partner-redemptions/{hold_id}"
        expires = parse_time(rest.get(path)["expires_at"])
        _wait_until(expires + timedelta(milliseconds=200), "a partner hold to expire")
        try:
            rest.post(path + "/capture", {})
        except FailedPrecondition as exc:
            self.note(f"refused        capture after expiry: {exc}")
        else:
            raise VerificationError(f"hold {hold_id} was captured after it expired")
        status = rest.get(path)["status"]
        if status != "expired":
            raise VerificationError(f"the expired hold {hold_id} is {status}")
        deadline = time.monotonic() + timeout
        while not self._released(issuer, member, hold_id):
            if time.monotonic() > deadline:
                raise VerificationError(f"{issuer} did not release the expired hold {hold_id}")
            time.sleep(0.3)
        self.note(f"released       the expired hold by {issuer}'s expiry job")

    def _released(self, issuer: str, member: str, hold_id: str) -> bool:
        """Whether the issuer's chain holds the ``hold-release`` of ``hold_id``."""
        for view in self.brands[issuer].op().history(member, limit=50):
            hold = view.entry.get("hold")
            if view.entry["kind"] == model.kind_of(model.HoldRelease) and isinstance(hold, dict):
                found = hold.get("id") == hold_id
                if found:
                    return True
        return False

    # --- settlement --------------------------------------------------------------------

    def settle(self, start: datetime, out: Path) -> JsonObject:
        """A statement per pair for ``[start, end)`` (both sign, both record), then the
        coalition's netting; written to ``out/settlement``."""
        end = datetime.now(UTC)
        time.sleep(0.05)  # the period must be over before it is settled
        folder = out / "settlement"
        (folder / "statements").mkdir(parents=True)
        programs = list(self.brands)
        period = {"start": format_time(start), "end": format_time(end)}
        for i, a in enumerate(programs):
            for b in programs[i + 1 :]:
                signed = (
                    self.brands[a].api().post("/v1/settlement/statements", {"partner": b, **period})
                )
                statement = signed["statement"]
                if set(signed["signatures"]) != {a, b}:
                    raise VerificationError(f"statement {statement['id']} lacks a signature")
                (folder / "statements" / f"{a}-{b}.json").write_text(
                    json.dumps(signed, indent=2) + "\n"
                )
                self.statements.append(statement)
        query = f"/v1/settlement/netting?start={period['start']}&end={period['end']}"
        netting = self.brands[programs[0]].api().get(query)
        if netting["unreachable"] or len(netting["statements"]) != len(self.statements):
            raise VerificationError(f"the netting is incomplete: {netting}")
        (folder / "netting.json").write_text(json.dumps(netting, indent=2) + "\n")
        csv_text = self.brands[programs[0]].api().get_text(query + "&format=csv")
        if not csv_text.startswith("payer,payee,amount"):
            raise VerificationError("the netting CSV has no payer,payee,amount header")
        (folder / "netting.csv").write_text(csv_text)
        for statement in self.statements:
            owed = ", ".join(f"{k} {v:,}" for k, v in sorted(statement["owed"].items()))
            self.note(f"statement      {'/'.join(statement['parties'])}: owed {owed} (minor)")
        for payment in netting["payments"]:
            self.note(
                f"payment        {payment['payer']} pays {payment['payee']} "
                f"{payment['amount'] / 100:,.2f} {netting['currency']}"
            )
        return dict(netting)


RATES: dict[tuple[str, str], tuple[tuple[int, int], tuple[int, int]]] = {
    # (from, to): (rate = to points per from point, point_value = minor units per point)
    ("skyair", "staybright"): ((2, 1), (1, 1)),
    ("staybright", "skyair"): ((1, 2), (1, 2)),
    ("skyair", "beanhouse"): ((10, 1), (1, 1)),
    ("beanhouse", "skyair"): ((1, 10), (1, 10)),
    ("staybright", "beanhouse"): ((5, 1), (1, 2)),
    ("beanhouse", "staybright"): ((1, 5), (1, 10)),
}
"""With 1% fees every cycle loses: skyair -> staybright -> skyair keeps 0.98 of a mile."""
GAINING = ("beanhouse", "skyair")
"""Version 2 of beanhouse -> skyair at 1:5 without fee: skyair -> beanhouse -> skyair
would turn a mile into 1.98 miles, so it is refused."""


def agreement_document(
    a: str,
    b: str,
    rate: tuple[int, int],
    value: tuple[int, int],
    now: datetime,
    version: int = 1,
    fee_bps: int = 100,
) -> JsonObject:
    """The demo's agreement ``a -> b`` (docs/coalition.md), valid for a year from a
    minute ago; the proposer is ``a``."""
    return {
        "type": "coalition.agreement.v1",
        "id": f"{a}-{b}",
        "version": version,
        "from_program": a,
        "to_program": b,
        "rate": list(rate),
        "fee_bps": fee_bps,
        "min_points": 100,
        "max_points": 100_000,
        "daily_cap_points": 1_000_000,
        "point_value": list(value),
        "currency": "EUR",
        "valid_from": format_time(now - timedelta(minutes=1)),
        "valid_until": format_time(now + timedelta(days=365)),
        "proposed_by": a,
    }


def _wait_until(moment: datetime, what: str) -> None:
    delay = (moment - datetime.now(UTC)).total_seconds()
    if delay > 0:
        say(f"waiting {delay:.1f} s for {what} ...")
        time.sleep(delay)


# --- the whole demo -------------------------------------------------------------------

_OUT_NAMES = {
    "work",
    "cross_chain_audit.json",
    "coalition_audit.json",
    "auditor-state.json",
    "bundles",
    "settlement",
    "summary.txt",
}


def _prepare_out(out: Path, programs: tuple[str, ...]) -> None:
    """An empty ``out``; what a previous run left there is removed (the folder itself
    stays: it may be a mount point), anything else makes the demo refuse."""
    if out.exists():
        known = _OUT_NAMES | set(programs)
        if not out.is_dir() or any(p.name not in known for p in out.iterdir()):
            raise CoalitionError(f"{out} exists and is not a demo output folder; not wiping it")
        for child in out.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class DemoOptions:
    members: int = 30
    purchases: int = 600
    conversions: int = 300
    serve: bool = False
    """After the demo, start the nodes again and keep them up (explorer) until Ctrl-C."""


def _check_options(options: DemoOptions) -> None:
    if options.members < 4 or options.purchases < 1 or options.conversions < 10:
        raise InvalidArgument("the demo needs at least 4 members, 1 purchase, 10 conversions")


def run_demo(out: Path, options: DemoOptions | None = None) -> int:
    """Run the demo, write the evidence to ``out``; 0 only if every check passed."""
    from coalition.ops.tls import generate_tls

    options = options or DemoOptions()
    _check_options(options)
    started = time.monotonic()
    programs = template_programs()
    _prepare_out(out, programs)
    work = out / "work"
    manifest_path = prepare_coalition(work)
    member_ids = [f"M{n:04d}" for n in range(1, options.members + 1)]
    generate_coalition_keys(manifest_path, members=member_ids[:MEMBER_KEYS])
    manifest = Manifest.load(manifest_path)
    generate_tls(manifest)
    say(f"{manifest.name}: keys and TLS material generated for {', '.join(programs)}")
    (work / "logs").mkdir()
    brands = load_brands(manifest, work / "logs")
    try:
        start_brands(brands)
        summary = _drive(
            manifest,
            brands,
            member_ids,
            options,
            out,
            victim=VICTIM,
            member_keys=True,
            rotate=ROTATED,
        )
        stop_brands(brands)
        check_sealed_after_stop(brands, summary.chains)
        audit_bundles(manifest_path, out)
    except CoalitionError as exc:
        say(f"\nDEMO FAILED: {exc}\n(node logs in {work / 'logs'})")
        _kill(brands)
        return 1
    except BaseException:
        _kill(brands)
        raise
    _finish(summary, out, started)
    if options.serve:
        serve_until_interrupted(brands, member_ids[0])
    return 0


def serve_until_interrupted(brands: list[Brand], member_id: str) -> None:
    """Run the demo's nodes again so a person can browse them (the explorer, the APIs);
    print where and with which keys; stop them cleanly on Ctrl-C."""
    start_brands(brands)
    say("\nthe coalition runs again; open an explorer (Ctrl-C stops the nodes):")
    for brand in brands:
        auditor = find_secret(brand.config, Role.AUDITOR)
        say(f"  {brand.name:<20} http://{brand.addresses.http}/explorer/  auditor key {auditor}")
    first = brands[0]
    member = find_secret(first.config, Role.MEMBER, member_id)
    say(f"  member {member_id} of {first.name}: API key {member}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        say("\nstopping the nodes ...")
    try:
        stop_brands(brands)
    except CoalitionError as exc:  # Ctrl-C reached the nodes too: they stopped on their own
        say(f"  {exc}")


def run_scenario(manifest_path: Path, out: Path, options: DemoOptions | None = None) -> int:
    """The demo's scenario against a coalition that already runs (``docker compose``):
    the nodes of ``manifest_path`` with their local key files; nothing is killed."""
    options = options or DemoOptions()
    _check_options(options)
    started = time.monotonic()
    manifest = Manifest.load(manifest_path)
    _prepare_out(out, manifest.programs)
    brands = load_brands(manifest)
    member_ids = [f"M{n:04d}" for n in range(1, options.members + 1)]
    try:
        start_brands(brands)
        summary = _drive(manifest, brands, member_ids, options, out, victim=None, member_keys=False)
    except CoalitionError as exc:
        say(f"\nSCENARIO FAILED: {exc}")
        return 1
    finally:
        for brand in brands:
            brand.close()
    _finish(summary, out, started)
    return 0


def _kill(brands: list[Brand]) -> None:
    for brand in brands:
        brand.close()
        if brand.node is not None:
            brand.node.kill()


def _finish(summary: Summary, out: Path, started: float) -> None:
    lines = summary.render()
    lines.append(f"time            {time.monotonic() - started:.1f} s")
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    say("\n".join(lines))
    first = summary.brands[0].program
    say(
        f"\nevidence in {out}/ ; check a proof with:\n  coalition verify "
        f"{out}/{first}/proofs/<entry id>.json --public-key {out}/{first}/public_key.pem"
        f"\n  (for {ROTATED}, whose key rotated, add --key-rotations "
        f"{out}/{ROTATED}/key-rotations.json)"
    )


@dataclass
class Summary:
    brands: list[Brand]
    chains: list[Chain]
    witnessed: dict[str, int]
    audits: dict[str, JsonObject]
    cross: JsonObject
    notes: list[str]

    def render(self) -> list[str]:
        lines = ["", f"== {len(self.brands)} programs =="]
        for brand, chain in zip(self.brands, self.chains, strict=True):
            lines += _brand_summary(brand, chain, self.audits[brand.program])
            lines.append(
                f"witnessed       {self.witnessed[brand.program]:,} of {len(chain.headers):,} "
                "headers cosigned by a quorum of partners"
            )
        lines += ["", "== coalition ==", *self.notes]
        lines.append(
            f"cross-chain     {'ok' if self.cross.get('ok') is True else 'FAILED'}: "
            f"{self.cross.get('conversions', 0):,} conversions, {self.cross.get('holds', 0):,} "
            "holds reconciled"
        )
        audits_ok = all(a.get("ok") is True for a in self.audits.values())
        lines.append(f"audit           {'ok' if audits_ok else 'FAILED'}")
        return lines


def _brand_summary(brand: Brand, chain: Chain, audit: JsonObject) -> list[str]:
    replay = Replay()
    for entry in chain.entries:
        replay.apply(entry)
    kinds = Counter(str(e["kind"]) for e in chain.entries)
    last: Any = chain.headers[-1]["header"]
    return [
        "",
        f"-- {brand.name} ({brand.program})",
        f"entries         {len(chain.entries):,}: "
        + ", ".join(f"{k} {n:,}" for k, n in sorted(kinds.items())),
        f"blocks          {len(chain.headers):,} signed headers, log size {last['log_size']:,}",
        f"supply          {replay.supply():,} points outstanding",
        f"conversions     {kinds['convert-in']:,} in, {kinds['convert-out']:,} out",
        f"proofs          {chain.proofs:,} inclusion proofs and 1 consistency proof verified",
        f"chain audit     {'ok' if audit.get('ok') is True else 'FAILED'}",
    ]


def _drive(
    manifest: Manifest,
    brands: list[Brand],
    member_ids: list[str],
    options: DemoOptions,
    out: Path,
    *,
    victim: str | None,
    member_keys: bool,
    rotate: str | None = None,
) -> Summary:
    for brand in brands:
        say(
            f"  {brand.name:<20} gRPC {brand.addresses.grpc}  partner "
            f"{brand.addresses.partner_grpc}  HTTP {brand.addresses.http}"
        )
    started = datetime.now(UTC)
    scenario = Scenario({b.program: b for b in brands}, member_ids, member_keys=member_keys)
    scenario.onboard(options.purchases)
    wait_connected(brands)
    say("every node follows and cosigns every partner's chain")
    time.sleep(1.2)  # the holding period (1 s in the demo) makes the purchases spendable
    scenario.agree()
    if rotate is not None:
        scenario.rotate_key(rotate)
    scenario.convert(options.conversions, victim)
    scenario.wait_conversions()
    scenario.redeem_across(max(3, options.conversions // 25))
    scenario.check_expired_hold()
    scenario.settle(started, out)
    chains = [export_chain(brand, out) for brand in brands]
    witnessed = {
        brand.program: witness_evidence(brand, chain, out)
        for brand, chain in zip(brands, chains, strict=True)
    }
    audits = {
        brand.program: run_chain_audit(brand, len(chain.entries), out)
        for brand, chain in zip(brands, chains, strict=True)
    }
    cross = run_cross_chain_audit(manifest, chains, out)
    return Summary(brands, chains, witnessed, audits, cross, scenario.notes)
