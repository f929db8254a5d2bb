"""The lease REST API (admin and agent tokens), ``/healthz`` and ``/metrics``.

::

    POST   /api/v1/synthtunnel/leases                      admin   create (201)
    GET    /api/v1/synthtunnel/leases                      admin   list
    GET    /api/v1/synthtunnel/leases/{id}                 admin or the lease's agent token
    POST   /api/v1/synthtunnel/leases/{id}/renew           admin or agent token
    POST   /api/v1/synthtunnel/leases/{id}/worker-token    admin or agent token (rotate)
    POST   /api/v1/synthtunnel/leases/{id}/token:refresh   the same (synth-ai 0.10-0.17)
    DELETE /api/v1/synthtunnel/leases/{id}                 admin or agent token
    GET    /healthz                                        open
    GET    /metrics                                        admin (Prometheus text)

Each endpoint is a module-level ``async def handler(state, request)`` taking the
:class:`RelayState` (as datasette's views take the ``Datasette`` object); :data:`ROUTES` is
the table, and :func:`build_router` binds it to one relay's state.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, Router

from taskapp.core.logs import get_logger
from taskapp.relay import protocol as p
from taskapp.relay.server.leases import Lease, iso, text_field
from taskapp.relay.server.settings import new_token
from taskapp.relay.server.state import RelayState, error_payload

__all__ = ["MAX_REST_BODY", "ROUTES", "build_router"]

logger = get_logger("taskapp.relay")

MAX_REST_BODY = 64 * 1024
MAX_METADATA = 4096

Handler = Callable[[RelayState, Request], Awaitable[Response]]


# -- shared steps ---------------------------------------------------------------------------


def error(state: RelayState, status: int, code: str, message: str = "") -> Response:
    """The error envelope (401s are counted for /metrics)."""
    if status == 401:
        state.counters["unauthorized"] += 1
    return JSONResponse(
        error_payload(code, message),
        status_code=status,
        headers={"cache-control": "no-store"},
    )


async def json_object(state: RelayState, request: Request) -> dict[str, Any] | Response:
    """The request body as a JSON object ({} when empty), or the error to answer."""
    body = await request.body()
    if len(body) > MAX_REST_BODY:
        return error(state, 413, "request_too_large", "lease API bodies are limited to 64 KiB")
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return error(state, 400, "bad_request", "the body must be JSON")
    except RecursionError:
        return error(state, 400, "bad_request", "the body is JSON nested too deeply")
    if not isinstance(data, dict):
        return error(state, 400, "bad_request", "the body must be a JSON object")
    return data


def lease_for(state: RelayState, request: Request) -> Lease | Response:
    """The live lease in the path, when the caller is an admin or that lease's agent.

    401 comes before 404, so a stranger learns nothing about which lease ids exist.
    """
    lease = state.store.by_id.get(request.path_params["lease_id"])
    if lease is not None and lease.expires_at <= time.time():
        lease = None
    headers = request.scope["headers"]
    if state.admin_name(headers) is None and not (
        lease is not None and state.is_lease_agent(headers, lease)
    ):
        return error(state, 401, "unauthorized")
    if lease is None:
        return error(state, 404, "not_found")
    return lease


def positive_int(value: Any) -> int | None:
    """``value`` when it is a positive int (not a bool), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def new_lease(
    state: RelayState, admin: str, ttl: int, body: dict[str, Any]
) -> tuple[Lease, str, str]:
    """A lease with fresh tokens: (lease, agent token, worker token); only hashes are kept."""
    agent_token, worker_token = new_token(), new_token()
    now = time.time()
    raw_metadata = body.get("metadata")
    lease = Lease(
        lease_id="lease_" + secrets.token_hex(12),
        route_token=secrets.token_hex(16),
        agent_hash=p.token_hash(agent_token),
        worker_hash=p.token_hash(worker_token),
        expires_at=now + ttl,
        created_at=now,
        admin_name=admin,
        client_instance_id=text_field(body.get("client_instance_id"), 128),
        metadata=raw_metadata if isinstance(raw_metadata, dict) else {},
        detached_since=time.monotonic(),
    )
    return lease, agent_token, worker_token


def metadata_error(state: RelayState, body: dict[str, Any]) -> Response | None:
    raw_metadata = body.get("metadata")
    try:
        size = len(json.dumps(raw_metadata if isinstance(raw_metadata, dict) else {}))
    except (ValueError, RecursionError):
        return error(state, 400, "bad_request", "metadata is nested too deeply")
    if size > MAX_METADATA:
        return error(state, 400, "bad_request", "metadata larger than 4 KiB")
    return None


# -- handlers -------------------------------------------------------------------------------


