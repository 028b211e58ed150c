"""The TOML files Coalition writes (node configurations, coalition manifests, API keys),
rendered from plain dicts with ``tomli-w``: the one place a TOML file is written, so
every value is quoted and escaped by a TOML library, never by an f-string.

The dict builders below give the manifest's shape (docs/coalition.md, "The manifest")
in one place for the demo, ``coalition keygen`` and the tests; ``node.manifest`` reads it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w

TomlDocument = dict[str, Any]


def toml_text(document: Mapping[str, Any], *, comment: str = "") -> str:
    """``document`` as TOML, after ``comment`` (each line prefixed with ``# ``) if given."""
    head = "".join(f"# {line}".rstrip() + "\n" for line in comment.splitlines())
    body = tomli_w.dumps(dict(document))
    return f"{head}\n{body}" if head else body


def write_toml(path: Path, document: Mapping[str, Any], *, comment: str = "") -> Path:
    """Write ``document`` to ``path`` (its folder created if missing); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(toml_text(document, comment=comment), encoding="utf-8")
    return path


def partner_table(
    program: str,
    *,
    grpc: str,
    partner_grpc: str,
    http: str,
    public_key: str,
    currency: str = "EUR",
    name: str | None = None,
    config: str | None = None,
) -> TomlDocument:
    """One ``[[partners]]`` entry of a manifest; paths are relative to the manifest."""
    table: TomlDocument = {"program": program}
    if name is not None:
        table["name"] = name
    if config is not None:
        table["config"] = config
    table |= {
        "grpc": grpc,
        "partner_grpc": partner_grpc,
        "http": http,
        "public_key": public_key,
        "currency": currency,
    }
    return table


def manifest_document(
    name: str,
    partners: Sequence[Mapping[str, Any]],
    *,
    witness_quorum: int,
    ca_cert: str = "tls/ca.pem",
    credit_limits: Mapping[tuple[str, str], int] | None = None,
) -> TomlDocument:
    """A coalition manifest: ``partners`` from ``partner_table``, ``credit_limits`` as
    (creditor, debtor) -> limit in minor units."""
    document: TomlDocument = {
        "coalition": {"name": name, "ca_cert": ca_cert, "witness_quorum": witness_quorum},
        "partners": [dict(p) for p in partners],
    }
    if credit_limits:
        document["credit_limits"] = [
            {"creditor": creditor, "debtor": debtor, "limit_minor": limit}
            for (creditor, debtor), limit in credit_limits.items()
        ]
    return document
