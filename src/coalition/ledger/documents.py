"""Documents two partners sign: rate agreements and settlement statements (one helper).

A two-party document is a JSON object whose RFC 8785 canonical bytes each party signs
with its ledger key (Ed25519, the signature as 128 lowercase hex digits). Its recorded
form is ``{<field>: document, "signatures": {program: hex}}``, the signatures sorted by
program, where ``<field>`` names the document (``agreement``, ``statement``). What a
document means and who its parties are is its own module's (``points.rates``,
``points.settlement``); this module only signs, assembles and verifies. A verifier MUST
accept a signed document only when exactly its parties signed and every signature
verifies over the document's canonical bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from coalition.errors import CoalitionError, VerificationError
from coalition.ledger.canonical import JsonObject, JsonValue, canonical_json
from coalition.ledger.keys import SIGNATURE_SIZE, SigningKey, VerifyKey

SIGNATURES = "signatures"


def sign_document(doc: JsonObject, key: SigningKey) -> str:
    """Hex Ed25519 signature over the document's canonical JSON."""
    return key.sign(canonical_json(doc)).hex()


def signed_document(field: str, doc: JsonObject, signatures: Mapping[str, str]) -> JsonObject:
    """The recorded form ``{field: doc, "signatures": {program: hex}}`` (sorted)."""
    sigs: dict[str, JsonValue] = dict(sorted(signatures.items()))
    return {field: doc, SIGNATURES: sigs}


def split_signed(
    signed: JsonValue, field: str, error: type[CoalitionError] = VerificationError
) -> tuple[JsonObject, JsonObject]:
    """(document, signatures) of a recorded form, their content unchecked; ``error``
    (VerificationError unless the caller is judging its own input) unless ``signed`` is
    an object of exactly the objects ``field`` and ``signatures``."""
    if isinstance(signed, dict) and set(signed) == {field, SIGNATURES}:
        doc, signatures = signed[field], signed[SIGNATURES]
        if isinstance(doc, dict) and isinstance(signatures, dict):
            return doc, signatures
    raise error(f"a signed {field} is {{{field}, signatures}}")


def check_signature(
    key: VerifyKey, doc: JsonObject, signature: JsonValue, signer: str, what: str
) -> None:
    """VerificationError unless ``signature`` is ``signer``'s (``key``) over ``doc``;
    ``what`` names the document in the message (``statement <id>``)."""
    raw = b""
    if isinstance(signature, str) and len(signature) == 2 * SIGNATURE_SIZE:
        try:
            raw = bytes.fromhex(signature)
        except ValueError:
            raw = b""
    if len(raw) != SIGNATURE_SIZE or raw.hex() != signature:
        raise VerificationError(f"{signer}'s signature on {what} is not 128 lowercase hex digits")
    try:
        key.verify(canonical_json(doc), raw)
    except VerificationError:
        raise VerificationError(f"{signer}'s signature on {what} does not verify") from None


def verify_signatures(
    doc: JsonObject,
    signatures: JsonObject,
    parties: Iterable[str],
    key_of: Callable[[str], VerifyKey],
    what: str,
) -> None:
    """VerificationError unless ``signatures`` holds exactly one valid signature of each
    of ``parties`` over ``doc`` (checked in program order); ``key_of`` errors (an
    unknown program) pass through."""
    expected = sorted(set(parties))
    given = sorted(signatures)
    if given != expected:
        raise VerificationError(f"{what} needs signatures of exactly {expected}, has {given}")
    for program in expected:
        check_signature(key_of(program), doc, signatures[program], program, what)
