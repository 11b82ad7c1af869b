"""HTTP hardening for a server that runs on someone's own machine.

- Host check: a page on any web site can make the browser send requests to 127.0.0.1, and with DNS
  rebinding even read the answers as same-origin. Refusing requests whose ``Host`` header is not one of
  the server's own names (``localhost``, ``127.0.0.1``, ...) closes that door.
- Response headers: a content security policy that lets the page load only its own scripts, styles and
  images (so nothing from a CDN could sneak in), no framing, no MIME sniffing, no referrer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
HEADERS = {
    b"content-security-policy": b"default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
    b"base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
}


def host_name(header: str) -> str:
    """``"127.0.0.1:8000"`` -> ``"127.0.0.1"``; ``"[::1]:8000"`` -> ``"::1"``."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Guard:
    """ASGI middleware: refuse unexpected ``Host`` headers (``allowed_hosts=None`` accepts any) and add
    the security headers to every response."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] | None = None) -> None:
        self.app = app
        self.allowed = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        host = host_name(headers.get(b"host", b"").decode("latin-1")).lower()
        if self.allowed is not None and host not in self.allowed:
            names = ", ".join(sorted(self.allowed))
            await _refuse(send, f"requests for host {host!r} are refused; this server answers to {names}")
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS.items()]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _refuse(send: Send, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 400, "headers": [*headers, *HEADERS.items()]})
    await send({"type": "http.response.body", "body": body})
