"""The registry of entry kinds (points.kinds): every kind has a consumer for each part it
declares (replay, cross-chain, settlement, display), the derived sets are what their
users read, and docs/proofs.md's kinds table is the registry's."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from kind_samples import every_kind, two_chains

from coalition.errors import NotFound
from coalition.explorer.flows import conversion_flows
from coalition.ledger.canonical import canonical_json
from coalition.ledger.keys import VerifyKey
from coalition.points import kinds, model, replay_fast, state
from coalition.points.kinds import KINDS, CrossChain, Flow, Scope, Settlement
from coalition.points.settlement import obligations, priced
from coalition.verify import cross_chain, recording

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = every_kind()


def test_every_kind_has_a_replay_effect_and_its_struct_has_a_handler() -> None:
    members = {k.struct for k in KINDS.values() if k.scope is Scope.MEMBER}
    programs = {k.struct for k in KINDS.values() if k.scope is Scope.PROGRAM}
    assert set(state._MEMBER_EFFECTS) == members
    assert set(state._PROGRAM_CHECKS) == programs
    assert set(model.ENTRY_TYPES) == members | programs
    assert [k.name for k in KINDS.values()] == [model.kind_of(t) for t in model.ENTRY_TYPES]


def _no_key(program: str) -> VerifyKey:
    raise NotFound(program)


def test_every_cross_chain_kind_is_read_by_the_cross_chain_audit_and_recorded() -> None:
    """The cross-chain audit indexes every step a kind may declare, each sample of a
    cross-chain kind is indexed without a fault, and the recorder's byte markers select
    exactly the kinds the coalition checks read."""
    chain = cross_chain._Chain("skyair")
    for step in set(CrossChain) - {CrossChain.NONE, CrossChain.AGREEMENT}:
        assert isinstance(chain.index_of(step), dict), step
    checker = cross_chain._Checker({}, _no_key, None)
    for name in kinds.CROSS_CHAIN_KINDS:
        for n, entry in enumerate(SAMPLES[name]):
            at = cross_chain._At(str(entry["program"]), n, entry, model.parse_entry(entry))
            checker._index_one(cross_chain._Chain(at.program), at)  # raises if not indexed
    families = {k.cross_chain.family for k in KINDS.values()} - {kinds.Family.NONE}
    assert families == {kinds.Family.CONVERSION, kinds.Family.HOLD, kinds.Family.AGREEMENT}
    for name, entries in SAMPLES.items():
        selected = bool(recording.COALITION_KINDS.search(canonical_json(entries[0])))
        assert selected == (name in kinds.COALITION_KINDS), name


def test_every_settlement_role_is_read_by_settlement() -> None:
    sky, stay = two_chains()
    for chain in (sky, stay):
        for entry in chain.entries:
            role = KINDS[str(entry["kind"])].settlement
            owed = role in (Settlement.OWED_BY_PROGRAM, Settlement.OWED_TO_PROGRAM)
            found = priced(chain.program, model.parse_entry(entry))
            assert (found is not None) == owed, entry["kind"]
            if found is not None:
                debtor = found[0]
                assert (debtor == chain.program) == (role is Settlement.OWED_BY_PROGRAM)
    start, end = sky.entries[0]["at"], sky.now
    period = (model.moment(str(start)), end)
    owed_sky = obligations("skyair", sky.entries, *period)
    owed_stay = obligations("staybright", stay.entries, *period)
    # conv-1 completed (COMPLETES), conv-2 refunded (CANCELS): one conversion, one capture
    assert owed_sky == owed_stay and owed_sky[("skyair", "staybright")].items == 2
    assert {
        n for n, k in KINDS.items() if k.settlement not in (Settlement.NONE, Settlement.STATEMENT)
    } == kinds.OBLIGATION_KINDS


def test_every_kind_is_displayed_and_every_flow_is_summed() -> None:
    shown = kinds.display_json()
    assert [row["kind"] for row in shown] == list(KINDS)
    assert all(row["label"] for row in shown)
    sky, stay = two_chains()
    flows = conversion_flows(sky.entries, "skyair", 3600) + conversion_flows(
        stay.entries, "staybright", 3600
    )
    summed = {(f.kind, f.source == "skyair") for f in flows}
    assert summed == {("conversion", True), ("redemption", True)}
    assert {k.display.flow for k in KINDS.values()} - {None} == set(Flow)
    refunded = [f for f in flows if f.refunded]
    assert len(refunded) == 1 and refunded[0].count == 1  # conv-2 came back, conv-1 stays


def test_supply_changes_as_the_registry_says() -> None:
    for chain in two_chains():
        assert kinds.supply_change(chain.replay.points_by_kind) == chain.replay.supply()


def test_derived_sets_are_those_the_code_used_to_keep_by_hand() -> None:
    assert {
        "agreement",
        "statement",
        "convert-reject",
        "redemption-receipt",
        "key-rotation",
    } == kinds.PROGRAM_KINDS
    assert {"enroll", "earn", "redeem", "transfer", "expire", "adjust"} == kinds.FAST_KINDS
    assert {
        "convert-out", "convert-in", "convert-complete", "convert-refund",
        "hold", "hold-capture", "hold-release",
    } == kinds.COALITION_MEMBER_KINDS  # fmt: skip
    assert {
        "convert-out",
        "convert-refund",
        "convert-in",
        "hold-capture",
        "redemption-receipt",
    } == kinds.FLOW_KINDS
    assert all(
        k.cross_chain is not CrossChain.NONE for k in KINDS.values() if k.name in kinds.HOLD_KINDS
    )


def test_the_kinds_table_of_docs_proofs_md_is_the_registry_s() -> None:
    doc = (ROOT / "docs" / "proofs.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- kinds:begin -->\n(.*?)<!-- kinds:end -->", doc, re.S)
    assert found is not None, "docs/proofs.md lost its kinds table markers"
    assert found.group(1) == kinds.markdown_table(), "run scripts/update_kinds_doc.py"
    check = [sys.executable, str(ROOT / "scripts" / "update_kinds_doc.py"), "--check"]
    assert subprocess.run(check, check=False).returncode == 0


def _mentions_kind(node: ast.AST) -> bool:
    """Whether an expression reads an entry's kind (a name ``kind`` or a ``"kind"`` key)."""
    return any(
        (isinstance(n, ast.Name) and n.id == "kind")
        or (isinstance(n, ast.Constant) and n.value == "kind")
        for n in ast.walk(node)
    )


