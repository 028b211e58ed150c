"""The demo's evidence: each chain collected and verified as a partner or auditor would
(signed header chain, an inclusion proof per entry, consistency, cosignatures, the chain
audit), the chains reconciled with each other, and the final checks after shutdown.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from coalition.api.grpc.client import NodeClient
from coalition.demo.nodes import Brand, say
from coalition.errors import VerificationError
from coalition.ledger.blocks import SignedHeader
from coalition.ledger.canonical import JsonObject, canonical_json
from coalition.ledger.chain import ChainVerifier
from coalition.ledger.entries import entry_leaf_hash
from coalition.ledger.keys import VerifyKey
from coalition.ledger.proofs import verify_consistency_document, verify_inclusion_document
from coalition.ledger.rotation import ROTATION_KIND, KeySchedule, rotations_in
from coalition.node.auth import Role
from coalition.node.manifest import Manifest
from coalition.ops.keygen import find_secret
from coalition.progress import Progress

PROOF_THREADS = 4


@dataclass
class Chain:
    """One program's verified chain: signed headers and entries in log order."""

    program: str
    headers: list[JsonObject]
    entries: list[JsonObject]
    keys: KeySchedule
    """The program's keys as its chain rotated them (``ledger.rotation``)."""
    proofs: int = 0


def settled_header(client: NodeClient, quiet_s: float = 0.6, timeout: float = 30) -> JsonObject:
    """The latest signed header once the log stopped growing for ``quiet_s`` (longer than
    the sealer's delay, so nothing committed is left unsealed when nothing is writing;
    the final check after shutdown confirms it)."""
    deadline = time.monotonic() + timeout
    last: JsonObject | None = None
    since = time.monotonic()
    while True:
        latest = client.latest_header()
        if latest != last:
            last, since = latest, time.monotonic()
        elif latest is not None and time.monotonic() - since >= quiet_s:
            return latest
        if time.monotonic() > deadline:
            raise VerificationError("the log kept growing: the node did not settle")
        time.sleep(0.1)


def collect_chain(client: NodeClient, key: VerifyKey, program: str, last_height: int) -> Chain:
    """Every signed header and block, checked link by link with ``ChainVerifier``."""
    headers: list[JsonObject] = []
    while len(headers) <= last_height:
        page = client.headers(len(headers), 1000)
        if not page:
            raise VerificationError(f"{program} stopped listing headers at {len(headers)}")
        headers.extend(page)
    headers = headers[: last_height + 1]
    verifier = ChainVerifier(key, program)
    entries: list[JsonObject] = []
    with Progress(f"{program}: verify chain", len(headers)) as bar:
        for height, signed_json in enumerate(headers):
            block_header, block_entries = client.block(height)
            if block_header != signed_json:
                raise VerificationError(f"{program} block {height}: header differs")
            signed = SignedHeader.from_json(signed_json)
            bodies = [canonical_json(e) for e in block_entries]
            verifier.feed(
                signed,
                [entry_leaf_hash(e) for e in block_entries],
                rotations_in(bodies, signed.header.first_index),
            )
            entries.extend(block_entries)
            bar.advance()
    return Chain(program, headers, entries, verifier.schedule)


def write_proofs(client: NodeClient, chain: Chain, folder: Path, tree_size: int) -> None:
    """Fetch, verify and write an inclusion proof of every entry at ``tree_size``."""
    folder.mkdir(parents=True)

    def one(index: int) -> None:
        entry = chain.entries[index]
        doc = client.inclusion_proof(str(entry["id"]), tree_size)
        verify_inclusion_document(doc, chain.keys)
        if doc["entry"] != entry or doc["leaf_index"] != index:
            raise VerificationError(f"proof of entry {entry['id']} is for another leaf")
        (folder / f"{entry['id']}.json").write_text(json.dumps(doc, indent=1) + "\n")

    with (
        Progress(f"{chain.program}: proofs", len(chain.entries)) as bar,
        ThreadPoolExecutor(PROOF_THREADS) as pool,
    ):
        for _ in pool.map(one, range(len(chain.entries))):
            bar.advance()
            chain.proofs += 1


def export_chain(brand: Brand, out: Path) -> Chain:
    """Collect, verify and write one program's chain: headers, entries, proofs, the first
    key and the key rotations (``coalition verify --key-rotations`` takes the file)."""
    folder = out / brand.program
    folder.mkdir(parents=True)
    client = brand.op()
    latest = settled_header(client)
    last = SignedHeader.from_json(latest).header
    shutil.copyfile(brand.files.public_key, folder / "public_key.pem")
    chain = collect_chain(client, brand.public_key, brand.program, last.height)
    with (folder / "headers.jsonl").open("wb") as file:
        for signed in chain.headers:
            file.write(canonical_json(signed) + b"\n")
    with (folder / "entries.jsonl").open("wb") as file:
        for entry in chain.entries:
            file.write(canonical_json(entry) + b"\n")
    rotations = [
        {"log_index": index, "entry": entry}
        for index, entry in enumerate(chain.entries)
        if entry["kind"] == ROTATION_KIND
    ]
    (folder / "key-rotations.json").write_text(json.dumps(rotations, indent=1) + "\n")
    write_proofs(client, chain, folder / "proofs", last.log_size)
    consistency = client.consistency_proof(0, last.height)
    verify_consistency_document(consistency, chain.keys)
    if consistency["second"] != latest["header"]:
        raise VerificationError(f"{brand.program}: the consistency proof ends elsewhere")
    (folder / "consistency.json").write_text(json.dumps(consistency, indent=2) + "\n")
    return chain


