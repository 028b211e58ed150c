"""The hammer's checker (``scripts/hammerlib/checks.check_chains``) catches each way an
acknowledged write can be lost or an invariant broken: a clean set of chains passes, and
each planted fault is named (so a hammer run that reports nothing lost means it).

The chains are small hand-made entry lists shaped like the node's (only the fields the
checker reads); the real runs are ``tests/integration/test_hammer.py``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))
checks: Any = importlib.import_module("hammerlib.checks")
load: Any = importlib.import_module("hammerlib.load")

A, B = "skyair", "staybright"


def rows(entries: list[dict[str, Any]], keys: dict[str, str | None]) -> Any:
    return checks.ChainRows(entries, list(range(len(entries))), keys, len(entries))


def clean() -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, str | None]], Any]:
    """Two chains where an earn, a completed and a refunded conversion, a captured and an
    expired hold all ended as acknowledged; and those acknowledgements."""
    a = [
        {"id": "e1", "kind": "earn", "amount": 50},
        {
            "id": "e2",
            "kind": "convert-out",
            "amount": 100,
            "conversion": {"id": "c1", "credit": 49},
        },
        {"id": "e3", "kind": "convert-complete", "conversion": {"id": "c1"}},
        {"id": "e4", "kind": "convert-out", "amount": 300, "conversion": {"id": "c2", "credit": 9}},
        {"id": "e5", "kind": "convert-refund", "amount": 300, "conversion": {"id": "c2"}},
        {"id": "e6", "kind": "hold", "amount": 20, "hold": {"id": "h1", "partner": B}},
        {"id": "e7", "kind": "hold-capture", "amount": 20, "hold": {"id": "h1", "partner": B}},
        {"id": "e8", "kind": "hold", "amount": 30, "hold": {"id": "h2", "partner": B}},
        {"id": "e9", "kind": "hold-release", "amount": 30, "hold": {"id": "h2", "why": "expired"}},
    ]
    b = [
        {
            "id": "f1",
            "kind": "convert-in",
            "amount": 49,
            "conversion": {"id": "c1", "from_program": A},
        },
        {
            "id": "f2",
            "kind": "redemption-receipt",
            "hold": {"id": "h1", "partner": A, "amount": 20},
        },
    ]
    acks = load.Acks()
    for ack in (
        load.Ack(A, "earn", "k1", "e1"),
        load.Ack(A, "convert", "k2", "c1", (B, "M1")),
        load.Ack(A, "convert", "k3", "c2", (B, "M1")),
        load.Ack(B, "hold", "k4", "h1", (A, "capture", "authorized")),
        load.Ack(B, "capture", "k4", "h1", (A, "captured")),
        load.Ack(B, "hold", "k5", "h2", (A, "expire", "authorized")),
    ):
        acks.ack(ack)
    keys: dict[str, dict[str, str | None]] = {
        A: {e["id"]: None for e in a} | {"e1": "k1"},
        B: {e["id"]: None for e in b},
    }
    return {A: a, B: b}, keys, acks


def verdict_of(chains: dict[str, list[dict[str, Any]]], keys: Any, acks: Any) -> Any:
    return checks.check_chains({p: rows(chains[p], keys[p]) for p in chains}, acks)


def test_clean_chains_lose_nothing() -> None:
    verdict = verdict_of(*clean())
    assert verdict.lost == [] and verdict.failures == []
    assert verdict.conversions == {"completed": 1, "refunded": 1}
    assert verdict.holds == {"captured": 1, "released (expired)": 1}


def test_a_missing_acknowledged_entry_is_lost() -> None:
    chains, keys, acks = clean()
    del keys[A]["e1"]
    assert any("k1" in x and "missing" in x for x in verdict_of(chains, keys, acks).lost)


def test_an_entry_written_under_another_key_is_lost() -> None:
    chains, keys, acks = clean()
    keys[A]["e1"] = "another"
    assert any("written under 'another'" in x for x in verdict_of(chains, keys, acks).lost)


def test_a_conversion_that_never_ended_is_lost() -> None:
    chains, keys, acks = clean()
    chains[A] = [e for e in chains[A] if e["kind"] != "convert-refund"]
    assert any("c2 ended 0 times" in x for x in verdict_of(chains, keys, acks).lost)


def test_a_conversion_credited_twice_is_lost() -> None:
    chains, keys, acks = clean()
    chains[B].append(dict(chains[B][0], id="f3"))
    verdict = verdict_of(chains, keys, acks)
    assert any("c1 credited 2 times" in x for x in verdict.lost)
    assert any("credited conversion c1 2 times" in x for x in verdict.failures)


def test_a_refunded_conversion_credited_too_is_a_failure() -> None:
    chains, keys, acks = clean()
    in_c2 = {
        "id": "f9",
        "kind": "convert-in",
        "amount": 9,
        "conversion": {"id": "c2", "from_program": A},
    }
    chains[B].append(in_c2)
    verdict = verdict_of(chains, keys, acks)
    assert any("c2 was refunded" in x for x in verdict.failures)


def test_a_credit_other_than_quoted_is_a_failure() -> None:
    chains, keys, acks = clean()
    chains[B][0] = dict(chains[B][0], amount=50)
    assert any("quoted otherwise" in x for x in verdict_of(chains, keys, acks).failures)


def test_a_captured_hold_released_instead_is_lost() -> None:
    chains, keys, acks = clean()
    chains[A][6] = {
        "id": "e7",
        "kind": "hold-release",
        "amount": 20,
        "hold": {"id": "h1", "why": "void"},
    }
    lost = verdict_of(chains, keys, acks).lost
    assert any("h1's capture was acknowledged" in x for x in lost)


def test_a_hold_never_ended_and_a_log_with_a_gap_are_named() -> None:
    chains, keys, acks = clean()
    chains[A] = [e for e in chains[A] if e["id"] != "e9"]
    found = {p: rows(chains[p], keys[p]) for p in chains}
    found[A].indexes[-1] += 1
    verdict = checks.check_chains(found, acks)
    assert any("h2 ended 0 times" in x for x in verdict.lost)
    assert any("not dense" in x for x in verdict.failures)


def test_a_refused_write_found_in_a_chain_is_a_failure() -> None:
    chains, keys, acks = clean()
    acks.refused_keys.append((A, "k9"))
    assert verdict_of(chains, keys, acks).failures == []
    keys[A]["e5"] = "k9"
    assert any("refused the write k9" in x for x in verdict_of(chains, keys, acks).failures)
