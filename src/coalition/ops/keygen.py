"""Generate a brand's key material: what ``coalition keygen`` writes into ``keys/``.

* the Ed25519 ledger signing key (PKCS#8 PEM, encrypted when a password is given) and
  ``public_key.pem`` beside it, the file partners and auditors verify with;
* the account secret (32 random bytes, hex) that pseudonymizes member ids;
* ``api-keys.toml``: names, roles and SHA-256 digests the node reads (never secrets);
* ``api-keys.secret.toml``: the secrets themselves (an operator, an auditor and one key
  per listed member), for the local CLI and the demo only. Anyone holding it can act as
  those principals: it is written with mode 0600 and MUST NOT be shipped to the node.

Existing keys are never replaced without ``force``: a new signing key makes every header
signed before it unverifiable with the new public key.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from coalition.errors import FailedPrecondition, InvalidArgument
from coalition.ledger.keys import SigningKey
from coalition.node.auth import Role, key_digest
from coalition.node.config import NodeConfig
from coalition.ops.tomlfiles import toml_text
from coalition.points.accounts import validate_member_id

PUBLIC_KEY_FILE = "public_key.pem"
API_KEY_ENV = "COALITION_API_KEY"


@dataclass(frozen=True, slots=True)
class ApiSecret:
    """One API key in clear, as the secret file holds it."""

    name: str
    role: Role
    secret: str
    member_id: str | None = None


@dataclass(frozen=True, slots=True)
class KeyFiles:
    """Where a brand's key material lives (derived from its configuration)."""

    signing_key: Path
    public_key: Path
    account_secret: Path
    api_keys: Path
    api_secrets: Path

    @classmethod
    def for_config(cls, config: NodeConfig) -> KeyFiles:
        api = config.api_keys_path
        return cls(
            signing_key=config.signing_key_path,
            public_key=config.signing_key_path.with_name(PUBLIC_KEY_FILE),
            account_secret=config.account_secret_path,
            api_keys=api,
            api_secrets=api.with_name(api.name.removesuffix(".toml") + ".secret.toml"),
        )

    def all(self) -> tuple[Path, ...]:
        return (
            self.signing_key,
            self.public_key,
            self.account_secret,
            self.api_keys,
            self.api_secrets,
        )


def _api_keys_toml(keys: Sequence[ApiSecret], *, with_secrets: bool) -> str:
    tables = []
    for key in keys:
        table: dict[str, str] = {"name": key.name, "role": str(key.role)}
        if with_secrets:
            table["secret"] = key.secret
        else:
            table["sha256"] = key_digest(key.secret)
        if key.member_id is not None:
            table["member_id"] = key.member_id
        tables.append(table)
    what = "SECRETS: keep private, never ship to the node." if with_secrets else "Digests only."
    return toml_text({"api_keys": tables}, comment=f"Written by 'coalition keygen'. {what}")


