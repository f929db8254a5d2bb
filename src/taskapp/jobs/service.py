"""The job backend's HTTP API (FastAPI) and web page.

Every ``/api`` route needs ``Authorization: Bearer <key>`` (compared in constant time);
``/`` (the page, which asks for the key in the browser) and ``/health`` do not::

    POST   /api/jobs                    submit (header Idempotency-Key: the same key and
                                        body give the same job, 200; another body, 409)
    GET    /api/jobs?status=&since=&until=&cursor=&limit=   newest first, next_cursor
    GET    /api/jobs/{id}?wait=&status= status, scores, progress (long poll)
    POST   /api/jobs/{id}/pause|resume|stop|cancel|retry    the lifecycle controls
    DELETE /api/jobs/{id}               a finished job, with its events and checkpoint
    GET    /api/jobs/{id}/events?after=&limit=   paged history, by sequence number
    GET    /api/jobs/{id}/events/stream?after=   the same as server-sent events, until done
    GET    /api/jobs/{id}/result        best prompt, seed prompt, scores, candidates, history
    GET    /api/jobs/{id}/seeds         the candidate x seed score matrix (fixed / broke)
    GET    /api/stream?since=           every job's changes as server-sent events

The page (:mod:`.page`) is served at ``/``, ``/jobs``, ``/jobs/{id}`` and ``/compare``,
its script and style sheet at ``/static/{name}``.

The API is stateless over its :class:`~taskapp.jobs.store.JobStore`: any number of API
processes may serve one PostgreSQL store, with or without local workers. Errors are
``{"error": {"type", "message"}}``; the task app's key and worker token are stored (to
resume elsewhere) but never returned.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request  # module level: FastAPI resolves annotations here
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from taskapp.core.errors import ConfigurationError
from taskapp.core.logs import get_logger
from taskapp.core.secrets import register_secret
from taskapp.jobs.pool import JobPool
from taskapp.jobs.store import (
    TERMINAL,
    JobStore,
    StoreConflictError,
    StoreError,
    request_hash,
)
from taskapp.relay.protocol import is_ingress_url

__all__ = ["ApiError", "BackendApi", "create_backend_app"]

logger = get_logger("taskapp.jobs")


class ApiError(Exception):
    """An error answer: ``{"error": {"type": kind, "message": message}}``."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse({"error": {"type": exc.kind, "message": exc.message}}, exc.status)


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StoreError)
    return JSONResponse({"error": {"type": "store_error", "message": exc.message}}, 503)


async def _conflict(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StoreConflictError)
    return JSONResponse({"error": {"type": "conflict", "message": exc.message}}, 409)


#: an Idempotency-Key: 1-200 printable ASCII characters
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


