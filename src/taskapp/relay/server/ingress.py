"""The public ingress ``/s/rt_<route_token>/<path>``: worker-token check, limits, then one
stream through the lease's agent session, with deadlines, stalls, cancellation and the
checks that keep a misbehaving agent from breaking the caller's connection."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from taskapp.core.logs import get_logger
from taskapp.relay import protocol as p
from taskapp.relay.server.leases import Lease
from taskapp.relay.server.session import AgentSession, Stream
from taskapp.relay.server.state import Message, Receive, RelayState, Scope, Send, respond

__all__ = ["DISCONNECT_WATCH", "ingress"]

#: An ASGI scope extension the relay's front (front.py) offers: ``watch(callback)`` calls
#: ``callback()`` once if the client's connection is lost before the response ends.
DISCONNECT_WATCH = "taskapp.relay.disconnect_watch"

logger = get_logger("taskapp.relay")
access_logger = get_logger("taskapp.relay.access")


async def ingress(
    state: RelayState, scope: Scope, receive: Receive, send: Send, rest: bytes
) -> None:
    started = time.monotonic()
    route, slash, tail = rest.partition(b"/")
    path = ("/" + tail.decode("latin-1")) if slash else "/"
    lease = state.store.by_route.get(route.decode("latin-1"))
    client = scope.get("client")
    client_ip = client[0] if client else None
    method = scope["method"]
    info: dict[str, Any] = {"status": 0, "in": 0, "out": 0, "rid": "-"}
    try:
        await _ingress(state, scope, receive, send, lease, path, info)
    finally:
        status = info["status"]
        state.status_counts[status] = state.status_counts.get(status, 0) + 1
        access_logger.info(
            "%s %s %s %s %s%s %d in=%d out=%d %.1fms",
            client_ip or "-",
            lease.lease_id if lease else "-",
            info["rid"],
            method,
            scope.get("root_path", ""),
            scope["path"],
            status,
            info["in"],
            info["out"],
            (time.monotonic() - started) * 1000,
        )


async def _ingress(  # noqa: C901, PLR0915 -- complexity 21 and 90 statements at most (issue 21 ratchet); split when next changed
    state: RelayState,
    scope: Scope,
    receive: Receive,
    send: Send,
    lease: Lease | None,
    path: str,
    info: dict[str, Any],
) -> None:
    settings = state.settings
    now = time.time()
    if lease is None or lease.expires_at <= now:
        info["status"] = 404
        await respond(send, 404, "not_found")
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
        state.counters["unauthorized"] += 1
        info["status"] = 401
        await respond(send, 401, "unauthorized")
        return
    if header_bytes > settings.max_header_bytes or len(headers) > settings.max_headers:
        info["status"] = 431
        await respond(send, 431, "headers_too_large")
        return
    if content_length is not None and content_length > settings.max_request_bytes:
        info["status"] = 413
        await respond(send, 413, "request_too_large")
        return
    attached = lease.session
    # Only AgentSession objects are ever attached (agent_socket); the check narrows the type.
    session = attached if isinstance(attached, AgentSession) else None
    retry = [(b"retry-after", str(settings.retry_after).encode())]
    reason = None
    if session is None or session.closed or session.closing:
        reason = "no_agent"
    elif state.draining:
        reason = "relay_draining"
    elif lease.inflight >= session.max_inflight:
        reason = "too_many_inflight"
    elif state.buffered >= settings.memory_budget:
        reason = "relay_memory_budget"
    if reason is not None or session is None:
        state.counters["rejected_503"] += 1
        info["status"] = 503
        await respond(send, 503, reason or "no_agent", retry)
        return

    stream = session.open_stream()
    info["rid"] = stream.rid
    lease.inflight += 1
    lease.requests += 1
    state.active_streams += 1
    state.idle.clear()
    state.counters["requests"] += 1
    deadline_s = settings.max_deadline
    if deadline_ms is not None and deadline_ms > 0:
        deadline_s = min(deadline_s, deadline_ms / 1000)
    body_task: asyncio.Task[None] | None = None
    try:
        frame = _request_frame(
            state, stream, scope, path, strip_authorization, content_length, deadline_s
        )
        body_task = await _send_request(state, session, stream, scope, receive, info, frame)
        await _answer(state, session, stream, send, info, deadline_s, scope["method"])
    finally:
        # Release the lease's in-flight slot before anything awaits: the caller already has
        # its answer and may send the next request on this keep-alive connection, which
        # must not find the slot still taken (503 too_many_inflight at concurrency equal to
        # the agent's max_inflight).
        session.close_stream(stream)
        lease.inflight -= 1
        state.active_streams -= 1
        if not state.active_streams:
            state.idle.set()
        lease.bytes_in += info["in"]
        lease.bytes_out += info["out"]
        state.counters["bytes_in"] += info["in"]
        state.counters["bytes_out"] += info["out"]
        if body_task is not None and not body_task.done():
            body_task.cancel()
            with contextlib.suppress(BaseException):
                await body_task


def _request_frame(
    state: RelayState,
    stream: Stream,
    scope: Scope,
    path: str,
    strip_authorization: bool,
    content_length: int | None,
    deadline_s: float,
) -> dict[str, Any]:
    """REQ_HEADERS for the public request ``scope`` on ``stream`` (headers cleaned)."""
    frame: dict[str, Any] = {
        "type": p.REQ_HEADERS,
        "lease_id": stream.lease.lease_id,
        "rid": stream.rid,
        "method": scope["method"],
        "path": path,
        "query": scope.get("query_string", b"").decode("latin-1"),
        "headers": p.clean_request_headers(
            scope["headers"],
            strip_authorization=strip_authorization,
            client_ip=(scope.get("client") or [None])[0],
            proto=state.proto,
            host=state.host,
        ),
        "deadline_ms": int(deadline_s * 1000),
    }
    if stream.session.version == p.V2:
        frame["sid"] = stream.sid
        frame["has_body"] = content_length != 0 if content_length is not None else None
        frame["content_length"] = content_length
    return frame


async def _answer(
    state: RelayState,
    session: AgentSession,
    stream: Stream,
    send: Send,
    info: dict[str, Any],
    deadline_s: float,
    method: str,
) -> None:
    """The agent's answer to the caller, within the deadline and the stall timeout."""
    timer = _StreamTimer(stream, deadline_s, state.settings.stall_timeout)
    try:
        await _pump_response(state, session, stream, send, info, method=method)
    finally:
        timer.cancel()


