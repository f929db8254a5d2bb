"""The client half of the task-app contract: one way to call a running task app.

Every part of taskapp that talks to a task app over HTTP goes through this module: the
readiness check (:func:`taskapp.core.health.wait_healthy`), ``taskapp check``
(:func:`taskapp.check`), ``taskapp eval`` (:func:`taskapp.evaluate`) and the optimizer's
GEPA adapter. So a request is built one way (keys, the relay's worker token,
``trace_correlation_id``) and an answer is read one way (the error envelope, a rejected
key, a rollout's score and verdict).

Transports carry the bytes (:mod:`taskapp.core.transport`, re-exported here):
:class:`LoopbackTransport` (kept-alive :mod:`http.client` for loopback ``http://``) and
its asyncio twin :class:`AsyncLoopbackTransport`, :class:`HttpxTransport` and
:class:`AsyncHttpxTransport` (any other URL, or any httpx transport such as
``httpx.ASGITransport(app)``).

>>> client = TaskAppClient("http://127.0.0.1:8114", api_key="...")  # doctest: +SKIP
>>> client.health()                                                   # doctest: +SKIP
>>> client.rollout(seed=3).score                                      # doctest: +SKIP
1.0

Transport failures raise :class:`TransportError` (:class:`ClientTimeout` when nothing
answered in time), with a message in words ("connection refused: nothing is listening at
127.0.0.1:8114; is the task app running?"). Rollouts never raise for a failed rollout:
:meth:`TaskAppClient.rollout` returns a :class:`RolloutOutcome` whose ``status`` says what
happened.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from taskapp.core.errors import ApiKeyRejectedError, TaskAppRequestError
from taskapp.core.secrets import fingerprint, redact, register_secret
from taskapp.core.transport import (
    KEY_REJECTED_CODES,
    Answer,
    AsyncHttpxTransport,
    AsyncLoopbackTransport,
    AsyncTransport,
    ClientTimeout,
    HttpxTransport,
    LoopbackTransport,
    Transport,
    TransportError,
    describe_transport_error,
    error_message,
    is_key_rejection,
    is_loopback_url,
)

__all__ = [
    "KEY_REJECTED_CODES",
    "SCORE_FIELDS",
    "WORKER_TOKEN_HEADER",
    "Answer",
    "AsyncHttpxTransport",
    "AsyncLoopbackTransport",
    "AsyncTaskAppClient",
    "AsyncTransport",
    "ClientTimeout",
    "HttpxTransport",
    "LoopbackTransport",
    "RolloutOutcome",
    "TaskAppClient",
    "Transport",
    "TransportError",
    "auth_headers",
    "describe_transport_error",
    "error_message",
    "is_key_rejection",
    "is_loopback_url",
    "normalize_url",
    "rollout_request",
]

#: The header a taskapp relay (and synth-ai's SynthTunnel) checks for the lease's token.
WORKER_TOKEN_HEADER = "X-SynthTunnel-Worker-Token"  # noqa: S105 - a header name

#: Where a rollout's score may be, in the order they are read: taskapp's own field,
#: synth-ai 0.4-0.7's (Gen C) and synth-ai 0.3's (Gen B).
SCORE_FIELDS: tuple[tuple[str, str], ...] = (
    ("metrics", "outcome_score"),
    ("reward_info", "outcome_reward"),
    ("metrics", "outcome_reward"),  # synth-ai 0.4.x
    ("metrics", "mean_return"),
)

#: ``success_status`` spellings of a rollout that ran: taskapp's and synth-containers'
SUCCESS_SPELLINGS = frozenset({"success", "succeeded", "completed"})
#: a synth-containers async answer still on its way: poll ``GET /rollouts/{id}``
PENDING_STATUSES = frozenset({"running", "queued", "pending"})

#: ``success_status`` values of a rollout that ran; anything else is a failed rollout.
_SUCCESS = "success"


# -- URLs and headers --------------------------------------------------------------------


def normalize_url(url: str, *, what: str = "URL") -> str:
    """``url`` without a trailing slash, ``http://`` assumed when no scheme is given.

    >>> normalize_url("127.0.0.1:8114")
    'http://127.0.0.1:8114'
    >>> normalize_url("https://tasks.example.com/")
    'https://tasks.example.com'

    Raises :class:`ValueError` naming ``what`` when it is not an http(s) URL.
    """
    text = url.strip()
    if not text:
        raise ValueError(f"{what} is empty: expected http://host[:port] or https://host")
    if "://" not in text:
        text = "http://" + text
    parts = urllib.parse.urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{what} {url!r}: the port is not a number from 0 to 65535") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} {url!r}: expected http://host[:port] or https://host")
    del port
    return text.rstrip("/")


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The headers a task app accepts the key in: ``X-API-Key`` and ``Authorization``."""
    if not api_key:
        return {}
    return {"X-API-Key": api_key, "Authorization": f"Bearer {api_key}"}