async def create(state: RelayState, request: Request) -> Response:
    admin = state.admin_name(request.scope["headers"])
    if admin is None:
        return error(state, 401, "unauthorized")
    body = await json_object(state, request)
    if isinstance(body, Response):
        return body
    if len(state.store.by_id) >= state.settings.max_leases:
        return error(state, 429, "too_many_leases", "the relay's lease limit is reached")
    ttl = min(
        positive_int(body.get("requested_ttl_seconds")) or state.settings.default_ttl,
        state.settings.max_ttl,
    )
    refused = metadata_error(state, body)
    if refused is not None:
        return refused
    lease, agent_token, worker_token = new_lease(state, admin, ttl, body)
    state.store.add(lease)
    state.store.save()
    state.counters["leases_created"] += 1
    logger.info(
        "lease %s created by admin token %r (ttl %ds, route rt_%s)",
        lease.lease_id,
        admin,
        ttl,
        lease.route_token,
    )
    base_url = state.settings.public_base
    return JSONResponse(
        {
            "lease_id": lease.lease_id,
            "route_token": lease.route_token,
            "public_base_url": base_url,
            "public_url": state.public_url_of(lease),
            "agent_connect": {
                "transport": "websocket",
                "url": state.settings.agent_url,
                "agent_token": agent_token,
            },
            "worker_token": worker_token,
            "expires_at": iso(lease.expires_at),
            "ttl_seconds": ttl,
            "limits": state.limits(),
            "heartbeat": state.heartbeat(),
            "protocol_versions": sorted(state.settings.protocols),
            "renew_url": f"{base_url}{p.LEASES_PATH}/{lease.lease_id}/renew",
        },
        status_code=201,
        headers={"cache-control": "no-store"},
    )


async def list_leases(state: RelayState, request: Request) -> Response:
    if state.admin_name(request.scope["headers"]) is None:
        return error(state, 401, "unauthorized")
    return JSONResponse({"leases": [state.lease_json(x) for x in state.store.by_id.values()]})


async def get_lease(state: RelayState, request: Request) -> Response:
    lease = lease_for(state, request)
    if isinstance(lease, Response):
        return lease
    return JSONResponse(state.lease_json(lease))


async def renew(state: RelayState, request: Request) -> Response:
    lease = lease_for(state, request)
    if isinstance(lease, Response):
        return lease
    body = await json_object(state, request)
    if isinstance(body, Response):
        return body
    ttl = body.get("requested_ttl_seconds")
    state.renew(lease, ttl if isinstance(ttl, int) and not isinstance(ttl, bool) else None)
    return JSONResponse(
        {
            "lease_id": lease.lease_id,
            "expires_at": iso(lease.expires_at),
            "ttl_seconds": int(lease.expires_at - time.time()),
        }
    )


async def rotate(state: RelayState, request: Request) -> Response:
    lease = lease_for(state, request)
    if isinstance(lease, Response):
        return lease
    worker_token = new_token()
    lease.prev_worker_hash = lease.worker_hash
    lease.prev_valid_until = time.time() + state.settings.worker_token_grace
    lease.worker_hash = p.token_hash(worker_token)
    state.store.save()
    logger.info("lease %s: worker token rotated", lease.lease_id)
    return JSONResponse(
        {
            "lease_id": lease.lease_id,
            "worker_token": worker_token,
            "previous_valid_until": iso(lease.prev_valid_until),
        },
        headers={"cache-control": "no-store"},
    )


async def delete(state: RelayState, request: Request) -> Response:
    lease = lease_for(state, request)
    if isinstance(lease, Response):
        return lease
    await state.end_lease(lease, "revoked")
    state.store.save()
    logger.info("lease %s deleted", lease.lease_id)
    return JSONResponse(
        {
            "lease_id": lease.lease_id,
            "deleted": True,
            # synth-ai's LeaseStatusResponse
            "status": "closed",
            "connected": False,
            "inflight": lease.inflight,
            "expires_at": iso(lease.expires_at),
            "last_seen_at": iso(lease.last_seen) if lease.last_seen else None,
        }
    )


async def healthz(state: RelayState, request: Request) -> Response:
    return JSONResponse({"ok": True, "draining": state.draining})


async def metrics(state: RelayState, request: Request) -> Response:
    if state.admin_name(request.scope["headers"]) is None:
        return error(state, 401, "unauthorized")
    return PlainTextResponse(state.metrics_text())


# -- the table ------------------------------------------------------------------------------

_LEASE = p.LEASES_PATH + "/{lease_id}"

#: (method, path under the relay's base path, handler)
ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("POST", p.LEASES_PATH, create),
    ("GET", p.LEASES_PATH, list_leases),
    ("GET", _LEASE, get_lease),
    ("DELETE", _LEASE, delete),
    ("POST", _LEASE + "/renew", renew),
    ("POST", _LEASE + "/worker-token", rotate),
    # synth-ai 0.10-0.17's lease client (refresh_synth_worker_token)
    ("POST", _LEASE + "/token:refresh", rotate),
    ("GET", "/healthz", healthz),
    ("GET", "/metrics", metrics),
)


def _bind(state: RelayState, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await handler(state, request)

    endpoint.__name__ = handler.__name__
    return endpoint


def build_router(state: RelayState) -> Router:
    """The lease REST API, /healthz and /metrics as a Starlette router bound to ``state``."""
    base = state.base_path
    return Router(
        routes=[
            Route(base + path, _bind(state, handler), methods=[method])
            for method, path, handler in ROUTES
        ]
    )
