"""The relay's lean HTTP/1.1 front for the public ingress (issue 27).

uvicorn constructs :func:`ingress_front`'s protocol class for every connection. It reads
the start of the first request line: a request for ``<base_path>/s/rt_...`` is parsed and
served here, calling :func:`taskapp.relay.server.ingress.ingress` with a minimal ASGI
scope and a ``receive``/``send`` pair implemented by the connection itself (no h11, no
``RequestResponseCycle``, the response head and the first body bytes in one write). Any
other request (the REST API, the agent's WebSocket upgrade, ``/metrics``, garbage) hands
the connection, with the bytes read so far, to the protocol uvicorn would have used, for
the rest of its life, so everything but the ingress keeps uvicorn's behaviour.

The reading is deliberately stricter than h11 (tests/relay/test_relay_front.py compares
both): CRLF line ends only, no obs-fold, HTTP/1.0 and HTTP/1.1 only, origin-form targets,
no Content-Length lists, and Transfer-Encoding together with Content-Length is refused.
Every refusal answers 400 (431 for oversize heads, 501 for an unknown transfer coding)
and closes the connection.
"""

from __future__ import annotations

import asyncio
import functools
import http
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from taskapp.core.logs import get_logger
from taskapp.relay import protocol as p
from taskapp.relay.server.ingress import DISCONNECT_WATCH, ingress
from taskapp.relay.server.state import Message, RelayState, Scope

__all__ = ["BadRequest", "ChunkedBody", "Head", "ingress_front", "parse_head"]

logger = get_logger("taskapp.relay")

#: Request body bytes buffered before reading pauses until ``receive()`` takes them.
HIGH_WATER = 65536
_METHOD_MAX = 32
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/(1\.[01])")
_HEADER = re.compile(rb"(" + _TOKEN + rb"):[ \t]*((?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?)[ \t]*")
_CHUNK_HEADER = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[^\x00\r\n]*)?[ \t]*")
_DIGITS = re.compile(rb"[0-9]{1,20}")
_FRAMING = frozenset((b"content-length", b"transfer-encoding", b"connection", b"expect"))


