"""Run one brand's node until SIGTERM or SIGINT: sealer, gRPC, REST, scheduled expiry and
the integrity scrub (``node.integrity``: every process walks its log at the configured
rate; the newest blocks were verified before anything was served, in ``open_service``).
SIGHUP reloads the API keys file the configuration names (``reload_api_keys``): a key
removed from it is refused from then on, a new one accepted, nothing restarts. Keys issued
in the node's database (``coalition keys``, the operator API) need no signal: every
process polls them (``node.auth.POLL_INTERVAL_S``).

Any number of processes may run one node on one PostgreSQL database (a SQLite file takes
one: a second is refused at start, ``store.db.lock_sqlite_file``). Every process serves
every call; the one holding the node's lease (``node.leadership``) seals and runs the
background jobs (the expiry tick here, the witness and the outbox's sweep in the
features), the others take over within seconds when it dies. Every process delivers the
conversions it wrote (``node.features.outbox``).

A node whose configuration has a ``[coalition]`` table also runs its ``CoalitionNode``:
the mutual-TLS partner server and the features (outbox, witness, ...), their routes and
servicers on the member API, and the release of expired holds in the scheduled job.

Shutdown order matters: the member servers stop taking calls first (in-flight calls get a
short grace), then the coalition features stop sending and the partner server stops, then
``service.close()`` seals whatever is pending, so every acknowledged entry is in a signed
block when the process exits.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

from coalition.errors import CoalitionError
from coalition.node.auth import Authenticator
from coalition.node.config import NodeConfig, load_api_keys, split_address
from coalition.node.integrity import Scrub
from coalition.node.limits import rates_for
from coalition.node.service import NodeService
from coalition.runtime.wiring import (
    STOP_GRACE_SECONDS,
    CoalitionNode,
    build_node,
    serve_member_api,
)

log = logging.getLogger("coalition.node")


def _expire_every(
    service: NodeService,
    coalition: CoalitionNode | None,
    interval: float,
    stop: threading.Event,
) -> None:
    """The scheduled jobs: expire due points and release expired partner holds. Each job's
    failure is logged and retried at the next tick without holding back the other. Only
    the process holding the node's lease runs them (``node.leadership``); their
    decisions read what they expire or release inside the writer's transaction, after the
    log head is taken, so even two runs at once could not expire a lot twice."""
    while not stop.wait(interval):
        if not service.leadership.held():
            continue
        try:
            result = service.points.run_expiry()
            if result.entries:
                log.info("expired %d points in %d entries", result.points, result.entries)
        except Exception:
            log.exception("scheduled expiry failed; retrying in %.0f s", interval)
        if coalition is None:
            continue
        try:
            released = coalition.redemptions.release_expired()
            if released:
                log.info("released %d expired partner holds", released)
        except Exception:
            log.exception("releasing expired holds failed; retrying in %.0f s", interval)


def _scrub(config: NodeConfig, service: NodeService) -> Scrub | None:
    """Start the integrity scrub of ``config`` (None: its rate is 0, no scrub)."""
    settings = config.integrity
    if settings.scrub_entries_per_second <= 0:
        return None
    scrub = Scrub(
        service.sequencer.read,
        service.public_key,
        service.program,
        service.integrity,
        entries_per_second=settings.scrub_entries_per_second,
        pause_s=settings.scrub_pause_s,
    )
    scrub.start()
    return scrub


def reload_api_keys(config: NodeConfig, authenticator: Authenticator) -> bool:
    """Serve the keys now in ``config.api_keys_path``; True when they were taken. A file
    that cannot be read or holds a bad entry is logged and the keys in force stay."""
    try:
        count = authenticator.replace(load_api_keys(config.api_keys_path))
    except (CoalitionError, OSError) as exc:
        log.error("API keys not reloaded (the previous keys stay in force): %s", exc)
        return False
    log.info("reloaded %d API keys from %s", count, config.api_keys_path)
    return True


def _on_signals(
    stop: threading.Event, config: NodeConfig, authenticator: Authenticator
) -> Callable[[], None]:
    """Set ``stop`` on SIGTERM/SIGINT, reload the API keys on SIGHUP; returns a function
    restoring the old handlers."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    def reload(_signum: int, _frame: FrameType | None) -> None:
        reload_api_keys(config, authenticator)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    old[signal.SIGHUP] = signal.signal(signal.SIGHUP, reload)

    def restore() -> None:
        for sig, previous in old.items():
            signal.signal(sig, previous)

    return restore


def run_node(config: NodeConfig, stop: threading.Event | None = None) -> None:
    """Serve ``config``'s node until SIGTERM/SIGINT (or ``stop`` is set), then shut down.

    Signal handlers are installed only when called from the main thread; other callers
    (tests) MUST pass ``stop``.
    """
    stop = stop or threading.Event()
    in_main = threading.current_thread() is threading.main_thread()
    file_keys = load_api_keys(config.api_keys_path)
    node = build_node(config)
    service, coalition = node.service, node.coalition
    restore = None
    try:
        authenticator = Authenticator(file_keys, rates_for(config.limits), issued=service.api_keys)
        restore = _on_signals(stop, config, authenticator) if in_main else None
        node.start()
        servers = serve_member_api(node, authenticator)
        expiry_stop = threading.Event()
        expiry = threading.Thread(
            target=_expire_every,
            args=(service, coalition, config.expiry_interval_s, expiry_stop),
            name="expiry",
            daemon=True,
        )
        if not config.read_only:  # a read-only process runs no background job
            expiry.start()
        scrub = _scrub(config, service)
        log_size = service.ledger.log_size()
        partner = (
            ""
            if coalition is None or config.read_only
            else f" and partner gRPC port {coalition.partner_port}"
        )
        mode = f", read-only (writes go to {config.primary})" if config.read_only else ""
        log.info(
            "node %s (%s) serving gRPC %s:%d and HTTP %s:%d%s, log size %d%s",
            config.program,
            config.name,
            split_address(config.grpc_address)[0],
            servers.grpc_port,
            split_address(config.http_address)[0],
            servers.http_port,
            partner,
            log_size,
            mode,
        )
        stop.wait()
        expiry_stop.set()
        if scrub is not None:
            scrub.stop()
        servers.stop(STOP_GRACE_SECONDS)
        if expiry.is_alive():
            expiry.join()
    finally:
        node.close()
        if restore is not None:
            restore()
    size = service.ledger.log_size()
    if config.read_only:
        log.info("read-only node %s stopped (log size %d)", config.program, size)
    elif service.sealer.sealed_at_stop:
        log.info("node %s stopped; every entry is sealed (log size %d)", config.program, size)
    else:  # the holder stalled: the next holder seals the rest
        log.warning(
            "node %s stopped (log size %d) before the lease holder sealed every entry; "
            "the next process to hold the lease seals the rest",
            config.program,
            size,
        )