class _StreamTimer:
    """One timer per stream for its deadline and its stall timeout.

    Nothing is armed or cancelled per event: progress only stamps ``stream.progress``
    (the request pump and the response pump do), and when the timer fires early because
    progress moved the stall point, it re-arms itself once at the new due time. When the
    deadline passes, or nothing moved for ``stall`` seconds, it queues
    ``("timeout", "deadline" | "stall")`` on the stream's events.
    """

    __slots__ = ("_deadline", "_handle", "_loop", "_stall", "_stream")

    def __init__(self, stream: Stream, deadline_s: float, stall: float) -> None:
        self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        stream.progress = now
        self._stream = stream
        self._deadline = now + deadline_s
        self._stall = stall
        self._handle = self._loop.call_at(self._due(), self._fire)

    def _due(self) -> float:
        return min(self._deadline, self._stream.progress + self._stall)

    def _fire(self) -> None:
        now = self._loop.time()
        due = self._due()
        if now < due - 0.001:
            self._handle = self._loop.call_at(due, self._fire)
            return
        why = "deadline" if now >= self._deadline - 0.001 else "stall"
        self._stream.events.put(("timeout", why))

    def cancel(self) -> None:
        self._handle.cancel()


async def _send_request(
    state: RelayState,
    session: AgentSession,
    stream: Stream,
    scope: Scope,
    receive: Receive,
    info: dict[str, Any],
    frame: dict[str, Any],
) -> asyncio.Task[None] | None:
    """REQ_HEADERS, then the request body; the task still forwarding it, if any.

    Under the relay's front (its :data:`DISCONNECT_WATCH` extension) with the whole body
    at hand, the usual small request, the body follows at once and no task runs: the front
    reports a client that leaves. Otherwise a pump task forwards the body and then listens
    for the disconnect. It starts before REQ_HEADERS is written, so a body that is already
    here leaves in the same write (coalesce.py: one send() per loop step); the frame order
    holds, as this step writes REQ_HEADERS before the pump first runs.
    """
    watch = (scope.get("extensions") or {}).get(DISCONNECT_WATCH)
    if watch is None:
        task = asyncio.create_task(_pump_request(state, session, stream, receive, info))
        session.send_text(frame)
        return task
    session.send_text(frame)
    message = await receive()
    if message["type"] != "http.request" or message.get("more_body", False):
        return asyncio.create_task(_pump_request(state, session, stream, receive, info, message))
    try:
        await _body_piece(state, session, stream, message, info)
    except Exception as exc:  # the agent connection failed under us
        stream.events.put(("error", "AGENT_GONE", type(exc).__name__))
    watch(lambda: stream.events.put(("disconnect",)))
    return None


