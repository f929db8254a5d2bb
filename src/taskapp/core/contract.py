"""The task-app HTTP contract: payload models and :func:`create_task_app`.

Routes (see docs/contract.md)::

    GET|HEAD /       no auth   {"status": "ok", "service": app_id}
    GET /health      auth      {"healthy": true}
    GET /info        auth      service, base task info, dataset info
    GET /task_info   auth      no seed: {"taskset": ...}; ?seed=N (repeatable): TaskInfo(s)
    POST /rollout    auth      RolloutResponse

Auth accepts ``X-API-Key``, any comma-separated entry of ``X-API-Keys`` or
``Authorization: Bearer <key>``, compared in constant time with every configured key.
Every error uses one envelope: ``{"detail": {"error": {"code": ..., "message": ...}}}``
and never contains key material.
"""

from __future__ import annotations

import functools
import inspect
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal

from fastapi import FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.datastructures import Headers

from taskapp.core import containers
from taskapp.core.config import TaskAppConfig
from taskapp.core.env_keys import environment_api_key, environment_api_key_aliases
from taskapp.core.errors import error_body
from taskapp.core.logs import get_logger
from taskapp.core.secrets import constant_time_in, register_secret

__all__ = [
    "DatasetInfo",
    "EnvSpec",
    "PolicySpec",
    "RewardInfo",
    "RolloutMetrics",
    "RolloutRequest",
    "RolloutResponse",
    "SafetySpec",
    "TaskAppAuth",
    "TaskInfo",
    "alias_keys_from_env",
    "create_task_app",
    "error_body",
    "normalize_rollout_response",
    "normalize_task_info",
]

logger = get_logger("taskapp.app")


class _Open(BaseModel):
    """Unknown fields are kept and passed through."""

    model_config = ConfigDict(extra="allow")


class EnvSpec(_Open):
    env_name: str | None = None
    seed: int | None = None
    config: dict[str, Any] = Field(default_factory=dict)


class PolicySpec(_Open):
    policy_name: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)


class SafetySpec(_Open):
    max_time_s: float = 3600.0


