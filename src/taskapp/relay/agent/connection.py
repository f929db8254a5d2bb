"""The relay agent's connection half: dial the relay, ATTACH, dispatch frames, renew, reconnect.

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
import random
import ssl
import time
from typing import Any

from taskapp.core.errors import TunnelAuthError, TunnelError
from taskapp.core.importing import install_command
from taskapp.core.logs import get_logger
from taskapp.relay import protocol as p
from taskapp.relay.agent.config import AgentConfig
from taskapp.relay.agent.forward import END_OF_BODY, AgentStream
from taskapp.relay.agent.in_process import InProcessForwarding
from taskapp.relay.agent.local_http import LocalHttp
from taskapp.relay.coalesce import coalescing

__all__ = ["RelayAgent"]

logger = get_logger("taskapp.tunnel.relay")


class _LeaseLost(Exception):
    pass


class RelayAgent(InProcessForwarding):
    """The agent's event-loop side. Use :class:`AgentThread` to run it."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.local = LocalHttp(config.local_host, config.local_port)
        self.version = p.V1
        self.ws: Any = None
        self.streams: dict[int, AgentStream] = {}
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
        self._open_state: Any = None  # websockets' State.OPEN, set when connecting
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
            from websockets.asyncio.client import ClientConnection, connect
            from websockets.exceptions import InvalidStatus
            from websockets.protocol import State
        except ImportError:  # pragma: no cover - the backend checks this before starting
            raise TunnelError(
                "the relay tunnel needs the 'websockets' package: " + install_command("relay"),
                backend="relay",
            ) from None
        self._open_state = State.OPEN
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
            # The frames of one loop step leave in one send() (coalesce.py).
            "create_connection": coalescing(ClientConnection),
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
        await self._send(p.encode_text(frame))

    async def _send_bytes(self, data: bytes) -> None:
        await self._send(data)

    async def _send(self, message: str | bytes) -> None:
        """One frame on the socket at once, so frames leave in call order without a lock;
        then wait while the socket's buffer is above its limit (back-pressure)."""
        ws = self.ws
        if ws is None:
            return
        protocol = ws.protocol
        if protocol.state is not self._open_state:
            await ws.send(message)  # closing or closed: websockets raises ConnectionClosed
            return
        if isinstance(message, str):
            protocol.send_text(message.encode())
        else:
            protocol.send_binary(message)
        ws.send_data()
        if ws.paused:
            await ws.drain()

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
                stream.body.put_nowait(END_OF_BODY)
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

    def _by_rid(self, frame: dict[str, Any]) -> AgentStream | None:
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
            stream.body.put_nowait(END_OF_BODY)

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
