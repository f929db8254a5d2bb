"""The relay's shared state: one object every surface (REST, agent socket, ingress) and
every agent session is handed, as datasette's views are handed ``datasette``.

Holds the settings, the lease store, the counters and gauges, and the helpers that read or
change them; the error envelope of the relay's own answers lives here too.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from taskapp.core.errors import error_body
from taskapp.relay import protocol as p
from taskapp.relay.server.leases import Lease, LeaseStore, iso
from taskapp.relay.server.settings import RelaySettings

__all__ = ["ERROR_MESSAGES", "Message", "Receive", "RelayState", "Scope", "Send"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


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


def error_payload(code: str, message: str = "") -> dict[str, Any]:
    """The task app's error envelope, for the relay's own errors."""
    return error_body(code, message or ERROR_MESSAGES.get(code) or code.replace("_", " ").lower())


def json_body(
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


async def respond(
    send: Send,
    status: int,
    code: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    message: str = "",
) -> None:
    status, out, body = json_body(status, error_payload(code, message), headers)
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})


def bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"authorization":
            text = value.decode("latin-1").strip()
            if text[:7].lower() == "bearer ":
                return text[7:].strip() or None
    return None


class RelayState:
    """Settings, leases, counters and gauges of one relay, and the helpers on them."""

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
        parts = urllib.parse.urlsplit(settings.public_base)
        self.proto = parts.scheme
        self.host = parts.netloc
        self.base_path = parts.path.rstrip("/")

    # helpers ---------------------------------------------------------------------------

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def admin_name(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        token = bearer(headers)
        if not token:
            return None
        digest = p.token_hash(token)
        found: str | None = None
        for admin in self.settings.admin_tokens:
            if secrets.compare_digest(digest, admin.hash) and found is None:
                found = admin.name
        return found

    def is_lease_agent(self, headers: list[tuple[bytes, bytes]], lease: Lease) -> bool:
        token = bearer(headers)
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
            "expires_at": iso(lease.expires_at),
            "renew_after_s": int(remaining * 2 / 3),
            "reason": reason,
        }

    def lease_json(self, lease: Lease) -> dict[str, Any]:
        session = lease.session
        return {
            "lease_id": lease.lease_id,
            "route_token": lease.route_token,
            "public_url": self.public_url_of(lease),
            "expires_at": iso(lease.expires_at),
            "state": "active" if session is not None else "detached",
            "agent_connected": session is not None,
            # synth-ai's LeaseStatusResponse names
            "status": "active" if session is not None else "pending",
            "connected": session is not None,
            "last_seen_at": iso(lease.last_seen) if lease.last_seen else None,
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

    async def end_lease(self, lease: Lease, state: str) -> None:
        self.store.remove(lease)
        session = lease.session
        lease.session = None
        if session is not None:
            if session.version == p.V2:
                # Both only write; a connection already gone is noted, not raised.
                session.send_text(self.lease_state(lease, state))
                session.goaway(f"lease_{state}")
            session.fail_all("LEASE_GONE")
            await session.close(4404, f"lease {state}")

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