async def _pump_request(
    state: RelayState,
    session: AgentSession,
    stream: Stream,
    receive: Receive,
    info: dict[str, Any],
    message: Message | None = None,
) -> None:
    """Forward the request body from ``receive()`` (``message``: one already taken), then
    listen: a disconnect before the response ends cancels the stream."""
    try:
        while True:
            piece = await _body_piece(state, session, stream, message or await receive(), info)
            message = None
            if piece == "stop":
                return
            if piece == "end":
                break
        while (await receive())["type"] != "http.disconnect":
            pass
        stream.events.put(("disconnect",))
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the agent connection failed under us
        stream.events.put(("error", "AGENT_GONE", type(exc).__name__))


async def _body_piece(
    state: RelayState,
    session: AgentSession,
    stream: Stream,
    message: Message,
    info: dict[str, Any],
) -> str:
    """Forward one message of ``receive()``'s: ``"more"`` body to come, its ``"end"``, or
    ``"stop"`` (the client left, the body is too large, the stream ended)."""
    if message["type"] == "http.disconnect":
        stream.events.put(("disconnect",))
        return "stop"
    if message["type"] != "http.request":
        return "more"
    chunk = message.get("body", b"")
    more = message.get("more_body", False)
    info["in"] += len(chunk)
    stream.progress = asyncio.get_running_loop().time()  # read by the stream's timer
    if info["in"] > state.settings.max_request_bytes:
        stream.events.put(("too_large",))
        return "stop"
    if not await session.send_request_body(stream, chunk, not more):
        return "stop"
    return "more" if more else "end"


async def _pump_response(  # noqa: C901, PLR0915 -- complexity 27 and 92 statements at most (issue 21 ratchet); split when next changed
    state: RelayState,
    session: AgentSession,
    stream: Stream,
    send: Send,
    info: dict[str, Any],
    *,
    method: str = "GET",
) -> None:
    """The agent's answer to the public client; a ``("timeout", why)`` event comes from
    the stream's :class:`_StreamTimer` (deadline or stall)."""
    settings = state.settings
    clock = asyncio.get_running_loop().time
    response_started = False
    bodiless = False
    declared: int | None = None
    sent = received = 0
    events = stream.events
    while True:
        event = await events.get()
        kind = event[0]
        if kind == "timeout":
            why = event[1]
            state.counters["timeouts_504"] += 1
            session.cancel(stream, why)
            if response_started:
                return  # abort: the client sees a truncated body
            info["status"] = 504
            await respond(send, 504, f"gateway_timeout_{why}")
            return
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
                session.cancel(stream, "local_aborted")
                info["status"] = 502
                await respond(send, 502, "LOCAL_BAD_RESPONSE")
                return
            if method == "HEAD" or status in (204, 304):
                bodiless = True
            response_started = True
            info["status"] = status
            stream.progress = clock()
            await send({"type": "http.response.start", "status": status, "headers": headers})
            continue
        if kind == "data":
            data, end = event[1], event[2]
            if not response_started:
                session.cancel(stream, "local_aborted")
                info["status"] = 502
                await respond(send, 502, "LOCAL_BAD_RESPONSE")
                return
            if not end and events.pop_end_marker():
                end = True
            received += len(data)
            if received > settings.max_response_bytes:
                session.cancel(stream, "too_large")
                return
            if data:
                session.delivered(stream, len(data))
            stream.progress = clock()
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
                session.cancel(stream, "local_aborted")
                return
            if data or end:
                await send({"type": "http.response.body", "body": data, "more_body": not end})
            sent += len(data)
            info["out"] = sent
            if end:
                return
            continue
        if kind == "disconnect":
            session.cancel(stream, "client_disconnect")
            if not response_started:
                info["status"] = 499
            return
        if kind == "too_large":
            session.cancel(stream, "too_large")
            if response_started:
                return
            info["status"] = 413
            await respond(send, 413, "request_too_large")
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
            info["status"] = status
            extra = [(b"retry-after", str(settings.retry_after).encode())] if status == 503 else []
            await respond(send, status, code, extra, message)
            return
