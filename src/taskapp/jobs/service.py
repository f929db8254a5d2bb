"""The job backend's HTTP API (FastAPI) and web page.

Every ``/api`` route needs ``Authorization: Bearer <key>`` (compared in constant time,
checked before the body is read: :mod:`.guard`); ``/`` (the page, which asks for the key
in the browser) and ``/health`` do not::

    POST   /api/jobs                    submit: {config_toml, overrides, task_app_url,
                                        task_app_api_key, task_app_worker_token,
                                        reflection_api_key} (header Idempotency-Key: the
                                        same key and body give the same job, 200; another
                                        body, 409)
    GET    /api/jobs?status=&since=&until=&cursor=&limit=   newest first, next_cursor
    GET    /api/jobs/{id}?wait=&status= status, scores, progress (long poll: answers when
                                        the status is no longer ``status``, or after wait s)
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
processes may serve one PostgreSQL store, with or without local workers.

Input is bounded (:mod:`.validation`) before anything is stored; long polls and streams
wait on a :class:`~.streams.ChangeHub` (no thread each) and are capped
(:class:`~.streams.HoldLimits`). Errors use the envelope of :func:`.guard.error_body`;
the task app's key and worker token are stored (to resume after a restart) but never
returned, and the backend never expands its own environment into a job (see docs/jobs.md,
"Security model").
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request  # module level: FastAPI resolves annotations here
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from taskapp.core.errors import ConfigurationError
from taskapp.core.logs import get_logger
from taskapp.core.secrets import fingerprint, register_secret
from taskapp.jobs.guard import Guard, error_body, error_headers
from taskapp.jobs.llm import LlmEndpoint, bind_reflection_lm
from taskapp.jobs.pool import JobPool
from taskapp.jobs.store import (
    STATUSES,
    TERMINAL,
    JobStore,
    StoreConflictError,
    StoreError,
    request_hash,
    secret_values,
)
from taskapp.jobs.streams import Busy, ChangeHub, HoldLimits
from taskapp.jobs.validation import (
    MAX_BODY_BYTES,
    MAX_INT,
    BadInput,
    bounded_int,
    check_json,
    check_toml_text,
    scan_nesting,
)
from taskapp.relay.protocol import is_ingress_url

__all__ = ["MAX_INT", "SUBMIT_FIELDS", "ApiError", "BackendApi", "create_backend_app"]

logger = get_logger("taskapp.jobs")

#: the fields of a submit body
SUBMIT_FIELDS = (
    "config_toml",
    "config_name",
    "overrides",
    "task_app_url",
    "task_app_api_key",
    "task_app_worker_token",
    "reflection_api_key",
)
_OVERRIDE_KEY = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+){0,15}$")
_MAX_FIELD = 8192  # a URL, a key, a token, a name
MAX_WAIT = 60.0
KEEP_ALIVE = 15.0  # seconds between SSE comments on a quiet stream
FALLBACK = 1.0  # a waiter re-reads the store at least this often


class ApiError(Exception):
    """An error answer in the envelope (:func:`.guard.error_body`)."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def _json_error(status: int, code: str, message: str, **headers: Any) -> JSONResponse:
    return JSONResponse(error_body(code, message), status, headers=error_headers(**headers))


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return _json_error(exc.status, exc.kind, exc.message)


async def _bad_input(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BadInput)
    return _json_error(exc.status, exc.code, exc.message)


async def _busy(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Busy)
    code = "too_many_streams" if exc.status == 429 else "busy"
    return _json_error(exc.status, code, exc.message, retry_after=exc.retry_after)


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StoreError)
    return _json_error(503, "store_error", exc.message, retry_after=10)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # where and what, never the input (it may hold a secret)
    problems = [
        f"{'.'.join(str(p) for p in error.get('loc', ()))}: {error.get('msg', 'invalid')}"
        for error in exc.errors()[:5]
    ]
    return _json_error(422, "invalid_request", "; ".join(problems) or "invalid request")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    message = {404: f"no route {request.url.path}"}.get(exc.status_code, str(exc.detail))
    return JSONResponse(
        error_body(codes.get(exc.status_code, "http_error"), message),
        exc.status_code,
        headers=dict(exc.headers or {}),
    )


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("internal error on %s: %s", request.url.path, type(exc).__name__)
    return _json_error(500, "internal_error", "internal error (logged by the backend)")


