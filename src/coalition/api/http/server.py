"""``serve_http``: an ASGI app under uvicorn in a thread of this process (the runner, the
tests and the browser site serve the node's app this way)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI


def serve_http(
    app: FastAPI,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    reuse_port: bool = False,
    tls: tuple[Path, Path] | None = None,
) -> tuple[uvicorn.Server, threading.Thread, int]:
    """Run ``app`` under uvicorn in a daemon thread and return once it accepts connections.

    ``port=0`` binds a free port; the bound port is returned. Stop with
    ``server.should_exit = True`` then ``thread.join()``. ``reuse_port`` sets
    SO_REUSEPORT on the listening socket, so the processes of one node (``coalition run
    --processes``) each bind the node's HTTP port and the kernel spreads connections
    over them; without it a port in use is an error. Requests are parsed by httptools
    (uvicorn's C parser; its pure-Python h11 cost a REST write about a quarter of the
    node's CPU, docs/performance.md "Single writes against a bare round trip").
    ``tls`` = (certificate chain file, private key file) serves HTTPS only.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    # Accepted connections inherit it (Linux): uvicorn writes a response's headers and body
    # separately, and without TCP_NODELAY the body waits for the client's delayed ACK,
    # about 40 ms on every call.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    bound = int(sock.getsockname()[1])
    cert, key = (None, None) if tls is None else tls
    config = uvicorn.Config(
        app,
        http="httptools",
        log_level="warning",
        access_log=False,
        ssl_certfile=cert,
        ssl_keyfile=key,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"http:{bound}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the HTTP server on {host}:{bound} did not start")
        time.sleep(0.01)
    return server, thread, bound
