"""The relay server: lease REST API, agent WebSocket and public ingress, as one ASGI app.

::

    POST   /api/v1/synthtunnel/leases                     admin   create a lease
    GET    /api/v1/synthtunnel/leases                     admin   list leases
    GET    /api/v1/synthtunnel/leases/{id}                admin or the lease's agent token
    POST   /api/v1/synthtunnel/leases/{id}/renew          admin or agent token
    POST   /api/v1/synthtunnel/leases/{id}/worker-token   admin or agent token (rotate)
    DELETE /api/v1/synthtunnel/leases/{id}                admin or agent token
    WS     /api/v1/synthtunnel/agent                      the lease's agent token
    *      /s/rt_<route_token>/<path>                     the lease's worker token
    GET    /healthz                                       open
    GET    /metrics                                       admin (Prometheus text)

Tokens are 256-bit random strings; the relay keeps only their SHA-256 and compares in
constant time. :func:`create_relay_app` builds the app, :class:`RelayServer` runs it on
uvicorn with WebSocket compression off and drains gracefully on SIGTERM, and
:func:`start_relay_thread` runs one in a background thread (tests, benchmarks, embedding).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import re
import secrets
import signal
import socket
import stat
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from taskapp.core.errors import ConfigurationError, ServerStartError, error_body
from taskapp.core.extras import install_command
from taskapp.core.logs import get_logger
from taskapp.core.ports import listen_tcp
from taskapp.core.secrets import fingerprint
from taskapp.relay import protocol as p

__all__ = [
    "AdminToken",
    "RelayApp",
    "RelayServer",
    "RelaySettings",
    "RunningRelay",
    "create_relay_app",
    "load_admin_tokens",
    "start_relay_thread",
]

logger = get_logger("taskapp.relay")
access_logger = get_logger("taskapp.relay.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ADMIN_TOKEN_ENV = "TASKAPP_RELAY_ADMIN_TOKEN"  # noqa: S105 - a variable name
_MIN_TOKEN_LEN = 16
_MAX_REST_BODY = 64 * 1024
#: The largest v1 message accepted from an agent (tungstenite's default limit).
V1_MESSAGE_CAP = 64 * 1024 * 1024


# -- settings and admin tokens -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AdminToken:
    """An admin token as the relay keeps it: a name for logs and the SHA-256, never the token."""

    name: str
    hash: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class RelaySettings:
    """Everything ``taskapp relay serve`` configures. Sizes in bytes, times in seconds."""

    public_url: str
    admin_tokens: tuple[AdminToken, ...]
    host: str = "127.0.0.1"
    port: int = 8787
    protocols: tuple[int, ...] = p.SUPPORTED_VERSIONS
    max_leases: int = 100
    max_inflight: int = 128
    max_request_bytes: int = 100 * 1024 * 1024
    max_response_bytes: int = 200_000_000
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    default_ttl: int = 3600
    max_ttl: int = 86400
    max_deadline: float = 600.0
    stall_timeout: float = 120.0
    memory_budget: int = 512 * 1024 * 1024
    stream_window: int = p.DEFAULT_STREAM_WINDOW
    conn_window: int = p.DEFAULT_CONN_WINDOW
    max_frame_bytes: int = p.DEFAULT_FRAME_BYTES
    #: v1 has no flow control: above this many buffered bytes for one stream the relay
    #: stops reading that agent's WebSocket (bounded memory, head-of-line blocking).
    v1_stream_buffer: int = 4 * 1024 * 1024
    reattach_grace: float = 120.0
    worker_token_grace: float = 60.0
    attach_timeout: float = 10.0
    drain_timeout: float = 10.0
    sweep_interval: float = 1.0
    state_file: Path | None = None
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    trusted_proxies: tuple[str, ...] = ("127.0.0.1",)
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    retry_after: int = 1

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.public_url)
        if self.public_url == "auto":
            pass  # the address the relay binds, filled in once bound
        elif parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigurationError(
                f"--public-url must be an absolute http(s) URL, got {self.public_url!r}"
            )
        if not self.admin_tokens:
            raise ConfigurationError(
                "the relay needs at least one admin token: pass --admin-token-file FILE "
                f"(one token per line, mode 0600) or set {ADMIN_TOKEN_ENV}"
            )
        if not set(self.protocols) <= set(p.SUPPORTED_VERSIONS) or not self.protocols:
            raise ConfigurationError(f"--protocols must be a subset of 1,2, got {self.protocols}")
        if not p.MIN_WINDOW <= self.stream_window <= self.conn_window:
            raise ConfigurationError(
                "need 64 KiB <= stream window <= connection window, got "
                f"{self.stream_window} and {self.conn_window}"
            )
        if not 1024 <= self.max_frame_bytes <= p.MAX_FRAME_BYTES:
            raise ConfigurationError(
                f"max frame bytes must be in [1024, {p.MAX_FRAME_BYTES}], "
                f"got {self.max_frame_bytes}"
            )
        for name in ("max_inflight", "max_leases", "default_ttl", "max_ttl"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{name} must be positive")
        if self.default_ttl > self.max_ttl:
            raise ConfigurationError("--default-ttl cannot exceed --max-ttl")

    @property
    def public_base(self) -> str:
        return self.public_url.rstrip("/")

    @property
    def agent_url(self) -> str:
        parts = urllib.parse.urlsplit(self.public_base)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path + p.AGENT_PATH, "", ""))

    @property
    def ws_max_size(self) -> int:
        """The largest WebSocket message accepted from an agent.

        v1 agents size RESP_BODY chunks freely (the Rust agent sends one per upstream
        chunk: over 1 MiB seen under load), so a v1 message may carry the base64 (4/3) of a
        whole response up to ``max_response_bytes``, capped at 64 MiB (tungstenite's own
        default). v2 frames are held to the negotiated size per session (close 1008).
        """
        v1_body = math.ceil(self.max_response_bytes * 4 / 3) + 64 * 1024
        v2_frame = math.ceil(self.max_frame_bytes * 4 / 3) + 4096
        return max(min(v1_body, V1_MESSAGE_CAP), v2_frame, 1024 * 1024)


def load_admin_tokens(
    path: Path | None,
    *,
    allow_insecure_permissions: bool = False,
    env: Mapping[str, str] | None = None,
) -> tuple[AdminToken, ...]:
    """Read admin tokens from ``path`` (one per line, optional ``name:`` prefix, ``#``
    comments) or, without a path, from ``TASKAPP_RELAY_ADMIN_TOKEN``.

    The file must not be readable by group or others (mode 0600) unless
    ``allow_insecure_permissions``. Only hashes are returned.
    """
    environ = os.environ if env is None else env
    raw_lines: list[str]
    origin: str
    if path is not None:
        path = path.expanduser()
        try:
            st = path.stat()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the admin token file {str(path)!r}: {exc.strerror}"
            ) from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO) and not allow_insecure_permissions:
            raise ConfigurationError(
                f"the admin token file {str(path)!r} is accessible by other users (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); run 'chmod 600 {path}' "
                "(or pass --insecure-permissions)"
            )
        raw_lines = path.read_text(encoding="utf-8").splitlines()
        origin = f"file {str(path)!r}"
    else:
        value = environ.get(ADMIN_TOKEN_ENV, "")
        raw_lines = [value] if value.strip() else []
        origin = ADMIN_TOKEN_ENV
    tokens: list[AdminToken] = []
    for number, line in enumerate(raw_lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.partition(":")
        if not sep or not name.isidentifier():
            name, token = f"token{number}", line
        token = token.strip()
        if len(token) < _MIN_TOKEN_LEN:
            raise ConfigurationError(
                f"admin token on line {number} of {origin} is shorter than {_MIN_TOKEN_LEN} "
                "characters; generate one with 'taskapp relay token'"
            )
        tokens.append(AdminToken(name=name, hash=p.token_hash(token)))
    return tuple(tokens)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def _text(value: Any, limit: int) -> str:
    """A string field of a peer's JSON, bounded; anything else (nested junk) is ""."""
    if isinstance(value, str):
        return value[:limit]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)[:limit]
    return ""


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