def _kinds_kept_by_hand(tree: ast.AST) -> list[tuple[int, str]]:
    """Where a module names entry kinds itself: a literal set, tuple or list of two or
    more kind names, or an entry's kind compared with a kind name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Set | ast.Tuple | ast.List):
            names = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in KINDS]
            if len(names) >= 2:
                found.append((node.lineno, f"kinds kept by hand: {names}"))
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            named = [c.value for c in sides if isinstance(c, ast.Constant) and c.value in KINDS]
            if named and any(_mentions_kind(c) for c in sides if not isinstance(c, ast.Constant)):
                found.append((node.lineno, f"a kind compared with {named}"))
    return found


def test_no_module_keeps_entry_kinds_by_hand() -> None:
    """Every set of kinds and every kind test outside the registry derives from it
    (``kinds.*_KINDS``, ``model.kind_of(struct)``), so adding a kind is one edit there."""
    package = ROOT / "src" / "coalition"
    registry = {package / "points" / "kinds.py", package / "points" / "model.py"}
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path in sorted(package.rglob("*.py"))
        if path not in registry and not path.name.endswith("_pb2.py")
        for line, what in _kinds_kept_by_hand(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert offenders == []


def test_the_hand_kept_kinds_check_catches_a_set_and_a_comparison() -> None:
    planted = ast.parse(
        'HOLDS = frozenset({"hold", "hold-capture"})\n'
        'if body.get("kind") == "convert-out": pass\n'
        'if set(body) != {"hold", "member_id"}: pass\n'
    )
    assert sorted(line for line, _ in _kinds_kept_by_hand(planted)) == [1, 2]


def test_the_fast_replay_handles_exactly_the_fast_kinds() -> None:
    assert replay_fast.HANDLED == kinds.FAST_KINDS
