"""The coalition's mutual-TLS material: one CA, one certificate per partner node.

``coalition tls-init`` writes, next to the manifest's ``ca_cert``: ``ca.pem`` and
``ca.key`` (the coalition CA), and for each partner ``<program>.pem`` / ``<program>.key``,
a certificate for both server and client use with CN = program id and SANs
DNS:<program>, DNS:localhost, IP:127.0.0.1 (plus the host of its ``partner_grpc``).
Keys are ECDSA P-256, which every TLS stack (gRPC's BoringSSL included) accepts, and are
written with mode 0600. Existing files are never replaced without ``force``.

Renewal and revocation without stopping the coalition (docs/operations.md, "API keys and
certificates"): ``coalition tls-renew`` writes a partner a new certificate and key from
the same CA (``renew_certificate``), ``coalition tls-revoke`` adds a certificate's serial
to the CA's revocation list ``ca.crl`` beside ``ca.pem`` (``revoke_certificate``). A
running node notices both within ``CHECK_EVERY_S``: ``NodeTls`` re-reads its own files
when they change (the partner server presents the new certificate from the next
handshake, the transport dials with it), and ``RevocationList`` re-reads the CRL, which
the partner server checks on every call, so a revoked certificate is refused at its
first call even on a connection made before the revocation.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coalition.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from coalition.node.config import ServerTls, split_address
from coalition.node.manifest import Manifest
from coalition.ops.keygen import write_key_file

log = logging.getLogger("coalition.tls")

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
    check_key_pair(chain, key_pem, tls.cert_path, tls.key_path)
    return chain, key_pem


def check_key_pair(chain: bytes, key_pem: bytes, cert_path: Path, key_path: Path) -> None:
    """InvalidArgument, naming the file, unless ``chain`` holds a PEM certificate and
    ``key_pem`` is the unencrypted private key of its first (leaf) certificate."""
    try:
        certificates = x509.load_pem_x509_certificates(chain)
    except ValueError:
        raise InvalidArgument(f"{cert_path} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, None)
    except (ValueError, TypeError):
        raise InvalidArgument(f"{key_path} is not an unencrypted PEM private key") from None
    if key.public_key() != certificates[0].public_key():
        raise InvalidArgument(f"{key_path} is not the key of {cert_path}")


# --- renewal and revocation of partner certificates ------------------------------------

CHECK_EVERY_S = 1.0
"""How often at most a running node looks whether its TLS files or the CRL changed."""
CRL_VALIDITY = timedelta(days=3650)
"""The CRL's next-update time: nodes read the file whenever it changes, not by date."""


def crl_path(ca_cert: Path) -> Path:
    """The coalition CA's revocation list (PEM), beside its certificate: ``ca.crl``."""
    return ca_cert.with_suffix(".crl")


def _stamp(paths: Iterable[Path]) -> tuple[tuple[int, int, int] | None, ...]:
    """What tells a file changed: (inode, size, mtime) per path, None for a missing one."""
    stamps: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            stamps.append(None)
        else:
            stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(stamps)


