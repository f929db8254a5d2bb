"""Real synth-ai clients against taskapp apps (issue 16, "Proof").

* synth-ai 0.7.3's ``TaskAppClient`` (health, info, task_info with seeds, rollout: its own
  pydantic models validate every answer) against the bundled example and against an app
  written in taskapp's own style;
* a synth-ai 0.3.9 ("Gen B") ``RolloutRequest`` (``run_id``, ``mode``, ``ops``) sent by its
  own client is accepted. Its response model (``trajectories``) is out of scope
  (docs/compat.md).
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

KEY = "interop-client-key-0123456789"

CLIENT_073 = """
import asyncio, json, os
from synth_ai.sdk.localapi.client import TaskAppClient
from synth_ai.sdk.localapi._impl.contracts import (
    RolloutEnvSpec, RolloutPolicySpec, RolloutRequest, RolloutResponse, TaskInfo,
)

async def main():
    async with TaskAppClient(os.environ["INTEROP_URL"], api_key=os.environ["INTEROP_KEY"]) as c:
        health = await c.health()
        info = await c.info()
        one = await c.task_info(seeds=[3])
        many = await c.task_info(seeds=[1, 2])
        request = RolloutRequest(
            trace_correlation_id="trace-073-3",
            env=RolloutEnvSpec(seed=3, config={}),
            policy=RolloutPolicySpec(policy_name="p", config={}),
        )
        response = await c.rollout(request)
        assert isinstance(response, RolloutResponse) and isinstance(one, TaskInfo)
        wrong = TaskAppClient(os.environ["INTEROP_URL"], api_key="not-the-key-000000")
        try:
            await wrong.health()
            refused = None
        except Exception as exc:
            refused = type(exc).__name__ + ": " + str(exc)[:60]
        finally:
            await wrong.aclose()
    print(json.dumps({
        "health": health,
        "service_task": info.get("service", {}).get("task"),
        "one": one.model_dump(),
        "many": [item.model_dump() for item in many],
        "rollout": response.model_dump(mode="json"),
        "refused": refused,
    }))

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def python_073() -> Path:
    return python_for("0.7.3")


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
        # taskapp's own shape: run_id and metrics.outcome_score, nothing else
        return {"run_id": request.run_id, "metrics": {"outcome_score": seed / 10}}

    yield from _serve(demo_config(rollout=rollout))


def test_client_073_against_the_bundled_example(
    python_073: Path, example_url: str, tmp_path: Path
) -> None:
    out = run_json(
        python_073, CLIENT_073, home=tmp_path, env={"INTEROP_URL": example_url, "INTEROP_KEY": KEY}
    )
    assert out["health"] == {"healthy": True}
    assert out["service_task"]["id"] == "support-intents"
    assert out["one"]["task_metadata"]["seed"] == 3
    assert out["one"]["inference"] == {"model": None, "inference_url": None}
    assert [item["task_metadata"]["seed"] for item in out["many"]] == [1, 2]
    rollout = out["rollout"]
    assert rollout["trace_correlation_id"] == "trace-073-3"
    assert rollout["reward_info"]["outcome_reward"] in (0.0, 1.0)
    assert rollout["success_status"] == "success"
    assert out["refused"] is not None and out["refused"].startswith("HTTPStatusError")


def test_client_073_against_a_taskapp_style_app(
    python_073: Path, taskapp_style_url: str, tmp_path: Path
) -> None:
    out = run_json(
        python_073,
        CLIENT_073,
        home=tmp_path,
        env={"INTEROP_URL": taskapp_style_url, "INTEROP_KEY": KEY},
    )
    assert out["health"] == {"healthy": True}
    assert out["service_task"] == {"id": "demo", "name": "Demo", "description": "a demo task app"}
    assert out["one"]["task"] == {
        "id": "demo",
        "name": "Demo",
        "description": None,
        "version": None,
    }
    assert len(out["many"]) == 2
    assert out["rollout"]["reward_info"]["outcome_reward"] == pytest.approx(0.3)
    assert out["rollout"]["trace_correlation_id"] == "trace-073-3"


CLIENT_039 = """
import asyncio, json, os
from synth_ai.sdk.task.client import TaskAppClient
from synth_ai.sdk.task.contracts import (
    RolloutEnvSpec, RolloutMode, RolloutPolicySpec, RolloutRecordConfig, RolloutRequest,
)

async def main():
    request = RolloutRequest(
        run_id="gen-b-run-5",
        env=RolloutEnvSpec(env_name="demo", seed=5, config={}),
        policy=RolloutPolicySpec(policy_name="p", config={}),
        ops=["agent", "env"],
        record=RolloutRecordConfig(trajectories=True),
        mode=RolloutMode.EVAL,
    )
    async with TaskAppClient(os.environ["INTEROP_URL"], api_key=os.environ["INTEROP_KEY"]) as c:
        health = await c.health()
        # the client's own request path (headers, JSON encoding); its response model is
        # Gen B's, out of scope, so the raw answer is read
        response = await c._request("POST", "/rollout", json_payload=request)
    print(json.dumps({"health": health, "status": response.status_code,
                      "answer": response.json(), "sent": request.model_dump(mode="json")}))

asyncio.run(main())
"""


def test_gen_b_039_rollout_request_is_accepted(taskapp_style_url: str, tmp_path: Path) -> None:
    python = python_for("0.3.9")
    out = run_json(
        python,
        CLIENT_039,
        home=tmp_path,
        env={"INTEROP_URL": taskapp_style_url, "INTEROP_KEY": KEY},
    )
    assert out["health"] == {"healthy": True}
    assert out["sent"]["mode"] == "eval" and out["sent"]["ops"] == ["agent", "env"]
    assert out["status"] == 200, out["answer"]
    answer = out["answer"]
    assert answer["run_id"] == answer["trace_correlation_id"] == "gen-b-run-5"
    assert answer["metrics"]["outcome_score"] == pytest.approx(0.5)
    assert answer["reward_info"]["outcome_reward"] == pytest.approx(0.5)