async def _conflict(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StoreConflictError)
    return _json_error(409, "conflict", exc.message)


#: an Idempotency-Key: 1-200 printable ASCII characters
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


def _timestamp(value: str | None, name: str) -> float | None:
    """``since``/``until``: Unix seconds or an ISO 8601 time (UTC when no zone is given)."""
    if value is None or value == "":
        return None
    import datetime as dt

    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or abs(seconds) > 1e11:
            raise BadInput(f"{name}: Unix seconds within +-1e11, got {value[:40]!r}")
        return seconds
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(
            400, "bad_request", f"{name}: Unix seconds or an ISO 8601 time, got {value[:40]!r}"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


_SSE_HEADERS = (
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
    (b"content-type", b"text/event-stream; charset=utf-8"),
)


class _HeldStream(Response):
    """A server-sent event stream that gives its :class:`HoldLimits` slot back however it
    ends (done, client gone, server stopping).

    Plain ASGI, lighter than Starlette's: the chunks are sent from the request's own task
    and one small task waits for the client to leave (and then cancels the stream), where
    Starlette's runs a task group of two tasks per stream; and the headers, the same for
    every stream, are not built again for each. 500 streams open at once are what this
    saves on (the peak their opening leaves in the process's memory)."""

    def __init__(self, content: AsyncIterator[bytes | str], release: Any) -> None:
        # not Response.__init__: nothing of it is needed (no body, fixed headers)
        self.status_code = 200
        self.background = None
        self.raw_headers = list(_SSE_HEADERS)
        self.body_iterator = content
        self._release = release
        self._left = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.ensure_future(self._watch(receive, task))
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code,
                 "headers": self.raw_headers}
            )  # fmt: skip
            async for chunk in self.body_iterator:
                body = chunk if isinstance(chunk, bytes) else str(chunk).encode()
                await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not self._left:
                raise  # the server is stopping
            task.uncancel()  # the client left: a normal end
        finally:
            watcher.cancel()
            self._release()

    async def _watch(self, receive: Any, task: asyncio.Task[Any]) -> None:
        """Cancel ``task`` (the stream) when the client leaves."""
        while (await receive())["type"] != "http.disconnect":
            pass
        self._left = True
        task.cancel()


_STREAM_PATH = re.compile(r"^/api/jobs/([^/]+)/events/stream$")


class _StreamFront:
    """``GET /api/jobs/{id}/events/stream`` in plain ASGI, in front of FastAPI.

    A stream is held for minutes: through FastAPI it keeps FastAPI's and Starlette's
    per-request state (exit stacks, exception-handler frames, the request) alive all that
    time, about a third of what 500 open streams hold. Here it holds its connection, its
    generator and one watcher task. Everything else goes to ``app``."""

    def __init__(self, app: Any, api: BackendApi) -> None:
        self.app = app
        self.api = api

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        match = (
            _STREAM_PATH.match(scope.get("path", ""))
            if scope["type"] == "http" and scope.get("method") == "GET"
            else None
        )
        if match is None:
            await self.app(scope, receive, send)
            return
        # opened in a method of its own, so that nothing of the opening (the query, the
        # headers) stays alive in this frame while the stream lasts
        response = await self._open(scope, match.group(1))
        await response(scope, receive, send)

    async def _open(self, scope: Any, job_id: str) -> Response:
        from urllib.parse import parse_qsl

        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), True))
        headers = dict(scope.get("headers", ()))
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        try:
            if not self.api.key_ok(authorization):
                raise ApiError(401, "unauthorized", "missing or wrong backend key")
            key_id = fingerprint(authorization)
            return await self.api.open_stream(job_id, query.get("after", 0), key_id)
        except ApiError as exc:
            return _json_error(exc.status, exc.kind, exc.message)
        except BadInput as exc:
            return _json_error(exc.status, exc.code, exc.message)
        except Busy as exc:
            code = "too_many_streams" if exc.status == 429 else "busy"
            return _json_error(exc.status, code, exc.message, retry_after=exc.retry_after)
        except StoreError as exc:
            return _json_error(503, "store_error", exc.message, retry_after=10)


