"""The relay agent: dials out to the relay over a WebSocket and forwards requests locally.

It runs in its own thread with its own event loop (:class:`AgentThread`), so user code
that blocks the caller's loop cannot starve it. Per connection it sends ATTACH (offering
v2, falling back to v1 when the relay does not answer ``protocol_version: 2``), then turns
each REQ_HEADERS into a request to the local task app over a pooled keep-alive HTTP/1.1
connection (:class:`LocalHttp`, standard library only). Request bodies stream to the app
as they arrive and response bodies stream back as they are produced; in v2 both
directions are credit flow-controlled.

While running it renews the lease at two thirds of its TTL (over the WebSocket in v2, over
REST otherwise) and reconnects with exponential backoff and full jitter. When the relay no
longer knows the lease (the agent token is rejected, ATTACH is refused, the lease expired
or was revoked) it stops and reports the lease as lost, so the tunnel supervisor can rent
a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import random
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskapp.core.errors import TunnelAuthError, TunnelError, TunnelTimeoutError
from taskapp.core.extras import install_command
from taskapp.core.logs import get_logger
from taskapp.relay import protocol as p

__all__ = ["AgentConfig", "AgentThread", "LocalHttp", "RelayAgent"]

logger = get_logger("taskapp.tunnel.relay")

_END = object()


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """What one agent needs: the lease, where the app listens, and tuning."""

    lease_id: str
    agent_url: str
    agent_token: str = dataclasses.field(repr=False)
    local_host: str
    local_port: int
    expires_at: float
    ttl_seconds: int = 3600
    protocol: str = "auto"  # "auto" | "v1" | "v2"
    max_inflight: int = 64
    stream_window: int = p.DEFAULT_STREAM_WINDOW
    conn_window: int = p.DEFAULT_CONN_WINDOW
    max_frame: int = p.DEFAULT_FRAME_BYTES
    api_key: str | None = dataclasses.field(default=None, repr=False)
    ca_file: Path | None = None
    renew: bool = True
    reconnect_first: float = 0.5
    reconnect_max: float = 30.0
    open_timeout: float = 10.0
    drain_timeout: float = 3.0
    agent_id: str = "taskapp-agent"
    use_proxy: bool = True
    #: Renew over REST when the WebSocket cannot (v1, or while reconnecting).
    renew_rest: Callable[[], float] | None = dataclasses.field(default=None, repr=False)


# -- the local HTTP leg ------------------------------------------------------------------


class LocalResponseError(Exception):
    """The local app's answer could not be read (reset, bad status line, early EOF)."""


class _Conn:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