# -- leases ----------------------------------------------------------------------------


@dataclasses.dataclass
class Lease:
    lease_id: str
    route_token: str
    agent_hash: str = dataclasses.field(repr=False)
    worker_hash: str = dataclasses.field(repr=False)
    expires_at: float
    created_at: float
    admin_name: str = ""
    client_instance_id: str = ""
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    prev_worker_hash: str = dataclasses.field(default="", repr=False)
    prev_valid_until: float = 0.0
    detached_since: float | None = None
    session: AgentSession | None = dataclasses.field(default=None, repr=False)
    inflight: int = 0
    requests: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    expiring_sent: bool = False
    #: Wall-clock time of the agent's last frame (or attach); 0.0: never connected.
    last_seen: float = 0.0

    def worker_matches(self, candidate: str | None, now: float) -> bool:
        hashes = [self.worker_hash]
        if self.prev_worker_hash and now < self.prev_valid_until:
            hashes.append(self.prev_worker_hash)
        return p.token_matches(candidate, hashes)

    def persistent(self) -> dict[str, Any]:
        return {
            "lease_id": self.lease_id,
            "route_token": self.route_token,
            "agent_hash": self.agent_hash,
            "worker_hash": self.worker_hash,
            "prev_worker_hash": self.prev_worker_hash,
            "prev_valid_until": self.prev_valid_until,
            "expires_at": self.expires_at,
            "created_at": self.created_at,
            "admin_name": self.admin_name,
            "client_instance_id": self.client_instance_id,
            "metadata": self.metadata,
        }


class LeaseStore:
    """Leases by id, route token and agent-token hash; optionally persisted (hashes only)."""

    def __init__(self, state_file: Path | None) -> None:
        self.by_id: dict[str, Lease] = {}
        self.by_route: dict[str, Lease] = {}
        self.by_agent: dict[str, Lease] = {}
        self.state_file = state_file

    def add(self, lease: Lease) -> None:
        self.by_id[lease.lease_id] = lease
        self.by_route[lease.route_token] = lease
        self.by_agent[lease.agent_hash] = lease

    def remove(self, lease: Lease) -> None:
        self.by_id.pop(lease.lease_id, None)
        self.by_route.pop(lease.route_token, None)
        self.by_agent.pop(lease.agent_hash, None)

    def load(self) -> int:
        if self.state_file is None or not self.state_file.exists():
            return 0
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
            records = data["leases"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring unreadable state file %s: %s", self.state_file, exc)
            return 0
        now = time.time()
        count = 0
        for record in records:
            try:
                lease = Lease(
                    lease_id=str(record["lease_id"]),
                    route_token=str(record["route_token"]),
                    agent_hash=str(record["agent_hash"]),
                    worker_hash=str(record["worker_hash"]),
                    prev_worker_hash=str(record.get("prev_worker_hash", "")),
                    prev_valid_until=float(record.get("prev_valid_until", 0.0)),
                    expires_at=float(record["expires_at"]),
                    created_at=float(record.get("created_at", now)),
                    admin_name=str(record.get("admin_name", "")),
                    client_instance_id=str(record.get("client_instance_id", "")),
                    metadata=dict(record.get("metadata") or {}),
                    detached_since=time.monotonic(),
                )
            except (KeyError, TypeError, ValueError):
                continue
            if lease.expires_at > now:
                self.add(lease)
                count += 1
        return count

    def prepare(self) -> None:
        """Make sure the state file can be written, before the relay takes any lease.

        A missing directory is created (mode 0700); anything else that prevents writing
        raises :class:`ConfigurationError` naming the path, so the relay refuses to start
        instead of answering every lease request with an error.
        """
        path = self.state_file
        if path is None:
            return
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Probe with the temporary file save() writes (the state file itself, which
            # may hold leases to restore, is left alone).
            probe = path.with_name(path.name + ".tmp")
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
            probe.unlink()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot write the relay's --state-file {str(path)!r}: "
                f"{exc.strerror or exc}; pass a path in a writable directory"
            ) from None

    def save(self) -> None:
        """Persist the leases (hashes only). A failure is logged, never raised: the relay
        keeps serving from memory; only a restart would lose the leases."""
        if self.state_file is None:
            return
        try:
            self._write()
        except OSError as exc:
            logger.error(
                "cannot write the state file %s (%s); leases are kept in memory only",
                self.state_file,
                exc.strerror or exc,
            )

    def _write(self) -> None:
        assert self.state_file is not None
        payload = {"version": 1, "leases": [lease.persistent() for lease in self.by_id.values()]}
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle)
        os.replace(tmp, self.state_file)


# -- streams and agent sessions ----------------------------------------------------------


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
        self.closed = False
        self.drained = asyncio.Event()
        self.drained.set()
        self.send_credit: p.Credit | None = None
        self.recv_window: p.InboundWindow | None = None
        if session.version == p.V2:
            self.send_credit = p.Credit(session.stream_window)
            self.recv_window = p.InboundWindow(session.stream_window)


