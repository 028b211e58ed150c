"""The verifier: everything an auditor runs on signed data, and nothing else.

An auditor needs a program's chain from some source (implement ``ChainSource``, or take
one of ``coalition.audit``'s: bundle files, databases, live nodes) and each program's
public key (from the manifest or a public key file, never from a private key). Then
``audit_chain`` verifies one chain (signatures, links, Merkle roots, replay, a pinned
header) and ``audit_all`` a whole coalition: every chain, conversions and holds across
them, settlement statements and netting, the witness quorum (``WitnessPolicy``) and the
nodes' equivocation evidence, against the ``AuditorState`` of the last audit.

This package imports only the standard library, ``cryptography`` and the pure core
(``coalition.ledger``, ``coalition.points``, ``coalition.errors``): it opens no file,
database or network connection and prints nothing (progress goes to a callback), so a
change in node code cannot change its verdict. The submodules hold the parts (one rule
each) for callers that need them.
"""

from coalition.verify.chain_audit import AuditReport, audit_chain
from coalition.verify.coalition_audit import PartnersAudit, audit_all
from coalition.verify.located import LocatedFault
from coalition.verify.source import ChainSource
from coalition.verify.state import AuditorState
from coalition.verify.witness_quorum import WitnessPolicy

__all__ = [
    "AuditReport",
    "AuditorState",
    "ChainSource",
    "LocatedFault",
    "PartnersAudit",
    "WitnessPolicy",
    "audit_all",
    "audit_chain",
]