class RolloutRequest(_Open):
    """One rollout to run. Every generation's request validates:

    * taskapp's own (``run_id``, optionally ``trace_correlation_id``);
    * synth-ai 0.4-0.7 ("Gen C": ``trace_correlation_id``, no ``run_id``);
    * synth-ai 0.3 ("Gen B": ``run_id``, ``mode``, ``ops``, ``record``; the extra
      fields are kept, unread).

    After validation both ids are set: a missing ``run_id`` is the
    ``trace_correlation_id`` (or a generated ``run-<hex>``), a missing
    ``trace_correlation_id`` is the ``run_id``, so a rollout can always echo both.

    >>> RolloutRequest.model_validate({"trace_correlation_id": "t-1", "env": {"seed": 2}}).run_id
    't-1'
    >>> RolloutRequest.model_validate({"run_id": "r-1"}).trace_correlation_id
    'r-1'
    """

    run_id: str
    env: EnvSpec = Field(default_factory=EnvSpec)
    policy: PolicySpec = Field(default_factory=PolicySpec)
    mode: Literal["eval", "rl"] = "eval"
    trace_correlation_id: str | None = None
    safety: SafetySpec = Field(default_factory=SafetySpec)

    @model_validator(mode="before")
    @classmethod
    def _fill_ids(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        run_id = data.get("run_id")
        correlation = data.get("trace_correlation_id")
        if run_id is None or run_id == "":
            fallback = data.get("rollout_id")  # a synth-containers request's id
            fallback = fallback if isinstance(fallback, str) and fallback else None
            data = {**data, "run_id": correlation or fallback or f"run-{uuid.uuid4().hex[:16]}"}
        if correlation is None or correlation == "":
            data = {**data, "trace_correlation_id": data["run_id"]}
        mode = data.get("mode")
        if isinstance(mode, str) and mode.strip().lower() in ("eval", "rl"):
            data = {**data, "mode": mode.strip().lower()}
        return data


class RolloutMetrics(_Open):
    outcome_score: float
    #: the same score where synth-ai 0.4.x's ``RolloutMetrics`` requires it
    outcome_reward: float | None = None
    mean_return: float | None = None
    num_steps: int | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class RewardInfo(_Open):
    """synth-ai 0.4+'s ``reward_info`` (its ``RolloutMetrics``): the score is ``outcome_reward``."""

    outcome_reward: float
    details: dict[str, Any] = Field(default_factory=dict)


#: ``success_status`` values: taskapp's and synth-ai 0.7's.
SuccessStatus = Literal[
    "success", "timeout", "runtime_error", "failure", "network_error", "apply_failed"
]


class RolloutResponse(_Open):
    """A rollout's answer. A task app always sends it in the shape every client reads:
    ``metrics.outcome_score`` (taskapp, synth-ai 0.3), ``metrics.outcome_reward`` (synth-ai
    0.4.x) and ``reward_info.outcome_reward`` (synth-ai 0.5+) carry the same score, with
    ``run_id``, ``trace_correlation_id`` and ``success_status`` (see
    :func:`normalize_rollout_response`)."""

    run_id: str
    metrics: RolloutMetrics
    reward_info: RewardInfo | None = None
    trajectories: list[Any] | None = None
    trace: dict[str, Any] | None = None
    success_status: SuccessStatus | None = None
    trace_correlation_id: str | None = None


class TaskDescriptor(_Open):
    id: str
    name: str
    description: str | None = None
    version: str | None = None


class DatasetInfo(_Open):
    id: str | None = None
    name: str | None = None
    split: str | None = None


class InferenceInfo(_Open):
    model: str | None = None
    inference_url: str | None = None


class LimitsInfo(_Open):
    max_turns: int | None = None
    timeout_seconds: float | None = None


class TaskInfo(_Open):
    task: TaskDescriptor
    environment: str | None = None
    dataset: DatasetInfo = Field(default_factory=DatasetInfo)
    inference: InferenceInfo = Field(default_factory=InferenceInfo)
    limits: LimitsInfo = Field(default_factory=LimitsInfo)
    task_metadata: dict[str, Any] = Field(default_factory=dict)


class TaskAppAuth:
    """The keys a task app accepts. Lives on ``app.state.taskapp_auth``.

    The keys the app was built with (:meth:`add_key`) stay for its lifetime. A host
    (InProcessTaskApp) serving the app grants its instance key (:meth:`grant`) while that
    instance runs and revokes it (:meth:`revoke`) on stop, so the key reaches the app through its
    own configuration rather than ``os.environ``, and serving the same app object again never
    accepts a stopped instance's key.
    """

    def __init__(self, keys: Iterable[str], *, required: bool) -> None:
        self.keys: list[str] = []
        self.required = required
        self._own: set[str] = set()
        self._grants: dict[str, int] = {}
        self._lock = threading.Lock()
        for key in keys:
            self.add_key(key)

    def add_key(self, key: str) -> None:
        """Accept ``key`` for the app's lifetime."""
        if not key:
            return
        register_secret(key)
        with self._lock:
            self._own.add(key)
            if key not in self.keys:
                self.keys = [*self.keys, key]

    def grant(self, key: str) -> None:
        """Accept ``key`` until a matching :meth:`revoke` (grants of one key are counted)."""
        if not key:
            return
        register_secret(key)
        with self._lock:
            self._grants[key] = self._grants.get(key, 0) + 1
            if key not in self.keys:
                self.keys = [*self.keys, key]

    def revoke(self, key: str) -> None:
        """Undo one :meth:`grant`; the key is refused once its last grant is revoked (unless
        it is one of the app's own keys)."""
        with self._lock:
            count = self._grants.get(key, 0)
            if count > 1:
                self._grants[key] = count - 1
                return
            self._grants.pop(key, None)
            if key not in self._own:
                # A new list, so a check running in another thread sees the old or the new.
                self.keys = [k for k in self.keys if k != key]

    @staticmethod
    def presented(headers: Any) -> list[str]:
        found: list[str] = []
        single = headers.get("x-api-key")
        if single:
            found.append(single.strip())
        many = headers.get("x-api-keys")
        if many:
            found.extend(part.strip() for part in many.split(",") if part.strip())
        authorization = headers.get("authorization")
        if authorization and authorization[:7].lower() == "bearer ":
            found.append(authorization[7:].strip())
        return found

    def check(self, headers: Any) -> tuple[int, dict[str, Any]] | None:
        """None when the request may pass, else (status, error body)."""
        if not self.required:
            return None
        keys = self.keys
        if not keys:
            return 503, error_body(
                "missing_api_key",
                "the task app has no API key configured; set ENVIRONMENT_API_KEY or pass "
                "api_keys to create_task_app",
            )
        presented = self.presented(headers)
        if not presented:
            return 401, error_body(
                "unauthorized",
                "missing API key: send X-API-Key or Authorization: Bearer",
            )
        accepted = False
        for candidate in presented:
            accepted |= constant_time_in(candidate, keys)
        if not accepted:
            return 401, error_body("unauthorized", "invalid API key")
        return None


def _keys_from_env() -> list[str]:
    keys = []
    primary = environment_api_key()
    if primary:
        keys.append(primary)
    keys.extend(alias_keys_from_env())
    return keys


def alias_keys_from_env() -> list[str]:
    """The extra keys in the comma-separated ``ENVIRONMENT_API_KEY_ALIASES`` (may be empty).

    Accepted next to the host's key too: they add keys, they never replace one.
    """
    return environment_api_key_aliases()  # keys lent to a running synth-ai app left out


async def call_user(func: Callable[..., Any], *args: Any, abandon_on_cancel: bool = False) -> Any:
    """Call a user callable: await it if async, run it in a worker thread if sync.

    ``abandon_on_cancel``: a cancelled caller stops waiting for a sync callable at once (its
    thread finishes the call; the result is dropped) instead of waiting for it to return.
    """
    if inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - callable objects with async __call__
    ):
        return await func(*args)
    if abandon_on_cancel:
        import anyio.to_thread

        result = await anyio.to_thread.run_sync(func, *args, abandon_on_cancel=True)
    else:
        from starlette.concurrency import run_in_threadpool

        result = await run_in_threadpool(func, *args)
    if inspect.isawaitable(result):
        return await result
    return result


