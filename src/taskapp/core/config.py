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

    def __post_init__(self) -> None:
        if not isinstance(self.app_id, str) or not self.app_id.strip():
            raise ValueError("TaskAppConfig.app_id must be a non-empty string")
        for field in ("describe_taskset", "provide_task_instances", "rollout"):
            if not callable(getattr(self, field)):
                raise ValueError(f"TaskAppConfig.{field} must be callable")
