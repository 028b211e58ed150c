"""What ``coalition bundle`` runs (its options are declared in ``coalition.cli.audit``):
export a program's chain as a bundle file.

From the node's database (``--config``, or ``--database`` with ``--public-key`` and
``--program``), or downloaded from a live node's ``GET /v1/ledger/bundle`` (``--url``
with an operator or auditor ``--api-key``), whose framing is then checked before the file
gets its name. ``--out`` ending in ``.gz`` writes gzip.

Exit codes: 0 written; 1 the node refused the key (401, 403) or the request (409), or a
downloaded bundle fails its framing check; 2 bad usage, unreadable input (missing file,
key or database), an unreachable node or any other answer of the node.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from coalition.api.errors import http_error_kind
from coalition.audit.bundle import AtomicFile, BundleSource, export_bundle
from coalition.audit.public_keys import config_public_key, read_public_key
from coalition.errors import (
    CoalitionError,
    InvalidArgument,
    NotFound,
    PartnerUnavailable,
)
from coalition.ledger.keys import VerifyKey
from coalition.ops.keygen import api_key_or_env
from coalition.progress import Progress
from coalition.verify.bundle_format import BundleSummary

OK, FAILED, USAGE = 0, 1, 2
BUNDLE_PATH = "/v1/ledger/bundle"
_DOWNLOAD_CHUNK = 1 << 20


def _from_config(path: Path, pinned: Path | None) -> tuple[str, str, VerifyKey]:
    """(database URL, program, public key) of a node's configuration: the key is
    ``pinned`` when given, else the public key file beside the signing key."""
    from coalition.node.config import load_config

    config = load_config(path)
    key = read_public_key(pinned) if pinned is not None else config_public_key(config)
    return config.database_url, config.program, key


def _export(args: argparse.Namespace) -> BundleSummary:
    if args.config is not None:
        url, program, key = _from_config(args.config, args.public_key)
    else:
        if args.public_key is None or args.program is None:
            raise InvalidArgument("--database needs --public-key and --program")
        url, program, key = args.database, args.program, read_public_key(args.public_key)
    from coalition.audit.sources import existing_database
    from coalition.store import ledger as ledger_store
    from coalition.store.columns import stored_object

    engine = existing_database(url)
    try:
        with engine.connect() as conn:
            latest = ledger_store.last_block(conn)
    finally:
        engine.dispose()
    total = None if latest is None else stored_object(latest[1], "header").get("log_size")
    with Progress("bundle", total if isinstance(total, int) else None) as bar:
        return export_bundle(args.out, url, program, key, progress=bar.advance)


def download_bundle(
    url: str, api_key: str | None, out: Path, *, timeout: float = 60.0
) -> BundleSummary:
    """Stream a live node's bundle to ``out`` (gzip when it ends in ``.gz``), then check
    its framing; ``out`` gets the file only if the check passes (VerificationError
    otherwise). PartnerUnavailable when the node cannot be reached; the node's refusals
    as the core errors it mapped them from."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    checked: list[BundleSummary] = []

    def check(path: Path) -> None:
        with BundleSource(path) as source:
            checked.append(source.check_framing())

    target = url.rstrip("/") + BUNDLE_PATH
    try:
        with (
            httpx.stream("GET", target, headers=headers, timeout=timeout) as response,
            Progress("download (bytes)", None) as bar,
        ):
            if response.status_code != 200:
                response.read()
                raise _refusal(response.status_code, response.text)
            with AtomicFile(out, check) as sink:
                for chunk in response.iter_bytes(_DOWNLOAD_CHUNK):
                    sink.write(chunk)
                    bar.advance(len(chunk))
    except httpx.HTTPError as exc:
        raise PartnerUnavailable(f"cannot download the bundle from {target}: {exc}") from None
    return checked[0]


def _refusal(status: int, body: str) -> CoalitionError:
    import json

    try:
        message = str(json.loads(body).get("message", body))
    except (ValueError, AttributeError):
        message = body[:200]
    kind = http_error_kind(status) or PartnerUnavailable
    return kind(f"the node answered {status}: {message}")


def run_bundle(args: argparse.Namespace) -> int:
    """Run ``coalition bundle``; prints a one-line summary, returns the exit code."""
    try:
        if args.url is not None:
            key = api_key_or_env(args.api_key)
            summary = download_bundle(args.url, key, args.out, timeout=args.timeout)
        else:
            summary = _export(args)
    except (InvalidArgument, NotFound, PartnerUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE
    except CoalitionError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return FAILED
    print(
        f"wrote {args.out}: program {summary.program}, {summary.blocks:,} blocks, "
        f"{summary.entries:,} entries, {summary.evidence:,} evidence, "
        f"sha256 {summary.sha256}"
    )
    return OK