def create_task_app(config: TaskAppConfig, *, api_keys: Iterable[str] | None = None) -> FastAPI:
    """Build the FastAPI app of ``config``.

    ``api_keys``: the keys to accept; when None, ``ENVIRONMENT_API_KEY`` plus the
    comma-separated ``ENVIRONMENT_API_KEY_ALIASES`` are read once, here.

    The contract's routes are built once per process (:func:`_contract_routes`) and shared
    by every app built here: their handlers read this app's config and state from
    ``request.app.state.taskapp_contract``. Building an app is then a few objects, not a
    FastAPI signature analysis per route (about 9 ms for 15 routes), which every
    ``config=`` enter pays.

    >>> app = create_task_app(config, api_keys=["secret-key"])  # doctest: +SKIP
    """
    from contextlib import asynccontextmanager

    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    keys = list(api_keys) if api_keys is not None else _keys_from_env()
    auth = TaskAppAuth(keys, required=config.require_api_key)
    async_rollouts = containers.AsyncRollouts(config.max_async_rollouts, config.async_rollout_ttl_s)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        for hook in config.startup_hooks:
            await call_user(hook)
        try:
            yield
        finally:
            await async_rollouts.aclose()  # no async rollout outlives the app
            for hook in config.shutdown_hooks:
                await call_user(hook)

    app = FastAPI(
        title=config.name,
        description=config.description,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.taskapp_auth = auth
    app.state.taskapp_config = config
    app.state.taskapp_async_rollouts = async_rollouts
    app.state.taskapp_contract = _Served(config, async_rollouts)
    for key, value in config.app_state.items():
        setattr(app.state, key, value)

    _add_user_middleware(app, config)

    app.add_middleware(_KeyCheck, auth=auth)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.router.routes.extend(_contract_routes())
    for router in config.routers:
        app.include_router(router)
    # outermost: a body over the limit is refused before anything reads it
    app.add_middleware(containers.BodyLimit, limit=containers.MAX_CONTAINER_BODY)
    return app


class _KeyCheck:
    """ASGI middleware: the API-key check (``/`` and ``OPTIONS`` pass), and a 500 in the
    error envelope for an exception the app did not handle.

    Plain ASGI rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware runs
    every request through a task group and memory streams, a few tenths of a millisecond
    per request (every health check of a ``config=`` enter, every rollout).
    """

    def __init__(self, app: Any, auth: TaskAppAuth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] != "/" and scope["method"] != "OPTIONS":
            denied = self.auth.check(Headers(scope=scope))
            if denied is not None:
                from fastapi.responses import JSONResponse

                status, body = denied
                await JSONResponse(body, status_code=status)(scope, receive, send)
                return
        started = False

        async def tracked(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:
                raise  # too late for an answer of our own; uvicorn closes the connection
            # Answer here rather than in an exception handler: Starlette re-raises after a
            # handler's 500, and uvicorn then drops the client's kept-alive connection.
            await _internal_error(exc)(scope, receive, send)


def _add_user_middleware(app: FastAPI, config: TaskAppConfig) -> None:
    """``config.cors_origins`` and ``config.middleware``, inside the key check."""
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["*"],
            allow_headers=["*"],
        )
    for middleware in config.middleware:
        if isinstance(middleware, tuple):
            cls, kwargs = middleware
            app.add_middleware(cls, **kwargs)
        else:
            app.add_middleware(middleware)


class _Served:
    """One app's side of the shared contract routes (``app.state.taskapp_contract``): the
    config, the async-rollout table, and the invalid-response reports logged once."""

    def __init__(self, config: TaskAppConfig, async_rollouts: containers.AsyncRollouts) -> None:
        self.config = config
        self.async_rollouts = async_rollouts
        self.reported: set[str] = set()
        self.container_rollouts = _ContainerRollouts(config, async_rollouts, self.invalid_response)

    def invalid_response(self, exc: ValidationError) -> Any:
        """The user's rollout returned a value that is not a RolloutResponse: nothing
        raised, so say which fields are missing or wrong (logged once per distinct
        problem; the traceback only at DEBUG)."""
        from fastapi.responses import JSONResponse

        problems = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or 'the response'}: {error['msg']}"
            + (f" (got {error['input']!r})"[:80] if error["type"] != "missing" else "")
            for error in exc.errors()
        )
        message = f"the rollout function returned an invalid response: {problems}"
        if message not in self.reported and len(self.reported) < 100:
            self.reported.add(message)
            logger.warning("%s (logged once)", message)
        logger.info("invalid rollout response (the traceback, with -v)", exc_info=exc)
        return JSONResponse(error_body("invalid_rollout_response", message), status_code=500)

    def container_metadata(self) -> dict[str, Any]:
        config = self.config
        return containers.metadata_payload(
            app_id=config.app_id,
            name=config.name,
            description=config.description,
            prompts=containers.declared_prompts(config),
        )

    def unknown_rollout(self, rollout_id: str) -> Any:
        return _not_found(
            "unknown_rollout",
            f"no async rollout {rollout_id[:128]!r} (finished ones are kept "
            f"{self.config.async_rollout_ttl_s:g} s)",
        )


