"""Self-contained proof documents, verifiable offline with the program's public key.

Auditors in other languages depend on these exact formats (JSON, hashes lowercase hex,
signatures standard base64 over the header's RFC 8785 canonical bytes):

* inclusion, RFC 9162 §2.1.3: ``{"type": "coalition/inclusion-proof/v1", "entry": {...},
  "leaf_index": N, "tree_size": N, "path": [hex, ...], "header": {...},
  "signature": "..."}`` where ``tree_size == header.log_size`` and ``path`` is the
  inclusion path of the entry's leaf hash under ``header.log_root``;
* consistency, RFC 9162 §2.1.4: ``{"type": "coalition/consistency-proof/v1", "first":
  header, "first_signature": "...", "second": header, "second_signature": "...",
  "path": [hex, ...]}`` proving the log at ``second`` extends the log at ``first``.

The verifiers raise InvalidArgument when a document is malformed and VerificationError
when it is well formed but does not verify; an auditor rejects both.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from coalition.errors import InvalidArgument, VerificationError
from coalition.ledger.blocks import BlockHeader, SignedHeader, check_count, check_hex32, check_keys
from coalition.ledger.canonical import JsonObject, JsonValue
from coalition.ledger.entries import check_envelope, entry_leaf_hash
from coalition.ledger.merkle import EMPTY_ROOT, verify_consistency, verify_inclusion
from coalition.ledger.rotation import HeaderKeys, header_key

INCLUSION_TYPE = "coalition/inclusion-proof/v1"
CONSISTENCY_TYPE = "coalition/consistency-proof/v1"

_INCLUSION_KEYS = frozenset(
    {"type", "entry", "leaf_index", "tree_size", "path", "header", "signature"}
)
_CONSISTENCY_KEYS = frozenset(
    {"type", "first", "first_signature", "second", "second_signature", "path"}
)


def _path_json(path: Sequence[bytes]) -> list[JsonValue]:
    return [h.hex() for h in path]


def _path_bytes(path: JsonValue) -> list[bytes]:
    if not isinstance(path, list):
        raise InvalidArgument("proof path must be a list of hex hashes")
    return [bytes.fromhex(check_hex32(h, "proof path hash")) for h in path]


def _signature(value: JsonValue, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a base64 string")
    return value


def inclusion_document(
    entry: JsonObject, leaf_index: int, path: Sequence[bytes], signed: SignedHeader
) -> JsonObject:
    """The inclusion proof document of ``entry`` at ``leaf_index`` under ``signed``.

    ``path`` MUST be the inclusion path at ``signed.header.log_size``; it is not re-verified
    here (that takes the whole tree), only the document's shape is checked.
    """
    header = signed.header
    if not 0 <= leaf_index < header.log_size:
        raise InvalidArgument(f"leaf index {leaf_index} is not below log size {header.log_size}")
    if entry.get("program") != header.program:
        raise InvalidArgument("the entry's program is not the header's program")
    return {
        "type": INCLUSION_TYPE,
        "entry": entry,
        "leaf_index": leaf_index,
        "tree_size": header.log_size,
        "path": _path_json(path),
        "header": header.to_json(),
        "signature": signed.signature,
    }


def verify_inclusion_document(doc: JsonValue, key: HeaderKeys) -> None:
    """Verify an inclusion proof document against the program's public key (or its key
    schedule, ``ledger.rotation``: the header's key in force)."""
    d = check_keys(doc, _INCLUSION_KEYS, "inclusion proof")
    if d["type"] != INCLUSION_TYPE:
        raise InvalidArgument(f"inclusion proof type must be {INCLUSION_TYPE!r}")
    entry = d["entry"]
    if not isinstance(entry, dict):
        raise InvalidArgument("inclusion proof entry must be a JSON object")
    check_envelope(entry)
    leaf_index = check_count(d["leaf_index"], "leaf_index")
    tree_size = check_count(d["tree_size"], "tree_size")
    path = _path_bytes(d["path"])
    header = BlockHeader.from_json(d["header"])
    signature = _signature(d["signature"], "signature")
    if tree_size != header.log_size:
        raise VerificationError(
            f"tree_size {tree_size} is not the header's log size {header.log_size}"
        )
    if entry["program"] != header.program:
        raise VerificationError("the entry's program is not the header's program")
    if leaf_index >= tree_size:
        raise VerificationError(f"leaf_index {leaf_index} is not below tree_size {tree_size}")
    verify_inclusion(
        entry_leaf_hash(entry), leaf_index, tree_size, path, bytes.fromhex(header.log_root)
    )
    header_key(key, header).verify_object(header.to_json(), signature)


def consistency_document(
    first: SignedHeader, second: SignedHeader, path: Sequence[bytes]
) -> JsonObject:
    """The consistency proof document from ``first`` to ``second``.

    ``path`` MUST be the consistency path from ``first.header.log_size`` to
    ``second.header.log_size`` (empty when equal or when the first log is empty).
    """
    if first.header.program != second.header.program:
        raise InvalidArgument("a consistency proof links headers of one program")
    if first.header.log_size > second.header.log_size:
        raise InvalidArgument("the first header's log is larger than the second's")
    return {
        "type": CONSISTENCY_TYPE,
        "first": first.header.to_json(),
        "first_signature": first.signature,
        "second": second.header.to_json(),
        "second_signature": second.signature,
        "path": _path_json(path),
    }


def verify_consistency_document(doc: JsonValue, key: HeaderKeys) -> None:
    """Verify a consistency proof document against the program's public key, or its key
    schedule (``ledger.rotation``) when a rotation may lie between the two headers: each
    header is checked with the key in force for it.

    Two different headers at the same height are equivocation and fail. A first log of
    size 0 needs an empty path and the empty root.
    """
    d = check_keys(doc, _CONSISTENCY_KEYS, "consistency proof")
    if d["type"] != CONSISTENCY_TYPE:
        raise InvalidArgument(f"consistency proof type must be {CONSISTENCY_TYPE!r}")
    first = BlockHeader.from_json(d["first"])
    second = BlockHeader.from_json(d["second"])
    first_sig = _signature(d["first_signature"], "first_signature")
    second_sig = _signature(d["second_signature"], "second_signature")
    path = _path_bytes(d["path"])
    header_key(key, first).verify_object(first.to_json(), first_sig)
    header_key(key, second).verify_object(second.to_json(), second_sig)
    if first.program != second.program:
        raise VerificationError("the two headers belong to different programs")
    if first.height > second.height:
        raise VerificationError(f"first height {first.height} > second height {second.height}")
    if first.height == second.height and first != second:
        raise VerificationError(f"equivocation: two different signed headers at {first.height}")
    if first.log_size > second.log_size:
        raise VerificationError(
            f"first log size {first.log_size} > second log size {second.log_size}"
        )
    root1, root2 = bytes.fromhex(first.log_root), bytes.fromhex(second.log_root)
    if first.log_size == 0:
        if path:
            raise VerificationError("consistency proof from the empty log must have no path")
        if not hmac.compare_digest(root1, EMPTY_ROOT):
            raise VerificationError("the first header's empty log has a non-empty root")
        return
    verify_consistency(first.log_size, second.log_size, path, root1, root2)
