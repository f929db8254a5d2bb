"""Tiny task apps the conformance suites serve, importable by name in any process
(``"taskapp.testing.apps:demo_config"``), so child-process and Ray servers can load them.

* :data:`demo_config` -- a complete task app: four training seeds, a rollout that scores
  1.0 on even seeds and 0.0 on odd ones;
* :data:`failing_startup_app` -- an ASGI app whose startup fails (lifespan
  ``startup.failed``): a server must report it as a typed error and release everything.
"""

from __future__ import annotations

from typing import Any

from taskapp.core.config import TaskAppConfig

__all__ = ["FailingStartupApp", "demo_config", "failing_startup_app"]


def _describe() -> dict[str, Any]:
    return {"splits": {"train": 4, "test": 2}}


def _instances(seeds: list[int]) -> list[dict[str, Any]]:
    return [{"task": {"id": "demo", "name": "Demo"}, "task_metadata": {"seed": s}} for s in seeds]


async def _rollout(request: Any, http_request: Any) -> dict[str, Any]:
    seed = request.env.seed or 0
    return {"run_id": request.run_id, "metrics": {"outcome_score": 1.0 if seed % 2 == 0 else 0.0}}


demo_config = TaskAppConfig(
    app_id="taskapp-testing-demo",
    name="taskapp.testing demo",
    description="the task app the taskapp.testing conformance suites serve",
    describe_taskset=_describe,
    provide_task_instances=_instances,
    rollout=_rollout,
)


class FailingStartupApp:
    """An ASGI app whose lifespan startup fails; every HTTP request answers 503."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send(
                    {
                        "type": "lifespan.startup.failed",
                        "message": "deliberately failing startup (taskapp.testing)",
                    }
                )
            return
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b"failing startup"})


failing_startup_app = FailingStartupApp()
