"""Forwarding one relayed request: REQ_HEADERS and its body to the local task app, the
app's answer back as RESP_HEADERS and body frames (v1 JSON+base64, or v2 binary frames
under credit flow control), errors as RESP_ERROR.

:class:`StreamForwarding` holds these methods; :class:`~taskapp.relay.agent.connection.
RelayAgent` (the connection half) inherits them and provides the attributes declared here.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, NamedTuple

from taskapp.core.backends import InProcessApp
from taskapp.core.logs import get_logger
from taskapp.relay import protocol as p
from taskapp.relay.agent.config import AgentConfig
from taskapp.relay.agent.local_http import Conn, LocalHttp, LocalResponseError

__all__ = ["END_OF_BODY", "AgentStream", "StreamForwarding"]

logger = get_logger("taskapp.tunnel.relay")

#: Put on a stream's body queue after its last request-body chunk.
END_OF_BODY = object()


class AgentStream:
    __slots__ = (
        "body",
        "content_length",
        "frame",
        "headers_sent",
        "lease_id",
        "recv_window",
        "rid",
        "send_credit",
        "sid",
        "task",
    )

    def __init__(self, frame: dict[str, Any], sid: int, rid: str) -> None:
        self.frame = frame
        self.sid = sid
        self.rid = rid
        self.lease_id = str(frame.get("lease_id") or "")
        self.body: asyncio.Queue[Any] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.send_credit: p.Credit | None = None
        self.recv_window: p.InboundWindow | None = None
        self.content_length: int | None = None
        self.headers_sent = False


class _Request(NamedTuple):
    """A relayed request as the local app gets it (:meth:`StreamForwarding._request_parts`)."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    #: None: unknown (chunked); 0 when the request has no body
    length: int | None
    #: the first body item when it was read to learn the length (or None)
    first: Any