def _served(request: Request) -> _Served:
    """The app's :class:`_Served` (``scope["app"]`` is the app serving this request)."""
    served: _Served = request.app.state.taskapp_contract
    return served


@functools.cache
def _contract_routes() -> tuple[Any, ...]:
    """The contract's routes, built once per process, in matching order (see the module
    docstring and docs/contract.md); every :func:`create_task_app` app shares them."""
    from fastapi import APIRouter

    router = APIRouter()
    router.add_api_route("/", _root, methods=["GET"])
    # HEAD / too, out of the OpenAPI document (one route for both gave two operations with
    # the same operationId, which FastAPI warns about and schema tools reject).
    router.add_route("/", _root_head, methods=["HEAD"], include_in_schema=False)
    router.add_api_route("/health", _health, methods=["GET"])
    router.add_api_route("/info", _info, methods=["GET"])
    router.add_api_route("/metadata", _metadata, methods=["GET"])
    router.add_api_route("/task_info", _task_info, methods=["GET"])
    router.add_api_route("/rollouts", _rollout, methods=["POST"])  # synth-containers' spelling
    router.add_api_route("/rollout", _rollout, methods=["POST"])
    # the synth-containers discovery and async-rollout routes (see docs/contract.md)
    router.add_api_route("/program", _program, methods=["GET"])
    router.add_api_route("/taskset", _taskset, methods=["GET"])
    router.add_api_route("/taskset/tasks", _taskset_tasks, methods=["POST"])
    router.add_api_route("/rollouts/{rollout_id}", _get_rollout, methods=["GET"])
    router.add_api_route("/rollouts/{rollout_id}/state", _get_rollout_state, methods=["GET"])
    router.add_api_route("/rollouts/{rollout_id}/terminate", _terminate_rollout, methods=["POST"])
    return tuple(router.routes)