class AgentSession:
    """One agent WebSocket: frames in, frames out, the streams it carries."""

    _ids = itertools.count(1)

    def __init__(self, relay: RelayApp, lease: Lease, send: Send, version: int) -> None:
        settings = relay.settings
        self.relay = relay
        self.lease = lease
        self._send = send
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
        self._lock = asyncio.Lock()
        self.idle = asyncio.Event()  # set while the session carries no stream
        self.idle.set()
        self._close_code: int | None = None

    # sending ---------------------------------------------------------------------------

    async def send_text(self, frame: Mapping[str, Any]) -> None:
        await self._write({"type": "websocket.send", "text": p.encode_text(frame)})

    async def send_bytes(self, data: bytes) -> None:
        await self._write({"type": "websocket.send", "bytes": data})

    async def _write(self, message: Message) -> None:
        if self.closed:
            return
        try:
            async with self._lock:
                await self._send(message)
        except Exception:
            # The connection is gone; the reader loop fails the streams it carried.
            self.closed = True

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed:
            return
        self._close_code = code
        self.closed = True
        with contextlib.suppress(Exception):
            async with self._lock:
                await self._send({"type": "websocket.close", "code": code, "reason": reason})

    async def goaway(self, reason: str, retry_after_ms: int = 1000) -> None:
        self.closing = True
        if self.version == p.V2:
            last = max(self.streams, default=0)
            await self.send_text(
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
            self.relay.spawn(self.send_bytes(p.encode_window_update(0, increment)))

    async def delivered(self, stream: Stream, amount: int) -> None:
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
            await self.send_bytes(p.encode_window_update(stream.sid, increment))
        conn_increment = self.conn_inbound.consumed(amount)
        if conn_increment:
            await self.send_bytes(p.encode_window_update(0, conn_increment))

    async def send_request_body(self, stream: Stream, chunk: bytes, end: bool) -> bool:
        """Forward request bytes to the agent; False when the stream ended meanwhile."""
        if self.version == p.V1:
            lease_id = self.lease.lease_id
            step = self.v1_chunk
            for offset in range(0, len(chunk), step):
                await self.send_text(
                    {
                        "type": p.REQ_BODY,
                        "lease_id": lease_id,
                        "rid": stream.rid,
                        "chunk_b64": p.b64encode(chunk[offset : offset + step]),
                    }
                )
            if end:
                await self.send_text({"type": p.REQ_END, "lease_id": lease_id, "rid": stream.rid})
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
            piece = bytes(view[offset : offset + granted])
            offset += granted
            last = end and offset >= len(view)
            await self.send_bytes(p.encode_data(p.BIN_REQ_BODY, stream.sid, piece, end=last))
        if end and not chunk:
            await self.send_bytes(p.encode_data(p.BIN_REQ_BODY, stream.sid, b"", end=True))
        return not stream.closed

    async def cancel(self, stream: Stream, reason: str) -> None:
        frame: dict[str, Any] = {
            "type": p.CANCEL,
            "lease_id": self.lease.lease_id,
            "rid": stream.rid,
        }
        if self.version == p.V2:
            frame["sid"] = stream.sid
            frame["reason"] = reason
        with contextlib.suppress(Exception):
            await self.send_text(frame)

    # receiving -------------------------------------------------------------------------

    def _stream_for(self, frame: Mapping[str, Any]) -> Stream | None:
        sid = frame.get("sid")
        if isinstance(sid, int) and self.version == p.V2:
            return self.streams.get(sid)
        rid = frame.get("rid")
        return self.by_rid.get(rid) if isinstance(rid, str) else None

    async def _queue_data(self, stream: Stream, data: bytes, end: bool) -> None:
        if data:
            stream.buffered += len(data)
            self.relay.buffered += len(data)
        stream.events.put(("data", data, end))
        if (
            self.version == p.V1
            and stream.buffered > self.relay.settings.v1_stream_buffer
            and not stream.closed
        ):
            # No flow control in v1: stop reading this WebSocket until the public client
            # catches up (bounded memory; the agent's other streams wait too). A client that
            # makes no progress for a while loses its stream instead of stalling the rest.
            stream.drained.clear()
            wait = min(self.relay.settings.stall_timeout, 10.0)
            try:
                await asyncio.wait_for(stream.drained.wait(), wait)
            except TimeoutError:
                stream.events.put(("error", "stall", "public client too slow"))
                self.close_stream(stream)

    async def handle_text(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == p.RESP_HEADERS:
            stream = self._stream_for(frame)
            if stream is not None:
                stream.events.put(("headers", frame.get("status"), frame.get("headers")))
        elif kind == p.RESP_BODY:
            stream = self._stream_for(frame)
            data = p.b64decode(frame.get("chunk_b64"))
            if stream is not None:
                await self._queue_data(stream, data, frame.get("eof") is True)
        elif kind == p.RESP_END:
            stream = self._stream_for(frame)
            if stream is not None:
                stream.events.put(("data", b"", True))
        elif kind == p.RESP_ERROR:
            stream = self._stream_for(frame)
            if stream is not None:
                code = _text(frame.get("code"), 64) or "LOCAL_BAD_RESPONSE"
                stream.events.put(("error", code, _text(frame.get("message"), 200)))
        elif kind == p.CANCEL:
            stream = self._stream_for(frame)
            self.relay.counters["agent_cancels"] += 1
            if stream is not None:
                stream.events.put(("error", "CANCELLED", _text(frame.get("reason"), 200)))
        elif kind == p.GOAWAY:
            self.closing = True
            logger.info(
                "agent of lease %s sent GOAWAY (%s)",
                self.lease.lease_id,
                _text(frame.get("reason"), 200),
            )
        elif kind == p.LEASE_RENEW and self.version == p.V2:
            ttl = frame.get("requested_ttl_seconds")
            valid = isinstance(ttl, int) and not isinstance(ttl, bool)
            self.relay.renew(self.lease, ttl if valid else None)
            await self.send_text(self.relay.lease_state(self.lease, "active"))
        # Unknown frame types are ignored (forward compatibility).

    async def handle_binary(self, data: bytes) -> None:
        if self.version != p.V2:
            raise p.FrameError("binary frame on a v1 connection")
        kind, flags, sid, payload = p.decode_binary(data)
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
        await self._queue_data(stream, payload, bool(flags & p.FLAG_END))

    def fail_all(self, code: str) -> None:
        for stream in list(self.streams.values()):
            stream.events.put(("error", code, "agent disconnected"))
        self.conn_credit.close()


# -- the ASGI app ----------------------------------------------------------------------


#: What each relay error means for the caller, and what to do (the envelope's message).
ERROR_MESSAGES: dict[str, str] = {
    "unauthorized": (
        "missing or wrong token: send the lease's worker token in X-SynthTunnel-Worker-Token "
        "(or Authorization: Bearer) for /s/rt_..., an admin token for the lease API"
    ),
    "not_found": "no such lease or route (it expired, was deleted, or the URL is mistyped)",
    "headers_too_large": "the request headers exceed the relay's --max-header-bytes",
    "request_too_large": "the request body exceeds the relay's --max-request-bytes",
    "no_agent": "the task app's agent is not connected to the relay; retry shortly",
    "relay_draining": "the relay is shutting down; retry shortly",
    "too_many_inflight": "too many requests in flight for this lease; retry shortly",
    "relay_memory_budget": "the relay's memory budget is used up; retry shortly",
    "gateway_timeout_deadline": "the task app did not answer within the request deadline",
    "gateway_timeout_stall": "the task app stopped sending for longer than the stall timeout",
    "LOCAL_BAD_RESPONSE": "the task app's agent sent a response the relay cannot forward",
    "AGENT_GONE": "the task app's agent disconnected before answering",
    "LEASE_GONE": "the lease ended before the task app answered",
}


def _error_payload(code: str, message: str = "") -> dict[str, Any]:
    """The task app's error envelope, for the relay's own errors."""
    return error_body(code, message or ERROR_MESSAGES.get(code) or code.replace("_", " ").lower())


def _json_body(
    status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = json.dumps(payload, separators=(",", ":")).encode()
    out = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
    ]
    return status, out + (headers or []), body


async def _respond(
    send: Send,
    status: int,
    code: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    message: str = "",
) -> None:
    status, out, body = _json_body(status, _error_payload(code, message), headers)
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})


def _bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"authorization":
            text = value.decode("latin-1").strip()
            if text[:7].lower() == "bearer ":
                return text[7:].strip() or None
    return None


