"""Typed entries (points.model): every kind the node writes parses into its struct and
gives back the same JSON and the same canonical bytes; malformed entries are refused
with an error naming the entry and the field."""

from __future__ import annotations

import copy

import pytest
from kind_samples import every_kind

from coalition.errors import VerificationError
from coalition.ledger.canonical import JsonObject, JsonValue, canonical_json
from coalition.points import model
from coalition.points.kinds import KINDS

SAMPLES = every_kind()
ENVELOPE = {"type", "program", "id", "kind", "at", "account"}


def _cases() -> list[tuple[str, JsonObject]]:
    return [(kind, entry) for kind, entries in SAMPLES.items() for entry in entries]


def test_the_samples_hold_every_kind() -> None:
    assert set(SAMPLES) == set(KINDS)


@pytest.mark.parametrize(("kind", "entry"), _cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_kind_round_trips_to_identical_bytes(kind: str, entry: JsonObject) -> None:
    typed = model.parse_entry(entry)
    assert type(typed) is KINDS[kind].struct
    assert model.to_json(typed) == entry
    assert canonical_json(model.to_json(typed)) == canonical_json(entry)


def _wrong(value: JsonValue) -> JsonValue:
    """A value of another JSON type than ``value`` (never one msgspec could coerce)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return "x"
    return "7" if isinstance(value, int) else 7


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_retyped_missing_or_unknown_field_is_refused_naming_it(kind: str) -> None:
    entry = SAMPLES[kind][0]
    for name in sorted(set(entry) - {"kind"}):
        retyped = {**entry, name: _wrong(entry[name])}
        named = rf"entry {retyped['id']} \({kind}\): .*\$\.{name}"
        with pytest.raises(VerificationError, match=named):
            model.parse_entry(retyped)
        if name in ENVELOPE or (kind == "adjust" and name in ("lot", "expires_at", "taken")):
            continue  # adjust's credit and debit fields are optional, one set or the other
        missing = {k: v for k, v in entry.items() if k != name}
        with pytest.raises(VerificationError, match=f"missing required field `{name}`"):
            model.parse_entry(missing)
    with pytest.raises(VerificationError, match="unknown field `note`"):
        model.parse_entry({**entry, "note": "x"})


def test_nested_fields_times_booleans_and_kinds_are_checked() -> None:
    earn = SAMPLES["earn"][0]
    lot = dict(earn["lot"])  # type: ignore[arg-type]
    with pytest.raises(VerificationError, match=r"\$\.lot\.qualifying"):
        model.parse_entry({**earn, "lot": {**lot, "qualifying": True}})
    with pytest.raises(VerificationError, match="unknown field `extra`"):
        model.parse_entry({**earn, "lot": {**lot, "extra": 1}})
    with pytest.raises(VerificationError, match=r"\$\.at"):
        model.parse_entry({**earn, "at": "2026-11-10T12:00:00Z"})  # not the six-digit form
    with pytest.raises(VerificationError, match=r"\$\.amount"):
        model.parse_entry({**earn, "amount": True})
    with pytest.raises(VerificationError, match=r"\$\.kind"):
        model.parse_entry({**earn, "kind": "mint"})
    with pytest.raises(VerificationError, match=r"\$\.type"):
        model.parse_entry({**earn, "type": "coalition/entry/v2"})
    with pytest.raises(VerificationError, match="JSON object"):
        model.parse_entry([earn])
    out = copy.deepcopy(SAMPLES["convert-out"][0])
    out["conversion"]["agreement"]["version"] = "2"  # type: ignore[index]
    with pytest.raises(VerificationError, match=r"\$\.conversion\.agreement\.version"):
        model.parse_entry(out)
    with pytest.raises(VerificationError, match="expected a hold entry"):
        model.parse_as(out, model.Hold)


def test_the_node_writes_only_entries_that_parse() -> None:
    with pytest.raises(VerificationError, match="missing required field `reason`"):
        model.build_entry(
            "redeem",
            "skyair",
            "e-1",
            "2026-11-10T12:00:00.000000Z",
            "a",
            {"amount": 1, "taken": []},
        )
    with pytest.raises(VerificationError, match="unknown entry kind 'mint'"):
        model.build_entry("mint", "skyair", "e-1", "2026-11-10T12:00:00.000000Z", "a", {})


def test_a_built_entry_carries_its_typed_entry_and_a_copy_is_parsed_again() -> None:
    """The sequencer applies the typed entry a built body carries (parsed once); a copy,
    which a caller may change, is a plain body and is parsed."""
    body = model.build_entry(
        "enroll", "skyair", "e-1", "2026-11-10T12:00:00.000000Z", "a", {"reason": {}}
    )
    assert model.typed_entry(body) is body.typed
    assert body.typed == model.parse_entry(body)
    changed = copy.deepcopy(body)
    assert type(changed) is dict and changed == body
    changed["account"] = "b"
    assert model.typed_entry(changed).account == "b"


def test_an_agreement_reference_is_read_in_one_place() -> None:
    assert model.agreement_key({"id": "a", "version": 2}, "a receipt") == ("a", 2)
    for bad in (None, {"id": "a"}, {"id": "a", "version": True}, {"id": "a", "version": 2, "x": 1}):
        with pytest.raises(VerificationError, match="a receipt names no agreement"):
            model.agreement_key(bad, "a receipt")


def test_a_partners_entry_is_answered_by_the_conversion_id_it_names() -> None:
    out = SAMPLES["convert-out"][0]
    conversion = out["conversion"]
    assert isinstance(conversion, dict)
    assert model.conversion_id(out) == conversion["id"]
    assert model.conversion_id({"conversion": {"id": "c-1", "odd": 1}, "extra": 2}) == "c-1"
    for named_none in ({"conversion": {"id": 7}}, {"conversion": "c-1"}, [], None):
        assert model.conversion_id(named_none) is None
