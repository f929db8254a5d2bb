"""``TaskAppConfig``: a task app described as data and callables.

Kept free of fastapi and pydantic imports so that ``from taskapp import TaskAppConfig``
is cheap; :func:`taskapp.core.contract.create_task_app` turns a config into a FastAPI app.

>>> def describe():
...     return {"splits": {"train": 10, "test": 5}}
>>> async def rollout(request, http_request):
...     return {"run_id": request.run_id, "metrics": {"outcome_score": 1.0}}
>>> config = TaskAppConfig(
...     app_id="demo", name="Demo", description="A demo task",
...     describe_taskset=describe, provide_task_instances=lambda seeds: [], rollout=rollout,
... )
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["TaskAppConfig"]


@dataclasses.dataclass
class TaskAppConfig:
    """Everything needed to build a task app (see docs/writing_task_apps.md).

    Callables may be sync or async; sync ones run in a worker thread, never on the event
    loop.

    * ``describe_taskset() -> dict``: the task set (splits, sizes, ...).
    * ``provide_task_instances(seeds: list[int]) -> list[TaskInfo | dict]``.
    * ``rollout(request: RolloutRequest, http_request) -> RolloutResponse | dict``.

    ``prompts``: the texts an optimizer may change, ``{policy.config key: seed text}``,
    declared once; the app serves them as the synth-containers ``GET /program`` and
    advertises the GEPA contract in ``GET /metadata``. None (the default) derives them from
    ``base_task_info["task_metadata"]`` (``prompts``, or ``default_prompt`` as ``"prompt"``);
    ``{}`` declares none. ``max_async_rollouts``: how many ``submission_mode: async``
    rollouts may run at once (one more is answered 429 with ``Retry-After``);
    ``async_rollout_ttl_s``: how long a finished async rollout can still be polled.
    """

    app_id: str
    name: str
    description: str
    describe_taskset: Callable[[], Any]
    provide_task_instances: Callable[[list[int]], Any]
    rollout: Callable[..., Any]
    base_task_info: Any = None
    routers: Sequence[Any] = ()
    middleware: Sequence[Any] = ()
    app_state: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    startup_hooks: Sequence[Callable[[], Any]] = ()
    shutdown_hooks: Sequence[Callable[[], Any]] = ()
    cors_origins: Sequence[str] | None = None
    require_api_key: bool = True
    prompts: Mapping[str, str] | None = None
    max_async_rollouts: int = 64
    async_rollout_ttl_s: float = 600.0

    def __post_init__(self) -> None:
        if not isinstance(self.app_id, str) or not self.app_id.strip():
            raise ValueError("TaskAppConfig.app_id must be a non-empty string")
        for field in ("describe_taskset", "provide_task_instances", "rollout"):
            if not callable(getattr(self, field)):
                raise ValueError(f"TaskAppConfig.{field} must be callable")
        prompts = self.prompts
        valid = prompts is None or (
            isinstance(prompts, Mapping)
            and all(isinstance(k, str) and k and isinstance(v, str) for k, v in prompts.items())
        )
        if not valid:
            raise ValueError(
                "TaskAppConfig.prompts must map policy.config keys to prompt texts "
                '(e.g. {"prompt": "Classify ..."})'
            )
        if not isinstance(self.max_async_rollouts, int) or self.max_async_rollouts < 1:
            raise ValueError("TaskAppConfig.max_async_rollouts must be a positive integer")
        if not self.async_rollout_ttl_s > 0:
            raise ValueError("TaskAppConfig.async_rollout_ttl_s must be positive (seconds)")