class BadRequest(Exception):
    """A request the front refuses: ``status`` (400, 431, 501) and why."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


class Head:
    """One parsed request head."""

    __slots__ = (
        "chunked",
        "content_length",
        "expect_continue",
        "headers",
        "keep_alive",
        "method",
        "target",
        "version",
    )

    def __init__(self, method: bytes, target: bytes, version: bytes) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = version == b"1.1"
        self.expect_continue = False


def parse_head(head: bytes, max_headers: int) -> Head:
    """The request head ``head`` (through the blank line's CRLF) or :class:`BadRequest`."""
    lines = head[:-4].split(b"\r\n")
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None:
        raise BadRequest(400, "bad request line")
    request = Head(match[1], match[2], match[3])
    if not request.target.startswith(b"/"):
        raise BadRequest(400, "not an origin-form target")
    if len(lines) - 1 > max_headers:
        raise BadRequest(431, "too many headers")
    hosts = 0
    headers = request.headers
    for line in lines[1:]:
        field = _HEADER.fullmatch(line)
        if field is None:
            raise BadRequest(400, "bad header line")
        name = field[1].lower()
        value = field[2]
        if name == b"host":
            hosts += 1
        elif name in _FRAMING:
            if _framing(request, name, value):
                continue  # a repeated, equal Content-Length: kept once (as h11)
            if name == b"transfer-encoding":
                value = b"chunked"  # as h11 normalises it
        headers.append((name, value))
    if hosts > 1 or (hosts == 0 and request.version == b"1.1"):
        raise BadRequest(400, "a request needs exactly one Host header")
    if request.chunked and request.content_length is not None:
        raise BadRequest(400, "both Transfer-Encoding and Content-Length")
    return request


def _framing(request: Head, name: bytes, value: bytes) -> bool:
    """Read a framing header into ``request``; True when it is a duplicate to drop."""
    if name == b"content-length":
        if _DIGITS.fullmatch(value) is None:
            raise BadRequest(400, "bad Content-Length")
        if request.content_length is not None:
            if (b"content-length", value) not in request.headers:  # h11 compares the bytes
                raise BadRequest(400, "conflicting Content-Length headers")
            return True
        request.content_length = int(value)
    elif name == b"transfer-encoding":
        if request.chunked or value.lower() != b"chunked":
            raise BadRequest(501, "only one Transfer-Encoding: chunked is supported")
        request.chunked = True
    elif name == b"connection":
        if b"close" in [token.strip().lower() for token in value.split(b",")]:
            request.keep_alive = False
    elif request.version == b"1.1" and b"100-continue" in [
        token.strip().lower() for token in value.split(b",")
    ]:
        request.expect_continue = True
    return False


class ChunkedBody:
    """A chunked request body's decoder: :meth:`feed` takes what arrived and returns the
    data it completes; ``done`` once the last chunk and its trailers were read."""

    __slots__ = ("_left", "_max_trailer", "_scanned", "_state", "done")

    def __init__(self, max_trailer: int) -> None:
        self._left = 0  # data bytes left in the current chunk
        self._state = 0  # 0: size line, 1: data, 2: CRLF after data, 3: trailers
        self._max_trailer = max_trailer
        self._scanned = 0  # trailer bytes known to hold no blank line
        self.done = False

    def feed(self, buf: bytearray) -> bytes:
        """Consume what it can from ``buf``; the body data it held."""
        out = bytearray()
        while not self.done:
            if self._state == 1:
                take = min(self._left, len(buf))
                if not take:
                    break
                out += buf[:take]
                del buf[:take]
                self._left -= take
                if not self._left:
                    self._state = 2
            elif not self._step(buf):
                break
        return bytes(out)

    def _step(self, buf: bytearray) -> bool:
        if self._state == 2:
            if len(buf) < 2:
                if bytes(buf[:1]) not in (b"", b"\r"):
                    raise BadRequest(400, "malformed chunk footer")
                return False
            if buf[:2] != b"\r\n":
                raise BadRequest(400, "malformed chunk footer")
            del buf[:2]
            self._state = 0
            return True
        if self._state == 3:
            return self._trailers(buf)
        end = buf.find(b"\r\n", 0, 1024)
        if end < 0:
            if len(buf) >= 1024:
                raise BadRequest(400, "chunk size line too long")
            return False
        match = _CHUNK_HEADER.fullmatch(bytes(buf[:end]))
        if match is None:
            raise BadRequest(400, "illegal chunk header")
        del buf[: end + 2]
        self._left = int(match[1], 16)
        self._state = 1 if self._left else 3
        return True

    def _trailers(self, buf: bytearray) -> bool:
        if buf[:2] == b"\r\n":
            del buf[:2]
            self.done = True
            return True
        end = buf.find(b"\r\n\r\n", self._scanned, self._max_trailer)
        if end < 0:
            if len(buf) >= self._max_trailer:
                raise BadRequest(431, "chunked trailers too large")
            self._scanned = max(0, len(buf) - 3)
            return False
        for line in bytes(buf[:end]).split(b"\r\n"):
            if _HEADER.fullmatch(line) is None:
                raise BadRequest(400, "bad trailer line")
        del buf[: end + 4]  # trailers are read and dropped (as uvicorn does)
        self.done = True
        return True


@functools.cache
def ingress_front(fallback: type[Any]) -> type[Any]:
    """The protocol class uvicorn runs for the relay: :class:`IngressFront` handing
    non-ingress connections to ``fallback`` (the protocol uvicorn would have used)."""

    class Front(IngressFront):
        fallback_class = fallback

    Front.__name__ = Front.__qualname__ = f"IngressFront{fallback.__name__}"
    return Front


class _Request:
    """One ingress request on a connection: its body buffer, its response state."""

    __slots__ = (
        "body",
        "body_left",
        "body_size",
        "chunks",
        "continue_sent",
        "declared",
        "done",
        "final_sent",
        "head",
        "more_body",
        "on_disconnect",
        "out_close",
        "out_mode",
        "sent",
        "started",
        "waiter",
    )

    def __init__(self, head: Head, max_trailer: int) -> None:
        self.head = head
        self.body: list[bytes] = []  # read, not yet taken by receive()
        self.body_size = 0
        self.body_left = head.content_length or 0
        self.chunks = ChunkedBody(max_trailer) if head.chunked else None
        self.more_body = bool(self.body_left) or self.chunks is not None
        self.continue_sent = not head.expect_continue
        self.waiter: asyncio.Future[None] | None = None
        #: called once if the connection is lost before the response ends (the ingress's
        #: DISCONNECT_WATCH: no task has to sit in receive() for it)
        self.on_disconnect: Callable[[], None] | None = None
        self.started = False
        self.done = False
        self.final_sent = False  # the message with more_body False was returned
        self.out_mode = 0  # 0: Content-Length or no body, 1: chunked, 2: until close
        self.out_close = not head.keep_alive
        self.declared: int | None = None
        self.sent = 0

    def add_body(self, data: bytes) -> None:
        """Body bytes arrived: keep them for ``receive()`` and wake it."""
        if data:
            self.body.append(data)
            self.body_size += len(data)
        waiter = self.waiter
        if (data or not self.more_body) and waiter is not None and not waiter.done():
            waiter.set_result(None)

    def drop_body(self) -> None:
        self.body = []
        self.body_size = 0


class IngressFront(asyncio.Protocol):
    """One public connection (see the module's docstring)."""

    fallback_class: type[Any]

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.loop = _loop or asyncio.get_event_loop()
        self.state: RelayState = config.app
        self.prefix = (self.state.base_path + p.INGRESS_PREFIX).encode()
        self.handler: Any = self._call_ingress
        if config.proxy_headers:
            from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

            self.handler = ProxyHeadersMiddleware(
                self.handler,  # type: ignore[arg-type]
                config.forwarded_allow_ips,
            )
        self.transport: Any = None
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int | None] | None = None
        self.scheme = "http"
        self.buf = bytearray()
        self.request: _Request | None = None
        self.read_paused = False
        self.write_paused = False
        self.drained: asyncio.Future[None] | None = None
        self.closed = False
        self.keep_alive = True
        self.timer: asyncio.TimerHandle | None = None
        self.idle_since = 0.0
        self.served = False  # a response was sent: idle connections get the keep-alive timeout
        self.scanned = 0  # how much of buf is known to hold no complete head
        self.head_pending = b""

    # asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl

        self.server_state.connections.add(self)
        self.transport = transport
        self.server = get_local_addr(transport)
        self.client = get_remote_addr(transport)
        self.scheme = "https" if is_ssl(transport) else "http"
        self.idle_since = self.loop.time()
        self._arm(self.state.settings.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server_state.connections.discard(self)
        self._disarm()
        request = self.request
        if request is not None and request.waiter is not None and not request.waiter.done():
            request.waiter.set_result(None)
        if request is not None and not request.done and request.on_disconnect is not None:
            callback, request.on_disconnect = request.on_disconnect, None
            callback()
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def data_received(self, data: bytes) -> None:
        request = self.request
        if request is not None and request.more_body and request.chunks is None and not self.buf:
            # The usual upload: body bytes straight to the request, no copy.
            left = request.body_left
            if len(data) > left:
                self.buf += memoryview(data)[left:]
                data = data[:left]
            request.body_left = left - len(data)
            request.more_body = request.body_left > 0
            request.add_body(data)
        else:
            self.buf += data
        self._process()

    def eof_received(self) -> None:
        pass

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def shutdown(self) -> None:
        """uvicorn's graceful stop: close now when idle, else after the response."""
        self.keep_alive = False
        if self.request is None and not self.closed:
            self.transport.close()

    # reading ----------------------------------------------------------------------------

    def _process(self) -> None:
        """Read what ``buf`` holds: a head, body bytes, or the next pipelined request."""
        while not self.closed:
            request = self.request
            if request is None:
                if not self._read_head():
                    return
                continue
            if request.more_body:
                try:
                    self._read_body(request)
                except BadRequest as exc:
                    self._refuse(exc)
                    return
                if request.done:
                    request.drop_body()  # answered already: the rest is read and dropped
            if request.more_body or not request.done:
                if len(self.buf) > HIGH_WATER or request.body_size > HIGH_WATER:
                    self._pause_reading()
                return
            self._next_request()

    def _read_head(self) -> bool:
        """Start a request from ``buf``; False when it needs more bytes or gave up."""
        buf = self.buf
        if not buf:
            return False
        route = self._routes_here()
        if route is None:
            return False
        if not route:
            self._hand_over()
            return False
        # Search only what arrived since the last look: a head sent a byte at a time
        # costs linear time, not quadratic.
        end = buf.find(b"\r\n\r\n", self.scanned)
        limit = self.state.settings.max_header_bytes + 1024
        if end < 0 or end + 4 > limit:
            if len(buf) > limit:
                self._refuse(BadRequest(431, "request head too large"))
            self.scanned = max(0, len(buf) - 3)
            return False
        self.scanned = 0
        try:
            head = parse_head(bytes(buf[: end + 4]), self.state.settings.max_headers)
        except BadRequest as exc:
            self._refuse(exc)
            return False
        del buf[: end + 4]
        self.request = _Request(head, self.state.settings.max_header_bytes)
        task = self.loop.create_task(self._run(self.request))
        self.server_state.tasks.add(task)
        task.add_done_callback(self.server_state.tasks.discard)
        return True

    def _routes_here(self) -> bool | None:
        """Whether the request starting ``buf`` is the ingress's (None: not known yet)."""
        buf = self.buf
        space = buf.find(b" ", 0, _METHOD_MAX + 1)
        if space < 0:
            return None if len(buf) <= _METHOD_MAX and b"\n" not in buf else False
        start = space + 1
        got = bytes(buf[start : start + len(self.prefix)])
        if len(got) < len(self.prefix) and self.prefix.startswith(got):
            return None
        return bool(got == self.prefix)

    def _read_body(self, request: _Request) -> None:
        buf = self.buf
        if request.chunks is not None:
            data = request.chunks.feed(buf)
            request.more_body = not request.chunks.done
        else:
            data = bytes(buf[: request.body_left])
            del buf[: len(data)]
            request.body_left -= len(data)
            request.more_body = request.body_left > 0
        request.add_body(data)

    def _pause_reading(self) -> None:
        if not self.read_paused and not self.closed:
            self.read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.read_paused and not self.closed:
            self.read_paused = False
            self.transport.resume_reading()

    def _next_request(self) -> None:
        """The current request and its response are done: on to the next one."""
        self.request = None
        self.server_state.total_requests += 1
        if not self.keep_alive:
            self.transport.close()
            self.closed = True
            return
        now = self.idle_since = self.loop.time()
        self.served = True
        # One timer per connection, re-armed only when it fires (or would fire too late):
        # no timer made and cancelled per request.
        due = now + min(self.config.timeout_keep_alive, self.state.settings.header_timeout)
        if self.timer is None or self.timer.when() > due:
            self._arm(due - now)
        self._resume_reading()

    def _hand_over(self) -> None:
        """The rest of this connection is uvicorn's (not an ingress request)."""
        self._disarm()
        self._resume_reading()
        self.server_state.connections.discard(self)
        protocol = self.fallback_class(
            config=self.config, server_state=self.server_state, app_state=self.app_state
        )
        self.closed = True  # for this object: nothing more is ours
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        data, self.buf = bytes(self.buf), bytearray()
        protocol.data_received(data)

    def _refuse(self, exc: BadRequest) -> None:
        logger.debug("ingress front: %s", exc)
        if self.request is not None and self.request.started:
            self.transport.close()  # mid-answer (a bad chunk after it began): no second head
            self.closed = True
            return
        self._write_plain(exc.status, str(exc))

    def _write_plain(self, status: int, text: str) -> None:
        """A short text answer, then close (refusals, timeouts, handler failures)."""
        body = (text + "\n").encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
            % (status, _status_phrase(status), len(body), body)
        )
        self.transport.close()
        self.closed = True

    # timeouts ---------------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self.timer = self.loop.call_later(seconds, self._on_timer)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _on_timer(self) -> None:
        """Idle past the keep-alive timeout (or, before a first request, the header
        timeout): close; a head begun but not complete within the header timeout: 408."""
        self.timer = None
        if self.closed or self.request is not None:
            return  # a request is being served: its end arms the timer again
        limit = self.state.settings.header_timeout
        if not self.buf and self.served:
            limit = self.config.timeout_keep_alive
        left = self.idle_since + limit - self.loop.time()
        if left > 0:
            self._arm(left)
            return
        if not self.buf:
            self.transport.close()
            self.closed = True
            return
        self._write_plain(408, "request headers not received in time")

    # the ASGI side ----------------------------------------------------------------------

    async def _call_ingress(self, scope: Scope, receive: Any, send: Any) -> None:
        await ingress(self.state, scope, receive, send, scope["raw_path"][len(self.prefix) :])

    async def _run(self, request: _Request) -> None:
        head = request.head
        raw_path, _, query = head.target.partition(b"?")
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": head.version.decode(),
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "method": head.method.decode(),
            "root_path": "",
            "path": unquote(raw_path.decode("ascii")),
            "raw_path": raw_path,
            "query_string": query,
            "headers": head.headers,
            "extensions": {DISCONNECT_WATCH: functools.partial(self._watch, request)},
        }

        async def receive() -> Message:
            return await self._receive(request)

        async def send(message: Message) -> None:
            await self._send(request, message)

        try:
            await self.handler(scope, receive, send)
        except BaseException as exc:
            logger.error("ingress request failed", exc_info=exc)
            self._failed(request)
            if not isinstance(exc, Exception):
                raise
        else:
            if not request.done:
                self._failed(request)

    def _watch(self, request: _Request, callback: Callable[[], None]) -> None:
        if self.closed and not request.done:
            callback()
        else:
            request.on_disconnect = callback

    def _failed(self, request: _Request) -> None:
        if self.closed:
            return
        if not request.started:
            self._write_plain(500, "Internal Server Error")
        else:
            self.transport.close()
            self.closed = True

    async def _receive(self, request: _Request) -> Message:
        if not request.continue_sent:
            request.continue_sent = True
            if not self.closed:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while (
            not request.body
            and (request.more_body or request.final_sent)
            and not self.closed
            and not request.done
        ):
            self._resume_reading()
            request.waiter = self.loop.create_future()
            await request.waiter
            request.waiter = None
        if self.closed or request.done:
            return {"type": "http.disconnect"}
        pieces = request.body
        body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        request.drop_body()
        request.final_sent = not request.more_body
        if self.read_paused and self.request is request:
            self._resume_reading()
        return {"type": "http.request", "body": body, "more_body": request.more_body}

    async def _send(self, request: _Request, message: Message) -> None:
        if self.write_paused and not self.closed:
            self.drained = self.loop.create_future()
            await self.drained
            self.drained = None
        if self.closed:
            return
        if not request.started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"expected http.response.start, got {message['type']}")
            self._start_response(request, message["status"], message.get("headers", []))
            return
        if request.done or message["type"] != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {message['type']!r}")
        self._write_body(request, message.get("body", b""), message.get("more_body", False))

    def _start_response(
        self, request: _Request, status: int, headers: list[tuple[bytes, bytes]]
    ) -> None:
        request.started = True
        request.continue_sent = True
        head = request.head
        bodiless = head.method == b"HEAD" or status in (204, 304) or status < 200
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _status_phrase(status))]
        for name, value in self.server_state.default_headers:
            lines.append(b"%s: %s\r\n" % (name, value))
        close = request.out_close or not self.keep_alive
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-length":
                request.declared = int(value)
            elif lower == b"transfer-encoding":
                continue  # the framing is the front's (the ingress never sends one)
            elif lower == b"connection" and b"close" in value.lower():
                close = True
                continue
            lines.append(b"%s: %s\r\n" % (name, value))
        if request.declared is None and status not in (204, 304):
            if head.version == b"1.1":
                request.out_mode = 1
                lines.append(b"transfer-encoding: chunked\r\n")
            elif head.method != b"HEAD":
                request.out_mode = 2
                close = True
        if bodiless:
            request.out_mode = 0
            request.declared = 0
        if close:
            self.keep_alive = False
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        self.head_pending = b"".join(lines)
        self.loop.call_soon(self._flush_head)

    def _flush_head(self) -> None:
        if self.head_pending and not self.closed:
            self.transport.write(self.head_pending)
        self.head_pending = b""

    def _write_body(self, request: _Request, body: bytes, more: bool) -> None:
        head = request.head
        if head.method == b"HEAD" or request.declared == 0:
            body = b""
        if (
            request.declared is not None
            and request.declared
            and request.sent + len(body) > (request.declared)
        ):
            self.transport.close()  # more than its own Content-Length: truncate
            self.closed = True
            return
        request.sent += len(body)
        out = body
        if request.out_mode == 1:
            out = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
            if not more:
                out += b"0\r\n\r\n"
        if self.head_pending:
            out = self.head_pending + out
            self.head_pending = b""
        if out:
            self.transport.write(out)
        if more:
            return
        request.done = True
        if request.out_mode == 2 or (request.declared or 0) > request.sent:
            self.keep_alive = False  # until close, or short of its Content-Length: close
        if self.request is not request:
            return
        if not request.more_body:
            self._next_request()
            if self.buf and not self.closed:
                self._process()
        else:
            # Answered before the whole body arrived (401, 413...): the rest is read and
            # dropped, as uvicorn does, then the connection goes on.
            request.drop_body()
            self._resume_reading()


@functools.cache
@functools.cache
def _status_phrase(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""
