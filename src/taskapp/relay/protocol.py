"""The relay wire protocol, shared by the relay server and the agent (standard library only).

Two versions travel on the same agent WebSocket (``GET /api/v1/synthtunnel/agent`` with
``Authorization: Bearer <agent_token>``); ``docs/relay-protocol.md`` is the full
reference.

**v1** is exactly what the original SynthTunnel agents speak: every frame is a WebSocket
*text* frame holding one JSON object with a ``type``; bodies travel base64-encoded in
``chunk_b64``::

    agent -> relay   ATTACH  RESP_HEADERS  RESP_BODY  RESP_END  RESP_ERROR
    relay -> agent   ATTACH_ACK  REQ_HEADERS  REQ_BODY  REQ_END  CANCEL

**v2** is negotiated in ATTACH (``protocol_versions: [2, 1]`` and
``capabilities.binary_frames``; the relay answers ``ATTACH_ACK.protocol_version``). A peer
that does not know v2 never sees a v2 frame. v2 keeps the JSON control frames (adding
``sid`` to identify a stream), moves bodies into *binary* frames with a 6-byte header
``type u8 | flags u8 | sid u32`` and adds per-stream and per-connection credit flow
control (``WINDOW_UPDATE``), CANCEL in both directions, GOAWAY, LEASE_RENEW/LEASE_STATE
and an error-code table.

>>> frame = encode_data(BIN_RESP_BODY, 7, b"hello", end=True)
>>> decode_binary(frame)[:3]
(17, 1, 7)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, TypeVar

from taskapp.core.errors import TunnelProtocolError
from taskapp.core.secrets import constant_time_in

__all__ = [
    "AGENT_PATH",
    "BIN_REQ_BODY",
    "BIN_RESP_BODY",
    "BIN_WINDOW_UPDATE",
    "ERROR_STATUS",
    "FLAG_END",
    "INGRESS_PREFIX",
    "LEASES_PATH",
    "SUPPORTED_VERSIONS",
    "WORKER_TOKEN_HEADER",
    "Credit",
    "FrameError",
    "InboundWindow",
    "apply_window_update",
    "b64decode",
    "b64encode",
    "check_response_head",
    "clean_request_headers",
    "clean_response_headers",
    "decode_binary",
    "decode_text",
    "encode_data",
    "encode_text",
    "encode_window_update",
    "is_ingress_url",
    "negotiate_version",
    "status_for_error",
    "token_hash",
    "token_matches",
]

# -- paths and names -------------------------------------------------------------------

API_PREFIX: Final = "/api/v1/synthtunnel"
LEASES_PATH: Final = API_PREFIX + "/leases"
AGENT_PATH: Final = API_PREFIX + "/agent"
#: Public ingress: ``/s/rt_<route_token>/<path>`` (the original shape; SDKs detect it).
INGRESS_PREFIX: Final = "/s/rt_"
_INGRESS_URL = re.compile(re.escape(INGRESS_PREFIX) + r"[A-Za-z0-9_-]+/?$")

WORKER_TOKEN_HEADER: Final = "x-synthtunnel-worker-token"  # noqa: S105 - a header name
LEASE_ID_HEADER: Final = "x-synthtunnel-lease-id"
REQUEST_ID_HEADER: Final = "x-synthtunnel-request-id"
#: A caller may ask for a shorter per-request deadline than the relay's maximum.
DEADLINE_HEADER: Final = "x-synthtunnel-deadline-ms"

# -- versions and sizes ------------------------------------------------------------------

V1: Final = 1
V2: Final = 2
SUPPORTED_VERSIONS: Final = (2, 1)

DEFAULT_FRAME_BYTES: Final = 64 * 1024
MAX_FRAME_BYTES: Final = 256 * 1024
DEFAULT_STREAM_WINDOW: Final = 2 * 1024 * 1024
DEFAULT_CONN_WINDOW: Final = 32 * 1024 * 1024
MIN_WINDOW: Final = 64 * 1024
DEFAULT_DEADLINE_MS: Final = 600_000

# -- frame types -----------------------------------------------------------------------

ATTACH: Final = "ATTACH"
ATTACH_ACK: Final = "ATTACH_ACK"
REQ_HEADERS: Final = "REQ_HEADERS"
REQ_BODY: Final = "REQ_BODY"
REQ_END: Final = "REQ_END"
RESP_HEADERS: Final = "RESP_HEADERS"
RESP_BODY: Final = "RESP_BODY"
RESP_END: Final = "RESP_END"
RESP_ERROR: Final = "RESP_ERROR"
CANCEL: Final = "CANCEL"
GOAWAY: Final = "GOAWAY"
LEASE_RENEW: Final = "LEASE_RENEW"
LEASE_STATE: Final = "LEASE_STATE"

BIN_REQ_BODY: Final = 0x10
BIN_RESP_BODY: Final = 0x11
BIN_WINDOW_UPDATE: Final = 0x20
FLAG_END: Final = 0x01

_HEADER = struct.Struct(">BBI")
_U32 = struct.Struct(">I")
HEADER_SIZE: Final = _HEADER.size
MAX_SID: Final = 0xFFFFFFFF

# -- error codes -----------------------------------------------------------------------

#: RESP_ERROR / CANCEL code -> the status the public caller sees when no response
#: headers were sent yet (after headers, the relay aborts the public connection).
ERROR_STATUS: Final[Mapping[str, int]] = {
    "LOCAL_CONNECT_FAILED": 502,
    "LOCAL_TIMEOUT": 504,
    "LOCAL_BAD_RESPONSE": 502,
    "BAD_REQUEST_FRAME": 400,
    "TOO_LARGE": 413,
    "OVERLOADED": 503,
    "CANCELLED": 502,
    "FLOW_CONTROL_ERROR": 502,
    "AGENT_SHUTDOWN": 503,
}

#: CANCEL reasons.
CANCEL_REASONS: Final = (
    "client_disconnect",
    "deadline",
    "stall",
    "agent_shutdown",
    "local_aborted",
    "too_large",
    "overload",
    "relay_shutdown",
)


class FrameError(TunnelProtocolError):
    """A frame that does not follow the protocol (bad JSON, bad base64, short header)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, backend="relay")


