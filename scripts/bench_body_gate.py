#!/usr/bin/env python3
"""What the HTTP body gate (``api/http/body.py``) adds to a request, in CPU.

    .venv/bin/python scripts/bench_body_gate.py [--repeats 5] [--json FILE] [--scale 1]

Each body is sent as ASGI messages (no network) to two apps in the same run:

* the **baseline**: an app that reads the body and decodes it with ``json.loads``, as
  FastAPI does for every JSON body (what a request cost before the gate);
* the **gated** app: ``BodyGate`` (the key checked, the size limit, ``parse_json``) in
  front of the same app, so the body is parsed twice, as in the node today.

Bodies: one redemption (73 bytes) and bulk earns of 1,000 and 10,000 rows. Printed per
body: CPU per request of each (this process's CPU, ``/proc``, median of ``--repeats``),
the gate's extra CPU per request and per row, and the ratio gated / baseline. The
machine is shared: quote the medians and ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from benchlib import machine, own_cpu_seconds, write_json
from starlette.types import Message, Receive, Scope, Send

from coalition.api.http.body import BodyGate
from coalition.node.auth import ApiKey, Authenticator, Role, key_digest

SECRET = "bench-operator-key"  # noqa: S105  (the benchmark's own throwaway key)


async def decoding_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the body and decode it as FastAPI does, then answer 204."""
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    json.loads(b"".join(chunks))
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def scope_for(body: bytes) -> Scope:
    headers = [
        (b"authorization", f"Bearer {SECRET}".encode()),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    return {"type": "http", "method": "POST", "path": "/v1/x", "headers": headers}


async def call(app: Any, body: bytes) -> int:
    sent = False
    status = 0

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope_for(body), receive, send)
    return status


def cpu_per_request(app: Any, body: bytes, count: int) -> float:
    async def run() -> None:
        for _ in range(count):
            assert await call(app, body) == 204

    began = own_cpu_seconds()
    asyncio.run(run())
    return (own_cpu_seconds() - began) / count


def bulk(rows: int) -> bytes:
    return json.dumps(
        [
            {
                "member_id": f"m{n}",
                "reference": f"r-{n}",
                "spend_minor": 1000 + n,
                "category": "",
                "idempotency_key": f"k-{n}",
            }
            for n in range(rows)
        ]
    ).encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply the request counts (tests: 0.01)"
    )
    options = parser.parse_args()
    gated = BodyGate(
        decoding_app, Authenticator([ApiKey("ops", key_digest(SECRET), Role.OPERATOR)])
    )
    redeem = json.dumps({"amount": 10, "reference": "order-12345"}).encode()
    # Counts that take about a second of CPU each: /proc counts in clock ticks (10 ms).
    bodies = [("redeem", redeem, 1, 100_000), ("bulk 1,000", bulk(1_000), 1_000, 400),
              ("bulk 10,000", bulk(10_000), 10_000, 40)]  # fmt: skip
    print(machine())
    print("shared machine: quote medians and ratios")
    figures: dict[str, Any] = {}
    for name, body, rows, full_count in bodies:
        count = max(1, round(full_count * options.scale))
        base = statistics.median(
            cpu_per_request(decoding_app, body, count) for _ in range(options.repeats)
        )
        gate = statistics.median(
            cpu_per_request(gated, body, count) for _ in range(options.repeats)
        )
        extra = gate - base
        ratio = gate / base if base > 0 else None  # under one clock tick: too few requests
        figures[name] = {
            "bytes": len(body),
            "baseline_cpu_us": base * 1e6,
            "gated_cpu_us": gate * 1e6,
            "gate_extra_us": extra * 1e6,
            "gate_extra_us_per_row": extra * 1e6 / rows,
            "ratio": ratio,
        }
        print(
            f"{name:12} {len(body):>10,} B   baseline (json.loads) {base * 1e6:10.1f} us   "
            f"gated {gate * 1e6:10.1f} us   gate +{extra * 1e6:9.1f} us "
            f"({extra * 1e6 / rows:.1f} us/row)   ratio "
            + ("n/a" if ratio is None else f"{ratio:.2f}")
        )
    write_json(options.json, {"bodies": figures})
    return 0


if __name__ == "__main__":
    sys.exit(main())