# -- rollouts ----------------------------------------------------------------------------


def rollout_request(
    seed: int,
    *,
    run_id: str | None = None,
    policy_config: Mapping[str, Any] | None = None,
    env_config: Mapping[str, Any] | None = None,
    policy_name: str | None = None,
    env_name: str | None = None,
    max_time_s: float | None = None,
) -> dict[str, Any]:
    """A ``POST /rollout`` body every generation of the contract accepts.

    It carries ``run_id`` (taskapp, synth-ai 0.3) and ``trace_correlation_id``
    (synth-ai 0.4+, which requires it), both the same id.

    >>> body = rollout_request(3, run_id="eval-1-3")
    >>> body["trace_correlation_id"], body["env"]["seed"], body["mode"]
    ('eval-1-3', 3, 'eval')
    """
    identifier = run_id or f"taskapp-{os.urandom(6).hex()}-{seed}"
    env: dict[str, Any] = {"seed": seed, "config": dict(env_config or {})}
    if env_name:
        env["env_name"] = env_name
    policy: dict[str, Any] = {"config": dict(policy_config or {})}
    if policy_name:
        policy["policy_name"] = policy_name
    body: dict[str, Any] = {
        "run_id": identifier,
        "trace_correlation_id": identifier,
        "env": env,
        "policy": policy,
        "mode": "eval",
    }
    if max_time_s is not None:
        body["safety"] = {"max_time_s": max_time_s}
    return body


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


