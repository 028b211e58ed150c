"""The auditor: verify a program's chain from signed data alone, check that a node's
database equals the replay of its own chain, reconcile the partners' chains with each
other and verify the equivocation and fork evidence the nodes hold.

``audit_chain`` (with a ``DatabaseSource`` or ``GrpcSource``), ``check_database``,
``audit_coalition`` and ``check_evidence`` are all an auditor needs; ``audit_all`` runs
them over a whole coalition, and ``command`` wires them into the ``coalition`` CLI.
"""

from coalition.audit.chain_audit import AuditReport, Fault, audit_chain
from coalition.audit.command import PartnersAudit, audit_all, audit_partners
from coalition.audit.cross_chain import (
    CoalitionReport,
    CrossChainFault,
    audit_coalition,
    check_coalition,
)
from coalition.audit.db_check import CheckReport, check_database
from coalition.audit.evidence import (
    EvidenceFault,
    EvidenceReport,
    ProvenEvidence,
    RawEvidence,
    check_evidence,
    verify_evidence,
)
from coalition.audit.sources import ChainSource, DatabaseSource, EvidenceSource, GrpcSource

__all__ = [
    "AuditReport",
    "ChainSource",
    "CheckReport",
    "CoalitionReport",
    "CrossChainFault",
    "DatabaseSource",
    "EvidenceFault",
    "EvidenceReport",
    "EvidenceSource",
    "Fault",
    "GrpcSource",
    "PartnersAudit",
    "ProvenEvidence",
    "RawEvidence",
    "audit_all",
    "audit_chain",
    "audit_coalition",
    "audit_partners",
    "check_coalition",
    "check_database",
    "check_evidence",
    "verify_evidence",
]
