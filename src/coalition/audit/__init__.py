"""The auditor: the verifier (``coalition.verify``) plus where it reads from and what its
commands run.

``coalition.verify`` checks signed data and nothing else; this package adds the sources
it reads (``BundleSource`` for bundle files in ``bundle``, ``DatabaseSource`` and
``GrpcSource`` in ``sources``), the database check (``check_database``: a node's tables
equal the replay of its own chain), the auditor's state file (``state``), the public
keys (``public_keys``: from the manifest or a public key file, never a private key) and
what the ``coalition audit``, ``audit-coalition``, ``check`` and ``bundle`` commands run
(their options are in ``coalition.cli.audit``). The names below are kept here for
callers of the whole auditor.
"""

from coalition.audit.db_check import CheckReport, check_database
from coalition.audit.sources import DatabaseSource, GrpcSource
from coalition.verify.block_checks import Fault
from coalition.verify.chain_audit import AuditReport, audit_chain
from coalition.verify.coalition_audit import PartnersAudit, audit_all, audit_partners
from coalition.verify.cross_chain import (
    CoalitionReport,
    CrossChainFault,
    audit_coalition,
    check_coalition,
)
from coalition.verify.evidence import (
    EvidenceFault,
    EvidenceReport,
    ProvenEvidence,
    RawEvidence,
    check_evidence,
    verify_evidence,
)
from coalition.verify.located import LocatedFault
from coalition.verify.settlement_audit import SettlementReport, audit_settlement
from coalition.verify.source import ChainSource, EvidenceSource
from coalition.verify.state import AuditorState
from coalition.verify.witness_quorum import QuorumReport, WitnessPolicy, check_quorum

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
