"""The rollout loop: ``concurrency`` workers over one :class:`AsyncTaskAppClient`, each
taking the next seed; stops early when the first rollouts all fail."""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from taskapp.core.client import AsyncTaskAppClient, RolloutOutcome, TransportError
from taskapp.core.errors import ApiKeyRejectedError, TaskAppRequestError
from taskapp.evaluation.plan import Plan, plan_seeds
from taskapp.evaluation.report import EvaluationResult

__all__ = ["EARLY_STOP_AFTER", "run_evaluation"]

#: Stop early when this many rollouts finished first and every one failed (``keep_going``
#: turns it off): a wrong inference URL should not cost the whole run.
EARLY_STOP_AFTER = 10


async def read_taskset(client: AsyncTaskAppClient) -> Any:
    """``GET /task_info``'s task set, or a :class:`TaskAppRequestError` saying why not."""
    url = client.base_url
    try:
        body = await client.task_info()
    except ApiKeyRejectedError:
        raise
    except TransportError as exc:
        raise TaskAppRequestError(f"cannot reach the task app at {url}: {exc}") from None
    except TaskAppRequestError as exc:
        raise TaskAppRequestError(
            f"{url} does not look like a task app: {exc}. Check the URL with `taskapp check {url}`"
        ) from None
    taskset = body.get("taskset") if isinstance(body, dict) else None
    if taskset is None:
        taskset = await client.container_taskset()  # a synth-containers container's
    if taskset is None:
        raise TaskAppRequestError(
            f"{url} does not look like a task app: GET /task_info has no 'taskset' field "
            "(nor does it serve synth-containers' GET /taskset)"
        )
    return taskset


async def run_evaluation(
    result: EvaluationResult,
    client: AsyncTaskAppClient,
    *,
    seeds: list[int] | None,
    split: str | None,
    rollout_timeout: float,
    keep_going: bool = False,
    on_plan: Callable[[Plan], None] | None = None,
    on_result: Callable[[RolloutOutcome], None] | None = None,
) -> EvaluationResult:
    """Plan the seeds, then run every rollout, filling ``result`` as they finish (so a
    caller that cancels this still has what finished)."""
    taskset = await read_taskset(client)
    plan = plan_seeds(taskset, seeds=seeds, split=split)
    result.plan = plan
    if on_plan is not None:
        on_plan(plan)
    await _run_rollouts(result, client, plan, rollout_timeout, keep_going, on_result)
    return result


async def _run_rollouts(
    result: EvaluationResult,
    client: AsyncTaskAppClient,
    plan: Plan,
    rollout_timeout: float,
    keep_going: bool,
    on_result: Callable[[RolloutOutcome], None] | None,
) -> None:
    prefix = f"eval-{uuid.uuid4().hex[:8]}"
    policy_config: Mapping[str, Any] = result.policy_config
    seeds: Iterator[int] = iter(plan.seeds)
    results = result.results
    total = len(plan.seeds)
    stop = False

    async def worker() -> None:
        nonlocal stop
        for seed in seeds:
            if stop:
                return
            outcome = await client.rollout(
                seed,
                run_id=f"{prefix}-{seed}",
                policy_config=policy_config,
                env_config=plan.env_config,
                max_time_s=rollout_timeout,
            )
            results.append(outcome)
            if on_result is not None:
                on_result(outcome)
            if (
                not keep_going
                and not stop
                and len(results) == min(EARLY_STOP_AFTER, total)
                and len(results) < total
                and not any(r.ok for r in results)
            ):
                stop = True
                result.stopped_early = (
                    f"the first {len(results)} rollouts all failed; stopped the rest "
                    "(keep_going=True, or --keep-going, runs them anyway)"
                )

    # The objects alive now (modules, the client, the app) live until the end: keep them
    # out of the collector's full scans, which the results kept below would otherwise
    # trigger (measured: about 10% of the client's CPU per rollout).
    gc.freeze()
    started = time.perf_counter()
    cpu_started = time.process_time()
    try:
        await asyncio.gather(*(worker() for _ in range(min(result.concurrency, total))))
    finally:
        result.rollout_s = time.perf_counter() - started
        result.rollout_cpu_s = time.process_time() - cpu_started
        gc.unfreeze()
