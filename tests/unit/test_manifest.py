"""The coalition manifest and the TLS material ``coalition tls-init`` makes from it."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coalition.cli import main
from coalition.errors import FailedPrecondition, InvalidArgument, NotFound
from coalition.ledger.keys import SigningKey
from coalition.node.config import load_config
from coalition.node.manifest import Manifest
from coalition.ops.tls import TlsFiles, ca_key_path, certificate_program, generate_tls

ROOT = Path(__file__).resolve().parents[2]

PARTNER = """
[[partners]]
program = "{program}"
name = "{program} points"
grpc = "127.0.0.1:{grpc}"
partner_grpc = "127.0.0.1:{partner}"
http = "127.0.0.1:{http}"
public_key = "{program}/public_key.pem"
currency = "EUR"
"""


def manifest_text(programs: tuple[str, ...] = ("skyair", "staybright"), head: str = "") -> str:
    text = head or '[coalition]\nname = "Test"\nca_cert = "tls/ca.pem"\nwitness_quorum = 1\n'
    for n, program in enumerate(programs):
        text += PARTNER.format(program=program, grpc=51000 + n, partner=52000 + n, http=53000 + n)
    return text


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "coalition.toml"
    path.write_text(text)
    return path


def test_the_demo_manifest_names_the_three_brands() -> None:
    manifest = Manifest.load(ROOT / "nodes" / "coalition.toml")
    assert manifest.programs == ("skyair", "staybright", "beanhouse")
    assert manifest.witness_quorum == 2
    assert manifest.ca_cert == ROOT / "nodes" / "tls" / "ca.pem"
    assert manifest.credit_limit("staybright", "skyair") == 5_000_000
    for info in manifest.partners:
        assert info.currency == "EUR"
        assert info.public_key_path == ROOT / "nodes" / info.program / "keys" / "public_key.pem"
        assert info.config is not None
        config = load_config(info.config)  # each brand's own configuration agrees
        assert config.program == info.program
        assert config.grpc_address == info.grpc
        assert config.http_address == info.http
        assert config.rules.currency == info.currency
    assert [p.program for p in manifest.others("staybright")] == ["skyair", "beanhouse"]


def test_lookups_and_lazy_public_keys(tmp_path: Path) -> None:
    manifest = Manifest.load(write(tmp_path, manifest_text()))
    with pytest.raises(FailedPrecondition, match="run coalition keygen"):
        manifest.public_key("skyair")  # not generated yet: the manifest still loads
    key = SigningKey.generate()
    (tmp_path / "skyair").mkdir()
    (tmp_path / "skyair" / "public_key.pem").write_bytes(key.public_key.to_pem())
    assert manifest.public_key("skyair") == key.public_key
    (tmp_path / "staybright").mkdir()
    (tmp_path / "staybright" / "public_key.pem").write_text("not a key")
    with pytest.raises(InvalidArgument, match="not a PEM public key"):
        manifest.public_key("staybright")
    with pytest.raises(NotFound, match="'nobody' is not a partner"):
        manifest.partner("nobody")
    with pytest.raises(NotFound):
        manifest.credit_limit("skyair", "nobody")
    assert manifest.credit_limit("skyair", "staybright") is None
    moved = manifest.with_partner_grpc({"skyair": "127.0.0.1:1234"})
    assert moved.partner("skyair").partner_grpc == "127.0.0.1:1234"
    assert moved.partner("staybright").partner_grpc == manifest.partner("staybright").partner_grpc
    with pytest.raises(NotFound):
        manifest.with_partner_grpc({"nobody": "127.0.0.1:1"})


def test_credit_limits(tmp_path: Path) -> None:
    text = manifest_text() + (
        '\n[[credit_limits]]\ncreditor = "staybright"\ndebtor = "skyair"\nlimit_minor = 500\n'
    )
    manifest = Manifest.load(write(tmp_path, text))
    assert manifest.credit_limit("staybright", "skyair") == 500
    assert manifest.credit_limit("skyair", "staybright") is None


def _limit(creditor: str, debtor: str, limit: object) -> str:
    return (
        f'\n[[credit_limits]]\ncreditor = "{creditor}"\ndebtor = "{debtor}"\n'
        f"limit_minor = {limit}\n"
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not = [toml", "not valid TOML"),
        (manifest_text().replace("[coalition]", "[coalitoin]"), "did you mean 'coalition'"),
        ("\n".join(manifest_text().splitlines()[4:]), "missing the required table \\[coalition\\]"),
        ('[coalition]\nname = "x"\n', "missing the required \\[\\[partners\\]\\] tables"),
        ('partners = []\n[coalition]\nname = "x"\n', "list the partners"),
        (manifest_text(("skyair", "skyair")), "listed twice: skyair"),
        (manifest_text(("Sky Air",)), "bad partners\\[0\\].program 'Sky Air'"),
        (manifest_text().replace('currency = "EUR"', 'currency = "euro"', 1), "ISO 4217"),
        (manifest_text().replace("127.0.0.1:52000", "localhost", 1), "HOST:PORT"),
        (manifest_text().replace("127.0.0.1:52000", "127.0.0.1:70000", 1), "HOST:PORT"),
        (manifest_text().replace("52001", "52000"), "share a partner_grpc address"),
        (manifest_text().replace('public_key = "skyair/public_key.pem"\n', ""), "public_key"),
        (manifest_text().replace("witness_quorum = 1", "witness_quorum = 2"), "witness_quorum"),
        (manifest_text().replace("witness_quorum = 1", 'witness_quorum = "1"'), "witness_quorum"),
        (manifest_text() + _limit("skyair", "nobody", 1), "'nobody' is not a partner"),
        (manifest_text() + _limit("skyair", "skyair", 1), "must differ"),
        (manifest_text() + _limit("skyair", "staybright", -1), "limit_minor must be at least 0"),
        (manifest_text() + _limit("skyair", "staybright", '"1"'), "must be an integer, not a str"),
        (manifest_text() + _limit("skyair", "staybright", 1) * 2, "a second limit"),
    ],
)
def test_bad_manifests_are_refused_with_the_reason(tmp_path: Path, text: str, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason):
        Manifest.load(write(tmp_path, text))


def test_a_missing_manifest_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="cannot read the manifest"):
        Manifest.load(tmp_path / "absent.toml")


# --- TLS material ---------------------------------------------------------------------


def test_tls_init_makes_a_ca_and_one_certificate_per_partner(tmp_path: Path) -> None:
    text = manifest_text().replace("127.0.0.1:52001", "staybright.internal:52001")
    manifest = Manifest.load(write(tmp_path, text))
    written = generate_tls(manifest)
    ca = x509.load_pem_x509_certificate(manifest.ca_cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert sorted(p.name for p in written) == [
        "ca.key",
        "ca.pem",
        "skyair.key",
        "skyair.pem",
        "staybright.key",
        "staybright.pem",
    ]
    for program in manifest.programs:
        files = TlsFiles.for_program(manifest, program)
        assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        cert.verify_directly_issued_by(ca)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == program
        assert certificate_program(files.cert.read_bytes()) == program
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert program in san.get_values_for_type(x509.DNSName)
        assert "localhost" in san.get_values_for_type(x509.DNSName)
        assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usage)
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    staybright = x509.load_pem_x509_certificate(
        TlsFiles.for_program(manifest, "staybright").cert.read_bytes()
    )
    names = staybright.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "staybright.internal" in names.get_values_for_type(x509.DNSName)
    assert stat.S_IMODE(ca_key_path(manifest).stat().st_mode) == 0o600


def test_tls_init_never_overwrites_without_force(tmp_path: Path) -> None:
    path = write(tmp_path, manifest_text())
    manifest = Manifest.load(path)
    generate_tls(manifest)
    before = {p.name: p.read_bytes() for p in manifest.ca_cert.parent.iterdir()}
    with pytest.raises(FailedPrecondition, match="already exists"):
        generate_tls(manifest)
    assert {p.name: p.read_bytes() for p in manifest.ca_cert.parent.iterdir()} == before

    # A partner added to the manifest gets a certificate from the same CA; nothing else moves.
    bigger = Manifest.load(write(tmp_path, manifest_text(("skyair", "staybright", "beanhouse"))))
    assert [p.name for p in generate_tls(bigger)] == ["beanhouse.pem", "beanhouse.key"]
    for name, data in before.items():
        assert (manifest.ca_cert.parent / name).read_bytes() == data
    ca = x509.load_pem_x509_certificate(bigger.ca_cert.read_bytes())
    added = TlsFiles.for_program(bigger, "beanhouse").cert.read_bytes()
    x509.load_pem_x509_certificate(added).verify_directly_issued_by(ca)

    TlsFiles.for_program(bigger, "beanhouse").key.unlink()
    with pytest.raises(FailedPrecondition, match="only one of"):
        generate_tls(bigger)
    ca_key_path(bigger).unlink()
    with pytest.raises(FailedPrecondition, match="--force"):
        generate_tls(bigger)

    assert len(generate_tls(bigger, force=True)) == 8
    assert manifest.ca_cert.read_bytes() != before["ca.pem"]


def test_tls_files_name_what_is_missing(tmp_path: Path) -> None:
    manifest = Manifest.load(write(tmp_path, manifest_text()))
    with pytest.raises(FailedPrecondition, match="run coalition tls-init"):
        TlsFiles.for_program(manifest, "skyair").read()
    with pytest.raises(NotFound):
        TlsFiles.for_program(manifest, "nobody")


def test_the_tls_init_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, manifest_text())
    assert main(["tls-init", "--manifest", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'tls' / 'skyair.pem'}" in out
    assert main(["tls-init", "--manifest", str(path)]) == 1
    assert "use --force to replace it" in capsys.readouterr().err
    assert main(["tls-init", "--manifest", str(path), "--force"]) == 0
    assert main(["tls-init", "--manifest", str(tmp_path / "absent.toml")]) == 1
