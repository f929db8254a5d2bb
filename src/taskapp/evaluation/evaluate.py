"""``taskapp.evaluate``: run rollouts against a task app and get every result back.

>>> import taskapp
>>> result = taskapp.evaluate("support-intents", seeds="0-19")     # doctest: +SKIP
>>> result.summary.mean_score, len(result.failures)                 # doctest: +SKIP
(0.45, 0)
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from taskapp.core.client import (
    WORKER_TOKEN_HEADER,
    AsyncTaskAppClient,
    RolloutOutcome,
    normalize_url,
)
from taskapp.core.env_keys import environment_api_key
from taskapp.core.errors import ConfigurationError
from taskapp.core.secrets import register_secret
from taskapp.core.seeds import SeedsLike, parse_seeds
from taskapp.evaluation.plan import Plan
from taskapp.evaluation.report import EvaluationResult
from taskapp.evaluation.rollouts import run_evaluation

__all__ = ["aevaluate", "evaluate", "validate_options"]

T = TypeVar("T")

#: Defaults of the options that start an app (shared with the CLI's start options).
DEFAULT_HEALTH_TIMEOUT = 30.0


def validate_options(*, concurrency: Any, timeout: Any) -> None:
    """ConfigurationError for a concurrency below 1 or a timeout that is not a positive,
    finite number of seconds."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigurationError(f"concurrency must be an integer >= 1, got {concurrency!r}")
    if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
        raise ConfigurationError(
            f"timeout must be a positive, finite number of seconds, got {timeout!r}"
        )


_HOST_PORT = re.compile(r"^(localhost|\d{1,3}(\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]):\d+(/.*)?$")


def _is_url(value: Any) -> bool:
    """``http(s)://...``, or ``host:port`` of a loopback name or an IP address (http)."""
    if not isinstance(value, str):
        return False
    text = value.strip()
    return text.lower().startswith(("http://", "https://")) or bool(_HOST_PORT.match(text))


async def aevaluate(
    target_or_url: Any,
    *,
    seeds: SeedsLike | None = None,
    split: str | None = None,
    concurrency: int = 8,
    policy: Mapping[str, Any] | None = None,
    api_key: str | None = None,
    worker_token: str | None = None,
    timeout: float = 300.0,  # noqa: ASYNC109 - per rollout, not for the whole call
    keep_going: bool = False,
    on_result: Callable[[RolloutOutcome], None] | None = None,
    on_plan: Callable[[Plan], None] | None = None,
    tunnel: str = "local",
    tunnel_options: Mapping[str, Any] | None = None,
    server: str = "thread",
    server_options: Mapping[str, Any] | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT,
) -> EvaluationResult:
    """:func:`evaluate` for async code (same arguments, awaited)."""
    validate_options(concurrency=concurrency, timeout=timeout)
    seed_list = parse_seeds(seeds, what="seeds") if seeds is not None else None
    if seed_list is not None and split is not None:
        raise ConfigurationError("pass either seeds or split, not both")
    policy_config = dict(policy or {})
    if _is_url(target_or_url):
        started_options = {
            "tunnel": tunnel != "local",
            "tunnel_options": bool(tunnel_options),
            "server": server != "thread",
            "server_options": bool(server_options),
            "host": host != "127.0.0.1",
            "port": port is not None,
            "health_timeout": health_timeout != DEFAULT_HEALTH_TIMEOUT,
        }
        given = [name for name, set_ in started_options.items() if set_]
        if given:
            raise ConfigurationError(
                f"{', '.join(given)} start the app; a URL is evaluated as it runs "
                "(drop them, or pass the target instead of its URL)"
            )
        try:
            url = normalize_url(target_or_url)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        key = api_key if api_key is not None else environment_api_key()
        register_secret(key)
        result = EvaluationResult(url, url, concurrency, policy_config)
        return await _evaluate_url(
            result, url, key, worker_token, {}, seed_list, split, timeout, keep_going,
            on_plan, on_result,
        )  # fmt: skip

    from taskapp.core.lifecycle import InProcessTaskApp

    if isinstance(target_or_url, InProcessTaskApp) and target_or_url.running:
        task_app = target_or_url
        return await _evaluate_app(
            task_app, repr(task_app), api_key, concurrency, policy_config, seed_list, split,
            timeout, keep_going, on_plan, on_result,
        )  # fmt: skip
    if isinstance(target_or_url, InProcessTaskApp):
        task_app = target_or_url
        label = repr(task_app)
    else:
        from taskapp.core.loading import target_kwargs
        from taskapp.examples import BUNDLED

        kwargs = target_kwargs(target_or_url, aliases=BUNDLED)
        label = target_or_url if isinstance(target_or_url, str) else type(target_or_url).__name__
        task_app = InProcessTaskApp(
            **kwargs,
            host=host,
            port=port if port is not None else _free_port(),
            api_key=api_key,  # None: a fresh key for this run
            tunnel_mode=tunnel,
            tunnel_options=tunnel_options,
            server=server,
            server_options=server_options,
            health_check_timeout=health_timeout,
        )
    async with task_app:
        return await _evaluate_app(
            task_app, str(label), None, concurrency, policy_config, seed_list, split, timeout,
            keep_going, on_plan, on_result,
        )  # fmt: skip