def _timestamp(value: str | None, name: str) -> float | None:
    """``since``/``until``: Unix seconds or an ISO 8601 time (UTC when no zone is given)."""
    if value is None or value == "":
        return None
    import datetime as dt

    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(
            400, "bad_request", f"{name}: Unix seconds or an ISO 8601 time, got {value[:40]!r}"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


class BackendApi:
    """The route handlers, over one store, pool and key."""

    def __init__(self, store: JobStore, pool: JobPool | None, api_key: str) -> None:
        self.store = store
        self.pool = pool
        self._expected = api_key.encode()

    def authorize(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self._expected
        ):
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong backend key: send Authorization: Bearer <key> (the key "
                "of --api-key-file or $TASKAPP_BACKEND_API_KEY)",
            )

    def job_or_404(self, job_id: str) -> dict[str, Any]:
        job = self.store.get(job_id)
        if job is None:
            raise ApiError(404, "not_found", f"no job {job_id!r}")
        return job

    async def page(self, request: Request) -> HTMLResponse:
        from taskapp.jobs.page import page_html

        return HTMLResponse(page_html(_actions(request.app)), headers=_NO_STORE)

    async def static(self, name: str) -> Response:
        from taskapp.jobs.page import asset

        found = asset(name)
        if found is None:
            raise ApiError(404, "not_found", f"no file {name!r} under /static/")
        return Response(found[0], media_type=found[1], headers=_NO_STORE)

    async def health(self) -> dict[str, Any]:
        pool = self.pool
        return {
            "status": "ok",
            "store": self.store.kind,
            "running": pool.running() if pool is not None else [],
            "workers": pool.workers if pool is not None else 0,
        }

    def submit(self, request: Request, body: dict[str, Any]) -> Any:
        """A new job (201), or with an ``Idempotency-Key`` seen before for the same
        body, that job again (200); the same key with another body is a 409."""
        self.authorize(request)
        idempotency_key = request.headers.get("idempotency-key")
        if idempotency_key is not None and not _IDEMPOTENCY_KEY.match(idempotency_key):
            raise ApiError(
                400, "bad_request", "Idempotency-Key: 1 to 200 printable ASCII characters"
            )
        try:
            spec, url, key, token = _submission(body)
        except ConfigurationError as exc:
            raise ApiError(400, "configuration_error", exc.message) from None
        from taskapp.jobs.views import job_labels

        register_secret(key)
        register_secret(token)
        config = spec.config.to_dict()
        job_id, created = self.store.create(
            config,
            task_app_url=url.rstrip("/"),
            task_app_key=key or None,
            worker_token=token,
            warnings=spec.warnings,
            idempotency_key=idempotency_key,
            request_hash=request_hash(body) if idempotency_key is not None else None,
            labels=job_labels(config, body.get("config_name")),
        )
        if self.pool is not None:
            self.pool.notify()
        job = self.job_or_404(job_id)
        job["warnings"] = spec.warnings
        if not created:
            logger.info("job %s: submitted again with its Idempotency-Key", job_id)
            return JSONResponse(job, 200)
        logger.info("job %s submitted for %s", job_id, url)
        return job

    def list_jobs(
        self,
        request: Request,
        limit: int = 50,
        offset: int = 0,
        status: str | None = None,
        since: str | None = None,
        until: str | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Newest first; ``status`` (comma-separated), ``since``/``until`` (created at,
        Unix seconds or ISO 8601), and ``cursor``: the ``next_cursor`` of the page before
        (None on the last page)."""
        self.authorize(request)
        if not 1 <= limit <= 500 or offset < 0:
            raise ApiError(400, "bad_request", "limit must be 1..500 and offset >= 0")
        statuses = [s for s in (status or "").split(",") if s] or None
        start, end = _timestamp(since, "since"), _timestamp(until, "until")
        try:
            jobs = self.store.list_jobs(
                limit=limit, offset=offset, status=statuses, since=start, until=end,
                cursor=cursor,
            )  # fmt: skip
            total = self.store.count(status=statuses, since=start, until=end)
        except ConfigurationError as exc:
            raise ApiError(400, "bad_request", exc.message) from None
        return {
            "jobs": jobs,
            "total": total,
            "limit": limit,
            "offset": offset,
            "next_cursor": self.store.next_cursor(jobs, limit),
        }

    def get_job(
        self, request: Request, job_id: str, wait: float = 0.0, status: str | None = None
    ) -> dict[str, Any]:
        """``?wait=S&status=running``: answer when the status is no longer ``running``,
        or after S seconds (at most 60): a long poll."""
        self.authorize(request)
        job = self.job_or_404(job_id)
        if wait > 0 and status is not None:
            job = self.store.wait_for_change(job_id, status, min(wait, 60.0)) or job
        return job

    def events(
        self, request: Request, job_id: str, after: int = 0, limit: int = 500
    ) -> dict[str, Any]:
        self.authorize(request)
        job = self.job_or_404(job_id)
        page = self.store.events(job_id, after=after, limit=max(1, min(limit, 5000)))
        return {
            "events": page,
            "next_after": page[-1]["seq"] if page else after,
            "status": job["status"],
        }

    async def stream(self, request: Request, job_id: str, after: int = 0) -> StreamingResponse:
        self.authorize(request)
        self.job_or_404(job_id)
        return StreamingResponse(
            self._sse(request, job_id, after),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _sse(self, request: Request, job_id: str, after: int) -> AsyncIterator[str]:
        last = after
        while True:
            page = await asyncio.to_thread(self.store.events, job_id, after=last, limit=500)
            for event in page:
                last = event["seq"]
                yield f"id: {last}\nevent: {event['kind']}\ndata: {json.dumps(event)}\n\n"
            if page:
                continue
            job = await asyncio.to_thread(self.store.get, job_id)
            if job is None or job["status"] in TERMINAL:
                end = json.dumps({"status": job and job["status"]})
                yield f"event: end\ndata: {end}\n\n"
                return
            if await request.is_disconnected():
                return
            yield ": keep-alive\n\n"
            await asyncio.sleep(0.25)

    async def changes(self, request: Request, since: float = 0.0) -> StreamingResponse:
        """Every job's changes (``event: job``, the job as data), from ``since`` on (an
        ``updated_at`` value; 0: every job first). The page's list follows this stream."""
        self.authorize(request)
        return StreamingResponse(
            self._changes(request, since),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _changes(self, request: Request, since: float) -> AsyncIterator[str]:
        # Writers stamp updated_at just before their transaction commits, so a change can
        # become visible with a stamp older than one already sent: look back a little
        # and skip what was sent already.
        sent: dict[str, float] = {}
        cursor = since
        quiet = 0.0
        while True:
            rows = await asyncio.to_thread(
                self.store.changed_since, cursor - _LOOK_BACK_S, limit=_CHANGES_PAGE
            )
            for job in rows:
                if sent.get(job["id"]) == job["updated_at"]:
                    continue
                sent[job["id"]] = job["updated_at"]
                yield f"event: job\ndata: {json.dumps(job, default=str)}\n\n"
                quiet = 0.0
            if rows:
                cursor = max(cursor, rows[-1]["updated_at"])
                sent = {k: v for k, v in sent.items() if v > cursor - _LOOK_BACK_S}
            if await request.is_disconnected():
                return
            if quiet >= _KEEP_ALIVE_S:
                yield ": keep-alive\n\n"
                quiet = 0.0
            await asyncio.sleep(_POLL_S)
            quiet += _POLL_S

    def seeds(self, request: Request, job_id: str) -> dict[str, Any]:
        from taskapp.jobs.views import seed_matrix

        self.authorize(request)
        self.job_or_404(job_id)
        events = self.store.events(job_id, limit=100_000)
        return {"job_id": job_id, **seed_matrix(events, self.store.result(job_id))}

    def control(self, action: str) -> Any:
        """The handler of ``POST /api/jobs/{id}/<action>``."""

        def handler(request: Request, job_id: str) -> dict[str, Any]:
            self.authorize(request)
            job = self.store.control(job_id, action)
            if job is None:
                raise ApiError(404, "not_found", f"no job {job_id!r}")
            if self.pool is not None:
                self.pool.signal(job_id, action)
                self.pool.notify()
            logger.info("job %s: %s (now %s)", job_id, action, job["status"])
            return job

        handler.__name__ = action
        return handler

    def delete(self, request: Request, job_id: str) -> dict[str, Any]:
        self.authorize(request)
        if self.store.delete(job_id) is None:
            raise ApiError(404, "not_found", f"no job {job_id!r}")
        logger.info("job %s deleted", job_id)
        return {"id": job_id, "deleted": True}

    def result(self, request: Request, job_id: str) -> dict[str, Any]:
        self.authorize(request)
        job = self.job_or_404(job_id)
        return {"job": job, "result": self.store.result(job_id)}


_NO_STORE = {"Cache-Control": "no-cache"}
_LOOK_BACK_S = 2.0
_CHANGES_PAGE = 5000
_POLL_S = 0.1
_KEEP_ALIVE_S = 15.0


def _actions(app: Any) -> list[str]:
    """The job actions this app serves: ``POST /api/jobs/{job_id}/NAME`` routes, and
    ``delete`` for ``DELETE /api/jobs/{job_id}``."""
    found: list[str] = []
    for route in app.routes:
        path, methods = getattr(route, "path", ""), getattr(route, "methods", None) or set()
        if path == "/api/jobs/{job_id}" and "DELETE" in methods:
            found.append("delete")
        elif path.startswith("/api/jobs/{job_id}/") and "POST" in methods:
            found.append(path.rsplit("/", 1)[1])
    return found


def _submission(body: dict[str, Any]) -> tuple[Any, str, str | None, str | None]:
    """(PromptLearningSpec, task app URL, key, worker token) of a submit request."""
    from taskapp.optimize.prompt_learning import parse_prompt_learning

    text = body.get("config_toml")
    if not isinstance(text, str):
        raise ConfigurationError("config_toml (the TOML text) is required")
    overrides = body.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigurationError("overrides must be an object")
    source = str(body.get("config_name") or "config")
    spec = parse_prompt_learning(text, source=source, overrides=overrides)
    url = body.get("task_app_url") or spec.task_app_url
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigurationError(
            "no task app URL: pass task_app_url, or set prompt_learning.task_app_url"
        )
    key = body.get("task_app_api_key") or None
    if not key and spec.task_app_api_key:
        key = spec.task_app_key()
    token = body.get("task_app_worker_token") or None
    if is_ingress_url(url) and not token:
        raise ConfigurationError(
            f"{url} is a taskapp relay URL: it needs the lease's worker token "
            "(task_app_worker_token)"
        )
    return spec, url, key, token


def create_backend_app(store: JobStore, pool: JobPool | None, api_key: str) -> Any:
    """The FastAPI app of ``taskapp backend serve`` over ``store`` and ``pool`` (None: an
    API process without local workers)."""
    if not api_key:
        raise ConfigurationError("the backend needs an API key")
    register_secret(api_key)
    api = BackendApi(store, pool, api_key)
    app = FastAPI(title="taskapp job backend", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(StoreConflictError, _conflict)
    for path in ("/", "/jobs", "/jobs/{job_id}", "/compare"):
        app.add_api_route(path, api.page, methods=["GET"], response_class=HTMLResponse)
    app.add_api_route("/static/{name}", api.static, methods=["GET"])
    app.add_api_route("/api/stream", api.changes, methods=["GET"])
    app.add_api_route("/health", api.health, methods=["GET"])
    app.add_api_route("/api/jobs", api.submit, methods=["POST"], status_code=201)
    app.add_api_route("/api/jobs", api.list_jobs, methods=["GET"])
    app.add_api_route("/api/jobs/{job_id}", api.get_job, methods=["GET"])
    app.add_api_route("/api/jobs/{job_id}/events", api.events, methods=["GET"])
    app.add_api_route("/api/jobs/{job_id}/events/stream", api.stream, methods=["GET"])
    for action in ("pause", "resume", "stop", "cancel", "retry"):
        app.add_api_route(f"/api/jobs/{{job_id}}/{action}", api.control(action), methods=["POST"])
    app.add_api_route("/api/jobs/{job_id}", api.delete, methods=["DELETE"])
    app.add_api_route("/api/jobs/{job_id}/result", api.result, methods=["GET"])
    app.add_api_route("/api/jobs/{job_id}/seeds", api.seeds, methods=["GET"])
    return app