def is_ingress_url(url: str) -> bool:
    """Whether ``url`` is a relay lease's public URL (``.../s/rt_<route>``, optionally with
    a trailing slash or a query): callers then need the lease's worker token.

    >>> is_ingress_url("https://relay.example/s/rt_Ab-9_x/"), is_ingress_url("http://x/s/y")
    (True, False)
    """
    return bool(_INGRESS_URL.search(url.split("?", 1)[0]))


def status_for_error(code: str) -> int:
    """HTTP status for a RESP_ERROR code (unknown codes are a bad gateway)."""
    return ERROR_STATUS.get(code, 502)


# -- text (JSON) frames ------------------------------------------------------------------


def encode_text(frame: Mapping[str, Any]) -> str:
    """One control frame as compact JSON."""
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def decode_text(text: str | bytes) -> dict[str, Any]:
    """Parse a text frame; raise :class:`FrameError` unless it is an object with a type."""
    try:
        frame = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FrameError(f"frame is not JSON: {exc}") from None
    except RecursionError:
        raise FrameError("frame is JSON nested too deeply") from None
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        raise FrameError("frame is not a JSON object with a string 'type'")
    return frame


def b64encode(data: bytes | memoryview) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(data: Any) -> bytes:
    """Decode ``chunk_b64`` (None or empty -> b""); raise FrameError on bad base64."""
    if not data:
        return b""
    if not isinstance(data, str):
        raise FrameError("chunk_b64 must be a string")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise FrameError("chunk_b64 is not valid base64") from None


# -- binary frames (v2) ------------------------------------------------------------------


def encode_data(kind: int, sid: int, data: bytes | memoryview, *, end: bool = False) -> bytes:
    """A v2 body frame: 6-byte header then the raw bytes."""
    return _HEADER.pack(kind, FLAG_END if end else 0, sid) + data


