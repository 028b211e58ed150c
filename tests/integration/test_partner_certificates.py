"""Partner TLS certificates renewed and revoked while the coalition runs (issue 11, "What
to build" 3): real mutual-TLS gRPC between two partners. A revoked certificate is refused
at its first call, on a connection made before the revocation too; a renewed one is
accepted, taken by the running node's transport and server without a restart; a CRL
that is not the CA's is never taken."""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from coalition.api.grpc.partner import GrpcTransport, serve_partner_grpc
from coalition.cli import main
from coalition.errors import FailedPrecondition, InvalidArgument, Unauthenticated
from coalition.ledger.canonical import JsonObject
from coalition.ledger.keys import SigningKey
from coalition.node.config import SealerConfig
from coalition.node.manifest import Manifest
from coalition.node.partners import PartnerClient, PartnerInbox
from coalition.node.sequencer import Sequencer
from coalition.ops.tls import (
    CHECK_EVERY_S,
    NodeTls,
    RevocationList,
    TlsFiles,
    crl_path,
    renew_certificate,
    revoke_certificate,
)
from coalition.store.db import make_engine

from support.coalition import write_manifest
from support.databases import at_current_schema

BOUND_S = CHECK_EVERY_S + 2.0
"""How long a change may take to be seen: the check interval, plus slack for a busy CI."""


@dataclass
class Pair:
    """skyair serves partners; staybright calls it."""

    folder: Path
    manifest: Manifest
    keys: dict[str, SigningKey]
    server: grpc.Server
    calls: list[JsonObject]
    closing: list[PartnerClient] = field(default_factory=list)

    def client(self, tls: TlsFiles | None = None) -> PartnerClient:
        files = tls or TlsFiles.for_program(self.manifest, "staybright")
        transport = GrpcTransport(self.manifest, files)
        client = PartnerClient("staybright", self.manifest, self.keys["staybright"], transport)
        self.closing.append(client)
        return client


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    keys = {p: SigningKey.generate() for p in ("skyair", "staybright")}
    manifest = write_manifest(tmp_path, keys)
    url = f"sqlite:///{tmp_path / 'skyair.db'}"
    at_current_schema(url)
    engine = make_engine(url, sqlite_synchronous="NORMAL")
    sequencer = Sequencer(engine, "skyair", keys["skyair"], SealerConfig())
    inbox = PartnerInbox("skyair", manifest, sequencer, keys["skyair"])
    calls: list[JsonObject] = []

    def echo(sender: str, body: JsonObject) -> tuple[str, JsonObject]:
        calls.append(body)
        return "echo-reply", {"by": "skyair", "sender": sender}

    inbox.register("echo", echo)
    server, port = serve_partner_grpc(inbox, TlsFiles.for_program(manifest, "skyair"))
    bound = manifest.with_partner_grpc({"skyair": f"127.0.0.1:{port}"})
    state = Pair(tmp_path, bound, keys, server, calls)
    try:
        yield state
    finally:
        for client in state.closing:
            client.close()
        server.stop(None).wait(10)
        engine.dispose()


def _eventually(condition: Callable[[], bool], what: str) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < BOUND_S, what
        time.sleep(0.05)
    return time.monotonic() - start


def _refused(client: PartnerClient) -> bool:
    try:
        client.call("skyair", "echo", {"n": 1})
    except Unauthenticated as exc:
        return "is revoked by the coalition CA" in str(exc)
    return False


def _copy_of(files: TlsFiles, folder: Path) -> TlsFiles:
    folder.mkdir()
    copy = TlsFiles(files.ca_cert, folder / files.cert.name, folder / files.key.name)
    shutil.copyfile(files.cert, copy.cert)
    shutil.copyfile(files.key, copy.key)
    return copy


def test_a_revoked_partner_certificate_is_refused_at_its_first_call(pair: Pair) -> None:
    client = pair.client()
    assert client.call("skyair", "echo", {"n": 1})[1]["sender"] == "staybright"
    crl, serial = revoke_certificate(pair.manifest, "staybright")
    assert crl == crl_path(pair.manifest.ca_cert)
    _eventually(lambda: _refused(client), "the revoked certificate was still accepted")
    before = len(pair.calls)
    assert _refused(pair.client()), "a new connection with it is refused too"
    assert len(pair.calls) == before, "a refused call never reaches the handler"
    with pytest.raises(FailedPrecondition, match="already revoked"):
        revoke_certificate(pair.manifest, "staybright")
    listed = x509.load_pem_x509_crl(crl.read_bytes())
    assert [entry.serial_number for entry in listed] == [serial]


