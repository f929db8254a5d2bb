"""``taskapp.evaluate``: run rollouts against a task app and get every result back.

>>> import taskapp
>>> result = taskapp.evaluate("support-intents", seeds="0-19")     # doctest: +SKIP
>>> result.summary.mean_score, len(result.failures)                 # doctest: +SKIP
(0.45, 0)
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from taskapp.core.client import RolloutOutcome
from taskapp.core.endpoint import aopen_endpoint
from taskapp.core.errors import ConfigurationError
from taskapp.core.seeds import SeedsLike, parse_seeds
from taskapp.evaluation.plan import Plan
from taskapp.evaluation.report import EvaluationResult
from taskapp.evaluation.rollouts import run_evaluation

__all__ = ["aevaluate", "evaluate", "validate_options"]

T = TypeVar("T")


def validate_options(*, concurrency: Any, timeout: Any) -> None:
    """ConfigurationError for a concurrency below 1 or a timeout that is not a positive,
    finite number of seconds."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigurationError(f"concurrency must be an integer >= 1, got {concurrency!r}")
    if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
        raise ConfigurationError(
            f"timeout must be a positive, finite number of seconds, got {timeout!r}"
        )


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
    start: Mapping[str, Any] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> EvaluationResult:
    """:func:`evaluate` for async code (same arguments, awaited)."""
    validate_options(concurrency=concurrency, timeout=timeout)
    seed_list = parse_seeds(seeds, what="seeds") if seeds is not None else None
    if seed_list is not None and split is not None:
        raise ConfigurationError("pass either seeds or split, not both")
    policy_config = dict(policy or {})
    async with aopen_endpoint(
        target_or_url, api_key=api_key, worker_token=worker_token, aliases=aliases, start=start
    ) as endpoint:
        result = EvaluationResult(endpoint.label, endpoint.url, concurrency, policy_config)
        async with endpoint.async_client(timeout=timeout, limit=concurrency) as client:
            return await run_evaluation(
                result,
                client,
                seeds=seed_list,
                split=split,
                rollout_timeout=timeout,
                keep_going=keep_going,
                on_plan=on_plan,
                on_result=on_result,
            )


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
    start: Mapping[str, Any] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> EvaluationResult:
    """Run one rollout per seed against a task app; return every result and a summary.

    ``target_or_url``: the URL of a running task app (``http://``, ``https://``, or
    ``host:port`` of a loopback name or IP address, meaning ``http://``), an
    :class:`~taskapp.InProcessTaskApp` (running: used as is; not running: started and
    stopped), or anything ``taskapp eval`` starts: a ``.py`` path, a ``"module:attr"``
    import string, a name in ``aliases`` (``taskapp.evaluate`` passes the bundled
    examples, e.g. ``"support-intents"``), a :class:`~taskapp.TaskAppConfig`, an ASGI
    app, or a zero-argument factory of either. What this call starts, it stops. One
    resolution for every verb: :func:`taskapp.core.endpoint.open_endpoint`.

    ``seeds`` (``"0-99"``, a range, a list) or ``split`` pick the rollouts; with neither,
    the task set's default split, else its ``test`` split, else every seed.
    ``concurrency`` rollouts run at once; ``policy`` is the ``policy.config`` every
    rollout gets; ``timeout`` bounds each rollout (seconds). ``api_key``: for a URL, the
    key it accepts (default: the user's ``$ENVIRONMENT_API_KEY``); for a started app, the
    key to give it (default: ``$ENVIRONMENT_API_KEY``, else a fresh one).
    ``worker_token``: for a URL behind a taskapp relay. Unless ``keep_going``, the run
    stops when its first 10 rollouts all fail. ``on_plan(plan)`` and ``on_result(outcome)``
    report progress. ``start``: :class:`~taskapp.InProcessTaskApp` keyword arguments for a
    target started here (``tunnel_mode``, ``tunnel_options``, ``server``,
    ``server_options``, ``host``, ``port`` (default: any free port),
    ``health_check_timeout``), the same mapping :func:`taskapp.optimize.run` takes.

    Raises ConfigurationError for bad arguments, ApiKeyRejectedError when the app refuses
    the key, TaskAppRequestError when it cannot be reached or is not a task app; failed
    rollouts do not raise (see ``result.failures``). Works inside a running event loop
    (Jupyter) too: the evaluation then runs on a helper thread.
    """
    return _run(
        aevaluate(
            target_or_url, seeds=seeds, split=split, concurrency=concurrency, policy=policy,
            api_key=api_key, worker_token=worker_token, timeout=timeout, keep_going=keep_going,
            on_result=on_result, on_plan=on_plan, start=start, aliases=aliases,
        )
    )  # fmt: skip


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coroutine)``, on a helper thread when this thread runs a loop."""
    from taskapp.core.blocking import call_blocking

    def run() -> T:
        return asyncio.run(coroutine)

    return call_blocking(run, name="taskapp-evaluate")