def _internal_error(exc: Exception) -> Any:
    from fastapi.responses import JSONResponse

    request_id = uuid.uuid4().hex[:16]
    logger.error("unhandled error in task app (request %s)", request_id, exc_info=exc)
    return JSONResponse(
        error_body(
            "internal_error",
            f"the task app raised {type(exc).__name__}; see its log for request {request_id}",
            request_id=request_id,
        ),
        status_code=500,
    )


async def _on_validation_error(_request: Request, exc: Exception) -> Any:
    from fastapi.responses import JSONResponse

    errors = [
        {key: value for key, value in error.items() if key in ("loc", "msg", "type")}
        for error in exc.errors()  # type: ignore[attr-defined]  # a RequestValidationError
    ]
    return JSONResponse(
        error_body("invalid_request", "the request body or query is invalid", errors=errors),
        status_code=422,
    )


async def _on_http_error(_request: Request, exc: Exception) -> Any:
    from fastapi.responses import JSONResponse

    status_code: int = exc.status_code  # type: ignore[attr-defined]  # an HTTPException
    detail = exc.detail  # type: ignore[attr-defined]
    if isinstance(detail, dict) and "error" in detail:
        return JSONResponse({"detail": detail}, status_code=status_code)
    code = {400: "invalid_body", 404: "not_found", 405: "method_not_allowed"}.get(
        status_code, "http_error"
    )
    return JSONResponse(error_body(code, str(detail)), status_code=status_code)


async def _root(request: Request) -> dict[str, Any]:
    return {"status": "ok", "service": _served(request).config.app_id}


async def _root_head(request: Request) -> Any:
    # A plain Starlette route: FastAPI's would analyse a signature for nothing.
    from fastapi.responses import JSONResponse

    return JSONResponse({"status": "ok", "service": _served(request).config.app_id})


async def _health() -> dict[str, Any]:
    return {"healthy": True}


