"""One agent WebSocket on the relay side: the frames it carries, its streams (one per public
request) and their flow control (v2 credits; v1 pauses reading above a buffer limit)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from taskapp.core.logs import get_logger
from taskapp.relay import protocol as p
from taskapp.relay.server.agent_wire import Wire
from taskapp.relay.server.leases import Lease, text_field
from taskapp.relay.server.state import RelayState, Send

__all__ = ["AgentSession", "Stream"]

logger = get_logger("taskapp.relay")


class _Events:
    """A minimal single-consumer queue of stream events (cheaper than asyncio.Queue)."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[tuple[Any, ...]] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: tuple[Any, ...]) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pop_end_marker(self) -> bool:
        """Consume a queued bare end-of-body marker, if it is next (merges the final frame)."""
        items = self._items
        if items and items[0][0] == "data" and items[0][2] and not items[0][1]:
            items.popleft()
            return True
        return False

    async def get(self) -> tuple[Any, ...]:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


class Stream:
    """One public request travelling through an agent session (relay side)."""

    __slots__ = (
        "buffered",
        "closed",
        "drained",
        "events",
        "lease",
        "progress",
        "recv_window",
        "rid",
        "send_credit",
        "session",
        "sid",
    )

    def __init__(self, session: AgentSession, lease: Lease, sid: int, rid: str) -> None:
        self.session = session
        self.lease = lease
        self.sid = sid
        self.rid = rid
        self.events = _Events()
        self.buffered = 0
        #: When bytes last moved either way (loop time): the ingress's stall timer reads it.
        self.progress = 0.0
        self.closed = False
        self.drained = asyncio.Event()
        self.drained.set()
        self.send_credit: p.Credit | None = None
        self.recv_window: p.InboundWindow | None = None
        if session.version == p.V2:
            self.send_credit = p.Credit(session.stream_window)
            self.recv_window = p.InboundWindow(session.stream_window)


