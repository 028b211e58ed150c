"""``coalition run`` as a child process, for the demo and the tests: start, one
readiness rule, stop.

A node is **ready** when its member gRPC health service answers SERVING and its HTTP
``/healthz`` answers 200. The runner brings the partner server and the features up
before either member server, so a ready node also serves its partners. ``wait_ready``
gives up after its timeout, or as soon as the process exits, with the tail of the
node's log in the error.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from coalition.api.grpc.client import NodeClient
from coalition.errors import CoalitionError

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
POLL_S = 0.1


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 right now (all bound at once, so no two
    are the same: gRPC servers set SO_REUSEPORT and two nodes on one port would both
    start and share its traffic)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def not_ready(grpc: str, http: str) -> str | None:
    """Why the node at these member addresses is not ready, or None when it is."""
    try:
        with NodeClient(grpc, None, timeout=1.0) as client:
            status = client.health()
    except CoalitionError as exc:
        return f"gRPC health at {grpc}: {exc}"
    if status != "SERVING":
        return f"gRPC health at {grpc} says {status}"
    try:
        url = f"http://{http}/healthz"
        with urllib.request.urlopen(url, timeout=1.0) as reply:
            reply.read()
    except (urllib.error.URLError, OSError) as exc:
        return f"GET http://{http}/healthz: {exc}"
    return None


def wait_ready(
    grpc: str,
    http: str,
    timeout: float = READY_TIMEOUT_S,
    process: NodeProcess | None = None,
) -> None:
    """Until the node at ``grpc``/``http`` is ready (the module's rule); CoalitionError
    after ``timeout`` s, or as soon as ``process`` (the node's, when we run it) exits."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None:
            process.check_running()
        reason = not_ready(grpc, http)
        if reason is None:
            return
        if time.monotonic() > deadline:
            tail = "" if process is None else f"\n{process.log_tail()}"
            raise CoalitionError(f"node not ready after {timeout:.0f} s ({reason}){tail}")
        time.sleep(POLL_S)


class NodeProcess:
    """``coalition run --config CONFIG [ARGS]`` as a child process, restartable.

    Its output is appended to ``log_path`` (every start of one node in one file). The
    child gets no ``COALITION_*`` variable of ours, only ``env``, so a variable set in the
    caller's shell never reaches a node by accident. ``args`` follow ``--config`` (e.g.
    ``--reuse-port`` for one of several processes of a node, ``--processes N``).
    """

    def __init__(
        self,
        config_path: Path,
        *,
        grpc: str,
        http: str,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.config_path = config_path
        self.args = tuple(args)
        self.grpc = grpc
        self.http = http
        self.log_path = log_path
        self.name = config_path.parent.name
        self._env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._log: IO[bytes] | None = None
        self._offset = 0
        self._terminated = False
        self._killed = False

    def start(self) -> None:
        """Start the process (it MUST not be running); ``wait_ready`` waits for it."""
        if self.running:
            raise CoalitionError(f"{self.name} is already running")
        env = {k: v for k, v in os.environ.items() if not k.startswith("COALITION_")}
        env.update(self._env, PYTHONUNBUFFERED="1")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._terminated = self._killed = False
        self._log = self.log_path.open("ab")
        self.starts += 1
        self.process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
            [
                *(sys.executable, "-m", "coalition.cli", "run"),
                *("--config", str(self.config_path), *self.args),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.config_path.parent,
        )

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        wait_ready(self.grpc, self.http, timeout, process=self)

    @property
    def pid(self) -> int:
        """The running (or last) process's pid; CoalitionError before the first start."""
        if self.process is None:
            raise CoalitionError(f"{self.name} was never started")
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_running(self) -> None:
        """CoalitionError with the log's tail if the process was started and has exited."""
        if self.process is not None and self.process.poll() is not None:
            raise CoalitionError(
                f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
            )

    def log_text(self) -> str:
        """What the current (or last) start wrote to the log."""
        with self.log_path.open("rb") as file:
            file.seek(self._offset)
            return file.read().decode(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL: no shutdown at all (what a power cut does to the process)."""
        if self.running:
            assert self.process is not None
            self._killed = True
            self.process.kill()
            self.process.wait()
        self._close_log()

    def terminate(self) -> None:
        """Send SIGTERM once (a second one would find the default handler restored)."""
        if self.running and not self._terminated:
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)
            self._terminated = True

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, then wait; the node seals what is pending before it exits.

        CoalitionError (with the log's tail) if it had to be killed after ``timeout`` s,
        or if it exited non-zero, unless ``kill`` stopped it.
        """
        if self.process is None:
            return
        if self.running:
            self.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise CoalitionError(
                    f"{self.name} did not stop on SIGTERM; killed it:\n{self.log_tail()}"
                ) from None
        self._close_log()
        if self.process.returncode != 0 and not self._killed:
            raise CoalitionError(
                f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
            )

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