def encode_window_update(sid: int, increment: int) -> bytes:
    """WINDOW_UPDATE: give the peer ``increment`` more bytes of credit (sid 0: connection)."""
    return _HEADER.pack(BIN_WINDOW_UPDATE, 0, sid) + _U32.pack(increment)


_Buffer = TypeVar("_Buffer", bytes, memoryview)


def decode_binary(frame: _Buffer) -> tuple[int, int, int, _Buffer]:
    """Split a binary frame into ``(type, flags, sid, payload)``.

    For WINDOW_UPDATE the payload is the 4-byte increment (see :func:`window_increment`).
    A ``memoryview`` frame gives a view of its payload (no copy; the relay passes its body
    bytes on to the public client that way).
    """
    if len(frame) < HEADER_SIZE:
        raise FrameError(f"binary frame of {len(frame)} bytes is shorter than its header")
    kind, flags, sid = _HEADER.unpack_from(frame)
    return kind, flags, sid, frame[HEADER_SIZE:]


def window_increment(payload: bytes | memoryview) -> int:
    if len(payload) != _U32.size:
        raise FrameError("WINDOW_UPDATE payload must be 4 bytes")
    value: int = _U32.unpack(payload)[0]
    if value == 0:
        raise FrameError("WINDOW_UPDATE increment must be positive")
    return value


# -- negotiation -----------------------------------------------------------------------


def negotiate_version(attach: Mapping[str, Any], server_versions: Iterable[int]) -> int:
    """The version a relay speaks with an agent that sent ``attach``.

    An agent that does not list ``protocol_versions`` (every original agent) gets v1; v2
    also needs ``capabilities.binary_frames``.
    """
    offered = attach.get("protocol_versions")
    allowed = set(server_versions)
    if not isinstance(offered, list):
        return V1
    capabilities = attach.get("capabilities")
    binary = isinstance(capabilities, Mapping) and capabilities.get("binary_frames") is True
    for version in sorted((v for v in offered if isinstance(v, int)), reverse=True):
        if version in allowed and (version == V1 or (version == V2 and binary)):
            return version
    return V1


def clamp_window(value: Any, default: int, maximum: int) -> int:
    """An advertised window, bounded to ``[MIN_WINDOW, maximum]``; junk gives ``default``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return default
    return max(MIN_WINDOW, min(value, maximum))


# -- credit flow control (v2) ------------------------------------------------------------


class Credit:
    """Send-side credit: bytes the peer allows us to send (one stream, or the connection).

    ``take`` waits until both this credit and ``conn`` are positive and consumes up to
    ``want`` bytes from both; ``grant`` is called on WINDOW_UPDATE.
    """

    __slots__ = ("_event", "available", "closed")

    def __init__(self, initial: int) -> None:
        self.available = initial
        self.closed = False
        self._event = asyncio.Event()
        if initial > 0:
            self._event.set()

    def grant(self, amount: int) -> None:
        self.available += amount
        if self.available > 0:
            self._event.set()

    def close(self) -> None:
        """Wake waiters for good (the stream or connection ended)."""
        self.closed = True
        self._event.set()

    async def take(self, want: int, conn: Credit | None = None) -> int:
        """Consume up to ``want`` bytes of credit; 0 means the credit was closed."""
        while True:
            if self.closed or (conn is not None and conn.closed):
                return 0
            if self.available <= 0:
                self._event.clear()
                await self._event.wait()
                continue
            if conn is not None and conn.available <= 0:
                conn._event.clear()
                await conn._event.wait()
                continue
            amount = min(want, self.available)
            if conn is not None:
                amount = min(amount, conn.available)
                conn.available -= amount
            self.available -= amount
            return amount


def apply_window_update(
    sid: int, payload: bytes | memoryview, connection: Credit, streams: Mapping[int, Any]
) -> None:
    """Grant a WINDOW_UPDATE: ``sid`` 0 is the connection, any other ``sid`` one stream.

    ``streams`` maps stream ids to objects with a ``send_credit`` (a :class:`Credit`, or
    None on a v1 stream); an update for an unknown or finished stream is ignored.
    """
    increment = window_increment(payload)
    if sid == 0:
        connection.grant(increment)
        return
    stream = streams.get(sid)
    if stream is not None and stream.send_credit is not None:
        stream.send_credit.grant(increment)


class InboundWindow:
    """Receive-side accounting: bytes the peer may still send, and credit to hand back.

    ``received(n)`` is called when a data frame arrives (False: the peer overran the
    window, a FLOW_CONTROL_ERROR). ``consumed(n)`` is called once the bytes were delivered
    onwards and returns an increment to send in WINDOW_UPDATE when at least half the window
    is waiting to be returned (batching, as HTTP/2 implementations do), else 0.
    """

    __slots__ = ("outstanding", "pending", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.outstanding = window
        self.pending = 0

    def received(self, amount: int) -> bool:
        self.outstanding -= amount
        return self.outstanding >= 0

    def consumed(self, amount: int) -> int:
        self.pending += amount
        if self.pending < self.window // 2:
            return 0
        increment, self.pending = self.pending, 0
        self.outstanding += increment
        return increment


# -- tokens ----------------------------------------------------------------------------


def token_hash(token: str) -> str:
    """What the relay stores instead of a token: its SHA-256 (hex)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_matches(candidate: str | None, hashes: Iterable[str]) -> bool:
    """True when ``candidate`` hashes to one of ``hashes`` (each compared in constant time)."""
    if not candidate:
        return False
    return constant_time_in(token_hash(candidate), [h for h in hashes if h])