def test_a_renewed_partner_certificate_is_accepted_and_the_old_one_refused(
    pair: Pair, capsys: pytest.CaptureFixture[str]
) -> None:
    files = TlsFiles.for_program(pair.manifest, "staybright")
    old = _copy_of(files, pair.folder / "old")
    running = pair.client()  # the partner's running transport, built before the renewal
    assert running.call("skyair", "echo", {"n": 1})[0] == "echo-reply"
    manifest_file = str(pair.folder / "coalition.toml")
    assert (
        main(["tls-renew", "--manifest", manifest_file, "--program", "staybright", "--revoke-old"])
        == 0
    )
    written = capsys.readouterr().out
    for path in (files.cert, files.key, crl_path(pair.manifest.ca_cert)):
        assert f"wrote {path}" in written
    time.sleep(CHECK_EVERY_S + 0.1)  # the transport and the server look again after this
    assert running.call("skyair", "echo", {"n": 2})[0] == "echo-reply", "renewed, no restart"
    assert pair.client().call("skyair", "echo", {"n": 3})[0] == "echo-reply"
    assert _refused(pair.client(old)), "the certificate it replaced is revoked"


def _served_serial(pair: Pair) -> int:
    """The serial of the certificate skyair's partner port presents to a new handshake."""
    client = TlsFiles.for_program(pair.manifest, "staybright")
    context = ssl.create_default_context(cafile=client.ca_cert)
    context.load_cert_chain(client.cert, client.key)
    context.set_alpn_protocols(["h2"])
    host, port = pair.manifest.partner("skyair").partner_grpc.split(":")
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="skyair") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_the_partner_server_presents_its_renewed_certificate(pair: Pair) -> None:
    before = _served_serial(pair)
    renew_certificate(pair.manifest, "skyair")
    renewed = x509.load_pem_x509_certificate(
        TlsFiles.for_program(pair.manifest, "skyair").cert.read_bytes()
    ).serial_number
    assert renewed != before
    _eventually(lambda: _served_serial(pair) == renewed, "the old certificate is still served")
    assert pair.client().call("skyair", "echo", {"n": 1})[0] == "echo-reply"


def _foreign_crl(path: Path) -> None:
    """A CRL naming the coalition CA as issuer but signed by another key."""
    ca = x509.load_pem_x509_certificate(path.with_suffix(".pem").read_bytes())
    now = datetime.now(UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now)
        .next_update(now.replace(year=now.year + 1))
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    )
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))


def test_a_crl_not_signed_by_the_ca_is_never_taken(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    client = pair.client()
    manifest_file = str(pair.folder / "coalition.toml")
    assert main(["tls-revoke", "--manifest", manifest_file, "--program", "staybright"]) == 0
    _eventually(lambda: _refused(client), "the revocation was not taken")
    crl = crl_path(pair.manifest.ca_cert)
    with caplog.at_level(logging.ERROR, logger="coalition.tls"):
        _foreign_crl(crl)
        time.sleep(CHECK_EVERY_S + 0.1)
        assert _refused(client), "a forged CRL does not lift the revocation"
    assert "signature is not the CA's" in caplog.text
    with pytest.raises(InvalidArgument, match="signature is not the CA's"):
        RevocationList(pair.manifest.ca_cert)  # and a node does not start on it


def test_a_half_written_renewal_keeps_the_material_in_force(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    """``tls-renew`` replaces the key, then the certificate: a node that looks between the
    two sees a key that is not its certificate's and keeps serving with the old pair."""
    files = TlsFiles.for_program(pair.manifest, "staybright")
    own = NodeTls(files, check_every_s=0)
    version, before = own.current()
    old_cert, old_key = files.cert.read_bytes(), files.key.read_bytes()
    renew_certificate(pair.manifest, "staybright")
    new_cert = files.cert.read_bytes()
    files.cert.write_bytes(old_cert)  # as if the node looked before the certificate was written
    with caplog.at_level(logging.ERROR, logger="coalition.tls"):
        assert own.current() == (version, before)
    assert "is not the key of" in caplog.text
    assert files.key.read_bytes() != old_key
    files.cert.write_bytes(new_cert)
    renewed_version, renewed = own.current()
    assert renewed_version == version + 1 and renewed[1] == new_cert
