"""``PromptLearningJob``: submit a ``[prompt_learning]`` job to ``taskapp backend serve``
and wait for its result; ``run_in_process_job``: the seed's one-call helper.

>>> job = PromptLearningJob("http://127.0.0.1:8000", api_key="...")      # doctest: +SKIP
>>> job_id = await job.submit(config_path="support_intents_gepa.toml",
...                           task_app_url=task_app.url)                 # doctest: +SKIP
>>> result = await job.poll_until_complete(job_id)                       # doctest: +SKIP
>>> result.best_score, result.succeeded                                  # doctest: +SKIP

The task app's key comes from ``task_app_api_key=``, else the config's
``task_app_api_key`` (``${ENV}`` expanded), else ``$ENVIRONMENT_API_KEY``. A taskapp relay
URL (``.../s/rt_...``) needs the lease's worker token: pass ``task_app_worker_token=`` or
pass the running ``InProcessTaskApp`` itself as ``task_app_url`` (its token is used).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from taskapp.core.errors import ConfigurationError, TaskAppError
from taskapp.core.logs import get_logger
from taskapp.core.secrets import register_secret
from taskapp.core.transport import async_http_client, http_client

__all__ = [
    "JobBackendError",
    "PromptLearningJob",
    "PromptLearningResult",
    "run_in_process_job",
]

logger = get_logger("taskapp.jobs")

BACKEND_KEY_ENV = "TASKAPP_BACKEND_API_KEY"
DEFAULT_BACKEND = "http://localhost:8000"
TERMINAL = ("succeeded", "failed", "cancelled")
#: a submit is sent again (with the same Idempotency-Key) after a lost reply or one of
#: these answers, waiting 0.5, 1, 2, 4 s in between
RETRY_STATUSES = (502, 503, 504)
SUBMIT_ATTEMPTS = 5


class JobBackendError(TaskAppError):
    """The job backend refused a request or could not be reached."""


class BackendUnreachableError(JobBackendError):
    """The backend could not be reached, or answered 502/503/504 (it may be restarting):
    waiting clients retry for a while (``reconnect_for``)."""


@dataclasses.dataclass
class PromptLearningResult:
    """The outcome of a prompt-learning job (the seed's ``PromptLearningResult``)."""

    job_id: str
    status: str
    best_score: float | None = None
    baseline_score: float | None = None
    best_prompt: str | None = None
    error: str | None = None
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @classmethod
    def from_response(cls, data: Mapping[str, Any]) -> PromptLearningResult:
        job = dict(data.get("job") or {})
        result = data.get("result") or {}
        return cls(
            job_id=str(job.get("id")),
            status=str(job.get("status")),
            best_score=job.get("best_score"),
            baseline_score=job.get("baseline_score"),
            best_prompt=result.get("best_prompt") if isinstance(result, dict) else None,
            error=job.get("error"),
            raw=dict(data),
        )


def _task_app_of(task_app_url: Any) -> tuple[str | None, str | None, str | None]:
    """(url, key, worker token) of a URL string or a running ``InProcessTaskApp``: only
    what the app itself says (the key's fallbacks are :meth:`PromptLearningSpec.task_app_key`'s);
    the one resolution is :func:`taskapp.core.endpoint.endpoint_of`."""
    if task_app_url is None or isinstance(task_app_url, str):
        return task_app_url, None, None
    from taskapp.core.endpoint import endpoint_of

    endpoint = endpoint_of(task_app_url)
    return endpoint.url, endpoint.api_key, endpoint.worker_token


def _reflection_key(spec: Any) -> str | None:
    """The reflection model's key, read HERE (the client's machine) from the config's
    ``llm_api_key_env``: the backend never reads its own environment for a job."""
    if not isinstance(spec, Mapping) or not spec.get("api_key_env"):
        return None
    value = os.environ.get(str(spec["api_key_env"]), "").strip() or None
    register_secret(value)
    return value


def _error_message(data: Any) -> str | None:
    """The message of an error answer: ``{"detail": {"error": {"code", "message"}}}``
    (or the earlier ``{"error": {"type", "message"}}``)."""
    if not isinstance(data, dict):
        return None
    detail = data.get("detail")
    error = detail.get("error") if isinstance(detail, dict) else data.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    return str(message) if message else None


class _Reconnect:
    """While the backend is away (restarting): wait and retry for ``seconds``, saying so
    once when it goes and once when it is back; then give up with the cause."""

    def __init__(self, url: str, seconds: float) -> None:
        self.url, self.seconds = url, seconds
        self.lost_at: float | None = None

    def ok(self) -> None:
        if self.lost_at is not None:
            logger.warning("the job backend at %s is back", self.url)
            self.lost_at = None

    def failed(self, exc: BackendUnreachableError) -> float:
        """Seconds to wait before the next try; raises once ``seconds`` have passed."""
        now = time.monotonic()
        if self.lost_at is None:
            self.lost_at = now
            logger.warning(
                "%s; reconnecting for up to %g s (the job keeps running there)",
                exc.message,
                self.seconds,
            )
        if now - self.lost_at >= self.seconds:
            raise BackendUnreachableError(
                f"{exc.message} (gave up after {self.seconds:g} s of reconnecting)"
            ) from None
        return float(min(2.0, 0.25 * 2 ** min(4, int(now - self.lost_at))))


class PromptLearningJob:
    """A client of ``taskapp backend serve`` for ``[prompt_learning]`` jobs."""

    def __init__(
        self,
        backend_url: str = DEFAULT_BACKEND,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        config_path: str | Path | None = None,
        task_app_url: Any = None,
        task_app_api_key: str | None = None,
        task_app_worker_token: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        reconnect_for: float = 120.0,
    ) -> None:
        key = api_key or os.environ.get(BACKEND_KEY_ENV) or ""
        if not key:
            raise ConfigurationError(
                f"no backend key: pass api_key= or set {BACKEND_KEY_ENV} (the key the "
                "backend was started with)"
            )
        register_secret(key)
        self.backend_url = backend_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {key}"}
        self.timeout = timeout
        self.config_path = config_path
        self.task_app_url = task_app_url
        self.task_app_api_key = task_app_api_key
        self.task_app_worker_token = task_app_worker_token
        self.overrides = dict(overrides or {})
        #: seconds the waiting calls (poll_until_complete) keep reconnecting to a backend
        #: that went away (a restart), before they give up
        self.reconnect_for = reconnect_for
        #: The config's warnings at the last submit (unknown keys, with a "did you mean").
        self.warnings: list[str] = []
        self.job_id: str | None = None

    def __repr__(self) -> str:  # never the key
        return f"PromptLearningJob(backend_url={self.backend_url!r}, job_id={self.job_id!r})"

    @classmethod
    def from_config(
        cls,
        config_path: str | Path,
        backend_url: str = DEFAULT_BACKEND,
        api_key: str | None = None,
        *,
        task_app_url: Any = None,
        task_app_api_key: str | None = None,
        task_app_worker_token: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        timeout: float = 30.0,
    ) -> PromptLearningJob:
        """A job bound to ``config_path`` (the seed's spelling); then ``submit()``."""
        return cls(
            backend_url,
            api_key,
            timeout=timeout,
            config_path=config_path,
            task_app_url=task_app_url,
            task_app_api_key=task_app_api_key,
            task_app_worker_token=task_app_worker_token,
            overrides=overrides,
        )

    # -- request body --------------------------------------------------------------------

    def _body(
        self,
        config_path: str | Path | None,
        task_app_url: Any,
        task_app_api_key: str | None,
        task_app_worker_token: str | None,
        overrides: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        from taskapp.optimize.prompt_learning import parse_prompt_learning
        from taskapp.relay.protocol import is_ingress_url

        path = config_path or self.config_path
        if path is None:
            raise ConfigurationError("submit() needs config_path= (a [prompt_learning] TOML)")
        file = Path(path).expanduser()
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the config {str(file)!r}: {exc.strerror}"
            ) from None
        merged = {**self.overrides, **(overrides or {})}
        spec = parse_prompt_learning(text, source=str(file), overrides=merged)  # errors here
        # Typos and ignored keys ("did you mean ...?") are said here, before the job runs,
        # not only in its events; also kept in ``self.warnings``.
        self.warnings = list(spec.warnings)
        for warning in spec.warnings:
            logger.warning("%s: %s", file, warning)
        url, app_key, app_token = _task_app_of(task_app_url or self.task_app_url)
        url = url or spec.task_app_url
        if not url:
            raise ConfigurationError(
                f"{file}: no task app URL: pass task_app_url= or set prompt_learning.task_app_url"
            )
        key = spec.task_app_key(task_app_api_key or self.task_app_api_key or app_key)
        token = task_app_worker_token or self.task_app_worker_token or app_token
        if is_ingress_url(url) and not token:
            raise ConfigurationError(
                f"{url} is a taskapp relay URL: callers need the lease's worker token. Pass "
                "task_app_worker_token=, or pass the running InProcessTaskApp("
                "tunnel_mode='synthtunnel') as task_app_url (its token is used)"
            )
        reflection_key = _reflection_key(spec.config.reflection_lm)
        register_secret(key)
        register_secret(token)
        body = {
            "config_toml": text,
            "config_name": str(file),
            "overrides": merged,
            "task_app_url": url,
            "task_app_api_key": key,
            "task_app_worker_token": token,
        }
        if reflection_key:
            body["reflection_api_key"] = reflection_key
        return body

    @staticmethod
    def _check(response: Any, what: str) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            data = {}
        if response.status_code >= 400:
            message = _error_message(data) or response.text[:200]
            kind: type[TaskAppError] = JobBackendError
            if response.status_code == 400:
                kind = ConfigurationError
            elif response.status_code in (502, 503, 504):
                kind = BackendUnreachableError
            raise kind(f"{what}: the backend answered {response.status_code}: {message}")
        if not isinstance(data, dict):
            raise JobBackendError(f"{what}: the backend answered something other than JSON")
        return data

    def _unreachable(self, exc: Exception) -> JobBackendError:
        return BackendUnreachableError(
            f"cannot reach the job backend at {self.backend_url} ({type(exc).__name__}); "
            "start it with: taskapp backend serve"
        )

    # -- async API -----------------------------------------------------------------------

    async def _request(self, method: str, path: str, what: str, **kw: Any) -> dict[str, Any]:
        import httpx

        try:
            async with async_http_client(timeout=self.timeout, trust_env=False) as client:
                response = await client.request(
                    method, self.backend_url + path, headers=self._headers, **kw
                )
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        return self._check(response, what)

    async def submit(
        self,
        config_path: str | Path | None = None,
        task_app_url: Any = None,
        task_app_api_key: str | None = None,
        task_app_worker_token: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> str:
        """Submit the job; return its id (also kept as ``self.job_id``).

        The request carries an ``Idempotency-Key`` (``idempotency_key``, else a new random
        one): when the reply is lost (connection dropped, timeout, 502/503/504) it is sent
        again with the same key, and the backend answers with the job it created the first
        time, so one call never makes two jobs."""
        import httpx

        body = self._body(
            config_path, task_app_url, task_app_api_key, task_app_worker_token, overrides
        )
        headers = {**self._headers, "Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        for attempt in range(SUBMIT_ATTEMPTS):
            last = attempt == SUBMIT_ATTEMPTS - 1
            try:
                async with async_http_client(timeout=self.timeout, trust_env=False) as client:
                    response = await client.post(
                        self.backend_url + "/api/jobs", headers=headers, json=body
                    )
            except httpx.HTTPError as exc:
                if last:
                    raise self._unreachable(exc) from None
            else:
                if response.status_code not in RETRY_STATUSES or last:
                    data = self._check(response, "submit")
                    self.job_id = str(data["id"])
                    return self.job_id
            await asyncio.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def get_status(
        self, job_id: str | None = None, *, wait: float = 0.0, unless: str | None = None
    ) -> dict[str, Any]:
        """The job. With ``wait`` and ``unless``: a long poll that answers as soon as the
        status is no longer ``unless`` (or after ``wait`` seconds)."""
        path, extra = self._status_query(job_id, wait, unless)
        return await self._request("GET", path, "get status", **extra)

    async def get_results(self, job_id: str | None = None) -> PromptLearningResult:
        data = await self._request("GET", f"/api/jobs/{self._id(job_id)}/result", "result")
        return PromptLearningResult.from_response(data)

    async def cancel(self, job_id: str | None = None) -> dict[str, Any]:
        return await self._request("POST", f"/api/jobs/{self._id(job_id)}/cancel", "cancel")

    async def control(self, action: str, job_id: str | None = None) -> dict[str, Any]:
        """``pause`` (at the next iteration; resumable), ``resume``, ``stop`` (end now
        with the best so far, a success), ``cancel`` (no result) or ``retry`` (a failed or
        cancelled job); the job afterwards."""
        return await self._request("POST", f"/api/jobs/{self._id(job_id)}/{action}", action)

    async def delete(self, job_id: str | None = None) -> dict[str, Any]:
        """Delete a finished job (its events and checkpoint too)."""
        return await self._request("DELETE", f"/api/jobs/{self._id(job_id)}", "delete")

    async def poll_until_complete(
        self,
        job_id: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the seed's spelling
        interval: float = 1.0,
        on_status: Callable[[dict[str, Any]], Any] | None = None,
    ) -> PromptLearningResult:
        """Wait until the job is done (succeeded, failed, cancelled); return its result.

        ``timeout`` (seconds) raises :class:`TimeoutError` with the job still running.
        """
        job_id = self._id(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        status = await self._status_reconnecting(job_id)
        while True:
            if on_status is not None:
                maybe = on_status(status)
                if isinstance(maybe, Awaitable):
                    await maybe
            if status["status"] in TERMINAL:
                return await self.get_results(job_id)
            wait = interval
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    raise TimeoutError(
                        f"job {job_id} is still {status['status']} after {timeout:g} s "
                        "(it keeps running on the backend)"
                    )
            # a long poll: the backend answers the moment the status changes
            status = await self._status_reconnecting(job_id, wait=wait, unless=status["status"])

    async def _status_reconnecting(self, job_id: str, **kw: Any) -> dict[str, Any]:
        reconnect = _Reconnect(self.backend_url, self.reconnect_for)
        while True:
            try:
                status = await self.get_status(job_id, **kw)
            except BackendUnreachableError as exc:
                await asyncio.sleep(reconnect.failed(exc))
                continue
            reconnect.ok()
            return status

    def _status_reconnecting_sync(self, job_id: str, **kw: Any) -> dict[str, Any]:
        reconnect = _Reconnect(self.backend_url, self.reconnect_for)
        while True:
            try:
                status = self.get_status_sync(job_id, **kw)
            except BackendUnreachableError as exc:
                time.sleep(reconnect.failed(exc))
                continue
            reconnect.ok()
            return status

    def _status_query(
        self, job_id: str | None, wait: float, unless: str | None
    ) -> tuple[str, dict[str, Any]]:
        path = f"/api/jobs/{self._id(job_id)}"
        if wait > 0 and unless:
            return path, {
                "params": {"wait": wait, "status": unless},
                "timeout": self.timeout + wait,
            }
        return path, {}

    def _id(self, job_id: str | None) -> str:
        job_id = job_id or self.job_id
        if not job_id:
            raise ConfigurationError("no job id: submit() first, or pass job_id=")
        return job_id

    # -- sync twins (scripts without an event loop) --------------------------------------

    def _request_sync(self, method: str, path: str, what: str, **kw: Any) -> dict[str, Any]:
        import httpx

        try:
            with http_client(timeout=self.timeout, trust_env=False) as client:
                response = client.request(
                    method, self.backend_url + path, headers=self._headers, **kw
                )
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        return self._check(response, what)

    def submit_sync(
        self,
        config_path: str | Path | None = None,
        task_app_url: Any = None,
        task_app_api_key: str | None = None,
        task_app_worker_token: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> str:
        """:meth:`submit` without an event loop (the same Idempotency-Key retries)."""
        import httpx

        body = self._body(
            config_path, task_app_url, task_app_api_key, task_app_worker_token, overrides
        )
        headers = {**self._headers, "Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        for attempt in range(SUBMIT_ATTEMPTS):
            last = attempt == SUBMIT_ATTEMPTS - 1
            try:
                with http_client(timeout=self.timeout, trust_env=False) as client:
                    response = client.post(
                        self.backend_url + "/api/jobs", headers=headers, json=body
                    )
            except httpx.HTTPError as exc:
                if last:
                    raise self._unreachable(exc) from None
            else:
                if response.status_code not in RETRY_STATUSES or last:
                    data = self._check(response, "submit")
                    self.job_id = str(data["id"])
                    return self.job_id
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def control_sync(self, action: str, job_id: str | None = None) -> dict[str, Any]:
        """``pause``, ``resume``, ``stop``, ``cancel`` or ``retry`` the job; the job."""
        return self._request_sync("POST", f"/api/jobs/{self._id(job_id)}/{action}", action)

    def delete_sync(self, job_id: str | None = None) -> dict[str, Any]:
        """Delete a finished job (its events and checkpoint too)."""
        return self._request_sync("DELETE", f"/api/jobs/{self._id(job_id)}", "delete")

    def get_status_sync(
        self, job_id: str | None = None, *, wait: float = 0.0, unless: str | None = None
    ) -> dict[str, Any]:
        path, extra = self._status_query(job_id, wait, unless)
        return self._request_sync("GET", path, "get status", **extra)

    def get_results_sync(self, job_id: str | None = None) -> PromptLearningResult:
        data = self._request_sync("GET", f"/api/jobs/{self._id(job_id)}/result", "result")
        return PromptLearningResult.from_response(data)

    def cancel_sync(self, job_id: str | None = None) -> dict[str, Any]:
        return self._request_sync("POST", f"/api/jobs/{self._id(job_id)}/cancel", "cancel")

    def poll_until_complete_sync(
        self,
        job_id: str | None = None,
        timeout: float | None = None,
        interval: float = 1.0,
        on_status: Callable[[dict[str, Any]], Any] | None = None,
    ) -> PromptLearningResult:
        job_id = self._id(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        status = self._status_reconnecting_sync(job_id)
        while True:
            if on_status is not None:
                on_status(status)
            if status["status"] in TERMINAL:
                return self.get_results_sync(job_id)
            wait = interval
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    raise TimeoutError(
                        f"job {job_id} is still {status['status']} after {timeout:g} s"
                    )
            status = self._status_reconnecting_sync(job_id, wait=wait, unless=status["status"])


async def run_in_process_job(
    config_path: str | Path,
    *,
    backend_url: str = DEFAULT_BACKEND,
    api_key: str | None = None,
    task_app_path: str | Path | None = None,
    config: Any = None,
    config_factory: Callable[[], Any] | None = None,
    app: Any = None,
    port: int = 0,
    tunnel_mode: str = "local",
    overrides: Mapping[str, Any] | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - the seed's spelling
    poll_interval: float = 1.0,
    on_status: Callable[[dict[str, Any]], Any] | None = None,
    **task_app_options: Any,
) -> PromptLearningResult:
    """Start the task app in-process, submit the job, wait for it, stop the task app.

    The task app is given as in ``InProcessTaskApp`` (``task_app_path=``, ``config=``,
    ``config_factory=``, ``app=``); other keywords go to ``InProcessTaskApp``. Its URL,
    key and (with ``tunnel_mode="synthtunnel"``) worker token are sent with the job. A
    ``timeout`` that runs out cancels the job before raising :class:`TimeoutError`.
    """
    from taskapp.core.lifecycle import InProcessTaskApp

    task_app = InProcessTaskApp(
        task_app_path=task_app_path,
        config=config,
        config_factory=config_factory,
        app=app,
        port=port,
        tunnel_mode=tunnel_mode,
        **task_app_options,
    )
    async with task_app:
        job = PromptLearningJob(backend_url, api_key)
        job_id = await job.submit(config_path, task_app_url=task_app, overrides=overrides)
        try:
            return await job.poll_until_complete(
                job_id, timeout=timeout, interval=poll_interval, on_status=on_status
            )
        except BaseException:
            with contextlib.suppress(TaskAppError):
                await job.cancel(job_id)
            raise