async def _info(request: Request) -> dict[str, Any]:
    served = _served(request)
    config = served.config
    dataset = _dump(await call_user(config.describe_taskset))
    base = _dump(config.base_task_info)
    base = base if isinstance(base, dict) else {}
    task = {
        "id": config.app_id,
        "name": config.name,
        "description": config.description,
        **_mapping(base.get("task")),
    }
    if isinstance(dataset, dict):
        dataset = {**_mapping(base.get("dataset")), **dataset}
    service: dict[str, Any] = {
        "app_id": config.app_id,
        "name": config.name,
        "description": config.description,
        "task": task,
    }
    if task.get("version") is not None:
        service["version"] = task["version"]
    return {
        **served.container_metadata(),  # a superset of synth-containers' /info
        "service": service,
        "task_info": _dump(config.base_task_info),
        "dataset": dataset,
        "inference": _mapping(base.get("inference")),
        "limits": _mapping(base.get("limits")),
    }


async def _metadata(request: Request) -> dict[str, Any]:
    return _served(request).container_metadata()


async def _task_info(
    request: Request,
    seed: list[int] | None = Query(default=None),  # noqa: B008
    seeds: list[int] | None = Query(default=None),  # noqa: B008
) -> Any:
    config = _served(request).config
    wanted = [*(seed or []), *(seeds or [])]
    if not wanted:
        return {"taskset": _dump(await call_user(config.describe_taskset))}
    instances = await call_user(config.provide_task_instances, wanted)
    dumped = [normalize_task_info(item, config) for item in instances]
    return dumped[0] if len(dumped) == 1 else dumped


async def _rollout(body: RolloutRequest, request: Request) -> Any:
    from fastapi.responses import JSONResponse

    if not ({"env", "task_id", "seed"} & (body.model_fields_set | set(body.model_extra or ()))):
        return JSONResponse(
            error_body(
                "missing_task",
                "the rollout request names no task: send env (with env.seed), task_id or seed",
                missing=["env", "task_id", "seed"],
            ),
            status_code=422,
        )
    served = _served(request)
    try:
        fields = containers.container_fields(body, request.url.path)
        if fields is not None:
            containers.apply_container_fields(body, fields)
    except containers.ContainerRequestError as exc:
        return JSONResponse(error_body(exc.code, exc.message), status_code=422)
    if fields is not None:
        return await served.container_rollouts.submit(body, request, fields)
    result = await call_user(served.config.rollout, body, request)
    try:
        return normalize_rollout_response(result, body)
    except ValidationError as exc:
        return served.invalid_response(exc)


class TasksetTasksRequest(_Open):
    """``POST /taskset/tasks``: the task ids of a split (synth-containers 0.4.6)."""

    split: str | None = Field(default=None, max_length=200)
    filters: dict[str, Any] = Field(default_factory=dict)
    limit: int = Field(default=10_000, ge=1, le=100_000)


def _not_found(code: str, message: str) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(error_body(code, message), status_code=404)


async def _program(request: Request) -> Any:
    config = _served(request).config
    prompts = containers.declared_prompts(config)
    if not prompts:
        return _not_found(
            "program_not_declared",
            "this task app declares no mutable prompts; set TaskAppConfig.prompts "
            '(e.g. {"prompt": DEFAULT_PROMPT}) to make it a GEPA-ready container',
        )
    return containers.program_payload(config.app_id, prompts)


async def _taskset(request: Request) -> Any:
    config = _served(request).config
    return containers.taskset_payload(
        config.app_id, _dump(await call_user(config.describe_taskset))
    )


async def _taskset_tasks(body: TasksetTasksRequest, request: Request) -> Any:
    config = _served(request).config
    described = _dump(await call_user(config.describe_taskset))
    ids = containers.split_task_ids(described, body.split, body.limit)
    if ids is None:
        known = containers.taskset_payload(config.app_id, described)["splits"]
        return _not_found(
            "unknown_split",
            f"the task set lists no seeds for split {body.split!r}; its splits: "
            f"{', '.join(known) or 'none'}",
        )
    return {"split": body.split or "train", "task_ids": ids, "filters": body.filters}


async def _get_rollout(rollout_id: str, request: Request) -> Any:
    served = _served(request)
    found = served.async_rollouts.get(rollout_id)
    return served.unknown_rollout(rollout_id) if found is None else found