class RelayApp:
    """The relay as an ASGI 3 app (HTTP + WebSocket + lifespan)."""

    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self.store = LeaseStore(settings.state_file)
        self.buffered = 0
        self.draining = False
        self.counters: dict[str, int] = {
            "requests": 0,
            "bytes_in": 0,
            "bytes_out": 0,
            "leases_created": 0,
            "agent_connects": 0,
            "unauthorized": 0,
            "rejected_503": 0,
            "timeouts_504": 0,
            "agent_cancels": 0,
        }
        self.status_counts: dict[int, int] = {}
        self.active_streams = 0
        self.idle = asyncio.Event()  # set while no public request is in flight
        self.idle.set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        parts = urllib.parse.urlsplit(settings.public_base)
        self._proto = parts.scheme
        self._host = parts.netloc
        self._base_path = parts.path.rstrip("/")
        self._router: Any = None

    # helpers ---------------------------------------------------------------------------

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def admin_name(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        token = _bearer(headers)
        if not token:
            return None
        digest = p.token_hash(token)
        found: str | None = None
        for admin in self.settings.admin_tokens:
            if secrets.compare_digest(digest, admin.hash) and found is None:
                found = admin.name
        return found

    def agent_of(self, headers: list[tuple[bytes, bytes]], lease: Lease) -> bool:
        token = _bearer(headers)
        return token is not None and p.token_matches(token, [lease.agent_hash])

    def renew(self, lease: Lease, ttl: int | None) -> None:
        ttl = self.settings.default_ttl if not ttl or ttl <= 0 else min(ttl, self.settings.max_ttl)
        lease.expires_at = time.time() + ttl
        lease.expiring_sent = False
        self.store.save()

    def lease_state(self, lease: Lease, state: str, reason: str = "") -> dict[str, Any]:
        remaining = max(0.0, lease.expires_at - time.time())
        return {
            "type": p.LEASE_STATE,
            "lease_id": lease.lease_id,
            "state": state,
            "expires_at": _iso(lease.expires_at),
            "renew_after_s": int(remaining * 2 / 3),
            "reason": reason,
        }

    def lease_json(self, lease: Lease) -> dict[str, Any]:
        session = lease.session
        return {
            "lease_id": lease.lease_id,
            "route_token": lease.route_token,
            "public_url": self.public_url_of(lease),
            "expires_at": _iso(lease.expires_at),
            "state": "active" if session is not None else "detached",
            "agent_connected": session is not None,
            # synth-ai's LeaseStatusResponse names
            "status": "active" if session is not None else "pending",
            "connected": session is not None,
            "last_seen_at": _iso(lease.last_seen) if lease.last_seen else None,
            "protocol_version": session.version if session is not None else None,
            "inflight": lease.inflight,
            "requests": lease.requests,
            "bytes_in": lease.bytes_in,
            "bytes_out": lease.bytes_out,
            "buffered_bytes": sum(s.buffered for s in session.streams.values()) if session else 0,
        }

    def public_url_of(self, lease: Lease) -> str:
        return f"{self.settings.public_base}{p.INGRESS_PREFIX}{lease.route_token}"

    def limits(self) -> dict[str, Any]:
        s = self.settings
        return {
            "max_inflight": s.max_inflight,
            "max_request_bytes": s.max_request_bytes,
            "max_response_bytes": s.max_response_bytes,
            "max_body_chunk_bytes": s.max_frame_bytes,
            "max_frame_bytes": s.max_frame_bytes,
            "max_header_bytes": s.max_header_bytes,
            "max_deadline_ms": int(s.max_deadline * 1000),
            "stall_timeout_ms": int(s.stall_timeout * 1000),
            "stream_window": s.stream_window,
            "conn_window": s.conn_window,
            # synth-ai's LeaseLimits names
            "max_request_duration_seconds": int(s.max_deadline),
            "idle_disconnect_seconds": int(s.stall_timeout),
            "resume_window_seconds": int(s.reattach_grace),
        }

    def heartbeat(self) -> dict[str, Any]:
        return {
            "interval_s": self.settings.ping_interval,
            "timeout_s": self.settings.ping_timeout,
            # synth-ai's LeaseHeartbeat names (WebSocket pings; nothing to POST)
            "required": False,
            "recommended_interval_seconds": int(self.settings.ping_interval),
        }

    # ASGI entry ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            raw_path = scope.get("raw_path") or scope["path"].encode()
            prefix = (self._base_path + p.INGRESS_PREFIX).encode()
            if raw_path.startswith(prefix):
                await self.ingress(scope, receive, send, raw_path[len(prefix) :])
                return
            await self._rest(scope, receive, send)
        elif kind == "websocket":
            if scope["path"] == self._base_path + p.AGENT_PATH:
                await self.agent_socket(scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1008})
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        loaded = self.store.load()
        self.store.prepare()
        if loaded:
            logger.info("restored %d lease(s) from %s", loaded, self.settings.state_file)
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def shutdown(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(BaseException):
                await self._sweeper
        for lease in list(self.store.by_id.values()):
            if lease.session is not None:
                await lease.session.close(1012, "relay shutting down")
        for task in list(self._tasks):
            task.cancel()

    async def drain(self) -> None:
        """Stop taking requests, GOAWAY every agent, wait for in-flight requests (bounded)."""
        self.draining = True
        sessions = [lease.session for lease in self.store.by_id.values() if lease.session]
        retry_ms = int(self.settings.retry_after * 1000)
        for session in sessions:
            with contextlib.suppress(Exception):
                await session.goaway("relay_shutdown", retry_ms)
        if self.active_streams:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.drain_timeout):
                    await self.idle.wait()
        if self.active_streams:
            logger.warning("drain: %d request(s) still running; closing", self.active_streams)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval)
            try:
                await self.sweep()
            except Exception:
                logger.exception("lease sweep failed")

    async def sweep(self) -> None:
        now = time.time()
        mono = time.monotonic()
        changed = False
        for lease in list(self.store.by_id.values()):
            session = lease.session
            if lease.expires_at <= now:
                logger.info("lease %s expired", lease.lease_id)
                await self.end_lease(lease, "expired")
                changed = True
            elif (
                session is None
                and lease.detached_since is not None
                and mono - lease.detached_since > self.settings.reattach_grace
            ):
                logger.info(
                    "lease %s removed: no agent for %.0fs",
                    lease.lease_id,
                    self.settings.reattach_grace,
                )
                await self.end_lease(lease, "abandoned")
                changed = True
            elif (
                session is not None
                and session.version == p.V2
                and not lease.expiring_sent
                and lease.expires_at - now < 300
            ):
                lease.expiring_sent = True
                await session.send_text(self.lease_state(lease, "expiring"))
        if changed:
            self.store.save()

    async def end_lease(self, lease: Lease, state: str) -> None:
        self.store.remove(lease)
        session = lease.session
        lease.session = None
        if session is not None:
            if session.version == p.V2:
                with contextlib.suppress(Exception):
                    await session.send_text(self.lease_state(lease, state))
                    await session.goaway(f"lease_{state}")
            session.fail_all("LEASE_GONE")
            await session.close(4404, f"lease {state}")

    # REST ------------------------------------------------------------------------------

    async def _rest(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._router is None:
            self._router = self._build_router()
        await self._router(scope, receive, send)

    def _build_router(self) -> Any:
        from starlette.requests import Request
        from starlette.responses import JSONResponse, PlainTextResponse, Response
        from starlette.routing import Route, Router

        base = self._base_path

        def error(status: int, code: str, message: str = "") -> Response:
            if status == 401:
                self.counters["unauthorized"] += 1
            return JSONResponse(
                _error_payload(code, message),
                status_code=status,
                headers={"cache-control": "no-store"},
            )

        async def json_object(request: Request) -> dict[str, Any] | Response:
            """The request body as a JSON object ({} when empty), or the error to answer."""
            body = await request.body()
            if len(body) > _MAX_REST_BODY:
                return error(413, "request_too_large", "lease API bodies are limited to 64 KiB")
            if not body.strip():
                return {}
            try:
                data = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                return error(400, "bad_request", "the body must be JSON")
            except RecursionError:
                return error(400, "bad_request", "the body is JSON nested too deeply")
            if not isinstance(data, dict):
                return error(400, "bad_request", "the body must be a JSON object")
            return data

        def lease_or_404(request: Request) -> Lease | None:
            lease = self.store.by_id.get(request.path_params["lease_id"])
            if lease is None or lease.expires_at <= time.time():
                return None
            return lease

        def allowed(request: Request, lease: Lease | None) -> bool:
            headers = request.scope["headers"]
            if self.admin_name(headers) is not None:
                return True
            return lease is not None and self.agent_of(headers, lease)

        async def create(request: Request) -> Response:
            admin = self.admin_name(request.scope["headers"])
            if admin is None:
                return error(401, "unauthorized")
            body = await json_object(request)
            if isinstance(body, Response):
                return body
            if len(self.store.by_id) >= self.settings.max_leases:
                return error(429, "too_many_leases", "the relay's lease limit is reached")
            ttl = body.get("requested_ttl_seconds")
            ttl = ttl if isinstance(ttl, int) and not isinstance(ttl, bool) and ttl > 0 else None
            ttl = min(ttl or self.settings.default_ttl, self.settings.max_ttl)
            raw_metadata = body.get("metadata")
            metadata: dict[str, Any] = raw_metadata if isinstance(raw_metadata, dict) else {}
            try:
                metadata_size = len(json.dumps(metadata))
            except (ValueError, RecursionError):
                return error(400, "bad_request", "metadata is nested too deeply")
            if metadata_size > 4096:
                return error(400, "bad_request", "metadata larger than 4 KiB")
            agent_token, worker_token = new_token(), new_token()
            now = time.time()
            lease = Lease(
                lease_id="lease_" + secrets.token_hex(12),
                route_token=secrets.token_hex(16),
                agent_hash=p.token_hash(agent_token),
                worker_hash=p.token_hash(worker_token),
                expires_at=now + ttl,
                created_at=now,
                admin_name=admin,
                client_instance_id=_text(body.get("client_instance_id"), 128),
                metadata=metadata,
                detached_since=time.monotonic(),
            )
            self.store.add(lease)
            self.store.save()
            self.counters["leases_created"] += 1
            logger.info(
                "lease %s created by admin token %r (ttl %ds, route rt_%s)",
                lease.lease_id,
                admin,
                ttl,
                lease.route_token,
            )
            base_url = self.settings.public_base
            return JSONResponse(
                {
                    "lease_id": lease.lease_id,
                    "route_token": lease.route_token,
                    "public_base_url": base_url,
                    "public_url": self.public_url_of(lease),
                    "agent_connect": {
                        "transport": "websocket",
                        "url": self.settings.agent_url,
                        "agent_token": agent_token,
                    },
                    "worker_token": worker_token,
                    "expires_at": _iso(lease.expires_at),
                    "ttl_seconds": ttl,
                    "limits": self.limits(),
                    "heartbeat": self.heartbeat(),
                    "protocol_versions": sorted(self.settings.protocols),
                    "renew_url": f"{base_url}{p.LEASES_PATH}/{lease.lease_id}/renew",
                },
                status_code=201,
                headers={"cache-control": "no-store"},
            )

        async def list_leases(request: Request) -> Response:
            if self.admin_name(request.scope["headers"]) is None:
                return error(401, "unauthorized")
            return JSONResponse({"leases": [self.lease_json(x) for x in self.store.by_id.values()]})

        async def get_lease(request: Request) -> Response:
            lease = lease_or_404(request)
            if not allowed(request, lease):
                return error(401, "unauthorized")
            if lease is None:
                return error(404, "not_found")
            return JSONResponse(self.lease_json(lease))

        async def renew(request: Request) -> Response:
            lease = lease_or_404(request)
            if not allowed(request, lease):
                return error(401, "unauthorized")
            if lease is None:
                return error(404, "not_found")
            body = await json_object(request)
            if isinstance(body, Response):
                return body
            ttl = body.get("requested_ttl_seconds")
            self.renew(lease, ttl if isinstance(ttl, int) and not isinstance(ttl, bool) else None)
            return JSONResponse(
                {
                    "lease_id": lease.lease_id,
                    "expires_at": _iso(lease.expires_at),
                    "ttl_seconds": int(lease.expires_at - time.time()),
                }
            )

        async def rotate(request: Request) -> Response:
            lease = lease_or_404(request)
            if not allowed(request, lease):
                return error(401, "unauthorized")
            if lease is None:
                return error(404, "not_found")
            worker_token = new_token()
            lease.prev_worker_hash = lease.worker_hash
            lease.prev_valid_until = time.time() + self.settings.worker_token_grace
            lease.worker_hash = p.token_hash(worker_token)
            self.store.save()
            logger.info("lease %s: worker token rotated", lease.lease_id)
            return JSONResponse(
                {
                    "lease_id": lease.lease_id,
                    "worker_token": worker_token,
                    "previous_valid_until": _iso(lease.prev_valid_until),
                },
                headers={"cache-control": "no-store"},
            )

        async def delete(request: Request) -> Response:
            lease = lease_or_404(request)
            if not allowed(request, lease):
                return error(401, "unauthorized")
            if lease is None:
                return error(404, "not_found")
            await self.end_lease(lease, "revoked")
            self.store.save()
            logger.info("lease %s deleted", lease.lease_id)
            return JSONResponse(
                {
                    "lease_id": lease.lease_id,
                    "deleted": True,
                    # synth-ai's LeaseStatusResponse
                    "status": "closed",
                    "connected": False,
                    "inflight": lease.inflight,
                    "expires_at": _iso(lease.expires_at),
                    "last_seen_at": _iso(lease.last_seen) if lease.last_seen else None,
                }
            )

        async def healthz(request: Request) -> Response:
            return JSONResponse({"ok": True, "draining": self.draining})

        async def metrics(request: Request) -> Response:
            if self.admin_name(request.scope["headers"]) is None:
                return error(401, "unauthorized")
            return PlainTextResponse(self.metrics_text())

        routes = [
            Route(base + p.LEASES_PATH, create, methods=["POST"]),
            Route(base + p.LEASES_PATH, list_leases, methods=["GET"]),
            Route(base + p.LEASES_PATH + "/{lease_id}", get_lease, methods=["GET"]),
            Route(base + p.LEASES_PATH + "/{lease_id}", delete, methods=["DELETE"]),
            Route(base + p.LEASES_PATH + "/{lease_id}/renew", renew, methods=["POST"]),
            Route(base + p.LEASES_PATH + "/{lease_id}/worker-token", rotate, methods=["POST"]),
            # synth-ai 0.10-0.17's lease client (refresh_synth_worker_token)
            Route(base + p.LEASES_PATH + "/{lease_id}/token:refresh", rotate, methods=["POST"]),
            Route(base + "/healthz", healthz, methods=["GET"]),
            Route(base + "/metrics", metrics, methods=["GET"]),
        ]
        return Router(routes=routes)

    def metrics_text(self) -> str:
        sessions = [lease.session for lease in self.store.by_id.values() if lease.session]
        lines = [
            f"taskapp_relay_leases {len(self.store.by_id)}",
            f"taskapp_relay_agents_connected {len(sessions)}",
            f"taskapp_relay_inflight {self.active_streams}",
            f"taskapp_relay_buffered_bytes {self.buffered}",
            f"taskapp_relay_memory_budget_bytes {self.settings.memory_budget}",
            f"taskapp_relay_draining {int(self.draining)}",
        ]
        for name, value in self.counters.items():
            lines.append(f"taskapp_relay_{name}_total {value}")
        for status, count in sorted(self.status_counts.items()):
            lines.append(f'taskapp_relay_responses_total{{status="{status}"}} {count}')
        return "\n".join(lines) + "\n"

    # agent WebSocket -------------------------------------------------------------------

    async def agent_socket(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        headers = scope["headers"]
        token = _bearer(headers)
        lease = self.store.by_agent.get(p.token_hash(token)) if token else None
        if lease is not None and not p.token_matches(token, [lease.agent_hash]):
            lease = None
        if lease is None or lease.expires_at <= time.time():
            self.counters["unauthorized"] += 1
            await self._reject_ws(scope, send, 401, "unauthorized")
            return
        if self.draining:
            await self._reject_ws(scope, send, 503, "relay_draining")
            return
        await send({"type": "websocket.accept"})
        try:
            async with asyncio.timeout(self.settings.attach_timeout):
                first = await receive()
        except TimeoutError:
            await send({"type": "websocket.close", "code": 1008, "reason": "no ATTACH"})
            return
        if first["type"] != "websocket.receive" or first.get("text") is None:
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": 1008, "reason": "expected ATTACH"})
            return
        try:
            attach = p.decode_text(first["text"])
        except p.FrameError:
            await send({"type": "websocket.close", "code": 1008, "reason": "bad ATTACH"})
            return
        if attach["type"] != p.ATTACH:
            await send({"type": "websocket.close", "code": 1008, "reason": "expected ATTACH"})
            return
        version = p.negotiate_version(attach, self.settings.protocols)
        session = AgentSession(self, lease, send, version)
        accepted: list[str] = []
        rejected: list[dict[str, str]] = []
        requested = attach.get("leases")
        if not isinstance(requested, list) or not requested:
            requested = [{"lease_id": lease.lease_id}]
        for item in requested:
            lease_id = item.get("lease_id") if isinstance(item, dict) else None
            if lease_id == lease.lease_id:
                accepted.append(lease_id)
            else:
                rejected.append({"lease_id": _text(lease_id, 128), "code": "UNAUTHORIZED"})
        capabilities = attach.get("capabilities")
        caps: Mapping[str, Any] = capabilities if isinstance(capabilities, Mapping) else {}
        advert = caps.get("max_inflight")
        if isinstance(advert, int) and not isinstance(advert, bool) and advert > 0:
            session.max_inflight = min(session.max_inflight, advert)
        chunk_advert = caps.get("max_body_chunk_bytes")
        if isinstance(chunk_advert, int) and not isinstance(chunk_advert, bool):
            session.v1_chunk = max(1024, min(chunk_advert, self.settings.max_frame_bytes))
        ack: dict[str, Any] = {
            "type": p.ATTACH_ACK,
            "agent_id": _text(attach.get("agent_id"), 128),
            "accepted_leases": accepted,
            "rejected_leases": rejected,
            "protocol_version": version,
            "session_id": session.session_id,
        }
        if version == p.V2:
            flow = caps.get("flow_control")
            flow_caps: Mapping[str, Any] = flow if isinstance(flow, Mapping) else {}
            session.stream_window = p.clamp_window(
                flow_caps.get("stream_window"),
                self.settings.stream_window,
                self.settings.stream_window,
            )
            session.conn_window = max(
                session.stream_window,
                p.clamp_window(
                    flow_caps.get("conn_window"),
                    self.settings.conn_window,
                    self.settings.conn_window,
                ),
            )
            frame_advert = caps.get("max_body_chunk_bytes")
            if isinstance(frame_advert, int) and not isinstance(frame_advert, bool):
                session.max_frame = max(1024, min(frame_advert, self.settings.max_frame_bytes))
            # Both directions start with the same negotiated windows.
            session.conn_credit = p.Credit(session.conn_window)
            session.conn_inbound = p.InboundWindow(session.conn_window)
            ack["limits"] = {
                **self.limits(),
                "max_inflight": session.max_inflight,
                "stream_window": session.stream_window,
                "conn_window": session.conn_window,
                "max_frame_bytes": session.max_frame,
            }
            ack["heartbeat"] = self.heartbeat()
            ack["leases"] = [
                {
                    "lease_id": lease.lease_id,
                    "expires_at": _iso(lease.expires_at),
                    "renew_after_s": int(max(0.0, lease.expires_at - time.time()) * 2 / 3),
                }
            ]
        await session.send_text(ack)
        if not accepted:
            await session.close(4404, "no lease accepted")
            return
        previous = lease.session
        lease.session = session
        lease.detached_since = None
        lease.last_seen = time.time()
        self.counters["agent_connects"] += 1
        logger.info(
            "agent attached to lease %s (protocol v%d, session %s, agent token %s)",
            lease.lease_id,
            version,
            session.session_id,
            fingerprint(token or ""),
        )
        if previous is not None and not previous.closed:
            self.spawn(self._retire(previous))
        try:
            await self._read_frames(session, receive)
        finally:
            session.closed = True
            session.fail_all("AGENT_GONE")
            if lease.session is session:
                lease.session = None
                lease.detached_since = time.monotonic()
                logger.info("agent of lease %s disconnected", lease.lease_id)

    async def _retire(self, session: AgentSession) -> None:
        await session.goaway("replaced")
        if session.streams:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.drain_timeout):
                    await session.idle.wait()
        await session.close(1000, "replaced by a new connection")

    async def _reject_ws(self, scope: Scope, send: Send, status: int, code: str) -> None:
        extensions = scope.get("extensions") or {}
        if "websocket.http.response" in extensions:
            _, headers, body = _json_body(status, _error_payload(code))
            await send(
                {"type": "websocket.http.response.start", "status": status, "headers": headers}
            )
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 4401 if status == 401 else 1013})

    async def _read_frames(self, session: AgentSession, receive: Receive) -> None:
        lease = session.lease
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            lease.last_seen = time.time()
            try:
                text = message.get("text")
                if text is not None:
                    if session.version == p.V2 and len(text) > session.max_text:
                        raise p.FrameError(
                            f"text frame of {len(text)} characters exceeds the negotiated "
                            f"limit of {session.max_text}"
                        )
                    await session.handle_text(p.decode_text(text))
                else:
                    data = message.get("bytes")
                    if data is not None:
                        if len(data) > session.max_frame + p.HEADER_SIZE:
                            raise p.FrameError(
                                f"binary frame of {len(data)} bytes exceeds the negotiated "
                                f"max_frame_bytes {session.max_frame}"
                            )
                        await session.handle_binary(data)
            except p.FrameError as exc:
                logger.warning(
                    "closing agent connection of lease %s: %s", session.lease.lease_id, exc.message
                )
                await session.close(1008, "protocol error")
                return
            except Exception:
                # A bug, not the agent's fault alone: say so once, close, fail its streams.
                logger.exception(
                    "closing agent connection of lease %s: unexpected error handling a frame",
                    session.lease.lease_id,
                )
                await session.close(1011, "internal error")
                return

    # ingress ---------------------------------------------------------------------------

    async def ingress(self, scope: Scope, receive: Receive, send: Send, rest: bytes) -> None:
        started = time.monotonic()
        route, slash, tail = rest.partition(b"/")
        path = ("/" + tail.decode("latin-1")) if slash else "/"
        lease = self.store.by_route.get(route.decode("latin-1"))
        client = scope.get("client")
        client_ip = client[0] if client else None
        method = scope["method"]
        state: dict[str, Any] = {"status": 0, "in": 0, "out": 0, "rid": "-"}
        try:
            await self._ingress(scope, receive, send, lease, path, state)
        finally:
            status = state["status"]
            self.status_counts[status] = self.status_counts.get(status, 0) + 1
            access_logger.info(
                "%s %s %s %s %s%s %d in=%d out=%d %.1fms",
                client_ip or "-",
                lease.lease_id if lease else "-",
                state["rid"],
                method,
                scope.get("root_path", ""),
                scope["path"],
                status,
                state["in"],
                state["out"],
                (time.monotonic() - started) * 1000,
            )

    async def _ingress(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        lease: Lease | None,
        path: str,
        state: dict[str, Any],
    ) -> None:
        settings = self.settings
        now = time.time()
        if lease is None or lease.expires_at <= now:
            state["status"] = 404
            await _respond(send, 404, "not_found")
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        header_bytes = 0
        worker: str | None = None
        bearer: str | None = None
        content_length: int | None = None
        deadline_ms: int | None = None
        for name, value in headers:
            header_bytes += len(name) + len(value) + 4
            if name == b"x-synthtunnel-worker-token":
                worker = value.decode("latin-1").strip()
            elif name == b"authorization":
                text = value.decode("latin-1").strip()
                if text[:7].lower() == "bearer ":
                    bearer = text[7:].strip()
            elif name == b"content-length":
                with contextlib.suppress(ValueError):
                    content_length = int(value)
            elif name == p.DEADLINE_HEADER.encode():
                with contextlib.suppress(ValueError):
                    deadline_ms = int(value)
        strip_authorization = False
        if worker is not None and lease.worker_matches(worker, now):
            pass
        elif bearer is not None and lease.worker_matches(bearer, now):
            strip_authorization = True
        else:
            self.counters["unauthorized"] += 1
            state["status"] = 401
            await _respond(send, 401, "unauthorized")
            return
        if header_bytes > settings.max_header_bytes or len(headers) > settings.max_headers:
            state["status"] = 431
            await _respond(send, 431, "headers_too_large")
            return
        if content_length is not None and content_length > settings.max_request_bytes:
            state["status"] = 413
            await _respond(send, 413, "request_too_large")
            return
        session = lease.session
        retry = [(b"retry-after", str(settings.retry_after).encode())]
        reason = None
        if session is None or session.closed or session.closing:
            reason = "no_agent"
        elif self.draining:
            reason = "relay_draining"
        elif lease.inflight >= session.max_inflight:
            reason = "too_many_inflight"
        elif self.buffered >= settings.memory_budget:
            reason = "relay_memory_budget"
        if reason is not None or session is None:
            self.counters["rejected_503"] += 1
            state["status"] = 503
            await _respond(send, 503, reason or "no_agent", retry)
            return

        stream = session.open_stream()
        state["rid"] = stream.rid
        lease.inflight += 1
        lease.requests += 1
        self.active_streams += 1
        self.idle.clear()
        self.counters["requests"] += 1
        deadline_s = settings.max_deadline
        if deadline_ms is not None and deadline_ms > 0:
            deadline_s = min(deadline_s, deadline_ms / 1000)
        body_task: asyncio.Task[None] | None = None
        try:
            frame: dict[str, Any] = {
                "type": p.REQ_HEADERS,
                "lease_id": lease.lease_id,
                "rid": stream.rid,
                "method": scope["method"],
                "path": path,
                "query": scope.get("query_string", b"").decode("latin-1"),
                "headers": p.clean_request_headers(
                    headers,
                    strip_authorization=strip_authorization,
                    client_ip=(scope.get("client") or [None])[0],
                    proto=self._proto,
                    host=self._host,
                ),
                "deadline_ms": int(deadline_s * 1000),
            }
            if session.version == p.V2:
                frame["sid"] = stream.sid
                frame["has_body"] = content_length != 0 if content_length is not None else None
                frame["content_length"] = content_length
            await session.send_text(frame)
            body_task = asyncio.create_task(self._pump_request(session, stream, receive, state))
            await self._pump_response(
                session,
                stream,
                send,
                state,
                started=time.monotonic(),
                deadline_s=deadline_s,
                method=scope["method"],
            )
        finally:
            if body_task is not None and not body_task.done():
                body_task.cancel()
                with contextlib.suppress(BaseException):
                    await body_task
            session.close_stream(stream)
            lease.inflight -= 1
            self.active_streams -= 1
            if not self.active_streams:
                self.idle.set()
            lease.bytes_in += state["in"]
            lease.bytes_out += state["out"]
            self.counters["bytes_in"] += state["in"]
            self.counters["bytes_out"] += state["out"]

    async def _pump_request(
        self, session: AgentSession, stream: Stream, receive: Receive, state: dict[str, Any]
    ) -> None:
        limit = self.settings.max_request_bytes
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    stream.events.put(("disconnect",))
                    return
                if message["type"] != "http.request":
                    continue
                chunk = message.get("body", b"")
                more = message.get("more_body", False)
                state["in"] += len(chunk)
                stream.events.put(("progress",))
                if state["in"] > limit:
                    stream.events.put(("too_large",))
                    return
                if not await session.send_request_body(stream, chunk, not more):
                    return
                if not more:
                    break
            # Keep listening: a disconnect before the response ends cancels the stream.
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    stream.events.put(("disconnect",))
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the agent connection failed under us
            stream.events.put(("error", "AGENT_GONE", type(exc).__name__))

    async def _pump_response(
        self,
        session: AgentSession,
        stream: Stream,
        send: Send,
        state: dict[str, Any],
        *,
        started: float,
        deadline_s: float,
        method: str = "GET",
    ) -> None:
        settings = self.settings
        deadline = started + deadline_s
        last_progress = started
        response_started = False
        bodiless = False
        declared: int | None = None
        sent = received = 0
        events = stream.events
        while True:
            now = time.monotonic()
            timeout = min(deadline, last_progress + settings.stall_timeout) - now
            try:
                if timeout <= 0:
                    raise TimeoutError
                async with asyncio.timeout(timeout):
                    event = await events.get()
            except TimeoutError:
                why = "deadline" if time.monotonic() >= deadline - 0.001 else "stall"
                self.counters["timeouts_504"] += 1
                await session.cancel(stream, why)
                if response_started:
                    return  # abort: the client sees a truncated body
                state["status"] = 504
                await _respond(send, 504, f"gateway_timeout_{why}")
                return
            kind = event[0]
            if kind == "progress":
                last_progress = time.monotonic()
                continue
            if kind == "headers":
                if response_started:
                    continue
                status = event[1]
                try:
                    headers, declared = p.check_response_head(status, event[2])
                except p.FrameError as exc:
                    logger.warning(
                        "lease %s, request %s: bad response from the agent: %s",
                        stream.lease.lease_id,
                        stream.rid,
                        exc.message,
                    )
                    await session.cancel(stream, "local_aborted")
                    state["status"] = 502
                    await _respond(send, 502, "LOCAL_BAD_RESPONSE")
                    return
                if method == "HEAD" or status in (204, 304):
                    bodiless = True
                response_started = True
                state["status"] = status
                last_progress = time.monotonic()
                await send({"type": "http.response.start", "status": status, "headers": headers})
                continue
            if kind == "data":
                data, end = event[1], event[2]
                if not response_started:
                    await session.cancel(stream, "local_aborted")
                    state["status"] = 502
                    await _respond(send, 502, "LOCAL_BAD_RESPONSE")
                    return
                if not end and events.pop_end_marker():
                    end = True
                received += len(data)
                if received > settings.max_response_bytes:
                    await session.cancel(stream, "too_large")
                    return
                if data:
                    await session.delivered(stream, len(data))
                last_progress = time.monotonic()
                if bodiless:
                    data = b""  # HEAD, 204, 304: no body on the wire, whatever the agent sent
                elif declared is not None and (
                    sent + len(data) > declared or (end and sent + len(data) < declared)
                ):
                    # More or less than its own Content-Length: the HTTP server would drop
                    # the connection mid-write; abort the response instead (truncated).
                    logger.warning(
                        "lease %s, request %s: the agent's body does not match its "
                        "Content-Length %d; response aborted",
                        stream.lease.lease_id,
                        stream.rid,
                        declared,
                    )
                    await session.cancel(stream, "local_aborted")
                    return
                if data or end:
                    await send({"type": "http.response.body", "body": data, "more_body": not end})
                sent += len(data)
                state["out"] = sent
                if end:
                    return
                continue
            if kind == "disconnect":
                await session.cancel(stream, "client_disconnect")
                if not response_started:
                    state["status"] = 499
                return
            if kind == "too_large":
                await session.cancel(stream, "too_large")
                if response_started:
                    return
                state["status"] = 413
                await _respond(send, 413, "request_too_large")
                return
            if kind == "error":
                code = str(event[1])[:64]
                message = ""
                if response_started:
                    return  # abort
                if code in ("AGENT_GONE", "LEASE_GONE"):
                    status = 502
                elif code == "stall":
                    status = 504
                else:
                    status = p.status_for_error(code)
                state["status"] = status
                extra = (
                    [(b"retry-after", str(settings.retry_after).encode())] if status == 503 else []
                )
                await _respond(send, status, code, extra, message)
                return


