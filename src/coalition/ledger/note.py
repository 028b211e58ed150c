"""C2SP signed notes, transparency-log checkpoints and v1 cosignatures (pure).

* https://c2sp.org/signed-note: a UTF-8 text ending in a newline, a blank line, then
  signature lines ``"— <key name> base64(4-byte key id || signature)\\n"``. Key ids are
  ``SHA-256(name || "\\n" || type byte || public key)[:4]``; verifier keys (vkeys) are
  ``<name>+<hex key id>+<base64(type byte || public key)>``. Type 0x01 is Ed25519 over
  the note text.
* https://c2sp.org/tlog-checkpoint: the note text is ``origin``, the tree size in
  decimal and the base64 RFC 6962/9162 root, each on its own line, then optional
  non-empty extension lines.
* https://c2sp.org/tlog-cosignature: type 0x04, Ed25519 over ``"cosignature/v1\\n"
  "time <T>\\n" + checkpoint text``; the signature is the 8-byte big-endian ``T`` then
  the 64-byte Ed25519 signature.

Following the note spec, verifiers ignore signatures from unknown (name, key id) pairs,
refuse the whole note when a known key's signature fails, and refuse a note with no
verified signature. Malformed input raises InvalidArgument; a bad signature raises
VerificationError.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from hashlib import sha256

from coalition.errors import CoalitionError, InvalidArgument, VerificationError
from coalition.ledger.blocks import SignedHeader
from coalition.ledger.keys import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, SigningKey, VerifyKey

SIG_ED25519 = 0x01
"""Signature type of a plain Ed25519 note signature (a log's checkpoint signature)."""
SIG_COSIGNATURE_V1 = 0x04
"""Signature type of a timestamped Ed25519 cosignature (tlog-cosignature/v1)."""
SIGNATURE_TYPES = frozenset({SIG_ED25519, SIG_COSIGNATURE_V1})

MAX_SIGNATURES = 100
"""The spec asks verifiers to accept at least 16; like the Go reference, refuse over 100."""
MAX_TIMESTAMP = 2**63 - 1

_SIG_PREFIX = "\u2014 "  # em dash, space
_COSIGNATURE_HEADER = "cosignature/v1\n"
_KEY_ID_HEX = re.compile(r"[0-9a-f]{8}", re.ASCII)
_DECIMAL = re.compile(r"0|[1-9][0-9]*", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


def _b64decode(text: str, what: str) -> bytes:
    """Strict standard base64 (RFC 4648 §4): one spelling per byte string."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"{what} is not valid base64") from None
    if base64.b64encode(data).decode("ascii") != text:
        raise InvalidArgument(f"{what} is not canonical base64")
    return data


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def check_key_name(name: object) -> str:
    """``name`` if it is a valid key name: non-empty, no Unicode space, no ``+``."""
    if (
        not isinstance(name, str)
        or not name
        or "+" in name
        or any(c.isspace() for c in name)
        or _CONTROL.search(name)
    ):
        raise InvalidArgument(f"malformed key name {name!r}: non-empty, no spaces, no '+'")
    return name


def _check_text(text: object, what: str) -> str:
    if not isinstance(text, str):
        raise InvalidArgument(f"{what} must be a string")
    if _CONTROL.search(text):
        raise InvalidArgument(f"{what} contains a control character other than newline")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what} is not valid UTF-8") from None
    return text


def key_id(name: str, sig_type: int, public_key: bytes) -> bytes:
    """The 4-byte key id: ``SHA-256(name || "\\n" || type || public key)[:4]``."""
    check_key_name(name)
    if sig_type not in SIGNATURE_TYPES:
        raise InvalidArgument(f"unsupported note signature type {sig_type:#04x}")
    return sha256(name.encode() + b"\n" + bytes([sig_type]) + public_key).digest()[:4]


@dataclass(frozen=True, slots=True)
class NoteVerifier:
    """A trusted key: its name, 4-byte id, signature type (0x01 or 0x04) and public key."""

    name: str
    key_id: bytes
    sig_type: int
    key: VerifyKey

    def vkey(self) -> str:
        return f"{self.name}+{self.key_id.hex()}+{_b64(bytes([self.sig_type]) + self.key.raw)}"


def note_verifier(name: str, key: VerifyKey, sig_type: int = SIG_ED25519) -> NoteVerifier:
    """The verifier for ``key`` under ``name`` and signature type ``sig_type``."""
    return NoteVerifier(name, key_id(name, sig_type, key.raw), sig_type, key)


def vkey(name: str, key: VerifyKey, sig_type: int = SIG_ED25519) -> str:
    """The vkey string ``<name>+<hex key id>+<base64(type || public key)>``."""
    return note_verifier(name, key, sig_type).vkey()


def parse_vkey(text: str) -> NoteVerifier:
    """Parse a vkey; InvalidArgument unless it is well formed and its key id matches."""
    if not isinstance(text, str):
        raise InvalidArgument("a vkey must be a string")
    parts = text.split("+", 2)
    if len(parts) != 3:
        raise InvalidArgument("malformed vkey: expected <name>+<key id>+<key>")
    name, hex_id, material = parts
    check_key_name(name)
    if not _KEY_ID_HEX.fullmatch(hex_id):
        raise InvalidArgument("malformed vkey: the key id must be 8 lowercase hex digits")
    raw = _b64decode(material, "vkey key material")
    if len(raw) != 1 + PUBLIC_KEY_SIZE or raw[0] not in SIGNATURE_TYPES:
        raise InvalidArgument("malformed vkey: expected an Ed25519 key of type 0x01 or 0x04")
    verifier = note_verifier(name, VerifyKey.from_raw(raw[1:]), raw[0])
    if verifier.key_id.hex() != hex_id:
        raise InvalidArgument("malformed vkey: the key id does not match the name and key")
    return verifier


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line: key name, 4-byte key id and the signature bytes after the id."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        return f"{_SIG_PREFIX}{self.name} {_b64(self.key_id + self.signature)}\n"


@dataclass(frozen=True, slots=True)
class Note:
    """A parsed (not yet verified) note: its text and signatures, duplicates dropped."""

    text: str
    signatures: tuple[NoteSignature, ...]


def parse_signature_line(line: str) -> NoteSignature:
    """One signature line, with or without its final newline."""
    if not isinstance(line, str):
        raise InvalidArgument("a signature line must be a string")
    body = line.removesuffix("\n")
    if "\n" in body or not body.startswith(_SIG_PREFIX):
        raise InvalidArgument("malformed note signature line: expected '— <name> <base64>'")
    name, sep, encoded = body[len(_SIG_PREFIX) :].partition(" ")
    if not sep:
        raise InvalidArgument("malformed note signature line: no signature after the name")
    check_key_name(name)
    raw = _b64decode(encoded, "note signature")
    if len(raw) < 5:
        raise InvalidArgument("malformed note signature: shorter than a key id and a signature")
    return NoteSignature(name, raw[:4], raw[4:])


def parse_note(note: str | bytes) -> Note:
    """Split a signed note into text and signatures, checking the syntax only."""
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument("malformed note: not valid UTF-8") from None
    _check_text(note, "note")
    split = note.rfind("\n\n")
    if split < 0:
        raise InvalidArgument("malformed note: no blank line before the signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block or not block.endswith("\n"):
        raise InvalidArgument("malformed note: signature lines must end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise InvalidArgument(f"malformed note: more than {MAX_SIGNATURES} signatures")
    signatures: list[NoteSignature] = []
    for line in lines:
        sig = parse_signature_line(line)
        if sig not in signatures:
            signatures.append(sig)
    return Note(text, tuple(signatures))


def _signed_message(verifier: NoteVerifier, text: str, signature: bytes) -> bytes | None:
    """The message ``signature`` covers under ``verifier``, None when its shape is wrong."""
    if verifier.sig_type == SIG_ED25519:
        return text.encode() if len(signature) == SIGNATURE_SIZE else None
    if len(signature) != 8 + SIGNATURE_SIZE:
        return None
    (timestamp,) = struct.unpack(">Q", signature[:8])
    if timestamp > MAX_TIMESTAMP:
        return None
    return _cosigned_message(text, timestamp)


def _verify_one(verifier: NoteVerifier, text: str, sig: NoteSignature) -> None:
    message = _signed_message(verifier, text, sig.signature)
    where = f"{verifier.name}+{verifier.key_id.hex()}"
    if message is None:
        raise VerificationError(f"invalid signature for key {where}: wrong length or time")
    raw = sig.signature if verifier.sig_type == SIG_ED25519 else sig.signature[8:]
    try:
        verifier.key.verify(message, raw)
    except VerificationError:
        raise VerificationError(f"invalid signature for key {where}") from None


@dataclass(frozen=True, slots=True)
class VerifiedNote:
    """A note whose ``verified`` signatures checked out; ``unverified`` are from unknown
    keys and say nothing."""

    text: str
    verified: tuple[NoteSignature, ...]
    unverified: tuple[NoteSignature, ...]


def verify_note(note: str | bytes, verifiers: Iterable[NoteVerifier]) -> VerifiedNote:
    """Open ``note`` with the trusted ``verifiers``.

    Signatures whose (name, key id) match no verifier are ignored. A matching signature
    that fails raises VerificationError (the whole note is refused), as does a note with
    no verified signature. Two different verifiers sharing a name and key id are
    ambiguous and raise InvalidArgument when a signature names them.
    """
    parsed = parse_note(note)
    by_id: dict[tuple[str, bytes], list[NoteVerifier]] = {}
    for v in verifiers:
        found = by_id.setdefault((v.name, v.key_id), [])
        if v not in found:
            found.append(v)
    verified: list[NoteSignature] = []
    unverified: list[NoteSignature] = []
    for sig in parsed.signatures:
        candidates = by_id.get((sig.name, sig.key_id), [])
        if not candidates:
            unverified.append(sig)
            continue
        if len(candidates) > 1:
            raise InvalidArgument(f"ambiguous key {sig.name}+{sig.key_id.hex()}")
        _verify_one(candidates[0], parsed.text, sig)
        verified.append(sig)
    if not verified:
        raise VerificationError("note has no verifiable signatures")
    return VerifiedNote(parsed.text, tuple(verified), tuple(unverified))


def signature_line(text: str, key: SigningKey, name: str) -> str:
    """The Ed25519 (type 0x01) signature line of ``key`` named ``name`` over ``text``."""
    _check_note_text(text)
    kid = key_id(name, SIG_ED25519, key.public_key.raw)
    return NoteSignature(name, kid, key.sign(text.encode())).line()


def sign_note(text: str, key: SigningKey, name: str) -> str:
    """``text`` signed by ``key`` (type 0x01) under ``name``: the whole signed note."""
    return assemble_note(text, [signature_line(text, key, name)])


def assemble_note(text: str, lines: Sequence[str]) -> str:
    """A note from its text and signature lines (each parsed, so a bad one is refused)."""
    _check_note_text(text)
    if not lines:
        raise InvalidArgument("a signed note needs at least one signature line")
    return text + "\n" + "".join(parse_signature_line(line).line() for line in lines)


def _check_note_text(text: str) -> None:
    _check_text(text, "note text")
    if not text.endswith("\n"):
        raise InvalidArgument("note text must end with a newline")


# --- checkpoints (c2sp.org/tlog-checkpoint) ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's tree head: origin, tree size, 32-byte root hash and extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> str:
        return checkpoint_body(self.origin, self.size, self.root, self.extensions)


def checkpoint_body(origin: str, size: int, root: bytes, extensions: Sequence[str] = ()) -> str:
    """The checkpoint note text: origin, size and base64 root lines, then extensions."""
    if not isinstance(origin, str) or not origin or "\n" in origin:
        raise InvalidArgument("checkpoint origin must be a non-empty single line")
    if type(size) is not int or not 0 <= size <= MAX_TIMESTAMP:
        raise InvalidArgument("checkpoint size must be an integer in [0, 2**63 - 1]")
    if not isinstance(root, bytes) or len(root) != 32:
        raise InvalidArgument("checkpoint root must be 32 bytes (SHA-256)")
    for ext in extensions:
        if not isinstance(ext, str) or not ext or "\n" in ext:
            raise InvalidArgument("checkpoint extension lines must be non-empty single lines")
    text = "".join(line + "\n" for line in (origin, str(size), _b64(root), *extensions))
    return _check_text(text, "checkpoint")


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint note text (without signatures); InvalidArgument if malformed."""
    _check_note_text(text)
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise InvalidArgument("malformed checkpoint: fewer than three lines")
    origin, size_text, root_text, *extensions = lines
    if not origin:
        raise InvalidArgument("malformed checkpoint: empty origin")
    if not _DECIMAL.fullmatch(size_text) or int(size_text) > MAX_TIMESTAMP:
        raise InvalidArgument("malformed checkpoint: the size is not a decimal without zeros")
    root_hash = _b64decode(root_text, "checkpoint root hash")
    if len(root_hash) != 32:
        raise InvalidArgument("malformed checkpoint: the root hash is not 32 bytes")
    if any(not ext for ext in extensions):
        raise InvalidArgument("malformed checkpoint: empty extension line")
    return Checkpoint(origin, int(size_text), root_hash, tuple(extensions))


def origin_of(program: str) -> str:
    """The checkpoint origin of a program's log."""
    return f"coalition/{program}"


_WITNESS_PREFIX, _WITNESS_SUFFIX = "coalition/", "/witness"


def witness_name(program: str) -> str:
    """The C2SP cosigner name of ``program``'s node (its key id uses type 0x04): the name
    a node cosigns with and the auditor verifies against."""
    return f"{_WITNESS_PREFIX}{program}{_WITNESS_SUFFIX}"


def witness_of(name: str) -> str | None:
    """The program a cosigner name ``coalition/<program>/witness`` names (the inverse of
    ``witness_name``), None for any other name."""
    if not (name.startswith(_WITNESS_PREFIX) and name.endswith(_WITNESS_SUFFIX)):
        return None
    program = name[len(_WITNESS_PREFIX) : -len(_WITNESS_SUFFIX)]
    return program if program and "/" not in program else None


def checkpoint_of(signed: SignedHeader, origin: str | None = None) -> str:
    """The C2SP checkpoint text of a header's log: ``origin`` (default
    ``coalition/<program>``), ``log_size`` and ``log_root``. The header's own signature is
    over its canonical JSON; this is what witnesses cosign."""
    header = signed.header
    return checkpoint_body(
        origin if origin is not None else origin_of(header.program),
        header.log_size,
        bytes.fromhex(header.log_root),
    )


# --- cosignatures (c2sp.org/tlog-cosignature, Ed25519 v1) ---------------------------------


def _cosigned_message(checkpoint: str, timestamp: int) -> bytes:
    return f"{_COSIGNATURE_HEADER}time {timestamp}\n{checkpoint}".encode()


def _check_timestamp(timestamp: object) -> int:
    if type(timestamp) is not int or not 0 <= timestamp <= MAX_TIMESTAMP:
        raise InvalidArgument("cosignature timestamp must be an integer in [0, 2**63 - 1]")
    return timestamp


def cosign(checkpoint: str, key: SigningKey, name: str, timestamp: int) -> str:
    """The cosignature/v1 signature line of cosigner ``name`` over a checkpoint text."""
    parse_checkpoint(checkpoint)
    _check_timestamp(timestamp)
    kid = key_id(name, SIG_COSIGNATURE_V1, key.public_key.raw)
    sig = key.sign(_cosigned_message(checkpoint, timestamp))
    return NoteSignature(name, kid, struct.pack(">Q", timestamp) + sig).line()


@dataclass(frozen=True, slots=True)
class Cosignature:
    """A verified cosignature: who, when (POSIX seconds) and its signature line."""

    name: str
    timestamp: int
    line: str


def cosignature_timestamp(line: str) -> int:
    """The timestamp a cosignature/v1 line claims (unverified)."""
    sig = parse_signature_line(line)
    if len(sig.signature) != 8 + SIGNATURE_SIZE:
        raise InvalidArgument("a cosignature/v1 signature is 8 + 64 bytes")
    return _check_timestamp(struct.unpack(">Q", sig.signature[:8])[0])


def verify_cosignature(checkpoint: str, line: str, key: VerifyKey, name: str) -> Cosignature:
    """Check that ``line`` is cosigner ``name``'s cosignature/v1 by ``key`` over
    ``checkpoint``; VerificationError otherwise (InvalidArgument when malformed)."""
    parse_checkpoint(checkpoint)
    sig = parse_signature_line(line)
    verifier = note_verifier(name, key, SIG_COSIGNATURE_V1)
    if sig.name != name or not hmac.compare_digest(sig.key_id, verifier.key_id):
        raise VerificationError(f"the cosignature is not by {name}+{verifier.key_id.hex()}")
    try:
        _verify_one(verifier, checkpoint, sig)
    except CoalitionError as exc:
        raise VerificationError(f"cosignature of {name}: {exc}") from None
    return Cosignature(name, cosignature_timestamp(line), sig.line())
