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
import re
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request  # module level: FastAPI resolves annotations here
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from taskapp.core.errors import ConfigurationError
from taskapp.core.logs import get_logger
from taskapp.core.secrets import register_secret
from taskapp.jobs.pool import JobPool
from taskapp.jobs.store import TERMINAL, JobStore, StoreError

__all__ = ["RELAY_PATH", "create_backend_app", "is_relay_url"]

logger = get_logger("taskapp.jobs")

#: a taskapp relay's public lease URL ends in /s/rt_<route>
RELAY_PATH = re.compile(r"/s/rt_[A-Za-z0-9_-]+/?$")


def is_relay_url(url: str) -> bool:
    return bool(RELAY_PATH.search(url.split("?", 1)[0]))


def create_backend_app(store: JobStore, pool: JobPool, api_key: str) -> Any:
    """The FastAPI app of ``taskapp backend serve`` over ``store`` and ``pool``."""
    from taskapp.jobs.page import PAGE_HTML

    if not api_key:
        raise ConfigurationError("the backend needs an API key")
    register_secret(api_key)
    expected = api_key.encode()
    app = FastAPI(title="taskapp job backend", docs_url=None, redoc_url=None, openapi_url=None)

    class ApiError(Exception):
        def __init__(self, status: int, kind: str, message: str) -> None:
            self.status, self.kind, self.message = status, kind, message

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            {"error": {"type": exc.kind, "message": exc.message}}, status_code=exc.status
        )

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse(
            {"error": {"type": "store_error", "message": exc.message}}, status_code=503
        )

    def authorize(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong backend key: send Authorization: Bearer <key> (the key "
                "of --api-key-file or $TASKAPP_BACKEND_API_KEY)",
            )

    def job_or_404(job_id: str) -> dict[str, Any]:
        job = store.get(job_id)
        if job is None:
            raise ApiError(404, "not_found", f"no job {job_id!r}")
        return job

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE_HTML)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "running": pool.running(), "workers": pool.workers}

    @app.post("/api/jobs", status_code=201)
    def submit(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        authorize(request)
        from taskapp.optimize.prompt_learning import parse_prompt_learning

        text = body.get("config_toml")
        if not isinstance(text, str):
            raise ApiError(400, "bad_request", "config_toml (the TOML text) is required")
        overrides = body.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise ApiError(400, "bad_request", "overrides must be an object")
        source = str(body.get("config_name") or "config")
        try:
            spec = parse_prompt_learning(text, source=source, overrides=overrides)
            url = body.get("task_app_url") or spec.task_app_url
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ConfigurationError(
                    "no task app URL: pass task_app_url, or set prompt_learning.task_app_url"
                )
            key = body.get("task_app_api_key")
            if not key and spec.task_app_api_key:
                key = spec.task_app_key()
            token = body.get("task_app_worker_token") or None
            if is_relay_url(url) and not token:
                raise ConfigurationError(
                    f"{url} is a taskapp relay URL: it needs the lease's worker token "
                    "(task_app_worker_token)"
                )
            config = spec.config.to_dict()
        except ConfigurationError as exc:
            raise ApiError(400, "configuration_error", exc.message) from None
        register_secret(key)
        register_secret(token)
        job_id = store.create(
            config,
            task_app_url=url.rstrip("/"),
            task_app_key=key or None,
            worker_token=token,
            warnings=spec.warnings,
        )
        pool.notify()
        logger.info("job %s submitted for %s", job_id, url)
        job = store.get(job_id)
        assert job is not None
        job["warnings"] = spec.warnings
        return job

    @app.get("/api/jobs")
    def list_jobs(
        request: Request, limit: int = 50, offset: int = 0, status: str | None = None
    ) -> dict[str, Any]:
        authorize(request)
        if not 1 <= limit <= 500 or offset < 0:
            raise ApiError(400, "bad_request", "limit must be 1..500 and offset >= 0")
        try:
            jobs = store.list_jobs(limit=limit, offset=offset, status=status)
        except ConfigurationError as exc:
            raise ApiError(400, "bad_request", exc.message) from None
        return {"jobs": jobs, "total": store.count(), "limit": limit, "offset": offset}

    @app.get("/api/jobs/{job_id}")
    def get_job(
        request: Request, job_id: str, wait: float = 0.0, status: str | None = None
    ) -> dict[str, Any]:
        """``?wait=S&status=running``: answer when the status is no longer ``running``,
        or after S seconds (at most 60): a long poll."""
        authorize(request)
        job = job_or_404(job_id)
        if wait > 0 and status is not None:
            job = store.wait_for_change(job_id, status, min(wait, 60.0)) or job
        return job

    @app.get("/api/jobs/{job_id}/events")
    def events(request: Request, job_id: str, after: int = 0, limit: int = 500) -> dict[str, Any]:
        authorize(request)
        job = job_or_404(job_id)
        page = store.events(job_id, after=after, limit=max(1, min(limit, 5000)))
        return {
            "events": page,
            "next_after": page[-1]["seq"] if page else after,
            "status": job["status"],
        }

    @app.get("/api/jobs/{job_id}/events/stream")
    async def stream(request: Request, job_id: str, after: int = 0) -> StreamingResponse:
        authorize(request)
        job_or_404(job_id)

        async def generate() -> AsyncIterator[str]:
            last = after
            while True:
                page = await asyncio.to_thread(store.events, job_id, after=last, limit=500)
                for event in page:
                    last = event["seq"]
                    yield f"id: {last}\nevent: {event['kind']}\ndata: {json.dumps(event)}\n\n"
                if not page:
                    job = await asyncio.to_thread(store.get, job_id)
                    if job is None or job["status"] in TERMINAL:
                        end = json.dumps({"status": job and job["status"]})
                        yield f"event: end\ndata: {end}\n\n"
                        return
                    if await request.is_disconnected():
                        return
                    yield ": keep-alive\n\n"
                    await asyncio.sleep(0.25)

        return StreamingResponse(
            generate(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel(request: Request, job_id: str) -> dict[str, Any]:
        authorize(request)
        job_or_404(job_id)
        job = pool.cancel(job_id)
        assert job is not None
        return job

    @app.get("/api/jobs/{job_id}/result")
    def result(request: Request, job_id: str) -> dict[str, Any]:
        authorize(request)
        job = job_or_404(job_id)
        data = store.result(job_id)
        return {"job": job, "result": data}

    return app
