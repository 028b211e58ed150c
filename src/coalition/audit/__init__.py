"""The auditor: verify a program's chain from signed data alone, check that a node's
database equals the replay of its own chain, reconcile the partners' chains with each
other and verify the equivocation and fork evidence the nodes hold.

``audit_chain`` (with a ``DatabaseSource`` or ``GrpcSource``), ``check_database``,
``audit_coalition``, ``check_evidence``, ``check_quorum`` (witness cosignatures) and
``audit_settlement`` (statements, netting) are all an auditor needs; ``audit_all`` runs
them over a whole coalition (with the auditor's ``AuditorState``), and ``command``
wires them into the ``coalition`` CLI.
"""

from coalition.audit.chain_audit import AuditReport, Fault, audit_chain
from coalition.audit.coalition_audit import PartnersAudit, audit_all, audit_partners
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
from coalition.audit.located import LocatedFault
from coalition.audit.settlement_audit import SettlementReport, audit_settlement
from coalition.audit.sources import ChainSource, DatabaseSource, EvidenceSource, GrpcSource
from coalition.audit.state import AuditorState
from coalition.audit.witness_quorum import QuorumReport, WitnessPolicy, check_quorum

__all__ = [
    "AuditReport",
    "AuditorState",
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
    "LocatedFault",
    "PartnersAudit",
    "ProvenEvidence",
    "QuorumReport",
    "RawEvidence",
    "SettlementReport",
    "WitnessPolicy",
    "audit_all",
    "audit_chain",
    "audit_coalition",
    "audit_partners",
    "audit_settlement",
    "check_coalition",
    "check_database",
    "check_evidence",
    "check_quorum",
    "verify_evidence",
]