def witness_evidence(brand: Brand, chain: Chain, out: Path, timeout: float = 30) -> int:
    """Wait until the partners cosigned the last header (quorum), then write every
    header's witness status and the cosigned checkpoint; the number of witnessed
    headers. No partner may have stored equivocation evidence."""
    rest = brand.api()
    last = len(chain.headers) - 1
    deadline = time.monotonic() + timeout
    while not (status := rest.get(f"/v1/blocks/{last}/witnesses"))["witnessed"]:
        if time.monotonic() > deadline:
            raise VerificationError(
                f"{brand.program}'s last header got {len(status['cosigners'])} cosignatures "
                f"of the {status['quorum']} needed in {timeout:.0f} s"
            )
        time.sleep(0.2)
    statuses = [rest.get(f"/v1/blocks/{h}/witnesses") for h in range(last)] + [status]
    folder = out / brand.program
    with (folder / "witnesses.jsonl").open("w") as file:
        for one in statuses:
            file.write(json.dumps(one, separators=(",", ":")) + "\n")
    (folder / "cosigned-checkpoint.txt").write_text(status["note"])
    evidence = rest.get("/v1/equivocations")
    if evidence:
        raise VerificationError(f"{brand.program} holds equivocation evidence: {evidence}")
    return sum(1 for one in statuses if one["witnessed"])


def run_chain_audit(brand: Brand, entries: int, out: Path) -> JsonObject:
    """The independent chain audit over gRPC with the auditor's key, as its JSON report."""
    from coalition.audit.sources import GrpcSource
    from coalition.verify.chain_audit import audit_chain

    auditor = find_secret(brand.config, Role.AUDITOR)
    with (
        GrpcSource(brand.addresses.grpc, auditor) as source,
        Progress(f"{brand.program}: audit", entries) as bar,
    ):
        report = audit_chain(source, brand.public_key, program=brand.program, progress=bar.advance)
    doc = report.to_json()
    (out / brand.program / "audit.json").write_text(json.dumps(doc, indent=2) + "\n")
    if doc.get("ok") is not True:
        raise VerificationError(f"the audit of {brand.program} failed: see its audit.json")
    return doc


def run_cross_chain_audit(manifest: Manifest, chains: list[Chain], out: Path) -> JsonObject:
    """The three chains against each other: conversions, holds, agreements."""
    from coalition.verify.cross_chain import audit_coalition

    report = audit_coalition(
        {c.program: c.entries for c in chains},
        manifest.public_key,
        pending_before=datetime.now(UTC),
    )
    doc = report.to_json()
    (out / "cross_chain_audit.json").write_text(json.dumps(doc, indent=2) + "\n")
    say(report.render(limit=20))
    if not report.ok:
        raise VerificationError("the cross-chain audit failed: see cross_chain_audit.json")
    return doc


def check_sealed_after_stop(brands: list[Brand], chains: list[Chain]) -> None:
    """After a clean stop, each database's last header is the exported one: nothing was
    left unsealed or written after the export."""
    from coalition.audit.sources import DatabaseSource

    for brand, chain in zip(brands, chains, strict=True):
        with DatabaseSource(brand.config.database_url) as source:
            latest = source.latest_header()
        exported = chain.headers[-1]
        if latest is None or latest.height != exported["header"]["height"]:  # type: ignore[index,call-overload]
            raise VerificationError(
                f"{brand.program} sealed more after the export: the evidence is incomplete"
            )


def _coalition_cli(*args: str, what: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(  # noqa: S603 (our own interpreter and module)
        [sys.executable, "-m", "coalition.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise VerificationError(f"{what} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done


def audit_bundles(manifest_path: Path, out: Path) -> None:
    """What an auditor does with the stopped coalition: export each program's chain as a
    bundle, then ``coalition audit`` the whole coalition from the bundles alone, twice:
    the first run writes the auditor's state file, the second checks every chain still
    extends the checkpoints it recorded. Report in ``coalition_audit.json``."""
    manifest = Manifest.load(manifest_path)
    bundles = out / "bundles"
    bundles.mkdir(exist_ok=True)
    for partner in manifest.partners:
        if partner.config is None:
            raise VerificationError(f"the demo manifest names no config for {partner.program}")
        target = bundles / f"{partner.program}.bundle"
        _coalition_cli(
            "bundle", "--config", str(partner.config), "--out", str(target), what="bundle export"
        )
    say(f"bundles exported to {bundles}/ ({', '.join(manifest.programs)})")
    audit = [
        "audit",
        "--manifest",
        str(manifest_path),
        "--bundle-dir",
        str(bundles),
        "--state",
        str(out / "auditor-state.json"),
    ]
    _coalition_cli(*audit, "--json", str(out / "coalition_audit.json"), what="coalition audit")
    _coalition_cli(*audit, what="coalition audit (second run, against the state file)")
    say("coalition audit from the bundles: ok, twice (the second against the state file)")
