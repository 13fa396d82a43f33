"""The HTTP API's edge: API-key authentication and a request-body limit, as one ASGI middleware.

`/v1/*` needs `Authorization: Bearer <key>` (keys: `smartspec/auth.py`); `/health` and `/metrics`
stay open for probes and scrapers, as with vLLM's `--api-key`. A body is refused with 413 from its
Content-Length, or as soon as the bytes streamed in pass the limit, before anything parses it; a body
slower than `body_timeout_s` gets 408, and headers slower than `header_timeout_s` lose the connection.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from smartspec.auth import ApiKeys

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

PROTECTED_PREFIX = "/v1/"


class EdgeGuard:
    """ASGI middleware: 401 without a valid key on `/v1/*` (when keys are set), 413 past `max_body_bytes`."""

    def __init__(self, app: App, keys: ApiKeys | None, max_body_bytes: int, body_timeout_s: float = 30.0) -> None:
        self.app = app
        self.keys = keys
        self.max_body = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.keys is not None and scope.get("path", "").startswith(PROTECTED_PREFIX) and \
                not self.keys.accepts(headers.get("authorization")):
            await _error(send, 401, "a valid API key is required: send it as 'Authorization: Bearer <key>'",
                         "invalid_request_error", "invalid_api_key", {"www-authenticate": "Bearer"})
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            await _error(send, 413, self._too_large_msg(), "invalid_request_error", "request_too_large")
            return
        # Read the whole body here, bounded (the API's bodies are small), and hand it on in one piece: a
        # chunked body with no Content-Length is cut off as soon as it passes the limit.
        body, more = b"", scope.get("method") in ("POST", "PUT", "PATCH")
        try:
            async with asyncio.timeout(self.body_timeout_s):  # a body trickled in slowly holds a connection
                while more:
                    msg = await receive()
                    if msg["type"] == "http.disconnect":
                        return
                    body += msg.get("body", b"")
                    more = bool(msg.get("more_body", False))
                    if len(body) > self.max_body:
                        await _error(send, 413, self._too_large_msg(), "invalid_request_error", "request_too_large")
                        return
        except TimeoutError:
            await _error(send, 408, f"the request body did not arrive within {self.body_timeout_s:g} s",
                         "invalid_request_error", "request_timeout")
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls: disconnect detection while streaming

        await self.app(scope, replay, send)

    def _too_large_msg(self) -> str:
        return f"the request body is larger than {self.max_body} bytes"


async def _error(send: Send, status: int, message: str, error_type: str, code: str,
                 extra: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": {"message": message, "type": error_type, "param": None, "code": code}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for a request's headers: a client that connects and sends
    nothing, or trickles its headers a byte at a time, is disconnected after `header_timeout_s` (uvicorn
    times out only idle keep-alive connections, and any byte resets that). Set per server with `configure`."""

    header_timeout_s = 10.0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()  # the next request on a kept-alive connection gets the same deadline

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_overdue)

    def connection_lost(self, exc: Exception | None) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
        super().connection_lost(exc)

    def _headers_overdue(self) -> None:
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting and not self.transport.is_closing():
            self.transport.close()

    @classmethod
    def configure(cls, header_timeout_s: float) -> type[GuardedH11Protocol]:
        return type("GuardedH11", (cls,), {"header_timeout_s": header_timeout_s})
