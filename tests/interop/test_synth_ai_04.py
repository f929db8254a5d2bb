"""synth-ai 0.4.12 ("Gen C", first shape: the score at ``metrics.outcome_reward``, no
``reward_info``) both ways (issue 22, item 4).

* synth-ai 0.4.12's own ``TaskAppClient`` (its pydantic models validate every answer)
  against taskapp apps: the bundled example and a taskapp-style app answering only
  ``metrics.outcome_score``;
* taskapp hosts a synth-ai 0.4.12 ``TaskAppConfig`` (its own ``create_task_app`` answers)
  and reads its answers: ``TaskAppClient``, ``taskapp.evaluate`` and ``taskapp.check`` score
  from ``metrics.outcome_reward``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskapp import InProcessTaskApp, RolloutRequest
from taskapp.examples.support_intents import build_config
from tests.helpers import demo_config
from tests.interop._run import run_json
from tests.interop._venvs import python_for

pytestmark = pytest.mark.interop

KEY = "interop-04-key-0123456789"

CLIENT = """
import asyncio, json, os
from synth_ai.sdk.task.client import TaskAppClient
from synth_ai.sdk.task.contracts import (
    RolloutEnvSpec, RolloutPolicySpec, RolloutRequest, RolloutResponse, TaskInfo,
)

async def main():
    async with TaskAppClient(os.environ["INTEROP_URL"], api_key=os.environ["INTEROP_KEY"]) as c:
        health = await c.health()
        info = await c.info()
        one = await c.task_info(seeds=[3])
        response = await c.rollout(RolloutRequest(
            trace_correlation_id="trace-0412-3",
            env=RolloutEnvSpec(seed=3, config={}),
            policy=RolloutPolicySpec(policy_name="p", config={}),
        ))
        assert isinstance(response, RolloutResponse) and isinstance(one, TaskInfo)
    print(json.dumps({
        "health": health,
        "service": info.get("service"),
        "one": one.model_dump(mode="json"),
        "rollout": response.model_dump(mode="json"),
    }))

asyncio.run(main())
"""

APP = """
import json, sys
import taskapp
from taskapp import InProcessTaskApp
from taskapp.core.client import TaskAppClient
from synth_ai.sdk.task.contracts import RolloutMetrics, RolloutResponse, TaskInfo
from synth_ai.sdk.task.server import TaskAppConfig


def build_config():
    def describe():
        return {"splits": {"train": list(range(6))}, "default_split": "train"}

    def instances(seeds):
        return [
            TaskInfo(task={"id": "synth-0412", "name": "Synth 0.4.12"}, dataset={"id": "n"},
                     inference={}, limits={"max_turns": 1}, task_metadata={"seed": s})
            for s in seeds
        ]

    async def rollout(request, http_request):
        seed = request.env.seed or 0
        return RolloutResponse(
            trace_correlation_id=request.trace_correlation_id,
            metrics=RolloutMetrics(outcome_reward=seed / 10, details={"seed": seed}),
        )

    return TaskAppConfig(app_id="synth-0412", name="Synth 0.4.12", description="seed / 10",
                         provide_taskset_description=describe,
                         provide_task_instances=instances, rollout=rollout)


with InProcessTaskApp(config=build_config(), port=0, health_check_timeout=60) as app:
    with TaskAppClient(app.url, app.api_key) as client:
        raw = client.request("POST", "/rollout", json_body={
            "trace_correlation_id": "t-4", "env": {"seed": 4}, "policy": {"config": {}}})
        outcome = client.rollout(seed=4)
    result = taskapp.evaluate(app.url, seeds=[0, 1, 2, 3], api_key=app.api_key)
    report = taskapp.check(app.url, api_key=app.api_key, seeds=[5])
print(json.dumps({
    "raw": raw.body,
    "rollout": [outcome.status, outcome.score, outcome.score_field],
    "evaluate": [result.summary.completed, result.summary.mean_score,
                 sorted({r.score_field for r in result.results})],
    "check": [[c.name, c.ok, c.detail] for c in report.checks],
}))
"""


@pytest.fixture(scope="module")
def python_0412() -> Path:
    return python_for("0.4.12")


def _serve(config: Any) -> Iterator[str]:
    with InProcessTaskApp(config=config, port=0, api_key=KEY) as task_app:
        assert task_app.url is not None
        yield task_app.url


@pytest.fixture(scope="module")
def example_url() -> Iterator[str]:
    yield from _serve(build_config())


@pytest.fixture(scope="module")
def taskapp_style_url() -> Iterator[str]:
    def rollout(request: RolloutRequest, _http: Any) -> dict[str, Any]:
        seed = request.env.seed or 0
        return {"run_id": request.run_id, "metrics": {"outcome_score": seed / 10}}

    yield from _serve(demo_config(rollout=rollout))


def test_client_0412_reads_the_bundled_example(
    python_0412: Path, example_url: str, tmp_path: Path
) -> None:
    out = run_json(
        python_0412, CLIENT, home=tmp_path, env={"INTEROP_URL": example_url, "INTEROP_KEY": KEY}
    )
    assert out["health"] == {"healthy": True}
    assert out["service"]["app_id"] == "support-intents"
    assert out["one"]["task_metadata"]["seed"] == 3
    assert out["rollout"]["trace_correlation_id"] == "trace-0412-3"
    assert out["rollout"]["metrics"]["outcome_reward"] in (0.0, 1.0)


def test_client_0412_reads_a_taskapp_style_app(
    python_0412: Path, taskapp_style_url: str, tmp_path: Path
) -> None:
    out = run_json(
        python_0412,
        CLIENT,
        home=tmp_path,
        env={"INTEROP_URL": taskapp_style_url, "INTEROP_KEY": KEY},
    )
    # the app answered only metrics.outcome_score: taskapp adds what 0.4.12 requires
    assert out["rollout"]["metrics"]["outcome_reward"] == pytest.approx(0.3)
    assert out["rollout"]["trace_correlation_id"] == "trace-0412-3"


def test_taskapp_hosts_and_reads_a_synth_ai_0412_app(python_0412: Path, tmp_path: Path) -> None:
    out = run_json(python_0412, APP, home=tmp_path, timeout=180)
    # synth-ai's own app answered: no reward_info, the score at metrics.outcome_reward
    assert "reward_info" not in out["raw"]
    assert out["raw"]["metrics"]["outcome_reward"] == pytest.approx(0.4)
    assert out["rollout"] == ["success", pytest.approx(0.4), "metrics.outcome_reward"]
    completed, mean, fields = out["evaluate"]
    assert completed == 4
    assert mean == pytest.approx(0.15)
    assert fields == ["metrics.outcome_reward"]
    checks = {name: ok for name, ok, _ in out["check"]}
    assert checks["POST /rollout seed 5"], out["check"]
