"""The pure ledger core: canonical JSON, keys, the RFC 9162 Merkle log, entries, blocks,
proof documents and chain checks.

Nothing here does I/O (no files, network or database): callers fetch and store bytes, this
package only computes and verifies. Import the submodule you need, e.g.
``coalition.ledger.proofs`` for an auditor.
"""