def evaluate(
    target_or_url: Any,
    *,
    seeds: SeedsLike | None = None,
    split: str | None = None,
    concurrency: int = 8,
    policy: Mapping[str, Any] | None = None,
    api_key: str | None = None,
    worker_token: str | None = None,
    timeout: float = 300.0,
    keep_going: bool = False,
    on_result: Callable[[RolloutOutcome], None] | None = None,
    on_plan: Callable[[Plan], None] | None = None,
    tunnel: str = "local",
    tunnel_options: Mapping[str, Any] | None = None,
    server: str = "thread",
    server_options: Mapping[str, Any] | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT,
) -> EvaluationResult:
    """Run one rollout per seed against a task app; return every result and a summary.

    ``target_or_url``: the URL of a running task app (``http://``, ``https://``, or
    ``host:port`` of a loopback name or IP address, meaning ``http://``), an
    :class:`~taskapp.InProcessTaskApp` (running: used as is; not running: started and
    stopped), or anything ``taskapp eval`` starts: a ``.py`` path, a ``"module:attr"``
    import string, a bundled example's name, a :class:`~taskapp.TaskAppConfig`, an ASGI
    app, or a zero-argument factory of either. What this call starts, it stops.

    ``seeds`` (``"0-99"``, a range, a list) or ``split`` pick the rollouts; with neither,
    the task set's default split, else its ``test`` split, else every seed.
    ``concurrency`` rollouts run at once; ``policy`` is the ``policy.config`` every
    rollout gets; ``timeout`` bounds each rollout (seconds). ``api_key``: for a URL, the
    key it accepts (default ``$ENVIRONMENT_API_KEY``); for a started app, the key to give
    it (default: a fresh one). ``worker_token``: for a URL behind a taskapp relay.
    Unless ``keep_going``, the run stops when its first 10 rollouts all fail.
    ``on_plan(plan)`` and ``on_result(outcome)`` report progress. The start options
    (``tunnel``, ``tunnel_options``, ``server``, ``server_options``, ``host``, ``port``
    (default: any free port), ``health_timeout``) are :class:`~taskapp.InProcessTaskApp`'s.

    Raises ConfigurationError for bad arguments, ApiKeyRejectedError when the app refuses
    the key, TaskAppRequestError when it cannot be reached or is not a task app; failed
    rollouts do not raise (see ``result.failures``). Works inside a running event loop
    (Jupyter) too: the evaluation then runs on a helper thread.
    """
    return _run(
        aevaluate(
            target_or_url, seeds=seeds, split=split, concurrency=concurrency, policy=policy,
            api_key=api_key, worker_token=worker_token, timeout=timeout, keep_going=keep_going,
            on_result=on_result, on_plan=on_plan, tunnel=tunnel, tunnel_options=tunnel_options,
            server=server, server_options=server_options, host=host, port=port,
            health_timeout=health_timeout,
        )
    )  # fmt: skip


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coroutine)``, on a helper thread when this thread runs a loop."""
    from taskapp.core.blocking import call_blocking

    def run() -> T:
        return asyncio.run(coroutine)

    return call_blocking(run, name="taskapp-evaluate")


def _free_port() -> int:
    from taskapp.core.ports import free_loopback_port

    port = free_loopback_port()
    return port if 1024 <= port <= 65000 else 8114


async def _evaluate_app(
    task_app: Any,
    label: str,
    api_key: str | None,
    concurrency: int,
    policy_config: dict[str, Any],
    seeds: list[int] | None,
    split: str | None,
    rollout_timeout: float,
    keep_going: bool,
    on_plan: Callable[[Plan], None] | None,
    on_result: Callable[[RolloutOutcome], None] | None,
) -> EvaluationResult:
    url = task_app.url or task_app.local_url
    headers = dict(task_app.tunnel.headers) if task_app.tunnel else {}
    token = getattr(task_app, "task_app_worker_token", None)
    result = EvaluationResult(label, url, concurrency, policy_config)
    return await _evaluate_url(
        result, url, api_key or task_app.api_key, token, headers, seeds, split,
        rollout_timeout, keep_going, on_plan, on_result,
    )  # fmt: skip


async def _evaluate_url(
    result: EvaluationResult,
    url: str,
    api_key: str | None,
    worker_token: str | None,
    headers: Mapping[str, str],
    seeds: list[int] | None,
    split: str | None,
    rollout_timeout: float,
    keep_going: bool,
    on_plan: Callable[[Plan], None] | None,
    on_result: Callable[[RolloutOutcome], None] | None,
) -> EvaluationResult:
    if worker_token and WORKER_TOKEN_HEADER in headers:
        worker_token = None  # the tunnel's own headers already carry it
    async with AsyncTaskAppClient(
        url,
        api_key,
        worker_token=worker_token,
        timeout=rollout_timeout,
        headers=headers,
        limit=result.concurrency,
    ) as client:
        return await run_evaluation(
            result,
            client,
            seeds=seeds,
            split=split,
            rollout_timeout=rollout_timeout,
            keep_going=keep_going,
            on_plan=on_plan,
            on_result=on_result,
        )