class BackendApi:
    """The route handlers, over one store, pool and key."""

    def __init__(
        self,
        store: JobStore,
        pool: JobPool | None,
        api_key: str,
        *,
        limits: HoldLimits | None = None,
        llm_endpoints: Mapping[str, LlmEndpoint] | None = None,
    ) -> None:
        self.store = store
        self.pool = pool
        self._expected = api_key.encode()
        self.limits = limits or HoldLimits()
        self.llm_endpoints = dict(llm_endpoints or {})
        self.hub = ChangeHub()
        store.listeners.append(self.hub.notify)
        self._reads: dict[tuple[Any, ...], asyncio.Future[Any]] = {}

    async def _read(self, since: int, call: Callable[..., Any], *args: Any) -> Any:
        """``call(*args)`` in a thread, one call shared by every stream and long poll
        asking the same thing since the same change generation: a change to a job
        watched by 500 streams costs one read, not 500 (each caller read ``since`` before
        asking, so a read that began before a later change is followed by another:
        nothing is missed). The result is shared: callers only read it."""
        key = (since, call.__name__, *args)
        future = self._reads.get(key)
        if future is None:
            future = asyncio.ensure_future(asyncio.to_thread(call, *args))
            self._reads[key] = future

            def forget(done: asyncio.Future[Any]) -> None:
                self._reads.pop(key, None)
                if not done.cancelled():
                    done.exception()  # retrieved: every waiter may have gone

            future.add_done_callback(forget)
        return await asyncio.shield(future)

    def key_ok(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode("utf-8", "replace"), self._expected
        )

    def authorize(self, request: Request) -> None:
        if not self.key_ok(request.headers.get("authorization", "")):
            raise ApiError(401, "unauthorized", "missing or wrong backend key")

    @staticmethod
    def _key_id(request: Request) -> str:
        return fingerprint(request.headers.get("authorization", ""))

    def job_or_404(self, job_id: str) -> dict[str, Any]:
        job = self.store.get(job_id) if len(job_id) <= 200 else None
        if job is None:
            raise ApiError(404, "not_found", f"no job {job_id[:80]!r}")
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

    # -- submit --------------------------------------------------------------------------

    async def submit(self, request: Request) -> JSONResponse:
        """A new job (201), or with an ``Idempotency-Key`` seen before for the same
        body, that job again (200); the same key with another body is a 409."""
        idempotency_key = request.headers.get("idempotency-key")
        if idempotency_key is not None and not _IDEMPOTENCY_KEY.match(idempotency_key):
            raise ApiError(
                400, "bad_request", "Idempotency-Key: 1 to 200 printable ASCII characters"
            )
        raw = await request.body()  # the Guard capped it (413 past MAX_BODY_BYTES)
        body = _decode_body(raw)
        job, created = await run_in_threadpool(self._submit, body, idempotency_key)
        return JSONResponse(job, 201 if created else 200)

    def _submit(
        self, body: dict[str, Any], idempotency_key: str | None
    ) -> tuple[dict[str, Any], bool]:
        try:
            spec, url, key, token = _submission(body)
            reflection = bind_reflection_lm(
                spec.config.reflection_lm,
                spec.llm_provider,
                self.llm_endpoints,
                body.get("reflection_api_key"),
            )
            config = spec.config.replace(reflection_lm=reflection).to_dict()
            check_json(config, what="the job's config")
        except ConfigurationError as exc:
            raise ApiError(400, "configuration_error", exc.message) from None
        from taskapp.jobs.views import job_labels

        register_secret(key)
        register_secret(token)
        for value in secret_values(config):
            register_secret(value)
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
        else:
            logger.info("job %s submitted for %s", job_id, url)
        return job, created

    # -- reads ---------------------------------------------------------------------------

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
        limit = bounded_int(limit, name="limit", minimum=1, maximum=500)
        offset = bounded_int(offset, name="offset")
        statuses = [s for s in (status or "").split(",") if s] or None
        for one in statuses or ():
            _check_status(one)
        if cursor is not None and len(cursor) > 200:
            raise BadInput("cursor: at most 200 characters (the next_cursor of a page)")
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

    async def get_job(
        self, request: Request, job_id: str, wait: float = 0.0, status: str | None = None
    ) -> dict[str, Any]:
        """``?wait=S&status=running``: answer when the status is no longer ``running``,
        or after S seconds (at most 60): a long poll, holding no thread."""
        self.authorize(request)
        if not math.isfinite(wait) or wait < 0:
            raise BadInput(f"wait must be a number of seconds >= 0, got {wait}")
        _check_status(status)
        job = await run_in_threadpool(self.job_or_404, job_id)
        if wait <= 0 or status is None or job["status"] != status:
            return job
        key_id = self._key_id(request)
        self.limits.acquire(key_id)
        try:
            deadline = time.monotonic() + min(wait, MAX_WAIT)
            while True:
                since = self.hub.generation
                latest = await self._read(since, self.store.get, job_id)
                remaining = deadline - time.monotonic()
                if latest is None or latest["status"] != status or remaining <= 0:
                    return latest or job
                await self.hub.wait(job_id, since, within=min(remaining, FALLBACK))
        finally:
            self.limits.release(key_id)

    def events(
        self, request: Request, job_id: str, after: int = 0, limit: int = 500
    ) -> dict[str, Any]:
        self.authorize(request)
        after = bounded_int(after, name="after")
        limit = bounded_int(limit, name="limit", minimum=1, maximum=5000)
        job = self.job_or_404(job_id)
        page = self.store.events(job_id, after=after, limit=limit)
        return {
            "events": page,
            "next_after": page[-1]["seq"] if page else after,
            "status": job["status"],
        }

    async def stream(self, request: Request, job_id: str, after: int = 0) -> Response:
        """The route as FastAPI sees it (its schema); :class:`_StreamFront` serves it."""
        self.authorize(request)
        return await self.open_stream(job_id, after, self._key_id(request))

    async def open_stream(self, job_id: str, after: Any, key_id: str) -> Response:
        """``GET /api/jobs/{id}/events/stream?after=`` (the key already checked)."""
        after = bounded_int(after, name="after")
        # one read shared by every stream opening at once (500 at once: one, not 500
        # calls through the thread pool)
        since = self.hub.generation
        if len(job_id) > 200 or await self._read(since, self.store.get, job_id) is None:
            raise ApiError(404, "not_found", f"no job {job_id[:80]!r}")
        self.limits.acquire(key_id)
        return _HeldStream(self._sse(job_id, after), lambda: self.limits.release(key_id))

    async def _sse(self, job_id: str, after: int) -> AsyncIterator[bytes]:
        last = after
        quiet_since = time.monotonic()
        while True:
            since = self.hub.generation
            last_seq, chunk = await self._read(since, self._sse_page, job_id, last)
            if chunk:
                yield chunk
                last = last_seq
                quiet_since = time.monotonic()
                continue
            job = await self._read(since, self.store.get, job_id)
            if job is None or job["status"] in TERMINAL:
                end = json.dumps({"status": job and job["status"]})
                yield f"event: end\ndata: {end}\n\n".encode()
                return
            if time.monotonic() - quiet_since >= KEEP_ALIVE:
                quiet_since = time.monotonic()
                yield b": keep-alive\n\n"
            await self.hub.wait(job_id, since, within=FALLBACK)

    def _sse_page(self, job_id: str, after: int) -> tuple[int, bytes]:
        """The events after ``after`` (at most 500) as server-sent event text, encoded
        and joined once, in a thread, for every stream that shares the read: each stream
        sends the same bytes in one message. (the last seq, b"") when there are none."""
        page = self.store.events(job_id, after=after, limit=500)
        text = "".join(
            f"id: {e['seq']}\nevent: {e['kind']}\ndata: {json.dumps(e)}\n\n" for e in page
        )
        return (int(page[-1]["seq"]) if page else after), text.encode()

    # -- control -------------------------------------------------------------------------

    async def changes(self, request: Request, since: float = 0.0) -> Response:
        """Every job's changes (``event: job``, the job as data), from ``since`` on (an
        ``updated_at`` value; 0: every job first). The page's list follows this stream."""
        self.authorize(request)
        if not math.isfinite(since):
            raise ApiError(400, "bad_request", "since must be a finite number (a job's updated_at)")
        key_id = self._key_id(request)
        self.limits.acquire(key_id)
        return _HeldStream(self._changes(request, since), lambda: self.limits.release(key_id))

    async def _changes(self, request: Request, since: float) -> AsyncIterator[str]:
        # Writers stamp updated_at just before their transaction commits, so a change can
        # become visible with a stamp older than one already sent: look back a little
        # and skip what was sent already.
        sent: dict[str, float] = {}
        cursor = since
        quiet = 0.0
        while True:
            generation = self.hub.generation
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
            if quiet >= _KEEP_ALIVE_S:
                yield ": keep-alive\n\n"
                quiet = 0.0
            # woken by any change made here; other processes' changes within a second
            started = time.monotonic()
            await self.hub.wait_any(generation, within=FALLBACK)
            quiet += time.monotonic() - started

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
            job = self.store.control(job_id, action) if len(job_id) <= 200 else None
            if job is None:
                raise ApiError(404, "not_found", f"no job {job_id[:80]!r}")
            if self.pool is not None:
                self.pool.signal(job_id, action)
                self.pool.notify()
            logger.info("job %s: %s (now %s)", job_id, action, job["status"])
            return job

        handler.__name__ = action
        return handler

    def delete(self, request: Request, job_id: str) -> dict[str, Any]:
        self.authorize(request)
        if len(job_id) > 200 or self.store.delete(job_id) is None:
            raise ApiError(404, "not_found", f"no job {job_id[:80]!r}")
        logger.info("job %s deleted", job_id)
        return {"id": job_id, "deleted": True}

    def result(self, request: Request, job_id: str) -> dict[str, Any]:
        """``{job, result, best_so_far}``: ``best_so_far`` is the best candidate the run
        has reported (its score and prompt texts), also while it runs or after it failed."""
        self.authorize(request)
        job = self.job_or_404(job_id)
        return {
            "job": job,
            "result": self.store.result(job_id),
            "best_so_far": _best_so_far(self.store, job_id),
        }