class AgentSession:
    """One agent WebSocket: frames in (:meth:`on_text`, :meth:`on_binary`, called by the
    wire as they arrive), frames out (written at once, in call order), its streams."""

    _ids = itertools.count(1)

    def __init__(
        self, relay: RelayState, lease: Lease, send: Send, wire: Wire, version: int
    ) -> None:
        settings = relay.settings
        self.relay = relay
        self.lease = lease
        self._send = send  # the ASGI send: only for the close handshake
        self._wire = wire
        #: v1 streams whose public client is behind: reading stays paused while any is.
        self._holding: set[Stream] = set()
        self._broken = False
        self.version = version
        self.session_id = f"s{next(self._ids)}"
        self.streams: dict[int, Stream] = {}
        self.by_rid: dict[str, Stream] = {}
        self._sids = itertools.count(1)
        self.max_inflight = settings.max_inflight
        self.stream_window = settings.stream_window
        self.conn_window = settings.conn_window
        self.max_frame = settings.max_frame_bytes
        #: v2 text frames (control frames only) may not exceed this many characters.
        self.max_text = 4 * settings.max_header_bytes + 4096
        #: REQ_BODY chunk size for a v1 agent: what it advertised (max_body_chunk_bytes).
        self.v1_chunk = settings.max_frame_bytes
        self.closing = False  # GOAWAY either way: no new streams
        self.closed = False
        self.conn_credit = p.Credit(self.conn_window)
        self.conn_inbound = p.InboundWindow(self.conn_window)
        self.idle = asyncio.Event()  # set while the session carries no stream
        self.idle.set()
        self._close_code: int | None = None

    # sending ---------------------------------------------------------------------------

    def send_text(self, frame: Mapping[str, Any]) -> None:
        """Write one control frame now (frames leave in call order)."""
        if self.closed:
            return
        try:
            self._wire.write_text(p.encode_text(frame))
        except Exception:
            # The connection is gone; the endpoint fails the streams it carried.
            self.closed = True

    def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed:
            return
        try:
            self._wire.write_bytes(data)
        except Exception:
            self.closed = True

    async def writable(self) -> None:
        """Return when the connection takes more bytes (a bulk sender awaits this first)."""
        writable = self._wire.writable
        if not writable.is_set():
            await writable.wait()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed:
            return
        self._close_code = code
        self.closed = True
        with contextlib.suppress(Exception):
            await self._send({"type": "websocket.close", "code": code, "reason": reason})

    def goaway(self, reason: str, retry_after_ms: int = 1000) -> None:
        self.closing = True
        if self.version == p.V2:
            last = max(self.streams, default=0)
            self.send_text(
                {
                    "type": p.GOAWAY,
                    "reason": reason,
                    "last_sid": last,
                    "retry_after_ms": retry_after_ms,
                }
            )

    # streams ---------------------------------------------------------------------------

    def open_stream(self) -> Stream:
        sid = next(self._sids)
        stream = Stream(self, self.lease, sid, f"{self.session_id}-{sid}")
        self.streams[sid] = stream
        self.by_rid[stream.rid] = stream
        self.idle.clear()
        return stream

    def close_stream(self, stream: Stream) -> None:
        if stream.closed:
            return
        stream.closed = True
        self.streams.pop(stream.sid, None)
        self.by_rid.pop(stream.rid, None)
        if not self.streams:
            self.idle.set()
        if stream.buffered:
            self.relay.buffered -= stream.buffered
            stream.buffered = 0
        stream.drained.set()
        if stream.send_credit is not None:
            stream.send_credit.close()
        if stream.recv_window is not None:
            # Bytes the agent sent that were never delivered still count against the
            # connection window; hand them back so other streams keep flowing.
            unreturned = stream.recv_window.window - stream.recv_window.outstanding
            if unreturned > 0:
                self._return_conn_credit(unreturned)

    def _return_conn_credit(self, amount: int) -> None:
        increment = self.conn_inbound.consumed(amount)
        if increment:
            self.send_bytes(p.encode_window_update(0, increment))

    def delivered(self, stream: Stream, amount: int) -> None:
        """``amount`` response bytes of ``stream`` reached the public client."""
        stream.buffered -= amount
        self.relay.buffered -= amount
        if stream.buffered <= self.relay.settings.v1_stream_buffer:
            stream.drained.set()
        window = stream.recv_window
        if window is None or stream.closed:
            return
        increment = window.consumed(amount)
        if increment:
            self.send_bytes(p.encode_window_update(stream.sid, increment))
        conn_increment = self.conn_inbound.consumed(amount)
        if conn_increment:
            self.send_bytes(p.encode_window_update(0, conn_increment))

    async def send_request_body(self, stream: Stream, chunk: bytes, end: bool) -> bool:
        """Forward request bytes to the agent; False when the stream ended meanwhile."""
        if self.version == p.V1:
            lease_id = self.lease.lease_id
            step = self.v1_chunk
            for offset in range(0, len(chunk), step):
                await self.writable()
                self.send_text(
                    {
                        "type": p.REQ_BODY,
                        "lease_id": lease_id,
                        "rid": stream.rid,
                        "chunk_b64": p.b64encode(chunk[offset : offset + step]),
                    }
                )
            if end:
                self.send_text({"type": p.REQ_END, "lease_id": lease_id, "rid": stream.rid})
            return not stream.closed
        credit = stream.send_credit
        assert credit is not None
        view = memoryview(chunk)
        offset = 0
        while offset < len(view):
            want = min(self.max_frame, len(view) - offset)
            granted = await credit.take(want, self.conn_credit)
            if granted == 0 or stream.closed:
                return False
            # The whole chunk in one frame (the usual case): no copy of it here.
            piece = chunk if granted == len(view) else view[offset : offset + granted]
            offset += granted
            last = end and offset >= len(view)
            await self.writable()
            if stream.closed:
                return False
            self.send_bytes(p.encode_data(p.BIN_REQ_BODY, stream.sid, piece, end=last))
        if end and not chunk:
            self.send_bytes(p.encode_data(p.BIN_REQ_BODY, stream.sid, b"", end=True))
        return not stream.closed

    def cancel(self, stream: Stream, reason: str) -> None:
        frame: dict[str, Any] = {
            "type": p.CANCEL,
            "lease_id": self.lease.lease_id,
            "rid": stream.rid,
        }
        if self.version == p.V2:
            frame["sid"] = stream.sid
            frame["reason"] = reason
        self.send_text(frame)

    # receiving -------------------------------------------------------------------------

    def _stream_for(self, frame: Mapping[str, Any]) -> Stream | None:
        sid = frame.get("sid")
        if isinstance(sid, int) and self.version == p.V2:
            return self.streams.get(sid)
        rid = frame.get("rid")
        return self.by_rid.get(rid) if isinstance(rid, str) else None

    def _queue_data(self, stream: Stream, data: bytes | memoryview, end: bool) -> None:
        if data:
            stream.buffered += len(data)
            self.relay.buffered += len(data)
        stream.events.put(("data", data, end))
        if (
            self.version == p.V1
            and stream.buffered > self.relay.settings.v1_stream_buffer
            and not stream.closed
            and stream not in self._holding
        ):
            # No flow control in v1: stop reading this WebSocket until the public client
            # catches up (bounded memory; the agent's other streams wait too). A client that
            # makes no progress for a while loses its stream instead of stalling the rest.
            stream.drained.clear()
            self._holding.add(stream)
            self._wire.hold()
            self.relay.spawn(self._hold_until_drained(stream))

    async def _hold_until_drained(self, stream: Stream) -> None:
        try:
            async with asyncio.timeout(min(self.relay.settings.stall_timeout, 10.0)):
                await stream.drained.wait()
        except TimeoutError:
            stream.events.put(("error", "stall", "public client too slow"))
            self.close_stream(stream)
        finally:
            self._holding.discard(stream)
            if not self._holding:
                self._wire.release()

    # the wire's sink: one call per message, from the protocol's data_received -----------

    def on_text(self, text: str) -> None:
        if self.closed or self._broken:
            return
        self.lease.last_seen = time.time()
        try:
            if self.version == p.V2 and len(text) > self.max_text:
                raise p.FrameError(
                    f"text frame of {len(text)} characters exceeds the negotiated "
                    f"limit of {self.max_text}"
                )
            self.handle_text(p.decode_text(text))
        except Exception as exc:
            self._fail_connection(exc)

    def on_binary(self, data: bytes) -> None:
        if self.closed or self._broken:
            return
        self.lease.last_seen = time.time()
        try:
            if len(data) > self.max_frame + p.HEADER_SIZE:
                raise p.FrameError(
                    f"binary frame of {len(data)} bytes exceeds the negotiated "
                    f"max_frame_bytes {self.max_frame}"
                )
            self.handle_binary(data)
        except Exception as exc:
            self._fail_connection(exc)

    def _fail_connection(self, exc: Exception) -> None:
        if isinstance(exc, p.FrameError):
            logger.warning(
                "closing agent connection of lease %s: %s", self.lease.lease_id, exc.message
            )
            code, reason = 1008, "protocol error"
        else:
            # A bug, not the agent's fault alone: say so once, close, fail its streams.
            logger.error(
                "closing agent connection of lease %s: unexpected error handling a frame",
                self.lease.lease_id,
                exc_info=exc,
            )
            code, reason = 1011, "internal error"
        self._broken = True  # the rest of this read is not handled
        self.fail_all("AGENT_GONE")
        self.relay.spawn(self.close(code, reason))

    def handle_text(self, frame: dict[str, Any]) -> None:  # noqa: C901 -- complexity 13 at most (issue 21 ratchet); split when next changed
        kind = frame["type"]
        if kind == p.RESP_HEADERS:
            stream = self._stream_for(frame)
            if stream is not None:
                stream.events.put(("headers", frame.get("status"), frame.get("headers")))
        elif kind == p.RESP_BODY:
            stream = self._stream_for(frame)
            data = p.b64decode(frame.get("chunk_b64"))
            if stream is not None:
                self._queue_data(stream, data, frame.get("eof") is True)
        elif kind == p.RESP_END:
            stream = self._stream_for(frame)
            if stream is not None:
                stream.events.put(("data", b"", True))
        elif kind == p.RESP_ERROR:
            stream = self._stream_for(frame)
            if stream is not None:
                code = text_field(frame.get("code"), 64) or "LOCAL_BAD_RESPONSE"
                stream.events.put(("error", code, text_field(frame.get("message"), 200)))
        elif kind == p.CANCEL:
            stream = self._stream_for(frame)
            self.relay.counters["agent_cancels"] += 1
            if stream is not None:
                stream.events.put(("error", "CANCELLED", text_field(frame.get("reason"), 200)))
        elif kind == p.GOAWAY:
            self.closing = True
            logger.info(
                "agent of lease %s sent GOAWAY (%s)",
                self.lease.lease_id,
                text_field(frame.get("reason"), 200),
            )
        elif kind == p.LEASE_RENEW and self.version == p.V2:
            ttl = frame.get("requested_ttl_seconds")
            valid = isinstance(ttl, int) and not isinstance(ttl, bool)
            self.relay.renew(self.lease, ttl if valid else None)
            self.send_text(self.relay.lease_state(self.lease, "active"))
        # Unknown frame types are ignored (forward compatibility).

    def handle_binary(self, data: bytes) -> None:
        if self.version != p.V2:
            raise p.FrameError("binary frame on a v1 connection")
        # A view: the payload goes to the public client without a copy of its own.
        kind, flags, sid, payload = p.decode_binary(memoryview(data))
        if kind == p.BIN_WINDOW_UPDATE:
            p.apply_window_update(sid, payload, self.conn_credit, self.streams)
            return
        if kind != p.BIN_RESP_BODY:
            return  # reserved / unknown: ignore
        size = len(payload)
        if not self.conn_inbound.received(size):
            raise p.FrameError("agent overran the connection window (FLOW_CONTROL_ERROR)")
        stream = self.streams.get(sid)
        if stream is None or stream.recv_window is None:
            if size:
                self._return_conn_credit(size)
            return
        if not stream.recv_window.received(size):
            stream.events.put(("error", "FLOW_CONTROL_ERROR", "stream window overrun"))
            return
        self._queue_data(stream, payload, bool(flags & p.FLAG_END))

    def fail_all(self, code: str) -> None:
        for stream in list(self.streams.values()):
            stream.events.put(("error", code, "agent disconnected"))
        self.conn_credit.close()