class LocalHttp:
    """A small keep-alive HTTP/1.1 client for one local origin (loopback).

    Much cheaper per request than a general client (RELAY.md measured httpx at 3-6 ms CPU
    per request in this role); speaks just what a task app behind uvicorn needs:
    Content-Length and chunked bodies both ways, read-until-close responses, 1xx skipped.
    """

    #: uvicorn closes idle keep-alive connections after 5 s; never reuse one that old.
    max_idle = 4.0

    def __init__(self, host: str, port: int, *, max_idle_conns: int = 32) -> None:
        self.host = host
        self.port = port
        self.max_idle_conns = max_idle_conns
        self._idle: list[_Conn] = []

    async def acquire(self, fresh: bool = False) -> tuple[_Conn, bool]:
        """A connection and whether it was reused."""
        now = time.monotonic()
        while self._idle and not fresh:
            conn = self._idle.pop()
            if now - conn.idle_since < self.max_idle and not conn.reader.at_eof():
                return conn, True
            conn.close()
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=256 * 1024)
        return _Conn(reader, writer), False

    def release(self, conn: _Conn, reusable: bool) -> None:
        if reusable and len(self._idle) < self.max_idle_conns:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    @staticmethod
    def request_head(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
        lines = [f"{method} {target} HTTP/1.1"]
        lines.extend(f"{name}: {value}" for name, value in headers)
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")

    @staticmethod
    async def read_head(reader: asyncio.StreamReader) -> tuple[int, list[tuple[str, str]], str]:
        """Status, headers and body mode (``none``/``length:N``/``chunked``/``close``)."""
        while True:
            try:
                raw = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                raise LocalResponseError("the local app closed the connection") from exc
            except asyncio.LimitOverrunError as exc:
                raise LocalResponseError("the local app sent oversized headers") from exc
            lines = raw.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
                raise LocalResponseError(f"bad status line {lines[0][:40]!r}")
            try:
                status = int(parts[1])
            except ValueError:
                raise LocalResponseError(f"bad status line {lines[0][:40]!r}") from None
            if 100 <= status < 200 and status != 101:
                continue  # 100 Continue / 103 Early Hints: the final answer follows
            headers: list[tuple[str, str]] = []
            length: int | None = None
            chunked = False
            close = parts[0] == "HTTP/1.0"
            for line in lines[1:]:
                if not line:
                    continue
                name, _, value = line.partition(":")
                name = name.strip().lower()
                value = value.strip()
                if name == "content-length":
                    try:
                        length = int(value)
                    except ValueError:
                        raise LocalResponseError("bad Content-Length") from None
                elif name == "transfer-encoding":
                    chunked = "chunked" in value.lower()
                elif name == "connection":
                    close = close or "close" in value.lower()
                headers.append((name, value))
            if chunked:
                mode = "chunked"
            elif length is not None:
                mode = f"length:{length}"
            else:
                mode = "close"
            if close and mode != "close":
                mode += ":close"
            return status, headers, mode


# -- the agent -------------------------------------------------------------------------


class _AgentStream:
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


class _LeaseLost(Exception):
    pass


class RelayAgent:
    """The agent's event-loop side. Use :class:`AgentThread` to run it."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.local = LocalHttp(config.local_host, config.local_port)
        self.version = p.V1
        self.ws: Any = None
        self.streams: dict[int, _AgentStream] = {}
        self.by_rid: dict[str, int] = {}
        self.ready = asyncio.Event()
        self.failed = asyncio.Event()
        self.stopping = asyncio.Event()
        self.idle = asyncio.Event()  # set while no request is in flight
        self.idle.set()
        self.lost_reason: str | None = None
        self.first_error: BaseException | None = None
        self.last_error: str = ""
        self.expires_at = config.expires_at
        self.connections = 0
        self.max_frame = config.max_frame
        self.stream_window = config.stream_window
        self.conn_window = config.conn_window
        self.conn_credit = p.Credit(0)
        self.conn_inbound = p.InboundWindow(config.conn_window)
        self._send_lock = asyncio.Lock()
        self._next_sid = 0
        self._goaway = False
        self._renew_task: asyncio.Task[None] | None = None

    # connection loop -------------------------------------------------------------------

    async def run(self) -> None:
        attempt = 0
        try:
            while not self.stopping.is_set():
                try:
                    await self._connect_once()
                    attempt = 0
                except _LeaseLost as exc:
                    self.lost_reason = str(exc)
                    logger.warning("relay lease %s lost: %s", self.config.lease_id, exc)
                    if self.first_error is None and not self.ready.is_set():
                        self.first_error = TunnelAuthError(
                            f"the relay refused the agent: {exc}. The lease was deleted or "
                            "expired, or the relay lost its state (restarted without "
                            "--state-file); retry, which rents a new lease",
                            backend="relay",
                        )
                        self.failed.set()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    logger.info("relay agent connection failed: %s", self.last_error)
                if self.stopping.is_set():
                    return
                if self._goaway:
                    self._goaway = False
                    delay = self.config.reconnect_first
                else:
                    cap = min(self.config.reconnect_max, self.config.reconnect_first * 2**attempt)
                    delay = random.uniform(0, cap)
                    attempt = min(attempt + 1, 16)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self.stopping.wait()
        finally:
            if self._renew_task is not None:
                self._renew_task.cancel()
            self.local.close()

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.config.agent_url.startswith("wss:"):
            return None
        context = ssl.create_default_context()
        if self.config.ca_file is not None:
            context.load_verify_locations(cafile=str(self.config.ca_file))
        return context

    async def _connect_once(self) -> None:
        try:
            from websockets.asyncio.client import connect
            from websockets.exceptions import InvalidStatus
        except ImportError:  # pragma: no cover - the backend checks this before starting
            raise TunnelError(
                "the relay tunnel needs the 'websockets' package: " + install_command("relay"),
                backend="relay",
            ) from None
        cfg = self.config
        kwargs: dict[str, Any] = {
            "additional_headers": {"Authorization": f"Bearer {cfg.agent_token}"},
            "compression": None,
            "max_size": 8 * 1024 * 1024,
            "max_queue": 64,
            "write_limit": 256 * 1024,
            "open_timeout": cfg.open_timeout,
            "close_timeout": 2,
            "ping_interval": 20,
            "ping_timeout": 20,
            "user_agent_header": "taskapp-relay-agent",
            # websockets logs handshake headers at DEBUG: route them through a logger that
            # redacts the (registered) agent token.
            "logger": get_logger("taskapp.tunnel.relay.websocket"),
        }
        context = self._ssl_context()
        if context is not None:
            kwargs["ssl"] = context
        if not cfg.use_proxy:
            kwargs["proxy"] = None
        try:
            ws = await connect(cfg.agent_url, **kwargs)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403, 404):
                raise _LeaseLost(f"agent token rejected (HTTP {status})") from None
            raise TunnelError(
                f"relay answered HTTP {status} to the agent", backend="relay"
            ) from None
        self.ws = ws
        try:
            await self._attach(ws)
            self.connections += 1
            await self._serve(ws)
        finally:
            self.ws = None
            await self._drop_streams()
            with contextlib.suppress(Exception):
                await ws.close()
            close_code = getattr(ws, "close_code", None)
            if close_code == 4404 or close_code == 4401:
                raise _LeaseLost(f"relay closed the agent connection ({close_code})")

    async def _attach(self, ws: Any) -> None:
        cfg = self.config
        versions = {"auto": [2, 1], "v2": [2, 1], "v1": [1]}.get(cfg.protocol, [2, 1])
        attach = {
            "type": p.ATTACH,
            "agent_id": cfg.agent_id,
            "leases": [
                {
                    "lease_id": cfg.lease_id,
                    "local_target": {"host": cfg.local_host, "port": cfg.local_port},
                }
            ],
            "capabilities": {
                "streaming": True,
                "max_inflight": cfg.max_inflight,
                "max_body_chunk_bytes": cfg.max_frame,
                "supports_cancel": True,
                "binary_frames": 2 in versions,
                "flow_control": {
                    "stream_window": cfg.stream_window,
                    "conn_window": cfg.conn_window,
                },
            },
            "protocol_versions": versions,
            "client": {"name": "taskapp", "version": _version()},
        }
        await ws.send(p.encode_text(attach))
        async with asyncio.timeout(cfg.open_timeout):
            while True:
                raw = await ws.recv()
                if isinstance(raw, str):
                    ack = p.decode_text(raw)
                    if ack["type"] == p.ATTACH_ACK:
                        break
        accepted = ack.get("accepted_leases")
        if isinstance(accepted, list) and cfg.lease_id not in accepted:
            raise _LeaseLost("the relay did not accept the lease in ATTACH_ACK")
        version = ack.get("protocol_version")
        self.version = p.V2 if version == p.V2 and 2 in versions else p.V1
        limits = ack.get("limits") if isinstance(ack.get("limits"), dict) else {}
        assert isinstance(limits, dict)
        self.stream_window = p.clamp_window(
            limits.get("stream_window"), cfg.stream_window, p.DEFAULT_CONN_WINDOW
        )
        self.conn_window = max(
            self.stream_window,
            p.clamp_window(limits.get("conn_window"), cfg.conn_window, 1 << 30),
        )
        frame_limit = limits.get("max_frame_bytes")
        if isinstance(frame_limit, int) and frame_limit >= 1024:
            self.max_frame = min(cfg.max_frame, frame_limit)
        self.conn_credit = p.Credit(self.conn_window)
        self.conn_inbound = p.InboundWindow(self.conn_window)
        for item in ack.get("leases") or []:
            if isinstance(item, dict) and item.get("lease_id") == cfg.lease_id:
                self._set_expiry(item.get("expires_at"))
        self._goaway = False
        self.ready.set()
        logger.info("relay agent attached lease %s (protocol v%d)", cfg.lease_id, self.version)
        if cfg.renew and self._renew_task is None:
            self._renew_task = asyncio.create_task(self._renew_forever())

    def _set_expiry(self, value: Any) -> None:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                from datetime import datetime

                self.expires_at = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()

    async def _serve(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for message in ws:
                if isinstance(message, str):
                    await self._on_text(p.decode_text(message))
                else:
                    await self._on_binary(message)
                if self.lost_reason:
                    raise _LeaseLost(self.lost_reason)
        except ConnectionClosed:
            pass

    async def _drop_streams(self) -> None:
        tasks = [s.task for s in self.streams.values() if s.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self.streams.clear()
        self.by_rid.clear()
        self.idle.set()
        self.conn_credit.close()

    # frames from the relay -------------------------------------------------------------

    async def _send_text(self, frame: dict[str, Any]) -> None:
        ws = self.ws
        if ws is None:
            return
        async with self._send_lock:
            await ws.send(p.encode_text(frame))

    async def _send_bytes(self, data: bytes) -> None:
        ws = self.ws
        if ws is None:
            return
        async with self._send_lock:
            await ws.send(data)

    async def _on_text(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == p.REQ_HEADERS:
            await self._open_stream(frame)
        elif kind == p.REQ_BODY:
            stream = self._by_rid(frame)
            if stream is not None:
                data = p.b64decode(frame.get("chunk_b64"))
                if data:
                    stream.body.put_nowait(data)
        elif kind == p.REQ_END:
            stream = self._by_rid(frame)
            if stream is not None:
                stream.body.put_nowait(_END)
        elif kind == p.CANCEL:
            stream = self._by_rid(frame)
            if stream is not None and stream.task is not None:
                stream.task.cancel()
        elif kind == p.GOAWAY:
            self._goaway = True
            logger.info(
                "relay sent GOAWAY (%s); reconnecting after in-flight requests", frame.get("reason")
            )
        elif kind == p.LEASE_STATE:
            self._set_expiry(frame.get("expires_at"))
            state = frame.get("state")
            if state in ("expired", "revoked"):
                self.lost_reason = f"lease {state}"
        # ATTACH_ACK repeats and unknown types are ignored.

    def _by_rid(self, frame: dict[str, Any]) -> _AgentStream | None:
        sid = frame.get("sid")
        if self.version == p.V2 and isinstance(sid, int):
            return self.streams.get(sid)
        rid = frame.get("rid")
        key = self.by_rid.get(rid) if isinstance(rid, str) else None
        return self.streams.get(key) if key is not None else None

    async def _on_binary(self, data: bytes) -> None:
        kind, flags, sid, payload = p.decode_binary(data)
        if kind == p.BIN_WINDOW_UPDATE:
            p.apply_window_update(sid, payload, self.conn_credit, self.streams)
            return
        if kind != p.BIN_REQ_BODY:
            return
        size = len(payload)
        if not self.conn_inbound.received(size):
            raise p.FrameError("relay overran the connection window")
        stream = self.streams.get(sid)
        if stream is None or stream.recv_window is None:
            await self._consumed(None, size)
            return
        if not stream.recv_window.received(size):
            raise p.FrameError("relay overran a stream window")
        if payload:
            stream.body.put_nowait(payload)
        if flags & p.FLAG_END:
            stream.body.put_nowait(_END)

    async def _consumed(self, stream: _AgentStream | None, amount: int) -> None:
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
        stream = _AgentStream(frame, sid, rid)
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

    async def _error(self, stream: _AgentStream, code: str, message: str) -> None:
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

    async def _fail(self, stream: _AgentStream, code: str, message: str) -> None:
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

    async def _run_stream(self, stream: _AgentStream) -> None:
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

    async def _forward(self, stream: _AgentStream) -> None:
        frame = stream.frame
        method = str(frame.get("method") or "GET").upper()
        path = str(frame.get("path") or "/")
        if not path.startswith("/"):
            path = "/" + path
        query = str(frame.get("query") or "")
        target = path + ("?" + query if query else "")
        if not method.isalpha() or any(c in target for c in " \r\n\t"):
            await self._error(stream, "BAD_REQUEST_FRAME", "bad method or path")
            return
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
            if first is _END:
                length = 0
        headers = p.local_request_headers(
            raw_headers,
            lease_id=stream.lease_id,
            rid=stream.rid,
            host=f"{self.config.local_host}:{self.config.local_port}",
            content_length=length,
        )
        if length is None:
            headers.append(("transfer-encoding", "chunked"))
        if self.config.api_key and not any(name == "x-api-key" for name, _ in headers):
            headers.append(("x-api-key", self.config.api_key))
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
            conn.writer.write(head)
            if not bodiless:
                writer_task = asyncio.create_task(self._write_body(stream, conn, length, first))
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

    async def _write_body(
        self, stream: _AgentStream, conn: _Conn, length: int | None, first: Any
    ) -> bool:
        """Stream the request body to the local app; True when it was written completely."""
        writer = conn.writer
        chunked = length is None
        written = 0
        item = first if first is not None else await stream.body.get()
        while item is not _END:
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

    async def _relay_response(
        self,
        stream: _AgentStream,
        conn: _Conn,
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
        await self._send_text(start)
        stream.headers_sent = True
        reader = conn.reader
        close = mode.endswith(":close")
        kind = mode.split(":")[0]
        frame_max = self.max_frame
        if kind == "none":
            await self._send_chunk(stream, b"", end=True)
            return not close
        if kind == "length":
            remaining = int(mode.split(":")[1])
            if remaining == 0:
                await self._send_chunk(stream, b"", end=True)
                return not close
            while remaining > 0:
                data = await reader.read(min(remaining, frame_max))
                if not data:
                    raise LocalResponseError("the local app ended the body early")
                remaining -= len(data)
                await self._send_chunk(stream, data, end=remaining == 0)
            return not close
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

    async def _send_chunk(self, stream: _AgentStream, data: bytes, *, end: bool) -> None:
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

    async def _renew_forever(self) -> None:
        while not self.stopping.is_set():
            remaining = self.expires_at - time.time()
            wait = max(1.0, remaining * 2 / 3) if remaining > 3 else max(0.2, remaining / 2)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.stopping.wait()
            if self.stopping.is_set():
                return
            try:
                await self._renew_once()
            except _LeaseLost as exc:
                self.lost_reason = str(exc)
                ws = self.ws
                if ws is not None:
                    with contextlib.suppress(Exception):
                        await ws.close(4404, "lease lost")
                else:
                    self.stopping.set()
                return
            except Exception as exc:
                logger.warning("renewing relay lease %s failed: %s", self.config.lease_id, exc)
                await asyncio.sleep(min(5.0, max(0.5, (self.expires_at - time.time()) / 4)))

    async def _renew_once(self) -> None:
        ttl = self.config.ttl_seconds
        if self.version == p.V2 and self.ws is not None:
            before = self.expires_at
            await self._send_text(
                {
                    "type": p.LEASE_RENEW,
                    "lease_id": self.config.lease_id,
                    "requested_ttl_seconds": ttl,
                }
            )
            # LEASE_STATE updates expires_at; wait briefly for it, else fall back to REST.
            for _ in range(50):
                await asyncio.sleep(0.02)
                if self.expires_at != before:
                    return
        rest = self.config.renew_rest
        if rest is None:
            return
        try:
            self.expires_at = await asyncio.to_thread(rest)
        except TunnelError as exc:
            if "404" in exc.message or isinstance(exc, TunnelAuthError):
                raise _LeaseLost("the relay no longer knows the lease") from None
            raise

    async def shutdown(self) -> None:
        """GOAWAY, let in-flight requests finish (bounded), then close."""
        self.stopping.set()
        ws = self.ws
        if ws is None:
            return
        if self.version == p.V2:
            with contextlib.suppress(Exception):
                await self._send_text(
                    {
                        "type": p.GOAWAY,
                        "reason": "agent_shutdown",
                        "last_sid": 0,
                        "retry_after_ms": 0,
                    }
                )
        if self.streams:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.drain_timeout):
                    await self.idle.wait()
        with contextlib.suppress(Exception):
            await ws.close(1000, "agent shutting down")


def _version() -> str:
    try:
        from taskapp._version import __version__

        return str(__version__)
    except Exception:  # pragma: no cover
        return "0"


# -- the thread ------------------------------------------------------------------------


class AgentThread:
    """Runs a :class:`RelayAgent` in its own thread and event loop.

    ``start(timeout)`` returns once ATTACH_ACK arrived (or raises a TunnelError);
    ``stop()`` is idempotent and bounded; ``lost`` is set when the lease is gone for good.
    """

    def __init__(self, config: AgentConfig, *, name: str = "taskapp-relay-agent") -> None:
        self.config = config
        self.agent: RelayAgent | None = None
        self.lost = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    @property
    def lost_reason(self) -> str | None:
        return self.agent.lost_reason if self.agent is not None else None

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _main(self) -> None:
        factory: Any = None
        with contextlib.suppress(ImportError):
            # importlib: mypy on a plain install (no uvloop) must not flag the import.
            factory = importlib.import_module("uvloop").new_event_loop
        with (
            asyncio.Runner(loop_factory=factory) as runner,
            contextlib.suppress(asyncio.CancelledError),
        ):
            runner.run(self._amain())

    async def _amain(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.agent = RelayAgent(self.config)
        self._task = asyncio.current_task()
        self._started.set()
        try:
            await self.agent.run()
        finally:
            if self.agent.lost_reason:
                self.lost.set()

    def start(self, timeout: float) -> None:
        self._thread.start()
        self._started.wait(5)
        agent, loop = self.agent, self._loop
        assert agent is not None
        assert loop is not None
        ready = asyncio.run_coroutine_threadsafe(_wait_ready(agent, timeout), loop)
        with contextlib.suppress(TimeoutError):
            ready.result(timeout + 1)
        if agent.ready.is_set():
            return
        self.stop()
        if agent.first_error is not None:
            raise agent.first_error
        last = agent.last_error or "no answer"
        raise TunnelTimeoutError(
            f"the relay agent did not attach within {timeout:g}s (last error: {last}); "
            f"check that the relay at {self.config.agent_url} is reachable",
            backend="relay",
        )

    def stop(self, timeout: float = 5.0) -> None:
        loop, agent = self._loop, self.agent
        if loop is not None and agent is not None and self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(agent.shutdown(), loop)
            with contextlib.suppress(Exception):
                future.result(timeout)
            task = self._task
            if task is not None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(task.cancel)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)


async def _wait_ready(agent: RelayAgent, seconds: float) -> None:
    ready = asyncio.ensure_future(agent.ready.wait())
    failed = asyncio.ensure_future(agent.failed.wait())
    try:
        await asyncio.wait({ready, failed}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ready.cancel()
        failed.cancel()
