"""The coalition's mutual-TLS material: one CA, one certificate per partner node.

``coalition tls-init`` writes, next to the manifest's ``ca_cert``: ``ca.pem`` and
``ca.key`` (the coalition CA), and for each partner ``<program>.pem`` / ``<program>.key``,
a certificate for both server and client use with CN = program id and SANs
DNS:<program>, DNS:localhost, IP:127.0.0.1 (plus the host of its ``partner_grpc``).
Keys are ECDSA P-256, which every TLS stack (gRPC's BoringSSL included) accepts, and are
written with mode 0600. Existing files are never replaced without ``force``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coalition.errors import FailedPrecondition, InvalidArgument
from coalition.node.config import ServerTls, split_address
from coalition.node.manifest import Manifest
from coalition.ops.keygen import write_key_file

CA_VALIDITY = timedelta(days=3650)
NODE_VALIDITY = timedelta(days=825)
_BACKDATE = timedelta(minutes=5)  # tolerate a little clock skew between partners


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The three files a node needs for mutual TLS: the coalition CA, its cert and key."""

    ca_cert: Path
    cert: Path
    key: Path

    @classmethod
    def for_program(cls, manifest: Manifest, program: str) -> TlsFiles:
        """Where ``tls-init`` puts ``program``'s material (beside the manifest's CA)."""
        manifest.partner(program)
        folder = manifest.ca_cert.parent
        return cls(manifest.ca_cert, folder / f"{program}.pem", folder / f"{program}.key")

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(CA certificate, certificate chain, private key) PEM bytes."""
        try:
            return self.ca_cert.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot read TLS file {exc.filename}: {exc.strerror} (run coalition tls-init)"
            ) from None


def ca_key_path(manifest: Manifest) -> Path:
    return manifest.ca_cert.with_suffix(".key")


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Coalition"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(common_name: str, now: datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA that may sign only end-entity certificates (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _san(program: str, extra_hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in (program, "localhost", "127.0.0.1", *extra_hosts):
        if host in seen:
            continue
        seen.add(host)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_node_cert(
    program: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: datetime,
    extra_hosts: Iterable[str] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for ``program``'s node, for TLS server and client use."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(program))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + NODE_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(_san(program, extra_hosts), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _load_ca(manifest: Manifest) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(manifest.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(ca_key_path(manifest).read_bytes(), None)
    except OSError as exc:
        raise FailedPrecondition(
            f"cannot read {exc.filename}: {exc.strerror}; use --force to make a new CA"
        ) from None
    except ValueError as exc:
        raise InvalidArgument(f"the coalition CA files do not load: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidArgument(f"{ca_key_path(manifest)} is not an ECDSA key")
    return cert, key


def generate_tls(
    manifest: Manifest, *, force: bool = False, now: datetime | None = None
) -> list[Path]:
    """Write the CA and each partner's certificate; return the files written.

    Without ``force`` nothing existing is replaced: with a CA already present, only the
    partners that lack a certificate get one (a partner added to the manifest); with
    nothing missing, FailedPrecondition.
    """
    now = now or datetime.now(UTC)
    ca_files = (manifest.ca_cert, ca_key_path(manifest))
    if force or not any(p.exists() for p in ca_files):
        ca_cert, ca_key = make_ca(f"{manifest.name} CA", now)
        issue = list(manifest.partners)
        written = [*ca_files]
        write_key_file(manifest.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), False)
        write_key_file(ca_key_path(manifest), _key_pem(ca_key), True)
    else:
        ca_cert, ca_key = _load_ca(manifest)
        issue = []
        for partner in manifest.partners:
            files = TlsFiles.for_program(manifest, partner.program)
            if files.cert.exists() != files.key.exists():
                raise FailedPrecondition(
                    f"{partner.program} has only one of {files.cert.name} and "
                    f"{files.key.name}; use --force to replace all TLS material"
                )
            if not files.cert.exists():
                issue.append(partner)
        if not issue:
            raise FailedPrecondition(
                f"TLS material already exists in {manifest.ca_cert.parent}; use --force to "
                "replace it (every node then needs the new files)"
            )
        written = []
    for partner in issue:
        files = TlsFiles.for_program(manifest, partner.program)
        host, _ = split_address(partner.partner_grpc)
        cert, key = make_node_cert(partner.program, ca_cert, ca_key, now, [host])
        write_key_file(files.cert, cert.public_bytes(serialization.Encoding.PEM), False)
        write_key_file(files.key, _key_pem(key), True)
        written += [files.cert, files.key]
    return written


def certificate_program(pem: bytes) -> str | None:
    """The CN of a PEM certificate (the program id for certificates ``tls-init`` made)."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else None
    return value if isinstance(value, str) else None


def read_server_tls(tls: ServerTls) -> tuple[bytes, bytes]:
    """(certificate chain, private key) PEM bytes of the member/operator ports' ``[tls]``,
    checked to load and to belong together, so a bad file stops the node at start with
    its name (FailedPrecondition or InvalidArgument) rather than at the first handshake."""
    try:
        chain, key_pem = tls.cert_path.read_bytes(), tls.key_path.read_bytes()
    except OSError as exc:
        raise FailedPrecondition(f"cannot read TLS file {exc.filename}: {exc.strerror}") from None
    try:
        certificates = x509.load_pem_x509_certificates(chain)
    except ValueError:
        raise InvalidArgument(f"{tls.cert_path} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, None)
    except (ValueError, TypeError):
        raise InvalidArgument(f"{tls.key_path} is not an unencrypted PEM private key") from None
    if key.public_key() != certificates[0].public_key():
        raise InvalidArgument(f"{tls.key_path} is not the key of {tls.cert_path}")
    return chain, key_pem