@dataclasses.dataclass
class RolloutOutcome:
    """What one ``POST /rollout`` came to, successful or not.

    ``status`` is the app's ``success_status`` when it answered with a score (``success``,
    ``failure``, ``timeout``, ``runtime_error``, ...), else what went wrong on the way:
    ``http_error`` (a non-200 answer), ``invalid_response`` (200 without a usable score),
    ``timeout`` (no answer in time) or ``transport_error`` (no answer at all).
    """

    seed: int
    run_id: str
    status: str
    score: float | None
    latency_s: float
    http_status: int | None = None
    error: str | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: the app's own verdict (``success_status``), when it gave one
    success_status: str | None = None
    #: which field the score was read from (``metrics.outcome_score``, ...)
    score_field: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == _SUCCESS

    @property
    def answered(self) -> bool:
        """True when the app answered (even with an error); False for timeouts and
        transport errors."""
        return self.http_status is not None

    @property
    def key_rejected(self) -> bool:
        return self.status == "key_rejected"

    @classmethod
    def from_answer(
        cls, answer: Answer, *, seed: int, run_id: str, latency_s: float | None = None
    ) -> RolloutOutcome:
        """The one reading of a rollout's answer.

        The score is read from ``metrics.outcome_score`` (taskapp), else
        ``reward_info.outcome_reward`` (synth-ai 0.4+), else ``metrics.mean_return``
        (synth-ai 0.3); the verdict from ``success_status`` (missing: success); details
        from ``metrics.details`` and ``reward_info.details``.
        """
        latency = answer.elapsed_s if latency_s is None else latency_s
        if answer.status != 200:
            status = "key_rejected" if is_key_rejection(answer) else "http_error"
            return cls(
                seed,
                run_id,
                status,
                None,
                latency,
                answer.status,
                error=redact(answer.describe()),
            )
        payload = answer.body
        if not isinstance(payload, dict):
            kind = "not JSON" if payload is None else f"a JSON {type(payload).__name__}"
            return cls(
                seed,
                run_id,
                "invalid_response",
                None,
                latency,
                200,
                error=f"the rollout response is {kind}, not a JSON object",
            )
        score, field, wrong = _read_score(payload)
        details: dict[str, Any] = {}
        for group in ("reward_info", "metrics"):
            container = payload.get(group)
            found = container.get("details") if isinstance(container, dict) else None
            if isinstance(found, dict):
                details.update(found)
        _container_details(payload, details)
        verdict = payload.get("success_status")
        verdict = verdict if isinstance(verdict, str) and verdict else None
        if verdict in SUCCESS_SPELLINGS:
            verdict = _SUCCESS
        if score is None:
            expected = ", ".join(f"{group}.{name}" for group, name in SCORE_FIELDS)
            problem = "; ".join(wrong) if wrong else f"none of {expected} is present"
            keys = ", ".join(sorted(str(key) for key in payload)) or "none"
            return cls(
                seed,
                run_id,
                "invalid_response",
                None,
                latency,
                200,
                error=f"the rollout response has no score: {problem} (its fields: {keys})",
                details=details,
                success_status=verdict,
            )
        status = verdict or _SUCCESS
        error = None
        if status != _SUCCESS:
            reason = details.get("error") or payload.get("status_detail") or details.get("feedback")
            error = redact(str(reason or status))
        return cls(
            seed,
            run_id,
            status,
            score,
            latency,
            200,
            error,
            details,
            success_status=verdict,
            score_field=field,
        )

    @classmethod
    def from_transport_error(
        cls, exc: TransportError, *, seed: int, run_id: str, latency_s: float
    ) -> RolloutOutcome:
        status = "timeout" if isinstance(exc, ClientTimeout) else "transport_error"
        return cls(seed, run_id, status, None, latency_s, error=str(exc))

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- clients -----------------------------------------------------------------------------


