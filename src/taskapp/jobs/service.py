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

Errors are ``{"error": {"type", "message"}}``; the task app's key and worker token are
stored (to resume after a restart) but never returned.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request  # module level: FastAPI resolves annotations here
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from taskapp.core.errors import ConfigurationError
from taskapp.core.logs import get_logger
from taskapp.core.secrets import register_secret
from taskapp.jobs.pool import JobPool
from taskapp.jobs.store import TERMINAL, JobStore, StoreError
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

    async def page(self) -> HTMLResponse:
        from taskapp.jobs.page import PAGE_HTML

        return HTMLResponse(PAGE_HTML)

    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "running": self.pool.running(), "workers": self.pool.workers}

    def submit(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        self.authorize(request)
        try:
            spec, url, key, token = _submission(body)
        except ConfigurationError as exc:
            raise ApiError(400, "configuration_error", exc.message) from None
        register_secret(key)
        register_secret(token)
        job_id = self.store.create(
            spec.config.to_dict(),
            task_app_url=url.rstrip("/"),
            task_app_key=key or None,
            worker_token=token,
            warnings=spec.warnings,
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


def create_backend_app(store: JobStore, pool: JobPool, api_key: str) -> Any:
    """The FastAPI app of ``taskapp backend serve`` over ``store`` and ``pool``."""
    if not api_key:
        raise ConfigurationError("the backend needs an API key")
    register_secret(api_key)
    api = BackendApi(store, pool, api_key)
    app = FastAPI(title="taskapp job backend", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StoreError, _store_error)
    app.add_api_route("/", api.page, methods=["GET"], response_class=HTMLResponse)
    app.add_api_route("/health", api.health, methods=["GET"])
    app.add_api_route("/api/jobs", api.submit, methods=["POST"], status_code=201)
    app.add_api_route("/api/jobs", api.list_jobs, methods=["GET"])
    app.add_api_route("/api/jobs/{job_id}", api.get_job, methods=["GET"])
    app.add_api_route("/api/jobs/{job_id}/events", api.events, methods=["GET"])
    app.add_api_route("/api/jobs/{job_id}/events/stream", api.stream, methods=["GET"])
    app.add_api_route("/api/jobs/{job_id}/cancel", api.cancel, methods=["POST"])
    app.add_api_route("/api/jobs/{job_id}/result", api.result, methods=["GET"])
    return app