class NodeTls:
    """A node's own partner TLS material (CA, certificate, key), re-read when its files
    change, so a renewed certificate is taken without a restart.

    ``current()`` MAY be called on every handshake or call: it looks at the files at most
    every ``check_every_s``. A change whose certificate and key do not belong together
    (a renewal half written) or do not load keeps the material in force (logged) and is
    looked at again next time; the version grows only when new material is taken."""

    def __init__(self, files: TlsFiles, *, check_every_s: float = CHECK_EVERY_S) -> None:
        self.files = files
        self._paths = (files.ca_cert, files.cert, files.key)
        self._every = check_every_s
        self._lock = threading.Lock()
        self._stamp = _stamp(self._paths)
        self._material = files.read()
        check_key_pair(self._material[1], self._material[2], files.cert, files.key)
        self._version = 0
        self._next = time.monotonic() + check_every_s

    def current(self) -> tuple[int, tuple[bytes, bytes, bytes]]:
        """(version, (CA certificate, certificate chain, private key) PEM bytes)."""
        if time.monotonic() >= self._next and self._lock.acquire(blocking=False):
            try:
                self._reload()
            finally:
                self._next = time.monotonic() + self._every
                self._lock.release()
        return self._version, self._material

    def _reload(self) -> None:
        stamp = _stamp(self._paths)
        if stamp == self._stamp:
            return
        try:
            material = self.files.read()
            check_key_pair(material[1], material[2], self.files.cert, self.files.key)
        except (FailedPrecondition, InvalidArgument) as exc:
            log.error("TLS files changed but not taken (the current ones stay): %s", exc)
            return
        self._stamp, self._material = stamp, material
        self._version += 1
        log.info("took the renewed TLS material of %s", self.files.cert)


class RevocationList:
    """The coalition CA's CRL as a node enforces it: ``check`` refuses a peer whose
    certificate's serial the CA revoked.

    The CRL file is looked at at most every ``check_every_s`` and taken when it changed
    and its signature is the CA's; a changed file that does not load or verify keeps the
    list in force (logged). At construction a bad CRL is an error (the node does not
    start on it); a missing file is an empty list."""

    def __init__(self, ca_cert: Path, *, check_every_s: float = CHECK_EVERY_S) -> None:
        self.path = crl_path(ca_cert)
        try:
            self._ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
        except OSError as exc:
            raise FailedPrecondition(f"cannot read the CA {ca_cert}: {exc.strerror}") from None
        except ValueError:
            raise InvalidArgument(f"{ca_cert} is not a PEM certificate") from None
        self._every = check_every_s
        self._lock = threading.Lock()
        self._stamp = _stamp([self.path])
        self._serials = self._read()
        self._next = time.monotonic() + check_every_s

    def _read(self) -> frozenset[int]:
        if self._stamp == (None,):
            return frozenset()
        try:
            crl = x509.load_pem_x509_crl(self.path.read_bytes())
        except OSError as exc:
            raise FailedPrecondition(f"cannot read {self.path}: {exc.strerror}") from None
        except ValueError:
            raise InvalidArgument(f"{self.path} is not a PEM certificate revocation list") from None
        public = self._ca.public_key()
        if crl.issuer != self._ca.subject or not isinstance(public, ec.EllipticCurvePublicKey):
            raise InvalidArgument(f"{self.path} is not issued by the coalition CA")
        if not crl.is_signature_valid(public):
            raise InvalidArgument(f"{self.path}: the CRL's signature is not the CA's")
        return frozenset(entry.serial_number for entry in crl)

    def serials(self) -> frozenset[int]:
        """The revoked serial numbers in force (the CRL looked at if due)."""
        if time.monotonic() >= self._next and self._lock.acquire(blocking=False):
            try:
                stamp = _stamp([self.path])
                if stamp != self._stamp:
                    previous, self._stamp = self._stamp, stamp
                    try:
                        self._serials = self._read()
                        log.info("took %s: %d revoked certificates", self.path, len(self._serials))
                    except (FailedPrecondition, InvalidArgument) as exc:
                        self._stamp = previous
                        log.error("revocation list not taken (the current one stays): %s", exc)
            finally:
                self._next = time.monotonic() + self._every
                self._lock.release()
        return self._serials

    def check(self, cert_pem: bytes, program: str) -> None:
        """Unauthenticated when the peer certificate ``cert_pem`` (of ``program``) is
        revoked or does not parse."""
        try:
            serial = x509.load_pem_x509_certificate(cert_pem).serial_number
        except ValueError:
            raise Unauthenticated(
                f"the TLS client certificate of {program!r} does not parse"
            ) from None
        if serial in self.serials():
            raise Unauthenticated(
                f"the TLS certificate of {program!r} (serial {serial:x}) is revoked by the "
                "coalition CA: renew it (coalition tls-renew)"
            )