class _ClientBase:
    """What both clients share: the URL, headers, and how answers are read."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        worker_token: str | None = None,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        try:
            self.base_url = normalize_url(base_url)
        except ValueError as exc:
            from taskapp.core.errors import ConfigurationError

            raise ConfigurationError(str(exc)) from None
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
            from taskapp.core.errors import ConfigurationError

            raise ConfigurationError(
                f"timeout must be a positive number of seconds, got {timeout!r}"
            )
        register_secret(api_key)
        register_secret(worker_token)
        self.api_key = api_key or None
        self.worker_token = worker_token or None
        self.timeout = float(timeout)
        self.headers: dict[str, str] = {**auth_headers(self.api_key), **(headers or {})}
        if self.worker_token:
            self.headers[WORKER_TOKEN_HEADER] = self.worker_token
        #: the same headers without the API key (the worker token still reaches a relay)
        self.headers_without_key = {
            name: value
            for name, value in self.headers.items()
            if name.lower() not in ("x-api-key", "authorization", "x-api-keys")
        }
        #: ... and without the worker token either: no credential at all
        self.headers_without_credentials = {
            name: value
            for name, value in self.headers_without_key.items()
            if name.lower() != WORKER_TOKEN_HEADER.lower()
        }
        self._post_headers = {**self.headers, "Content-Type": "application/json"}

    def _headers_for(self, auth: bool | None) -> dict[str, str]:
        if auth:
            return self.headers
        return self.headers_without_key if auth is False else self.headers_without_credentials

    @property
    def key_note(self) -> str:
        return f"key {fingerprint(self.api_key)}" if self.api_key else "no key sent"

    def _raise_for(self, answer: Answer, what: str) -> Any:
        """The JSON body of a 200 answer, or a typed error saying what went wrong."""
        if is_key_rejection(answer):
            hint = (
                "pass the key the app was started with (api_key=..., --api-key-env NAME or "
                "ENVIRONMENT_API_KEY)"
                if self.api_key
                else "it needs an API key: api_key=..., --api-key-env NAME or ENVIRONMENT_API_KEY"
            )
            raise ApiKeyRejectedError(
                f"the task app at {self.base_url} rejected the API key (HTTP {answer.status}, "
                f"{self.key_note}) on {what}; {hint}"
            )
        if answer.status != 200:
            raise TaskAppRequestError(
                f"{what} at {self.base_url} answered {redact(answer.describe())}",
            )
        body = answer.body
        if body is None:
            raise TaskAppRequestError(
                f"{what} at {self.base_url} did not return JSON: is this a task app? "
                f"(check it with `taskapp check {self.base_url}`)"
            )
        return body

    @staticmethod
    def _task_info_path(seed: int | Sequence[int] | None) -> str:
        if seed is None:
            return "/task_info"
        seeds = [seed] if isinstance(seed, int) else list(seed)
        return "/task_info?" + urllib.parse.urlencode([("seed", int(s)) for s in seeds])

    @staticmethod
    def _rollout_body(
        seed: int, body: Mapping[str, Any] | None, options: Mapping[str, Any]
    ) -> tuple[dict[str, Any], str]:
        request = dict(body) if body is not None else rollout_request(seed, **options)
        run_id = str(request.get("run_id") or request.get("trace_correlation_id") or "")
        if not run_id:
            run_id = f"taskapp-{os.urandom(6).hex()}-{seed}"
            request["run_id"] = run_id
        request.setdefault("run_id", run_id)
        request.setdefault("trace_correlation_id", run_id)
        return request, run_id


class TaskAppClient(_ClientBase):
    """A client for one task app: ``health``, ``info``, ``task_info``, ``rollout``.

    ``transport`` defaults to :class:`LoopbackTransport` for ``http://`` loopback URLs and
    :class:`HttpxTransport` otherwise; pass any object with ``request(method, path, *,
    headers, body)`` and ``close()``. Thread-safe; use it as a context manager or call
    :meth:`close`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        worker_token: str | None = None,
        timeout: float = 10.0,
        transport: Transport | None = None,
        headers: Mapping[str, str] | None = None,
        limit: int = 16,
    ) -> None:
        super().__init__(
            base_url, api_key, worker_token=worker_token, timeout=timeout, headers=headers
        )
        if transport is None:
            if self.base_url.startswith("http://") and is_loopback_url(self.base_url):
                transport = LoopbackTransport(self.base_url, timeout=self.timeout)
            else:
                transport = HttpxTransport(self.base_url, timeout=self.timeout, limit=limit)
        self.transport: Transport = transport

    def __enter__(self) -> TaskAppClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.transport.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        auth: bool | None = True,
        timeout: float | None = None,
    ) -> Answer:
        """One request; ``auth=False`` leaves the API key out (``auth=None`` the worker token
        too), ``timeout`` overrides the client's. Raises :class:`TransportError` when
        nothing answered."""
        headers = self._headers_for(auth)
        payload = None
        if json_body is not None:
            payload = _json_bytes(json_body)
            headers = {**headers, "Content-Type": "application/json"}
        return self.transport.request(method, path, headers=headers, body=payload, timeout=timeout)

    def health(self) -> None:
        """``GET /health``; raises ApiKeyRejectedError, TaskAppRequestError, TransportError."""
        answer = self.request("GET", "/health")
        body = self._raise_for(answer, "GET /health")
        if not _healthy(body):
            raise TaskAppRequestError(
                f"GET /health at {self.base_url} answered 200 without "
                f'{{"healthy": true}} (or synth-containers\' {{"status": "ok"}}): '
                f"{_short(body, 100)}"
            )

    def info(self) -> dict[str, Any]:
        """``GET /info``: the service, its task and dataset."""
        body = self._raise_for(self.request("GET", "/info"), "GET /info")
        if not isinstance(body, dict):
            raise TaskAppRequestError(f"GET /info at {self.base_url} did not return an object")
        return body

    def task_info(self, seed: int | Sequence[int] | None = None) -> Any:
        """``GET /task_info``: ``{"taskset": ...}`` without seeds, one TaskInfo for one
        seed, a list for several."""
        path = self._task_info_path(seed)
        return self._raise_for(self.request("GET", path), f"GET {path}")

    def settle(
        self, answer: Answer, request: Mapping[str, Any], started: float | None = None
    ) -> Answer:
        """``answer`` itself, or, when a synth-containers app answered ``POST /rollout``
        asynchronously (``status: running`` and a ``rollout_id``), its final answer from
        ``GET /rollouts/{id}`` (polled until done or the request's ``safety.max_time_s``)."""
        pending = _pending_rollout(answer)
        if pending is None:
            return answer
        deadline = (time.perf_counter() if started is None else started) + _poll_budget(request)
        delay = 0.01
        while pending is not None and time.perf_counter() < deadline:
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
            answer = self.request("GET", f"/rollouts/{pending}")
            pending = _pending_rollout(answer, pending)
        return answer

    def rollout(
        self,
        seed: int = 0,
        *,
        body: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> RolloutOutcome:
        """``POST /rollout`` for ``seed`` (keyword ``options`` as :func:`rollout_request`,
        or a complete ``body``). Never raises for a failed rollout: see
        :class:`RolloutOutcome`."""
        request, run_id = self._rollout_body(seed, body, options)
        payload = _json_bytes(request)
        started = time.perf_counter()
        try:
            answer = self.transport.request(
                "POST", "/rollout", headers=self._post_headers, body=payload
            )
            answer = self.settle(answer, request, started)
        except TransportError as exc:
            return RolloutOutcome.from_transport_error(
                exc, seed=seed, run_id=run_id, latency_s=time.perf_counter() - started
            )
        return RolloutOutcome.from_answer(
            answer, seed=seed, run_id=run_id, latency_s=time.perf_counter() - started
        )


class AsyncTaskAppClient(_ClientBase):
    """The asyncio twin of :class:`TaskAppClient` (same methods, awaited)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        worker_token: str | None = None,
        timeout: float = 10.0,
        transport: AsyncTransport | None = None,
        headers: Mapping[str, str] | None = None,
        limit: int = 16,
    ) -> None:
        super().__init__(
            base_url, api_key, worker_token=worker_token, timeout=timeout, headers=headers
        )
        if transport is None:
            if self.base_url.startswith("http://") and is_loopback_url(self.base_url):
                transport = AsyncLoopbackTransport(self.base_url, timeout=self.timeout, limit=limit)
            else:
                transport = AsyncHttpxTransport(self.base_url, timeout=self.timeout, limit=limit)
        self.transport: AsyncTransport = transport

    async def __aenter__(self) -> AsyncTaskAppClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        auth: bool | None = True,
        timeout: float | None = None,  # noqa: ASYNC109 - per request, like httpx
    ) -> Answer:
        headers = self._headers_for(auth)
        payload = None
        if json_body is not None:
            payload = _json_bytes(json_body)
            headers = {**headers, "Content-Type": "application/json"}
        return await self.transport.request(
            method, path, headers=headers, body=payload, timeout=timeout
        )

    async def health(self) -> None:
        answer = await self.request("GET", "/health")
        body = self._raise_for(answer, "GET /health")
        if not _healthy(body):
            raise TaskAppRequestError(
                f"GET /health at {self.base_url} answered 200 without "
                f'{{"healthy": true}} (or synth-containers\' {{"status": "ok"}}): '
                f"{_short(body, 100)}"
            )

    async def info(self) -> dict[str, Any]:
        body = self._raise_for(await self.request("GET", "/info"), "GET /info")
        if not isinstance(body, dict):
            raise TaskAppRequestError(f"GET /info at {self.base_url} did not return an object")
        return body

    async def task_info(self, seed: int | Sequence[int] | None = None) -> Any:
        path = self._task_info_path(seed)
        return self._raise_for(await self.request("GET", path), f"GET {path}")

    async def container_taskset(self) -> dict[str, Any] | None:
        """A synth-containers container's task set as taskapp reads one (``{"splits":
        {name: {"seeds": [...]}}}``): ``GET /taskset``, and ``POST /taskset/tasks`` per split
        when it lists no seeds. None when the app serves neither or its task ids are not
        seeds."""
        answer = await self.request("GET", "/taskset")
        names = _taskset_split_names(answer)
        if names is None:
            return _seeds_taskset(answer.body) if answer.status == 200 else None
        splits: dict[str, Any] = {}
        for name in names:
            tasks = await self.request("POST", "/taskset/tasks", json_body={"split": name})
            seeds = _task_ids_as_seeds(tasks)
            if seeds is None:
                return None
            splits[name] = {"seeds": seeds}
        return {"splits": splits} if splits else None

    async def rollout(
        self,
        seed: int = 0,
        *,
        body: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> RolloutOutcome:
        request, run_id = self._rollout_body(seed, body, options)
        payload = _json_bytes(request)
        started = time.perf_counter()
        try:
            answer = await self.transport.request(
                "POST", "/rollout", headers=self._post_headers, body=payload
            )
            pending = _pending_rollout(answer)
            if pending is not None:  # a synth-containers app answered async: poll it
                import asyncio

                deadline = started + _poll_budget(request)
                delay = 0.01
                while pending is not None and time.perf_counter() < deadline:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.5)
                    answer = await self.request("GET", f"/rollouts/{pending}")
                    pending = _pending_rollout(answer, pending)
        except TransportError as exc:
            return RolloutOutcome.from_transport_error(
                exc, seed=seed, run_id=run_id, latency_s=time.perf_counter() - started
            )
        return RolloutOutcome.from_answer(
            answer, seed=seed, run_id=run_id, latency_s=time.perf_counter() - started
        )


def _container_details(payload: Mapping[str, Any], details: dict[str, Any]) -> None:
    """synth-containers' ``actionable_side_info`` (its feedback for a reflective proposer)
    and ``summary.output`` into ``details``, under what the app did not set itself."""
    side = payload.get("actionable_side_info")
    if isinstance(side, dict):
        for key, value in side.items():
            details.setdefault(str(key), value)
    summary = payload.get("summary")
    if isinstance(summary, dict) and "output" in summary:
        details.setdefault("output", summary["output"])
    objectives = objective_values(payload.get("objective_scores"))
    if objectives:
        details.setdefault("objectives", objectives)


def objective_values(scores: Any) -> dict[str, float]:
    """``{objective: value}`` from a rollout's ``objective_scores``: synth-containers'
    list of ``{objective, value}`` or a plain mapping (other shapes: empty).

    >>> objective_values([{"objective": "accuracy", "value": 1}, {"objective": "cost", "value": 0}])
    {'accuracy': 1.0, 'cost': 0.0}
    """
    pairs: list[tuple[Any, Any]] = []
    if isinstance(scores, dict):
        pairs = list(scores.items())
    elif isinstance(scores, list):
        pairs = [(s.get("objective"), s.get("value")) for s in scores if isinstance(s, dict)]
    return {
        str(name)[:100]: float(value)
        for name, value in pairs[:32]
        if isinstance(name, str)
        and name
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and value == value
        and abs(value) != float("inf")
    }


def _read_score(payload: Mapping[str, Any]) -> tuple[float | None, str | None, list[str]]:
    """(score, the field it came from, problems with fields that were not numbers): the
    first of :data:`SCORE_FIELDS`, else a synth-containers bundled target's ``reward``."""
    wrong: list[str] = []
    for group, name in SCORE_FIELDS:
        container = payload.get(group)
        if not isinstance(container, dict) or name not in container:
            continue
        value = _number(container[name])
        if value is None or not math.isfinite(value):
            import json

            shown = _short(json.dumps(container[name], default=str), 40)
            wrong.append(f"{group}.{name} is {shown}, not a number")
            continue
        return value, f"{group}.{name}", wrong
    value = _number(payload.get("reward"))
    if not wrong and value is not None and math.isfinite(value):
        return value, "reward", wrong
    return None, None, wrong