def create_relay_app(settings: RelaySettings) -> RelayApp:
    """The relay as an ASGI app (serve it with :class:`RelayServer` or any ASGI server)."""
    return RelayApp(settings)


# -- running it ------------------------------------------------------------------------


class _HeaderRedactor(logging.Filter):
    """Hides credential headers in uvicorn's and websockets' debug logs of the handshake.

    The relay never keeps agent or worker tokens (only hashes), so they cannot be
    registered for redaction; this filter removes them by header name instead.
    """

    _pattern = re.compile(
        r"(?im)^([<>]?\s*(?:authorization|x-synthtunnel-worker-token|cookie)\s*:\s*)(.+)$"
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self._pattern.sub(r"\1[redacted]", message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


_REDACTOR = _HeaderRedactor()


def _install_log_redaction() -> None:
    for name in ("uvicorn.error", "uvicorn.access", "websockets.server", "websockets"):
        log = logging.getLogger(name)
        if _REDACTOR not in log.filters:
            log.addFilter(_REDACTOR)


def _uvicorn_config(app: RelayApp, settings: RelaySettings, **overrides: Any) -> Any:
    import uvicorn

    try:
        import websockets  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            "the relay needs the 'websockets' package: " + install_command("relay")
        ) from None
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "ws": "websockets-sansio",
        "ws_per_message_deflate": False,
        "ws_max_size": settings.ws_max_size,
        "ws_ping_interval": settings.ping_interval,
        "ws_ping_timeout": settings.ping_timeout,
        "proxy_headers": bool(settings.trusted_proxies),
        "forwarded_allow_ips": list(settings.trusted_proxies),
        "lifespan": "on",
        "log_config": None,
        # True here, switched off for this server's protocol only in RelayServer:
        # access_log=False would empty the process-wide "uvicorn.access" logger.
        "access_log": True,
        "timeout_keep_alive": 5,
        "timeout_graceful_shutdown": settings.drain_timeout,
        "ssl_certfile": settings.ssl_certfile,
        "ssl_keyfile": settings.ssl_keyfile,
        "h11_max_incomplete_event_size": settings.max_header_bytes + 1024,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


def _with_tcp_proto(sock: socket.socket) -> socket.socket:
    """``sock``, or a duplicate whose proto says TCP when the caller made it with proto 0.

    asyncio sets TCP_NODELAY on accepted connections only when the listener's proto is
    IPPROTO_TCP; without it every keep-alive response waits ~40 ms for a delayed ACK.
    """
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.proto == socket.IPPROTO_TCP:
        return sock
    return socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=os.dup(sock.fileno()))