def _best_so_far(store: JobStore, job_id: str) -> dict[str, Any] | None:
    """The last new-best ``candidate`` event (it carries the prompt ``texts``)."""
    best: dict[str, Any] | None = None
    after = 0
    while True:
        page = store.events(job_id, after=after, limit=5000)
        for event in page:
            data = event.get("data")
            if event["kind"] == "candidate" and isinstance(data, dict) and data.get("texts"):
                best = {k: data.get(k) for k in ("candidate", "iteration", "score", "texts", "seq")}
                best["seq"] = event["seq"]
        if len(page) < 5000:
            return best
        after = int(page[-1]["seq"])


def _check_status(status: str | None) -> None:
    if status is not None and status not in STATUSES:
        raise BadInput(f"status must be one of {', '.join(STATUSES)}")


def _decode_body(raw: bytes) -> dict[str, Any]:
    """The submit body: JSON, bounded (depth, size, keys), an object of known fields."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput("the request body must be UTF-8 JSON") from None
    scan_nesting(text, what="the request body")
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        raise BadInput("the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadInput("the request body must be a JSON object")
    check_json(body, what="body")
    unknown = sorted(set(body) - set(SUBMIT_FIELDS))
    if unknown:
        raise BadInput(
            f"unknown field(s) {', '.join(repr(u[:40]) for u in unknown[:5])}; known: "
            + ", ".join(SUBMIT_FIELDS)
        )
    for name in SUBMIT_FIELDS[1:]:
        value = body.get(name)
        if (
            name != "overrides"
            and value is not None
            and (not isinstance(value, str) or len(value) > _MAX_FIELD)
        ):
            raise BadInput(f"{name} must be a string of at most {_MAX_FIELD} characters")
    return body


_NO_STORE = {"Cache-Control": "no-cache"}
_LOOK_BACK_S = 2.0
_CHANGES_PAGE = 5000
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
    """(PromptLearningSpec, task app URL, key, worker token) of a submit request. Nothing
    here reads the backend's environment: ``${VAR}`` is the client's to resolve."""
    from taskapp.optimize.prompt_learning import NO_ENVIRONMENT, parse_prompt_learning

    text = body.get("config_toml")
    if not isinstance(text, str):
        raise ConfigurationError("config_toml (the TOML text) is required")
    check_toml_text(text)
    overrides = body.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigurationError("overrides must be an object")
    for name in overrides:
        if not _OVERRIDE_KEY.match(name):
            raise ConfigurationError(
                f"override {name[:80]!r}: keys are dotted names like 'gepa.rollout.budget'"
            )
    source = str(body.get("config_name") or "config")[:200]
    spec = parse_prompt_learning(text, source=source, overrides=overrides, environ=NO_ENVIRONMENT)
    url = body.get("task_app_url") or spec.task_app_url
    if not url and spec.task_app_url_template:
        raise ConfigurationError(
            f"prompt_learning.task_app_url {spec.task_app_url_template[:200]!r} names an "
            "environment variable: the job backend never expands its own environment into "
            "a job; send task_app_url (PromptLearningJob resolves ${VAR} on your machine)"
        )
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigurationError(
            "no task app URL: pass task_app_url, or set prompt_learning.task_app_url"
        )
    key = body.get("task_app_api_key") or spec.task_app_key(environ=NO_ENVIRONMENT)
    token = body.get("task_app_worker_token") or None
    if is_ingress_url(url) and not token:
        raise ConfigurationError(
            f"{url} is a taskapp relay URL: it needs the lease's worker token "
            "(task_app_worker_token)"
        )
    return spec, url, key, token


_SUBMIT_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["config_toml"],
                    "properties": {
                        "config_toml": {"type": "string"},
                        "config_name": {"type": "string"},
                        "overrides": {"type": "object"},
                        "task_app_url": {"type": "string"},
                        "task_app_api_key": {"type": "string"},
                        "task_app_worker_token": {"type": "string"},
                        "reflection_api_key": {"type": "string"},
                    },
                }
            }
        },
    }
}


def create_backend_app(
    store: JobStore,
    pool: JobPool | None,
    api_key: str,
    *,
    limits: HoldLimits | None = None,
    llm_endpoints: Mapping[str, LlmEndpoint] | None = None,
    max_body: int = MAX_BODY_BYTES,
) -> Any:
    """The ASGI app of ``taskapp backend serve`` over ``store`` and ``pool``: the FastAPI
    routes inside the :class:`~.guard.Guard` (key before body, body cap, headers). The
    FastAPI app is the ``api`` attribute (``.api.openapi()`` is the schema). ``pool``
    None: an API process without local workers."""
    if not api_key:
        raise ConfigurationError("the backend needs an API key")
    register_secret(api_key)
    api = BackendApi(store, pool, api_key, limits=limits, llm_endpoints=llm_endpoints)
    app = FastAPI(title="taskapp job backend", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(BadInput, _bad_input)
    app.add_exception_handler(Busy, _busy)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(StoreConflictError, _conflict)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    for path in ("/", "/jobs", "/jobs/{job_id}", "/compare"):
        app.add_api_route(path, api.page, methods=["GET"], response_class=HTMLResponse)
    app.add_api_route("/static/{name}", api.static, methods=["GET"])
    app.add_api_route("/api/stream", api.changes, methods=["GET"])
    app.add_api_route("/health", api.health, methods=["GET"])
    app.add_api_route(
        "/api/jobs", api.submit, methods=["POST"], status_code=201, openapi_extra=_SUBMIT_SCHEMA
    )
    app.add_api_route("/api/jobs", api.list_jobs, methods=["GET"])
    app.add_api_route("/api/jobs/{job_id}", api.get_job, methods=["GET"])
    app.add_api_route("/api/jobs/{job_id}/events", api.events, methods=["GET"])
    app.add_api_route("/api/jobs/{job_id}/events/stream", api.stream, methods=["GET"])
    for action in ("pause", "resume", "stop", "cancel", "retry"):
        app.add_api_route(f"/api/jobs/{{job_id}}/{action}", api.control(action), methods=["POST"])
    app.add_api_route("/api/jobs/{job_id}", api.delete, methods=["DELETE"])
    app.add_api_route("/api/jobs/{job_id}/result", api.result, methods=["GET"])
    app.add_api_route("/api/jobs/{job_id}/seeds", api.seeds, methods=["GET"])
    guarded = Guard(_StreamFront(app, api), key_ok=api.key_ok, max_body=max_body)
    guarded.api = app  # type: ignore[attr-defined]
    guarded.backend = api  # type: ignore[attr-defined]
    return guarded