def _seeds_taskset(body: Any) -> dict[str, Any] | None:
    """A ``GET /taskset`` answer that already lists seeds per split (or a size), as is."""
    from taskapp.core.seeds import known_seeds

    if isinstance(body, dict) and known_seeds(body) is not None:
        return body
    inner = body.get("taskset") if isinstance(body, dict) else None
    if isinstance(inner, dict) and known_seeds(inner) is not None:
        return inner
    return None


def _taskset_split_names(answer: Answer) -> list[str] | None:
    """The split names of a ``GET /taskset`` answer that lists no seeds, else None."""
    if answer.status != 200 or _seeds_taskset(answer.body) is not None:
        return None
    body = answer.body
    splits = body.get("splits") if isinstance(body, dict) else None
    if isinstance(splits, list) and all(isinstance(name, str) for name in splits):
        return list(splits)[:50]
    if isinstance(splits, dict):
        return [str(name) for name in splits][:50]
    return None


def _task_ids_as_seeds(answer: Answer) -> list[int] | None:
    body = answer.body
    ids = body.get("task_ids") if answer.status == 200 and isinstance(body, dict) else None
    if not isinstance(ids, list):
        return None
    seeds = [int(i) for i in ids if isinstance(i, str | int) and str(i).isdigit()]
    return seeds if len(seeds) == len(ids) else None


