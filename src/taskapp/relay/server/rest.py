"""The lease REST API (admin and agent tokens), ``/healthz`` and ``/metrics``.

::

    POST   /api/v1/synthtunnel/leases                      admin   create (201)
    GET    /api/v1/synthtunnel/leases                      admin   list
    GET    /api/v1/synthtunnel/leases/{id}                 admin or the lease's agent token
    POST   /api/v1/synthtunnel/leases/{id}/renew           admin or agent token
    POST   /api/v1/synthtunnel/leases/{id}/worker-token    admin or agent token (rotate)
    POST   /api/v1/synthtunnel/leases/{id}/token:refresh   the same (synth-ai 0.10-0.17)
    DELETE /api/v1/synthtunnel/leases/{id}                 admin or agent token
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from taskapp.core.logs import get_logger
from taskapp.relay import protocol as p
from taskapp.relay.server.leases import Lease, iso, text_field
from taskapp.relay.server.settings import new_token
from taskapp.relay.server.state import RelayState, error_payload

__all__ = ["MAX_REST_BODY", "build_router"]

logger = get_logger("taskapp.relay")

MAX_REST_BODY = 64 * 1024


def build_router(state: RelayState) -> Any:
    """The lease REST API, /healthz and /metrics as a Starlette router."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route, Router

    base = state.base_path

    def error(status: int, code: str, message: str = "") -> Response:
        if status == 401:
            state.counters["unauthorized"] += 1
        return JSONResponse(
            error_payload(code, message),
            status_code=status,
            headers={"cache-control": "no-store"},
        )

    async def json_object(request: Request) -> dict[str, Any] | Response:
        """The request body as a JSON object ({} when empty), or the error to answer."""
        body = await request.body()
        if len(body) > MAX_REST_BODY:
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
        lease = state.store.by_id.get(request.path_params["lease_id"])
        if lease is None or lease.expires_at <= time.time():
            return None
        return lease

    def allowed(request: Request, lease: Lease | None) -> bool:
        headers = request.scope["headers"]
        if state.admin_name(headers) is not None:
            return True
        return lease is not None and state.is_lease_agent(headers, lease)

    async def create(request: Request) -> Response:
        admin = state.admin_name(request.scope["headers"])
        if admin is None:
            return error(401, "unauthorized")
        body = await json_object(request)
        if isinstance(body, Response):
            return body
        if len(state.store.by_id) >= state.settings.max_leases:
            return error(429, "too_many_leases", "the relay's lease limit is reached")
        ttl = body.get("requested_ttl_seconds")
        ttl = ttl if isinstance(ttl, int) and not isinstance(ttl, bool) and ttl > 0 else None
        ttl = min(ttl or state.settings.default_ttl, state.settings.max_ttl)
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
            client_instance_id=text_field(body.get("client_instance_id"), 128),
            metadata=metadata,
            detached_since=time.monotonic(),
        )
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

    async def list_leases(request: Request) -> Response:
        if state.admin_name(request.scope["headers"]) is None:
            return error(401, "unauthorized")
        return JSONResponse({"leases": [state.lease_json(x) for x in state.store.by_id.values()]})

    async def get_lease(request: Request) -> Response:
        lease = lease_or_404(request)
        if not allowed(request, lease):
            return error(401, "unauthorized")
        if lease is None:
            return error(404, "not_found")
        return JSONResponse(state.lease_json(lease))

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
        state.renew(lease, ttl if isinstance(ttl, int) and not isinstance(ttl, bool) else None)
        return JSONResponse(
            {
                "lease_id": lease.lease_id,
                "expires_at": iso(lease.expires_at),
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

    async def delete(request: Request) -> Response:
        lease = lease_or_404(request)
        if not allowed(request, lease):
            return error(401, "unauthorized")
        if lease is None:
            return error(404, "not_found")
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

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True, "draining": state.draining})

    async def metrics(request: Request) -> Response:
        if state.admin_name(request.scope["headers"]) is None:
            return error(401, "unauthorized")
        return PlainTextResponse(state.metrics_text())

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
