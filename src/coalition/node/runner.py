"""Run one brand's node until SIGTERM or SIGINT: sealer, gRPC, REST and scheduled expiry.

Shutdown order matters: the servers stop taking calls first (in-flight calls get a short
grace), then ``service.close()`` seals whatever is pending, so every acknowledged entry is
in a signed block when the process exits.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from coalition.api.auth import Authenticator
from coalition.api.grpc_server import serve_grpc
from coalition.api.rest import create_app, serve_http
from coalition.errors import InvalidArgument
from coalition.node.app import open_node
from coalition.node.config import NodeConfig, load_api_keys
from coalition.node.service import NodeService

log = logging.getLogger("coalition.node")

STOP_GRACE_SECONDS = 5.0


def split_address(address: str) -> tuple[str, int]:
    """``"127.0.0.1:50051"`` or ``"[::1]:0"`` to (host, port); port 0 binds a free port."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InvalidArgument(f"bad address {address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _ensure_sqlite_folder(url: str) -> None:
    prefix = "sqlite:///"
    if url.startswith(prefix) and ":memory:" not in url:
        Path(url[len(prefix) :].split("?", 1)[0]).parent.mkdir(parents=True, exist_ok=True)


def _expire_every(service: NodeService, interval: float, stop: threading.Event) -> None:
    """The scheduled expiry job; a failed run is logged and retried at the next tick."""
    while not stop.wait(interval):
        try:
            result = service.run_expiry()
        except Exception:
            log.exception("scheduled expiry failed; retrying in %.0f s", interval)
            continue
        if result.entries:
            log.info("expired %d points in %d entries", result.points, result.entries)


def _on_signals(stop: threading.Event) -> Callable[[], None]:
    """Set ``stop`` on SIGTERM/SIGINT; returns a function restoring the old handlers."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

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
    restore = _on_signals(stop) if in_main else None
    authenticator = Authenticator(load_api_keys(config.api_keys_path))
    grpc_host, grpc_port = split_address(config.grpc_address)
    http_host, http_port = split_address(config.http_address)
    _ensure_sqlite_folder(config.database_url)
    service = open_node(config)
    try:
        service.start()
        grpc_server, grpc_bound = serve_grpc(service, authenticator, grpc_host, grpc_port)
        try:
            http_server, http_thread, http_bound = serve_http(
                create_app(service, authenticator), http_host, http_port
            )
        except BaseException:
            grpc_server.stop(0).wait()
            raise
        expiry_stop = threading.Event()
        expiry = threading.Thread(
            target=_expire_every,
            args=(service, config.expiry_interval_s, expiry_stop),
            name="expiry",
            daemon=True,
        )
        expiry.start()
        latest = service.latest_header()
        log.info(
            "node %s (%s) serving gRPC %s:%d and HTTP %s:%d, log size %d",
            config.program,
            config.name,
            grpc_host,
            grpc_bound,
            http_host,
            http_bound,
            0 if latest is None else latest.header.log_size,
        )
        stop.wait()
        expiry_stop.set()
        grpc_server.stop(STOP_GRACE_SECONDS).wait()
        http_server.should_exit = True
        http_thread.join(STOP_GRACE_SECONDS)
        expiry.join()
    finally:
        service.close()
        if restore is not None:
            restore()
    latest = service.latest_header()
    size = 0 if latest is None else latest.header.log_size
    log.info("node %s stopped; every entry is sealed (log size %d)", config.program, size)