# -- header hygiene --------------------------------------------------------------------

HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
_FORWARDING: Final = frozenset(
    {"forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port"}
)
_RELAY_PREFIXES: Final = ("x-synthtunnel-", "x-taskapp-")


def _connection_named(headers: Sequence[tuple[str, str]]) -> set[str]:
    named: set[str] = set()
    for name, value in headers:
        if name == "connection":
            named.update(token.strip().lower() for token in value.split(",") if token.strip())
    return named


def clean_request_headers(
    raw: Iterable[tuple[bytes, bytes]],
    *,
    strip_authorization: bool,
    client_ip: str | None,
    proto: str,
    host: str,
) -> list[list[str]]:
    """The headers the relay forwards in REQ_HEADERS, as ``[[name, value], ...]``.

    Dropped: hop-by-hop headers and every header named in ``Connection``; ``Host`` (the
    agent sets its own); ``Expect`` (the relay already answered it); the worker token and
    any other ``X-SynthTunnel-*``/``X-Taskapp-*`` header (callers cannot spoof relay
    metadata); ``Authorization`` when it carried the worker token; the client's own
    ``Forwarded``/``X-Forwarded-*``. Added: ``X-Forwarded-For`` (the client address uvicorn
    resolved, through trusted proxies only), ``X-Forwarded-Proto`` and ``X-Forwarded-Host``
    of the public URL.
    """
    decoded = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw]
    drop = HOP_BY_HOP | _FORWARDING | _connection_named(decoded) | {"host", "expect"}
    if strip_authorization:
        drop = drop | {"authorization"}
    out = [
        [name, value]
        for name, value in decoded
        if name not in drop and not name.startswith(_RELAY_PREFIXES)
    ]
    if client_ip:
        out.append(["x-forwarded-for", client_ip])
    out.append(["x-forwarded-proto", proto])
    out.append(["x-forwarded-host", host])
    return out


