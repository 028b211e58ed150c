"""The auditor: verify a program's chain from signed data alone, and check that a node's
database equals the replay of its own chain.

``audit_chain`` (with a ``DatabaseSource`` or ``GrpcSource``) and ``check_database`` are
all an auditor needs; ``command`` wires them into the ``coalition`` CLI.
"""

from coalition.audit.chain_audit import AuditReport, Fault, audit_chain
from coalition.audit.db_check import CheckReport, check_database
from coalition.audit.sources import ChainSource, DatabaseSource, GrpcSource

__all__ = [
    "AuditReport",
    "ChainSource",
    "CheckReport",
    "DatabaseSource",
    "Fault",
    "GrpcSource",
    "audit_chain",
    "check_database",
]