def write_key_file(path: Path, data: bytes, private: bool) -> None:
    """Write ``data`` through a fresh temporary file renamed over ``path`` (0600 for
    private keys and secrets, never readable by others even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # a leftover could carry looser permissions
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    os.replace(tmp, path)


def generate_keys(
    config: NodeConfig,
    *,
    password: bytes | None = None,
    members: Sequence[str] = (),
    force: bool = False,
) -> KeyFiles:
    """Write fresh key material for ``config``'s brand and return where it went.

    Raises FailedPrecondition if any key file exists and ``force`` is false.
    """
    files = KeyFiles.for_config(config)
    existing = [str(p) for p in files.all() if p.exists()]
    if existing and not force:
        raise FailedPrecondition(
            f"keys already exist ({', '.join(existing)}); pass --force to replace them "
            "(headers signed with the old key will no longer verify with the new one)"
            + (
                "; to add an API key to a node that has keys, use 'coalition keys issue'"
                if members
                else ""
            )
        )
    for member in members:
        validate_member_id(member)
    if len(set(members)) != len(members):
        raise InvalidArgument("each member may be listed once")
    if password is not None and not password:
        raise InvalidArgument("the signing key password must not be empty")
    key = SigningKey.generate()
    api = [
        ApiSecret("operator", Role.OPERATOR, secrets.token_urlsafe(32)),
        ApiSecret("auditor", Role.AUDITOR, secrets.token_urlsafe(32)),
    ]
    api += [ApiSecret(f"member-{m}", Role.MEMBER, secrets.token_urlsafe(32), m) for m in members]
    write_key_file(files.signing_key, key.to_pem(password), private=True)
    write_key_file(files.public_key, key.public_key.to_pem(), private=False)
    write_key_file(
        files.account_secret, (secrets.token_bytes(32).hex() + "\n").encode(), private=True
    )
    write_key_file(files.api_keys, _api_keys_toml(api, with_secrets=False).encode(), private=False)
    write_key_file(files.api_secrets, _api_keys_toml(api, with_secrets=True).encode(), private=True)
    return files


def read_api_secrets(path: Path) -> list[ApiSecret]:
    """The secret file written by ``generate_keys``."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InvalidArgument(f"no API secrets file at {path}: run 'coalition keygen'") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"{path}: not valid TOML: {exc}") from exc
    try:
        return [
            ApiSecret(str(k["name"]), Role(k["role"]), str(k["secret"]), k.get("member_id"))
            for k in raw.get("api_keys", [])
        ]
    except (KeyError, ValueError) as exc:
        raise InvalidArgument(f"{path}: bad API key entry: {exc}") from exc


def api_key_or_env(given: str | None) -> str | None:
    """``given``, else ``$COALITION_API_KEY``: the key a client command uses when it is
    named on neither side (None when neither is set)."""
    return given or os.environ.get(API_KEY_ENV)


def find_secret(config: NodeConfig, role: Role, member_id: str | None = None) -> str:
    """The secret of the first key with ``role`` (and ``member_id`` for member keys)."""
    path = KeyFiles.for_config(config).api_secrets
    for key in read_api_secrets(path):
        if key.role is role and (role is not Role.MEMBER or key.member_id == member_id):
            return key.secret
    who = f"member {member_id}" if role is Role.MEMBER else str(role)
    raise InvalidArgument(f"{path} has no API key for {who}")


def generate_coalition_keys(
    manifest_path: Path,
    *,
    password: bytes | None = None,
    members: Sequence[str] = (),
    force: bool = False,
) -> dict[str, KeyFiles]:
    """``generate_keys`` for every partner of the manifest that names its ``config``.

    The public key is also written where the manifest expects it when that is another
    path. Nothing is written unless every partner can be keyed (no key exists, or
    ``force``); returns program -> its files.
    """
    from coalition.node.config import load_config
    from coalition.node.manifest import Manifest

    manifest = Manifest.load(manifest_path)
    missing = [p.program for p in manifest.partners if p.config is None]
    if missing:
        raise InvalidArgument(
            f"{manifest.path}: partners {', '.join(missing)} name no config; run "
            "'coalition keygen --config' on their own node.toml instead"
        )
    configs = {p.program: load_config(p.config) for p in manifest.partners if p.config}
    for program, config in configs.items():
        if config.program != program:
            raise InvalidArgument(
                f"{manifest.partner(program).config} is the configuration of {config.program}, "
                f"but the manifest lists it for {program}"
            )
        existing = [str(p) for p in KeyFiles.for_config(config).all() if p.exists()]
        if existing and not force:
            raise FailedPrecondition(
                f"{program}'s keys already exist ({', '.join(existing)}); pass --force to "
                "replace them (headers signed with the old keys will no longer verify)"
            )
    written: dict[str, KeyFiles] = {}
    for program, config in configs.items():
        files = generate_keys(config, password=password, members=members, force=force)
        wanted = manifest.partner(program).public_key_path
        if wanted.resolve() != files.public_key.resolve():
            write_key_file(wanted, files.public_key.read_bytes(), private=False)
        written[program] = files
    return written