async def _get_rollout_state(rollout_id: str, request: Request) -> Any:
    served = _served(request)
    found = served.async_rollouts.state(rollout_id)
    return served.unknown_rollout(rollout_id) if found is None else found


async def _terminate_rollout(rollout_id: str, request: Request) -> Any:
    served = _served(request)
    found = await served.async_rollouts.terminate(rollout_id)
    return served.unknown_rollout(rollout_id) if found is None else found


class _ContainerRollouts:
    """Runs a container request (``/rollouts``, or ``/rollout`` with container fields): sync
    (cancelled when the client goes away) or async (in the app's :class:`AsyncRollouts`)."""

    def __init__(
        self,
        config: TaskAppConfig,
        table: containers.AsyncRollouts,
        invalid_response: Callable[[ValidationError], Any],
    ) -> None:
        self.config = config
        self.table = table
        self.invalid_response = invalid_response

    async def submit(
        self, body: RolloutRequest, request: Request, fields: containers.ContainerFields
    ) -> Any:
        from fastapi.responses import JSONResponse

        if fields.submission_mode == "sync":
            return await _until_disconnected(request, self.run(body, request, fields))
        try:
            return self.table.submit(
                fields.rollout_id,
                lambda: self.run_async(body, request, fields),
                body.safety.max_time_s,
            )
        except containers.RolloutsFullError as exc:
            return JSONResponse(
                error_body("too_many_rollouts", str(exc), retry_after_s=exc.retry_after_s),
                status_code=429,
                headers={"Retry-After": str(exc.retry_after_s)},
            )
        except containers.ContainerRequestError as exc:
            return JSONResponse(error_body(exc.code, exc.message), status_code=409)

    async def run(
        self, body: RolloutRequest, request: Request, fields: containers.ContainerFields
    ) -> Any:
        result = await call_user(self.config.rollout, body, request)
        try:
            normalized = normalize_rollout_response(result, body)
        except ValidationError as exc:
            return self.invalid_response(exc)
        return containers.container_result(normalized, fields)

    async def run_async(
        self, body: RolloutRequest, request: Request, fields: containers.ContainerFields
    ) -> dict[str, Any]:
        from starlette.exceptions import HTTPException as StarletteHTTPException

        try:
            result = await call_user(self.config.rollout, body, request, abandon_on_cancel=True)
            normalized = normalize_rollout_response(result, body)
        except StarletteHTTPException as exc:
            detail = exc.detail.get("error") if isinstance(exc.detail, dict) else None
            code = (
                str(detail.get("code", "http_error")) if isinstance(detail, dict) else "http_error"
            )
            message = (
                str(detail.get("message", "")) if isinstance(detail, dict) else str(exc.detail)
            )
            raise containers.ContainerRequestError(code, message) from None
        except ValidationError as exc:
            raise containers.ContainerRequestError(
                "invalid_rollout_response",
                f"the rollout function returned an invalid response ({exc.error_count()} problems)",
            ) from None
        return containers.container_result(normalized, fields)


async def _until_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """Await ``work`` unless the client disconnects first; then cancel it (nothing of a
    rollout nobody waits for keeps running) and answer 499 to no one."""
    import asyncio

    from fastapi.responses import JSONResponse

    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while True:
            message = await request.receive()
            if message.get("type") == "http.disconnect":
                return

    watcher = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    await asyncio.wait({task}, timeout=1.0)
    return JSONResponse(error_body("client_disconnected", "the client went away"), status_code=499)


def _dump(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_none=True)
    if isinstance(value, list):
        return [_dump(item) for item in value]
    return value


def _mapping(value: Any) -> dict[str, Any]:
    value = _dump(value)
    return dict(value) if isinstance(value, dict) else {}