def clean_response_headers(headers: Any) -> list[tuple[bytes, bytes]]:
    """The agent's response headers, ready for ASGI: hop-by-hop removed, nosniff added."""
    pairs: list[tuple[str, str]] = []
    if isinstance(headers, list):
        for item in headers:
            if isinstance(item, list | tuple) and len(item) == 2:
                pairs.append((str(item[0]).lower(), str(item[1])))
    elif isinstance(headers, Mapping):
        pairs = [(str(k).lower(), str(v)) for k, v in headers.items()]
    drop = HOP_BY_HOP | _connection_named(pairs)
    out: list[tuple[bytes, bytes]] = []
    nosniff = False
    for name, value in pairs:
        if name in drop or not name or "\n" in value or "\r" in value:
            continue
        if name == "x-content-type-options":
            nosniff = True
        out.append((name.encode("latin-1", "replace"), value.encode("latin-1", "replace")))
    if not nosniff:
        out.append((b"x-content-type-options", b"nosniff"))
    return out


_TOKEN_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE_RE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def check_response_head(status: Any, headers: Any) -> tuple[list[tuple[bytes, bytes]], int | None]:  # noqa: C901 -- complexity 15 at most (issue 21 ratchet); split when next changed
    """Validate an agent's RESP_HEADERS before anything reaches the public caller.

    Returns the cleaned headers (as :func:`clean_response_headers`) and the declared
    Content-Length (None when absent). Raises :class:`FrameError` naming the first problem:
    a status outside 200-599 (1xx, 101 included: interim answers cannot be relayed), a
    header that is not a ``[name, value]`` pair of strings, a name that is not an HTTP
    token, a control character (NUL, CR, LF, ...) in a value, or a Content-Length that is
    not a non-negative integer (or several that disagree). The relay answers such a
    response with 502 instead of letting the HTTP server drop the caller's connection.
    """
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise FrameError(f"response status {str(status)[:20]!r} is not in 200-599")
    if isinstance(headers, Mapping):
        items: list[Any] = [[k, v] for k, v in headers.items()]
    elif isinstance(headers, list):
        items = headers
    elif headers is None:
        items = []
    else:
        raise FrameError("response headers must be a list of [name, value] pairs")
    if len(items) > 1000:
        raise FrameError("more than 1000 response headers")
    lengths: set[int] = set()
    pairs: list[list[str]] = []
    for item in items:
        if not isinstance(item, list | tuple) or len(item) != 2:
            raise FrameError("a response header is not a [name, value] pair")
        name, value = item
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(name, str) or not isinstance(value, str):
            raise FrameError("a response header name or value is not a string")
        if not _TOKEN_RE.fullmatch(name):
            raise FrameError(f"response header name {name[:40]!r} is not an HTTP token")
        value = value.strip(" \t")
        if _BAD_VALUE_RE.search(value):
            raise FrameError(f"response header {name[:40]!r} has a control character")
        if name.lower() == "content-length":
            if not value.isdigit() or not value.isascii() or len(value) > 18:
                raise FrameError(f"response Content-Length {value[:20]!r} is not a number")
            lengths.add(int(value))
        pairs.append([name, value])
    if len(lengths) > 1:
        raise FrameError("the response has several Content-Length values that disagree")
    return clean_response_headers(pairs), (lengths.pop() if lengths else None)


def local_request_headers(
    headers: Any, *, lease_id: str, rid: str, host: str, content_length: int | None
) -> list[tuple[str, str]]:
    """Headers the agent sends to the local app for a REQ_HEADERS frame.

    Hop-by-hop headers are dropped again (the relay may be an old one), ``Host`` names the
    local target, and the lease and request ids are added (the v1 agents' behaviour).
    """
    pairs: list[tuple[str, str]] = []
    if isinstance(headers, list):
        for item in headers:
            if isinstance(item, list | tuple) and len(item) == 2 and item[0]:
                pairs.append((str(item[0]).lower(), str(item[1])))
    drop = HOP_BY_HOP | _connection_named(pairs) | {"host", "content-length", "expect"}
    out = [
        (name, value)
        for name, value in pairs
        if name not in drop and "\n" not in value and "\r" not in value
    ]
    out.append(("host", host))
    out.append((LEASE_ID_HEADER, lease_id))
    out.append((REQUEST_ID_HEADER, rid))
    if content_length is not None:
        out.append(("content-length", str(content_length)))
    return out
