"""What must hold after every run, once the network healed and the nodes settled.

Each check returns the violations it found, as sentences naming what is wrong where;
an empty list is a sound run:

- ``conversions_exactly_once``: every conversion ended ``completed`` or ``refunded``,
  with exactly one final entry on its source chain; the target credited it exactly once
  when completed (the same credit) and never when refunded;
- ``value_conserved``: each chain's outstanding points are what the run's acknowledged
  earns issued, less what expired and was captured, less what converted out and was not
  refunded, plus what converted in;
- ``nothing_pending``: no conversion left to deliver, no redemption unanswered or still
  authorized (one past its expiry reads ``expired``: the issuer released the hold), no
  hold still held past its deadline, no entry unsealed;
- ``chains_audit``: each database agrees with the replay of its own chain (``coalition
  check``) and the coalition audit (every chain, cross-chain, settlement, evidence and
  witness quorum) finds no fault;
- ``witnesses_agree``: no node holds evidence, every witness verified every partner's
  newest header (the very header the partner signed) and each cosignature a partner
  holds is the one its witness made.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import func, select

from coalition.audit.db_check import check_database
from coalition.audit.sources import DatabaseSource
from coalition.ledger.canonical import JsonObject
from coalition.node.manifest import Manifest
from coalition.points import model
from coalition.store import ledger as ledger_store
from coalition.store import witness as witness_store
from coalition.store.columns import to_micros
from coalition.store.conversions import ConversionRow
from coalition.store.redemptions import HoldRow, PartnerRedemptionRow
from coalition.verify.coalition_audit import audit_all
from coalition.verify.witness_quorum import WitnessPolicy

from sim.nodes import SimNode
from support.coalition import ledger_entries

conversions_table = ConversionRow.__table__  # type: ignore[attr-defined]
holds_table = HoldRow.__table__  # type: ignore[attr-defined]
redemptions_table = PartnerRedemptionRow.__table__  # type: ignore[attr-defined]


def _by_conversion(chain: list[JsonObject], kind: str) -> Counter[str]:
    return Counter(str(model.conversion_id(e)) for e in chain if e.get("kind") == kind)


def _amount_of(chain: list[JsonObject], kind: str) -> int:
    return sum(int(str(e["amount"])) for e in chain if e.get("kind") == kind)


def conversions_exactly_once(
    nodes: Mapping[str, SimNode], chains: Mapping[str, list[JsonObject]]
) -> list[str]:
    found: list[str] = []
    credits: dict[str, dict[str, int]] = {}
    for program, chain in chains.items():
        credits[program] = {
            str(model.conversion_id(e)): int(str(e["amount"]))
            for e in chain
            if e.get("kind") == "convert-in"
        }
        ins = _by_conversion(chain, "convert-in")
        for conversion_id, count in ins.items():
            if count != 1:
                found.append(f"{program} credited conversion {conversion_id} {count} times")
    for program, node in nodes.items():
        chain = chains[program]
        finals = _by_conversion(chain, "convert-complete") + _by_conversion(chain, "convert-refund")
        with node.service.sequencer.read() as conn:
            rows = conn.execute(select(conversions_table)).all()
        for row in rows:
            where = f"conversion {row.id} {program}->{row.to_program}"
            if row.status not in ("completed", "refunded"):
                found.append(f"{where} ended {row.status}")
                continue
            if finals[row.id] != 1:
                found.append(f"{where} has {finals[row.id]} final entries on {program}")
            credited = credits[row.to_program].get(row.id)
            if row.status == "completed" and credited != row.credit:
                found.append(f"{where} completed but {row.to_program} credited {credited}")
            if row.status == "refunded" and credited is not None:
                found.append(f"{where} refunded and credited {credited} at {row.to_program}")
        outs = {str(model.conversion_id(e)) for e in chain if e.get("kind") == "convert-out"}
        if outs != {row.id for row in rows}:
            found.append(f"{program}'s convert-out entries and conversions differ")
    for program in chains:
        for conversion_id in credits[program]:
            sources = [p for p, node in nodes.items() if p != program and _has(node, conversion_id)]
            if len(sources) != 1:
                found.append(f"{program} credited {conversion_id}, which no partner sent")
    return found


def _has(node: SimNode, conversion_id: str) -> bool:
    with node.service.sequencer.read() as conn:
        query = select(func.count()).where(conversions_table.c.id == conversion_id)
        return bool(conn.execute(query).scalar_one())


def value_conserved(
    chains: Mapping[str, list[JsonObject]], issued: Mapping[str, int], supply: Mapping[str, int]
) -> list[str]:
    found = []
    for program, chain in chains.items():
        expected = (
            issued.get(program, 0)
            - _amount_of(chain, "expire")
            - _amount_of(chain, "hold-capture")
            - _amount_of(chain, "convert-out")
            + _amount_of(chain, "convert-refund")
            + _amount_of(chain, "convert-in")
        )
        if supply[program] != expected:
            found.append(
                f"{program} has {supply[program]} points outstanding where its flows give "
                f"{expected} (issued {issued.get(program, 0)})"
            )
    return found


def nothing_pending(nodes: Mapping[str, SimNode], now: datetime) -> list[str]:
    found = []
    now_us = to_micros(now)
    for program, node in nodes.items():
        if node.conversions.outbox.pending():
            found.append(f"{program} still has {node.conversions.outbox.pending()} to deliver")
        with node.service.sequencer.read() as conn:
            held = conn.execute(
                select(holds_table.c.hold_id).where(
                    holds_table.c.status == "held", holds_table.c.expires_at <= now_us
                )
            ).all()
            open_ = conn.execute(
                select(redemptions_table.c.hold_id).where(
                    redemptions_table.c.status.in_(("pending", "authorized"))
                )
            ).all()
            head = ledger_store.read_head(conn)
        found += [f"{program} holds {row.hold_id} past its expiry" for row in held]
        for row in open_:  # authorized past its expiry reads as expired: the issuer let go
            status = node.redemptions.get(row.hold_id).status
            if status in ("pending", "authorized"):
                found.append(f"{program}'s redemption {row.hold_id} is {status}")
        if node.service.sealer.log_size != head:
            found.append(f"{program} sealed {node.service.sealer.log_size} of {head} entries")
    return found


def chains_audit(
    nodes: Mapping[str, SimNode], manifest: Manifest, now: datetime
) -> tuple[list[str], dict[str, int]]:
    found = []
    supply = {}
    for program, node in nodes.items():
        report = check_database(node.config.database_url)
        supply[program] = report.supply
        if not report.ok:
            found.append(f"{program}'s database differs from its chain:\n{report.render()}")
    sources = {p: DatabaseSource(node.config.database_url) for p, node in nodes.items()}
    try:
        policy = WitnessPolicy(manifest.witness_quorum, list(nodes), witnessed_before=now)
        audit = audit_all(sources, manifest.public_key, pending_before=now, witnessing=policy)
    finally:
        for source in sources.values():
            source.close()
    if not audit.ok:
        found.append(f"the coalition audit failed:\n{audit.render()}")
    return found, supply


def witnesses_agree(nodes: Mapping[str, SimNode]) -> list[str]:
    found = []
    for witness, node in nodes.items():
        with node.service.sequencer.read() as conn:
            accused = witness_store.programs_with_evidence(conn)
        if accused:
            found.append(f"{witness} holds evidence against {', '.join(sorted(accused))}")
        for program, other in nodes.items():
            if program == witness:
                continue
            newest = other.service.ledger.headers(0, 1)  # program has at least one block
            last = other.service.sealer.last
            seen = node.witness.last_verified(program)
            if last is None or not newest:
                found.append(f"{program} has no sealed header")
                continue
            if seen is None or seen.to_json() != last.to_json():
                height = None if seen is None else seen.header.height
                found.append(
                    f"{witness} verified {program} up to height {height}, "
                    f"not its newest {last.header.height}"
                )
            with other.service.sequencer.read() as theirs, node.service.sequencer.read() as mine:
                held = witness_store.cosignatures_between(theirs, program, 0, 1 << 62)
                made = witness_store.cosignatures_between(mine, program, 0, 1 << 62)
            name = node.witness.name
            for height, cosigs in made.items():
                own = [c for c in cosigs if c.witness == name]
                kept = [c for c in held.get(height, []) if c.witness == name]
                if [c.cosignature for c in own] != [c.cosignature for c in kept]:
                    found.append(
                        f"{program} holds another cosignature of {witness} at height {height}"
                    )
    return found


def check(
    nodes: Mapping[str, SimNode], manifest: Manifest, issued: Mapping[str, int], now: datetime
) -> list[str]:
    """Every invariant, on the nodes as they stand (all up, the network healed)."""
    chains = {p: ledger_entries(node.service) for p, node in nodes.items()}
    audited, supply = chains_audit(nodes, manifest, now)
    return [
        *conversions_exactly_once(nodes, chains),
        *value_conserved(chains, issued, supply),
        *nothing_pending(nodes, now),
        *audited,
        *witnesses_agree(nodes),
    ]