class StreamForwarding:
    """The per-request half of the agent (see the module docstring)."""

    config: AgentConfig
    local: LocalHttp
    version: int
    ws: Any
    streams: dict[int, AgentStream]
    by_rid: dict[str, int]
    idle: asyncio.Event
    stopping: asyncio.Event
    max_frame: int
    stream_window: int
    conn_credit: p.Credit
    conn_inbound: p.InboundWindow
    _next_sid: int

    async def _send_text(self, frame: dict[str, Any]) -> None:
        raise NotImplementedError

    async def _send_bytes(self, data: bytes) -> None:
        raise NotImplementedError

    async def _forward_in_process(
        self, stream: AgentStream, request: _Request, target: InProcessApp
    ) -> None:
        raise NotImplementedError

    async def _consumed(self, stream: AgentStream | None, amount: int) -> None:
        """Request bytes reached the local app: hand the credit back to the relay."""
        if self.version != p.V2 or amount <= 0:
            return
        if stream is not None and stream.recv_window is not None:
            increment = stream.recv_window.consumed(amount)
            if increment:
                await self._send_bytes(p.encode_window_update(stream.sid, increment))
        increment = self.conn_inbound.consumed(amount)
        if increment:
            await self._send_bytes(p.encode_window_update(0, increment))

    async def _open_stream(self, frame: dict[str, Any]) -> None:
        rid = str(frame.get("rid") or "")
        if self.version == p.V2 and isinstance(frame.get("sid"), int):
            sid = int(frame["sid"])
        else:
            self._next_sid += 1
            sid = self._next_sid
        stream = AgentStream(frame, sid, rid)
        if self.version == p.V2:
            stream.send_credit = p.Credit(self.stream_window)
            stream.recv_window = p.InboundWindow(self.stream_window)
        if len(self.streams) >= self.config.max_inflight or self.stopping.is_set():
            await self._error(stream, "OVERLOADED", "agent at max_inflight")
            return
        self.streams[sid] = stream
        self.by_rid[rid] = sid
        self.idle.clear()
        stream.task = asyncio.create_task(self._run_stream(stream))

    async def _error(self, stream: AgentStream, code: str, message: str) -> None:
        frame: dict[str, Any] = {
            "type": p.RESP_ERROR,
            "lease_id": stream.lease_id,
            "rid": stream.rid,
            "code": code,
            "message": message,
        }
        if self.version == p.V2:
            frame["sid"] = stream.sid
            frame["retryable"] = code in ("OVERLOADED", "LOCAL_CONNECT_FAILED")
        with contextlib.suppress(Exception):
            await self._send_text(frame)

    async def _fail(self, stream: AgentStream, code: str, message: str) -> None:
        """The local side failed: RESP_ERROR, or in v2 after the headers a CANCEL."""
        if self.version == p.V2 and stream.headers_sent:
            with contextlib.suppress(Exception):
                await self._send_text(
                    {
                        "type": p.CANCEL,
                        "lease_id": stream.lease_id,
                        "rid": stream.rid,
                        "sid": stream.sid,
                        "reason": "local_aborted",
                    }
                )
            return
        await self._error(stream, code, message)

    # one request -----------------------------------------------------------------------

    async def _run_stream(self, stream: AgentStream) -> None:
        frame = stream.frame
        deadline_ms = frame.get("deadline_ms")
        deadline = (
            (deadline_ms / 1000 + 1.0)
            if isinstance(deadline_ms, int) and deadline_ms > 0
            else 601.0
        )
        try:
            async with asyncio.timeout(deadline):
                await self._forward(stream)
        except TimeoutError:
            await self._error(stream, "LOCAL_TIMEOUT", "the local app did not finish in time")
        except asyncio.CancelledError:
            pass  # CANCEL from the relay, or the connection dropped
        except Exception as exc:
            logger.debug("relay stream %s failed", stream.rid, exc_info=True)
            with contextlib.suppress(Exception):
                await self._error(stream, "LOCAL_BAD_RESPONSE", type(exc).__name__)
        finally:
            self.streams.pop(stream.sid, None)
            self.by_rid.pop(stream.rid, None)
            if not self.streams:
                self.idle.set()
            if stream.send_credit is not None:
                stream.send_credit.close()
            if stream.recv_window is not None:
                unreturned = stream.recv_window.window - stream.recv_window.outstanding
                if unreturned > 0 and self.ws is not None:
                    with contextlib.suppress(Exception):
                        await self._consumed(None, unreturned)

    async def _request_parts(self, stream: AgentStream) -> _Request | None:
        """The request of a REQ_HEADERS frame as the local app gets it, or None (after a
        BAD_REQUEST_FRAME error) when it cannot be one. Both legs (loopback HTTP and the
        in-process ASGI call) start here."""
        frame = stream.frame
        method = str(frame.get("method") or "GET").upper()
        path = str(frame.get("path") or "/")
        if not path.startswith("/"):
            path = "/" + path
        query = str(frame.get("query") or "")
        target = path + ("?" + query if query else "")
        if not method.isalpha() or any(c in target for c in " \r\n\t"):
            await self._error(stream, "BAD_REQUEST_FRAME", "bad method or path")
            return None
        raw_headers = frame.get("headers")
        length = frame.get("content_length") if self.version == p.V2 else None
        if not isinstance(length, int) or isinstance(length, bool):
            length = None
            if isinstance(raw_headers, list):
                for item in raw_headers:
                    if (
                        isinstance(item, list | tuple)
                        and len(item) == 2
                        and str(item[0]).lower() == "content-length"
                    ):
                        with contextlib.suppress(ValueError):
                            length = int(str(item[1]))
        first: Any = None
        if length is None:
            # Unknown length: a bodiless request (END first) is sent without a body,
            # anything else streams with chunked transfer encoding.
            first = await stream.body.get()
            if first is END_OF_BODY:
                length = 0
        headers = p.local_request_headers(
            raw_headers,
            lease_id=stream.lease_id,
            rid=stream.rid,
            host=f"{self.config.local_host}:{self.config.local_port}",
            content_length=length,
        )
        if self.config.api_key and not any(name == "x-api-key" for name, _ in headers):
            headers.append(("x-api-key", self.config.api_key))
        return _Request(method, path, query, headers, length, first)

    async def _forward(self, stream: AgentStream) -> None:
        request = await self._request_parts(stream)
        if request is None:
            return
        if self.config.in_process is not None:
            await self._forward_in_process(stream, request, self.config.in_process)
        else:
            await self._forward_http(stream, request)

    async def _forward_http(self, stream: AgentStream, request: _Request) -> None:
        """The loopback leg: the request over a pooled keep-alive HTTP/1.1 connection."""
        method, length, first = request.method, request.length, request.first
        target = request.path + ("?" + request.query if request.query else "")
        headers = request.headers
        if length is None:
            headers.append(("transfer-encoding", "chunked"))
        head = LocalHttp.request_head(method, target, headers)

        bodiless = length == 0
        try:
            conn, reused = await self.local.acquire()
        except OSError as exc:
            await self._error(stream, "LOCAL_CONNECT_FAILED", f"{type(exc).__name__}")
            return
        reusable = False
        writer_task: asyncio.Task[bool] | None = None
        try:
            writer_task = await self._start_request(stream, conn, head, length, first)
            try:
                status, resp_headers, mode = await LocalHttp.read_head(conn.reader)
            except LocalResponseError:
                if reused and bodiless:
                    # A stale keep-alive connection: retry once on a fresh one.
                    conn.close()
                    conn, reused = await self.local.acquire(fresh=True)
                    conn.writer.write(head)
                    status, resp_headers, mode = await LocalHttp.read_head(conn.reader)
                else:
                    raise
            if method == "HEAD" or status in (204, 304):
                mode = "none" + (":close" if mode.endswith(":close") else "")
            reusable = await self._relay_response(stream, conn, status, resp_headers, mode)
            if writer_task is not None:
                # The app answered; a body it never read makes the connection unusable.
                if not writer_task.done():
                    writer_task.cancel()
                    reusable = False
                with contextlib.suppress(BaseException):
                    reusable = reusable and await writer_task
        except LocalResponseError as exc:
            await self._fail(stream, "LOCAL_BAD_RESPONSE", str(exc))
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            await self._fail(stream, "LOCAL_BAD_RESPONSE", type(exc).__name__)
        finally:
            if writer_task is not None and not writer_task.done():
                writer_task.cancel()
                reusable = False
            self.local.release(conn, reusable)

    async def _start_request(
        self, stream: AgentStream, conn: Conn, head: bytes, length: int | None, first: Any
    ) -> asyncio.Task[bool] | None:
        """Write the request head, with the body chunks already received; a task streaming
        the rest (None when nothing is left: a bodiless or already complete request).

        One write for head and body where the body is here: a small request (REQ_HEADERS
        and its body arrive together) costs the app's server one read, not two.
        """
        if length == 0:
            conn.writer.write(head)
            return None
        if length is None:  # chunked: the first chunk is already taken (``first``)
            conn.writer.write(head)
            return asyncio.create_task(self._write_body(stream, conn, length, first))
        ready: list[bytes] = []
        complete = False
        queue = stream.body
        while not queue.empty():
            item = queue.get_nowait()
            if item is END_OF_BODY:
                complete = True
                break
            ready.append(item)
        body = b"".join(ready)
        conn.writer.write(head + body if body else head)
        if body:
            await self._consumed(stream, len(body))
        if complete:
            if len(body) == length:
                return None  # all written with the head
            stream.body.put_nowait(END_OF_BODY)  # _write_body reports the short body
        return asyncio.create_task(
            self._write_body(stream, conn, length, None, written=len(body), drained=not body)
        )

    async def _write_body(
        self,
        stream: AgentStream,
        conn: Conn,
        length: int | None,
        first: Any,
        *,
        written: int = 0,
        drained: bool = True,
    ) -> bool:
        """Stream the request body to the local app; True when it was written completely.
        ``written`` bytes were sent with the head (not yet drained unless ``drained``)."""
        writer = conn.writer
        chunked = length is None
        if not drained:
            await writer.drain()
        item = first if first is not None else await stream.body.get()
        while item is not END_OF_BODY:
            data: bytes = item
            if chunked:
                writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            else:
                writer.write(data)
            written += len(data)
            await writer.drain()
            await self._consumed(stream, len(data))
            item = await stream.body.get()
        if chunked:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        return length is None or written == length

    async def _relay_response(  # noqa: C901 -- complexity 17 at most (issue 21 ratchet); split when next changed
        self,
        stream: AgentStream,
        conn: Conn,
        status: int,
        headers: list[tuple[str, str]],
        mode: str,
    ) -> bool:
        """Send RESP_HEADERS and the body; True when the local connection can be reused."""
        v2 = self.version == p.V2
        start: dict[str, Any] = {
            "type": p.RESP_HEADERS,
            "lease_id": stream.lease_id,
            "rid": stream.rid,
            "status": status,
            "headers": [[k, v] for k, v in headers if k != "transfer-encoding"],
        }
        if v2:
            start["sid"] = stream.sid
        reader = conn.reader
        close = mode.endswith(":close")
        kind = mode.split(":")[0]
        frame_max = self.max_frame
        if kind == "none":
            await self._send_head(stream, start, b"")
            return not close
        if kind == "length":
            await self._relay_length(stream, start, conn, int(mode.split(":")[1]))
            return not close
        await self._send_text(start)
        stream.headers_sent = True
        if kind == "chunked":
            while True:
                line = await reader.readuntil(b"\r\n")
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise LocalResponseError("bad chunk size") from None
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass  # trailers are dropped
                    break
                while size > 0:
                    data = await reader.read(min(size, frame_max))
                    if not data:
                        raise LocalResponseError("the local app ended a chunk early")
                    size -= len(data)
                    await self._send_chunk(stream, data, end=False)
                if await reader.readexactly(2) != b"\r\n":
                    raise LocalResponseError("bad chunk terminator")
            await self._send_chunk(stream, b"", end=True)
            return not close
        while True:  # read until close
            data = await reader.read(frame_max)
            if not data:
                break
            await self._send_chunk(stream, data, end=False)
        await self._send_chunk(stream, b"", end=True)
        return False

    async def _relay_length(
        self, stream: AgentStream, start: dict[str, Any], conn: Conn, remaining: int
    ) -> None:
        """RESP_HEADERS and a body of ``remaining`` bytes (Content-Length)."""
        if remaining <= self.max_frame:
            # One frame's worth: read it first, so head and body leave together.
            body = await self._read_small(stream, start, conn, remaining)
            await self._send_head(stream, start, body)
            return
        await self._send_text(start)
        stream.headers_sent = True
        while remaining > 0:
            data = await conn.reader.read(min(remaining, self.max_frame))
            if not data:
                raise LocalResponseError("the local app ended the body early")
            remaining -= len(data)
            await self._send_chunk(stream, data, end=remaining == 0)

    async def _read_small(
        self, stream: AgentStream, start: dict[str, Any], conn: Conn, size: int
    ) -> bytes:
        """The whole body of ``size`` bytes; an app that ends it early gets its head and
        what it sent relayed, then the stream aborted (as for a long body)."""
        try:
            return await conn.reader.readexactly(size) if size else b""
        except asyncio.IncompleteReadError as exc:
            await self._send_text(start)
            stream.headers_sent = True
            if exc.partial:
                await self._send_chunk(stream, exc.partial, end=False)
            raise LocalResponseError("the local app ended the body early") from None

    async def _send_head(self, stream: AgentStream, start: dict[str, Any], body: bytes) -> None:
        """RESP_HEADERS and the whole body (written in one loop step: one send())."""
        await self._send_text(start)
        stream.headers_sent = True
        await self._send_chunk(stream, body, end=True)

    async def _send_chunk(
        self, stream: AgentStream, data: bytes | memoryview, *, end: bool
    ) -> None:
        if self.version == p.V1:
            if data:
                await self._send_text(
                    {
                        "type": p.RESP_BODY,
                        "lease_id": stream.lease_id,
                        "rid": stream.rid,
                        "chunk_b64": p.b64encode(data),
                        "eof": False,
                    }
                )
            if end:
                await self._send_text(
                    {"type": p.RESP_END, "lease_id": stream.lease_id, "rid": stream.rid}
                )
            return
        credit = stream.send_credit
        assert credit is not None
        offset = 0
        size = len(data)
        if size == 0:
            await self._send_bytes(p.encode_data(p.BIN_RESP_BODY, stream.sid, b"", end=end))
            return
        view = memoryview(data)
        while offset < size:
            granted = await credit.take(size - offset, self.conn_credit)
            if granted == 0:
                raise ConnectionError("stream closed while waiting for credit")
            piece = data if granted == size else bytes(view[offset : offset + granted])
            offset += granted
            last = end and offset >= size
            await self._send_bytes(p.encode_data(p.BIN_RESP_BODY, stream.sid, piece, end=last))

    # renewal and shutdown --------------------------------------------------------------
