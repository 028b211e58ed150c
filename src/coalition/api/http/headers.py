"""Response headers every answer of the node's HTTP API carries unless its route set its
own (the explorer's page sets a CSP for its scripts and ``no-cache``):

- ``Cache-Control: no-store``: balances, histories and keys' answers are per caller and
  change; no shared or browser cache may keep them;
- ``Content-Security-Policy: default-src 'none'; frame-ancestors 'none'``, plus
  ``X-Frame-Options: DENY`` for older browsers: a JSON answer opened in a browser runs
  nothing and cannot be framed;
- ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class DefaultHeaders:
    """ASGI middleware adding ``DEFAULT_HEADERS`` a response does not set itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in DEFAULT_HEADERS.items():
                    if name not in headers:
                        headers.append(name, value)
            await send(message)

        await self.app(scope, receive, with_headers)