def _score_of(payload: dict[str, Any]) -> Any:
    """The score as every client reads it (the order of
    :data:`taskapp.core.client.SCORE_FIELDS`), or None."""
    from taskapp.core.client import SCORE_FIELDS

    for group, name in SCORE_FIELDS:
        container = payload.get(group)
        if isinstance(container, dict) and container.get(name) is not None:
            return container[name]
    return None


def normalize_rollout_response(
    result: Any, request: RolloutRequest | None = None
) -> dict[str, Any]:
    """The JSON a task app answers ``POST /rollout`` with, whatever ``rollout`` returned.

    ``result`` may be a taskapp :class:`RolloutResponse`, a synth-ai response model
    (any pydantic model: 0.4+ ``reward_info``, 0.3 ``metrics.mean_return``) or a plain
    dict of either shape. The answer carries the score in ``metrics.outcome_score``,
    ``metrics.outcome_reward`` and ``reward_info.outcome_reward``, ``run_id`` and
    ``trace_correlation_id`` (from ``request`` when missing) and ``success_status``
    (``"success"`` when missing), so taskapp's readers and synth-ai 0.3 - 0.7 clients
    all validate it. Unknown fields pass through.

    >>> normalize_rollout_response({"run_id": "r", "reward_info": {"outcome_reward": 1}})
    ... # doctest: +NORMALIZE_WHITESPACE
    {'run_id': 'r', 'metrics': {'outcome_score': 1.0, 'outcome_reward': 1.0, 'details': {}},
     'reward_info': {'outcome_reward': 1.0, 'details': {}}, 'success_status': 'success',
     'trace_correlation_id': 'r'}

    Raises :class:`pydantic.ValidationError` naming the fields when no score is there.
    """
    if isinstance(result, BaseModel):
        payload = result.model_dump(mode="json", exclude_none=True)
    elif isinstance(result, dict):
        payload = dict(result)
    else:
        payload = result  # validation below says what is wrong
    if isinstance(payload, dict):
        score = _score_of(payload)
        if score is not None:
            metrics = _mapping(payload.get("metrics"))
            if metrics.get("outcome_score") is None:
                metrics["outcome_score"] = score
            if metrics.get("outcome_reward") is None:
                metrics["outcome_reward"] = score  # synth-ai 0.4.x clients read it there
            payload["metrics"] = metrics
            reward = _mapping(payload.get("reward_info"))
            if reward.get("outcome_reward") is None:
                reward["outcome_reward"] = score
            payload["reward_info"] = reward
        run_id = payload.get("run_id") or payload.get("trace_correlation_id")
        if not run_id and request is not None:
            run_id = request.run_id
        if run_id:
            payload["run_id"] = run_id
        if not payload.get("trace_correlation_id"):
            correlation = request.trace_correlation_id if request is not None else None
            payload["trace_correlation_id"] = correlation or run_id
        if payload.get("success_status") is None:
            payload["success_status"] = "success"
    return RolloutResponse.model_validate(payload).model_dump(exclude_none=True)


def normalize_task_info(instance: Any, config: TaskAppConfig) -> Any:
    """One ``/task_info`` entry: the instance over ``base_task_info``'s defaults (one level
    deep), with ``task``, ``dataset``, ``inference`` and ``limits`` always present, as
    synth-ai 0.4+'s ``TaskInfo`` requires."""
    item = _dump(instance)
    if not isinstance(item, dict):
        return item
    base = _mapping(config.base_task_info)
    merged: dict[str, Any] = dict(base)
    for key, value in item.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = {**base[key], **value}
        else:
            merged[key] = value
    if not isinstance(merged.get("task"), dict):
        merged["task"] = {"id": config.app_id, "name": config.name}
    for key in ("dataset", "inference", "limits"):
        if not isinstance(merged.get(key), dict):
            merged[key] = {}
    return merged


def is_task_app(app: Any) -> bool:
    """True when ``app`` was built by :func:`create_task_app`."""
    state = getattr(app, "state", None)
    return isinstance(getattr(state, "taskapp_auth", None), TaskAppAuth)
