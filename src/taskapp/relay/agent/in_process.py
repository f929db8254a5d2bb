"""The agent's in-process leg: a relayed request handed straight to the ASGI app when the
task app is served in this process (the ``thread`` runner), instead of over its loopback
HTTP port.

The agent then runs on the server's own event loop (:class:`AgentThread`), so the app is
called where its lifespan objects live, with the scope uvicorn builds (its middleware
included, the lifespan state copied, the client ``127.0.0.1`` with the relay's
``X-Forwarded-For``). What the loopback hop cost per request (two more socket writes and
reads, two event-loop wake-ups, h11 both ways, the two threads taking turns at the GIL)
is gone, and a response body goes from the app's ``send`` into frames without a copy
through a socket. Semantics kept from the HTTP leg: the request body streams under the
relay's credits, a CANCEL (or the deadline) makes the app's ``receive`` answer
``http.disconnect`` while the app finishes on its own, an exception before the response
starts answers 500 as uvicorn does, and one after it aborts the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import unquote

from taskapp.core.backends import InProcessApp
from taskapp.core.logs import get_logger
from taskapp.relay import protocol as p
from taskapp.relay.agent.forward import END_OF_BODY, AgentStream, StreamForwarding, _Request

__all__ = ["InProcessForwarding"]

logger = get_logger("taskapp.tunnel.relay")

#: Apps still running after their stream ended (a client left): kept until they return.
_DETACHED: set[asyncio.Task[None]] = set()


def _forget(task: asyncio.Task[None]) -> None:
    """A detached app returned: drop it, and take its exception (its client is gone)."""
    _DETACHED.discard(task)
    if not task.cancelled():
        task.exception()


class _Exchange:
    """One request's ``receive`` and ``send`` for the ASGI app."""

    __slots__ = ("agent", "bodiless", "done", "ended", "first", "gone", "start", "stream")

    def __init__(self, agent: StreamForwarding, stream: AgentStream, request: _Request) -> None:
        self.agent = agent
        self.stream = stream
        # A bodiless request (length 0) is one empty http.request for the app.
        self.first: Any = END_OF_BODY if request.length == 0 else request.first
        self.bodiless = request.method == "HEAD"
        self.ended = False  # the app has had the whole request body
        self.start: dict[str, Any] | None = None  # RESP_HEADERS not yet sent
        self.done = False  # the response is complete
        self.gone = asyncio.get_running_loop().create_future()  # the client left

    async def receive(self) -> dict[str, Any]:
        if self.ended or self.gone.done():
            await asyncio.shield(self.gone)
            return {"type": "http.disconnect"}
        queue = self.stream.body
        item = self.first
        self.first = None
        if item is None:
            item = await queue.get()
        chunks: list[bytes] = []
        while item is not END_OF_BODY:
            chunks.append(item)
            if queue.empty():
                break
            item = queue.get_nowait()
        self.ended = item is END_OF_BODY
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        await self.agent._consumed(self.stream, len(body))
        return {"type": "http.request", "body": body, "more_body": not self.ended}

    async def send(self, message: dict[str, Any]) -> None:
        if self.gone.done() or self.done:
            return  # the client left (uvicorn drops these too) or the response ended
        kind = message["type"]
        if kind == "http.response.start":
            if self.start is not None or self.stream.headers_sent:
                raise RuntimeError("http.response.start sent twice")
            status = int(message["status"])
            self.bodiless = self.bodiless or status in (204, 304)
            self.start = self._head(status, message.get("headers") or [])
        elif kind == "http.response.body":
            await self._body(message.get("body") or b"", bool(message.get("more_body")))

    def _head(self, status: int, raw: Any) -> dict[str, Any]:
        stream = self.stream
        head: dict[str, Any] = {
            "type": p.RESP_HEADERS,
            "lease_id": stream.lease_id,
            "rid": stream.rid,
            "status": status,
            "headers": [[bytes(k).decode("latin-1"), bytes(v).decode("latin-1")] for k, v in raw],
        }
        if self.agent.version == p.V2:
            head["sid"] = stream.sid
        return head

    async def _body(self, data: bytes, more: bool) -> None:
        agent, stream, start = self.agent, self.stream, self.start
        if start is None and not stream.headers_sent:
            raise RuntimeError("http.response.body before http.response.start")
        if self.bodiless:
            data = b""
        self.done = not more
        if start is not None and not more and len(data) <= agent.max_frame:
            self.start = None
            await agent._send_head(stream, start, data)  # head and body in one write
            return
        if start is not None:
            self.start = None
            await agent._send_text(start)
            stream.headers_sent = True
        step = agent.max_frame
        if len(data) <= step:
            if data or not more:
                await agent._send_chunk(stream, data, end=not more)
            return
        view = memoryview(data)
        for offset in range(0, len(data), step):
            last = offset + step >= len(data)
            await agent._send_chunk(stream, view[offset : offset + step], end=last and not more)


def _scope(target: InProcessApp, request: _Request, server: tuple[str, int]) -> dict[str, Any]:
    raw_path = request.path.encode("ascii")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": server,
        "client": ("127.0.0.1", 0),
        "scheme": "http",
        "method": request.method,
        "root_path": "",
        "path": unquote(request.path),
        "raw_path": raw_path,
        "query_string": request.query.encode("latin-1"),
        "headers": [
            (name.encode("latin-1"), value.encode("latin-1")) for name, value in request.headers
        ],
        "state": target.state.copy(),
    }


class InProcessForwarding(StreamForwarding):
    """The in-process leg of :class:`StreamForwarding` (see the module docstring)."""

    async def _forward_in_process(
        self, stream: AgentStream, request: _Request, target: InProcessApp
    ) -> None:
        try:
            scope = _scope(target, request, (self.config.local_host, self.config.local_port))
        except UnicodeEncodeError:
            await self._error(stream, "BAD_REQUEST_FRAME", "a path or header that is not latin-1")
            return
        exchange = _Exchange(self, stream, request)
        app = asyncio.ensure_future(target.app(scope, exchange.receive, exchange.send))
        try:
            await asyncio.shield(app)
        except asyncio.CancelledError:
            # CANCEL or the deadline: the app hears http.disconnect and finishes on its own.
            exchange.gone.set_result(None)
            if not app.done():
                _DETACHED.add(app)
                app.add_done_callback(_forget)
            raise
        except Exception:
            logger.exception("Exception in ASGI application (relayed request %s)", stream.rid)
            await self._app_failed(exchange, "the app raised")
            return
        finally:
            if not exchange.gone.done():
                exchange.gone.set_result(None)
        if not exchange.done:
            await self._app_failed(exchange, "the app returned before its response ended")

    async def _app_failed(self, exchange: _Exchange, why: str) -> None:
        """What uvicorn does: 500 when no response started, else the response aborted."""
        if exchange.start is None and not exchange.stream.headers_sent:
            body = b"Internal Server Error"
            head = exchange._head(
                500,
                [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                ],
            )
            with contextlib.suppress(Exception):
                await self._send_head(exchange.stream, head, body)
            return
        await self._fail(exchange.stream, "LOCAL_BAD_RESPONSE", why)