def _revoked_entries(
    manifest: Manifest, ca_cert: x509.Certificate
) -> list[x509.RevokedCertificate]:
    path = crl_path(manifest.ca_cert)
    if not path.exists():
        return []
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except ValueError:
        raise InvalidArgument(f"{path} is not a PEM CRL; move it away to start a new one") from None
    if crl.issuer != ca_cert.subject:
        raise InvalidArgument(f"{path} is not issued by the coalition CA {manifest.ca_cert}")
    return list(crl)


def _write_crl(
    manifest: Manifest,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    revoked: Iterable[x509.RevokedCertificate],
    now: datetime,
) -> Path:
    ca_cert, ca_key = ca
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - _BACKDATE)
        .next_update(now + CRL_VALIDITY)
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())
    path = crl_path(manifest.ca_cert)
    write_key_file(path, crl.public_bytes(serialization.Encoding.PEM), False)  # atomic
    return path


def _program_certificate(manifest: Manifest, program: str) -> x509.Certificate:
    files = TlsFiles.for_program(manifest, program)
    try:
        return x509.load_pem_x509_certificate(files.cert.read_bytes())
    except OSError as exc:
        raise NotFound(f"no certificate for {program} at {files.cert}: {exc.strerror}") from None
    except ValueError:
        raise InvalidArgument(f"{files.cert} is not a PEM certificate") from None


def revoke_certificate(
    manifest: Manifest,
    program: str,
    *,
    certificate: x509.Certificate | None = None,
    now: datetime | None = None,
) -> tuple[Path, int]:
    """Add ``program``'s certificate (its current file's, unless ``certificate``) to the
    CA's CRL; return the CRL's path and the serial revoked. FailedPrecondition when it
    is already revoked. Every node refuses it within ``CHECK_EVERY_S`` of seeing the
    file (each node reads the CRL beside its own copy of the CA certificate)."""
    now = now or datetime.now(UTC)
    ca = _load_ca(manifest)
    cert = certificate or _program_certificate(manifest, program)
    if cert.issuer != ca[0].subject:
        raise InvalidArgument(f"the certificate of {program} is not issued by the coalition CA")
    revoked = _revoked_entries(manifest, ca[0])
    if any(entry.serial_number == cert.serial_number for entry in revoked):
        raise FailedPrecondition(
            f"the certificate of {program} (serial {cert.serial_number:x}) is already revoked"
        )
    entry = (
        x509.RevokedCertificateBuilder()
        .serial_number(cert.serial_number)
        .revocation_date(now)
        .build()
    )
    return _write_crl(manifest, ca, [*revoked, entry], now), cert.serial_number


def renew_certificate(
    manifest: Manifest, program: str, *, revoke_old: bool = False, now: datetime | None = None
) -> list[Path]:
    """Write ``program`` a new key and certificate from the coalition CA in place of its
    files (a running node takes them within ``CHECK_EVERY_S``: ``NodeTls``); with
    ``revoke_old``, also revoke the certificate it replaces. Returns the files written."""
    now = now or datetime.now(UTC)
    ca_cert, ca_key = _load_ca(manifest)
    old = _program_certificate(manifest, program)
    files = TlsFiles.for_program(manifest, program)
    host, _ = split_address(manifest.partner(program).partner_grpc)
    cert, key = make_node_cert(program, ca_cert, ca_key, now, [host])
    # Each file is replaced atomically; a node that looks between the two sees a pair
    # that does not match and keeps its material until the next look (``NodeTls``).
    write_key_file(files.key, _key_pem(key), True)
    write_key_file(files.cert, cert.public_bytes(serialization.Encoding.PEM), False)
    written = [files.cert, files.key]
    if revoke_old:
        crl, _ = revoke_certificate(manifest, program, certificate=old, now=now)
        written.append(crl)
    return written
