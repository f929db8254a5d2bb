"""The agent WebSocket endpoint: token check before accepting, ATTACH and version
negotiation, then the frame loop of one :class:`AgentSession`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

from taskapp.core.logs import get_logger
from taskapp.core.secrets import fingerprint
from taskapp.relay import protocol as p
from taskapp.relay.server.agent_wire import WIRE_EXTENSION
from taskapp.relay.server.leases import Lease, iso, text_field
from taskapp.relay.server.session import AgentSession
from taskapp.relay.server.state import (
    Receive,
    RelayState,
    Scope,
    Send,
    bearer,
    error_payload,
    json_body,
)

__all__ = ["agent_socket"]

logger = get_logger("taskapp.relay")


async def agent_socket(state: RelayState, scope: Scope, receive: Receive, send: Send) -> None:  # noqa: C901, PLR0915 -- complexity 19 and 82 statements at most (issue 21 ratchet); split when next changed
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    token = bearer(scope["headers"])
    lease = _lease_of(state, token)
    if lease is None:
        state.counters["unauthorized"] += 1
        await _reject_ws(state, scope, send, 401, "unauthorized")
        return
    if state.draining:
        await _reject_ws(state, scope, send, 503, "relay_draining")
        return
    wire = (scope.get("extensions") or {}).get(WIRE_EXTENSION, {}).get("wire")
    if wire is None:
        logger.error(
            "agent socket refused: it needs the relay server's WebSocket protocol "
            "(taskapp relay serve / RelayServer), not another ASGI server's"
        )
        await send({"type": "websocket.close", "code": 1011})
        return
    await send({"type": "websocket.accept"})
    try:
        async with asyncio.timeout(state.settings.attach_timeout):
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
    version = p.negotiate_version(attach, state.settings.protocols)
    session = AgentSession(state, lease, send, wire, version)
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
            rejected.append({"lease_id": text_field(lease_id, 128), "code": "UNAUTHORIZED"})
    capabilities = attach.get("capabilities")
    caps: Mapping[str, Any] = capabilities if isinstance(capabilities, Mapping) else {}
    advert = caps.get("max_inflight")
    if isinstance(advert, int) and not isinstance(advert, bool) and advert > 0:
        session.max_inflight = min(session.max_inflight, advert)
    chunk_advert = caps.get("max_body_chunk_bytes")
    if isinstance(chunk_advert, int) and not isinstance(chunk_advert, bool):
        session.v1_chunk = max(1024, min(chunk_advert, state.settings.max_frame_bytes))
    ack: dict[str, Any] = {
        "type": p.ATTACH_ACK,
        "agent_id": text_field(attach.get("agent_id"), 128),
        "accepted_leases": accepted,
        "rejected_leases": rejected,
        "protocol_version": version,
        "session_id": session.session_id,
    }
    if version == p.V2:
        _negotiate_v2(state, session, lease, caps, ack)
    session.send_text(ack)
    if not accepted:
        await session.close(4404, "no lease accepted")
        return
    previous = lease.session
    lease.session = session
    lease.detached_since = None
    lease.last_seen = time.time()
    state.counters["agent_connects"] += 1
    logger.info(
        "agent attached to lease %s (protocol v%d, session %s, agent token %s)",
        lease.lease_id,
        version,
        session.session_id,
        fingerprint(token or ""),
    )
    if isinstance(previous, AgentSession) and not previous.closed:
        state.spawn(_retire(state, previous))
    try:
        wire.attach(session)  # frames now go straight to the session
        while (await receive())["type"] != "websocket.disconnect":
            pass
    finally:
        session.closed = True
        session.fail_all("AGENT_GONE")
        if lease.session is session:
            lease.session = None
            lease.detached_since = time.monotonic()
            logger.info("agent of lease %s disconnected", lease.lease_id)


def _lease_of(state: RelayState, token: str | None) -> Lease | None:
    """The live lease whose agent token is ``token`` (compared in constant time)."""
    lease = state.store.by_agent.get(p.token_hash(token)) if token else None
    if lease is None or not p.token_matches(token, [lease.agent_hash]):
        return None
    return lease if lease.expires_at > time.time() else None


def _negotiate_v2(
    state: RelayState,
    session: AgentSession,
    lease: Lease,
    caps: Mapping[str, Any],
    ack: dict[str, Any],
) -> None:
    """v2's windows and frame size from the agent's capabilities, into ``session`` and
    ``ack`` (its limits, heartbeat and lease)."""
    flow = caps.get("flow_control")
    flow_caps: Mapping[str, Any] = flow if isinstance(flow, Mapping) else {}
    session.stream_window = p.clamp_window(
        flow_caps.get("stream_window"),
        state.settings.stream_window,
        state.settings.stream_window,
    )
    session.conn_window = max(
        session.stream_window,
        p.clamp_window(
            flow_caps.get("conn_window"),
            state.settings.conn_window,
            state.settings.conn_window,
        ),
    )
    frame_advert = caps.get("max_body_chunk_bytes")
    if isinstance(frame_advert, int) and not isinstance(frame_advert, bool):
        session.max_frame = max(1024, min(frame_advert, state.settings.max_frame_bytes))
    # Both directions start with the same negotiated windows.
    session.conn_credit = p.Credit(session.conn_window)
    session.conn_inbound = p.InboundWindow(session.conn_window)
    ack["limits"] = {
        **state.limits(),
        "max_inflight": session.max_inflight,
        "stream_window": session.stream_window,
        "conn_window": session.conn_window,
        "max_frame_bytes": session.max_frame,
    }
    ack["heartbeat"] = state.heartbeat()
    ack["leases"] = [
        {
            "lease_id": lease.lease_id,
            "expires_at": iso(lease.expires_at),
            "renew_after_s": int(max(0.0, lease.expires_at - time.time()) * 2 / 3),
        }
    ]


async def _retire(state: RelayState, session: AgentSession) -> None:
    session.goaway("replaced")
    if session.streams:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(state.settings.drain_timeout):
                await session.idle.wait()
    await session.close(1000, "replaced by a new connection")


async def _reject_ws(state: RelayState, scope: Scope, send: Send, status: int, code: str) -> None:
    extensions = scope.get("extensions") or {}
    if "websocket.http.response" in extensions:
        _, headers, body = json_body(status, error_payload(code))
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 4401 if status == 401 else 1013})
