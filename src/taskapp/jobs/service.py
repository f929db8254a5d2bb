"""The job backend's HTTP API (FastAPI) and web page.

Every ``/api`` route needs ``Authorization: Bearer <key>`` (compared in constant time);
``/`` (the page, which asks for the key in the browser) and ``/health`` do not::

    POST /api/jobs                      submit: {config_toml, overrides, task_app_url,
                                        task_app_api_key, task_app_worker_token} -> job
    GET  /api/jobs?limit=&offset=&status=   newest first, with total
    GET  /api/jobs/{id}?wait=&status=   status, scores, progress (long poll: answers when
                                        the status is no longer ``status``, or after wait s)
    GET  /api/jobs/{id}/events?after=&limit=   paged history
    GET  /api/jobs/{id}/events/stream?after=   the same as server-sent events, until done
    POST /api/jobs/{id}/cancel          stop it within seconds (status "cancelled")
    GET  /api/jobs/{id}/result          best prompt, seed prompt, scores, candidates, history
    GET  /api/jobs/{id}/seeds           the candidate x seed score matrix (fixed / broke)
    GET  /api/stream?since=             every job's changes as server-sent events

The page (:mod:`.page`) is served at ``/``, ``/jobs``, ``/jobs/{id}`` and ``/compare``,
its script and style sheet at ``/static/{name}``.

Errors are ``{"error": {"type", "message"}}``; the task app's key and worker token are
stored (to resume after a restart) but never returned.
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
from taskapp.jobs.store import TERMINAL, JobStore, StoreError

__all__ = ["RELAY_PATH", "ApiError", "BackendApi", "create_backend_app", "is_relay_url"]

logger = get_logger("taskapp.jobs")

#: a taskapp relay's public lease URL ends in /s/rt_<route>
RELAY_PATH = re.compile(r"/s/rt_[A-Za-z0-9_-]+/?$")


def is_relay_url(url: str) -> bool:
    return bool(RELAY_PATH.search(url.split("?", 1)[0]))


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


class BackendApi:
    """The route handlers, over one store, pool and key."""

    def __init__(self, store: JobStore, pool: JobPool, api_key: str) -> None:
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
        return {"status": "ok", "running": self.pool.running(), "workers": self.pool.workers}

    def submit(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        self.authorize(request)
        try:
            spec, url, key, token = _submission(body)
        except ConfigurationError as exc:
            raise ApiError(400, "configuration_error", exc.message) from None
        from taskapp.jobs.views import job_labels

        register_secret(key)
        register_secret(token)
        config = spec.config.to_dict()
        job_id = self.store.create(
            config,
            task_app_url=url.rstrip("/"),
            task_app_key=key or None,
            worker_token=token,
            warnings=spec.warnings,
            labels=job_labels(config, body.get("config_name")),
        )
        self.pool.notify()
        logger.info("job %s submitted for %s", job_id, url)
        job = self.job_or_404(job_id)
        job["warnings"] = spec.warnings
        return job

    def list_jobs(
        self, request: Request, limit: int = 50, offset: int = 0, status: str | None = None
    ) -> dict[str, Any]:
        self.authorize(request)
        if not 1 <= limit <= 500 or offset < 0:
            raise ApiError(400, "bad_request", "limit must be 1..500 and offset >= 0")
        try:
            jobs = self.store.list_jobs(limit=limit, offset=offset, status=status)
        except ConfigurationError as exc:
            raise ApiError(400, "bad_request", exc.message) from None
        return {"jobs": jobs, "total": self.store.count(), "limit": limit, "offset": offset}

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

    def cancel(self, request: Request, job_id: str) -> dict[str, Any]:
        self.authorize(request)
        self.job_or_404(job_id)
        job = self.pool.cancel(job_id)
        assert job is not None
        return job

    def result(self, request: Request, job_id: str) -> dict[str, Any]:
        self.authorize(request)
        job = self.job_or_404(job_id)
        return {"job": job, "result": self.store.result(job_id)}


_NO_STORE = {"Cache-Control": "no-cache"}
_LOOK_BACK_S = 2.0
_CHANGES_PAGE = 5000
_POLL_S = 0.2
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
    if is_relay_url(url) and not token:
        raise ConfigurationError(
            f"{url} is a taskapp relay URL: it needs the lease's worker token "
            "(task_app_worker_token)"
        )
    return spec, url, key, token


def create_backend_app(store: JobStore, pool: JobPool, api_key: str) -> Any:
    """The FastAPI app of ``taskapp backend serve`` over ``store`` and ``pool``."""
    if not api_key:
        raise ConfigurationError("the backend needs an API key")
    register_secret(api_key)
    api = BackendApi(store, pool, api_key)
    app = FastAPI(title="taskapp job backend", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StoreError, _store_error)
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
    app.add_api_route("/api/jobs/{job_id}/cancel", api.cancel, methods=["POST"])
    app.add_api_route("/api/jobs/{job_id}/result", api.result, methods=["GET"])
    app.add_api_route("/api/jobs/{job_id}/seeds", api.seeds, methods=["GET"])
    return app
