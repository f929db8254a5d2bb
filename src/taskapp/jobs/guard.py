"""The job backend's outer layer (pure ASGI, before FastAPI sees a request).

* ``/api/*`` needs the key: a request without it is answered 401 before a byte of its
  body is read, so an unauthenticated client cannot make the backend parse anything.
* Bodies are capped: a ``Content-Length`` over the cap is answered 413 unread; a body
  sent without one (chunked) stops at the cap with 413.
* Every answer carries ``Content-Security-Policy``, ``X-Frame-Options: DENY``,
  ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``.

Errors use :func:`error_body`, the documented envelope.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from taskapp.jobs.validation import BadInput

__all__ = ["SECURITY_HEADERS", "Guard", "error_body", "error_headers"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' "
        b"'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
        b"base-uri 'none'; form-action 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)

UNAUTHORIZED = (
    "missing or wrong backend key: send Authorization: Bearer <key> (the key of "
    "--api-key-file or $TASKAPP_BACKEND_API_KEY)"
)


def error_body(code: str, message: str) -> dict[str, Any]:
    """The error envelope: ``{"detail": {"error": {"code", "message"}}}``, plus the
    earlier ``{"error": {"type", "message"}}`` form that 0.x clients read."""
    return {
        "detail": {"error": {"code": code, "message": message}},
        "error": {"type": code, "message": message},
    }


def error_headers(retry_after: float | None = None) -> dict[str, str]:
    return {} if retry_after is None else {"Retry-After": str(max(1, round(retry_after)))}


async def _answer(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps(error_body(code, message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Key check before the body, body cap, security headers (see the module doc)."""

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        *,
        key_ok: Callable[[str], bool],
        max_body: int,
        protected: str = "/api",
    ) -> None:
        self.app = app
        self.key_ok = key_ok
        self.max_body = max_body
        self.protected = protected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *SECURITY_HEADERS]
            await send(message)

        # The checks run in a plain function, so that none of their values stays alive
        # in this frame for as long as the request lasts (an event stream: minutes).
        refusal, chunked = self._check(scope)
        if refusal is not None:
            await _answer(send_with_headers, *refusal)
            return
        # A body with a Content-Length is held to that length by the server (checked
        # above); a chunked one, or one a GET or HEAD should not have, is counted.
        await self.app(scope, self._capped(receive) if chunked else receive, send_with_headers)

    def _check(self, scope: Scope) -> tuple[tuple[int, str, str] | None, bool]:
        """(status, code, message) of the answer that refuses the request, or None; and
        whether its body comes chunked (with no length announced)."""
        authorization = length = None
        chunked = False
        for name, value in scope.get("headers", ()):
            name = name.lower()
            if name == b"authorization":
                authorization = value
            elif name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
        path = str(scope.get("path", ""))
        if (path == self.protected or path.startswith(self.protected + "/")) and not self.key_ok(
            (authorization or b"").decode("latin-1")
        ):
            return (401, "unauthorized", UNAUTHORIZED), chunked
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            message = f"the request body is larger than the {self.max_body} bytes accepted"
            return (413, "too_large", message), chunked
        return None, chunked or (length is None and scope.get("method") not in ("GET", "HEAD"))

    def _capped(self, receive: Receive) -> Receive:
        seen = 0
        limit = self.max_body

        async def capped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BadInput(
                        f"the request body is larger than the {limit} bytes accepted",
                        status=413,
                        code="too_large",
                    )
            return message

        return capped