class RelayServer:
    """uvicorn serving a :class:`RelayApp`, with a graceful drain on SIGTERM/SIGINT.

    The first signal drains (GOAWAY to every agent, new requests get 503, in-flight ones
    get ``drain_timeout`` seconds); a second signal exits at once.
    """

    def __init__(self, settings: RelaySettings, *, sock: socket.socket | None = None) -> None:
        import uvicorn

        self.settings = settings
        self.app = create_relay_app(settings)
        self.sock = _with_tcp_proto(sock) if sock is not None else None
        self._own_sock = self.sock is not sock  # a duplicate we made: ours to close
        _install_log_redaction()
        config = _uvicorn_config(self.app, settings)
        config.load()
        from taskapp.core.serving import without_access_log

        config.http_protocol_class = without_access_log(config.http_protocol_class)
        relay = self

        class _Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                if threading.current_thread() is not threading.main_thread():
                    yield
                    return
                handled = (signal.SIGINT, signal.SIGTERM)
                previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
                try:
                    yield
                finally:
                    for sig, handler in previous.items():
                        signal.signal(sig, handler)

            def handle_exit(self, sig: int, frame: Any) -> None:
                relay.request_stop()

        self.server = _Server(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self.started = threading.Event()

    async def serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        original_startup = self.server.startup

        async def startup(sockets: list[socket.socket] | None = None) -> None:
            await original_startup(sockets=sockets)
            self.started.set()

        self.server.startup = startup  # type: ignore[method-assign]
        try:
            await self.server.serve(sockets=[self.sock] if self.sock is not None else None)
        finally:
            if self._own_sock and self.sock is not None:
                self.sock.close()

    def run(self) -> None:
        """Serve until stopped (blocking). Uses uvloop when installed."""
        loop_factory = self.server.config.get_loop_factory()
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(self.serve())

    def request_stop(self) -> None:
        """Drain then exit (thread- and signal-safe); a second call exits at once."""
        loop = self._loop
        if self._stopping or loop is None:
            self.server.should_exit = True
            self.server.force_exit = self._stopping
            return
        self._stopping = True

        def begin() -> None:
            async def drain_then_exit() -> None:
                try:
                    await self.app.drain()
                finally:
                    self.server.should_exit = True

            self.app.spawn(drain_then_exit())

        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(begin)

    @property
    def port(self) -> int:
        for server in getattr(self.server, "servers", []):
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.settings.port


@dataclasses.dataclass
class RunningRelay:
    """A relay serving in a background thread (see :func:`start_relay_thread`)."""

    server: RelayServer
    thread: threading.Thread
    url: str
    errors: list[BaseException]

    @property
    def app(self) -> RelayApp:
        return self.server.app

    def stop(self, timeout: float = 15.0, *, drain: bool = False) -> None:
        if drain:
            self.server.request_stop()
        else:
            self.server.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.server.force_exit = True
            self.thread.join(5)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the relay's event loop and return its result (for tests)."""
        loop = self.server._loop
        assert loop is not None
        return asyncio.run_coroutine_threadsafe(_call(fn), loop).result(10)


async def _call(fn: Callable[[], Any]) -> Any:
    result = fn()
    if asyncio.iscoroutine(result):
        result = await result
    return result


def start_relay_thread(settings: RelaySettings, *, timeout: float = 10.0) -> RunningRelay:
    """Start a relay in a daemon thread on ``settings.host:settings.port`` (port 0: any).

    The socket is bound before the thread starts, so the URL is known and no other process
    can take the port. ``settings.public_url`` may be ``"auto"``: the bound address.
    """
    sock = listen_tcp(settings.host, settings.port)
    port = sock.getsockname()[1]
    url = f"http://{settings.host}:{port}"
    if settings.public_url == "auto":
        settings = dataclasses.replace(settings, public_url=url, port=port)
    else:
        settings = dataclasses.replace(settings, port=port)
    server = RelayServer(settings, sock=sock)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:  # SystemExit(3) from uvicorn on startup failure
            errors.append(exc)
        finally:
            sock.close()

    thread = threading.Thread(target=run, name=f"taskapp-relay-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started.is_set():
        if not thread.is_alive() or time.monotonic() > deadline:
            server.server.should_exit = True
            thread.join(5)
            raise ServerStartError(
                f"the relay did not start on {url} within {timeout:g}s"
                + (f": {errors[0]!r}" if errors else "")
            )
        server.started.wait(0.01)
    return RunningRelay(server=server, thread=thread, url=url, errors=errors)