def _healthy(body: Any) -> bool:
    """``{"healthy": true}`` (taskapp, synth-ai) or ``{"status": "ok"}`` (synth-containers)."""
    return isinstance(body, dict) and (body.get("healthy") is True or body.get("status") == "ok")


def _pending_rollout(answer: Answer, rollout_id: str | None = None) -> str | None:
    """The id to poll when ``answer`` is a synth-containers async answer still running
    (``status`` running/queued, a ``rollout_id``, no score yet), else None."""
    body = answer.body
    if answer.status != 200 or not isinstance(body, dict):
        return None
    if body.get("status") not in PENDING_STATUSES:
        return None
    found = body.get("rollout_id") or rollout_id
    if not isinstance(found, str) or not found or "/" in found or len(found) > 200:
        return None
    return urllib.parse.quote(found, safe="")


def _poll_budget(request: Mapping[str, Any]) -> float:
    """How long to poll an async answer: the request's ``safety.max_time_s`` (600 s)."""
    safety = request.get("safety")
    limit = safety.get("max_time_s") if isinstance(safety, Mapping) else None
    return float(limit) if isinstance(limit, int | float) and limit > 0 else 600.0


def _json_bytes(value: Any) -> bytes:
    # json is imported on the first request, not by `from taskapp import InProcessTaskApp`
    # (benchmarks/bench_import.py); after that the import statement is a dict lookup.
    import json

    return json.dumps(value).encode("utf-8")


def _short(value: Any, limit: int) -> str:
    import json

    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."
