"""Every generation of the contract, over real HTTP (design/COMPAT.md).

Requests: taskapp's own, synth-ai 0.4-0.7 ("Gen C": ``trace_correlation_id`` and no
``run_id``) and synth-ai 0.3 ("Gen B": ``run_id``, ``mode``, ``ops``, ``record``).
Responses: whatever shape the user's ``rollout`` returned, the answer carries the score
both as ``metrics.outcome_score`` and ``reward_info.outcome_reward``. ``/task_info`` and
``/info`` answer synth-ai's shapes as a superset of taskapp's.

The real synth-ai clients are run against these apps in tests/interop/.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from taskapp import InProcessTaskApp, RolloutRequest, create_task_app
from taskapp.core.client import TaskAppClient
from taskapp.core.contract import normalize_rollout_response
from tests.helpers import demo_config, free_port

KEY = "generations-key-0123456789"


class ForeignReward(BaseModel):
    outcome_reward: float
    details: dict[str, Any] = {}


class ForeignResponse(BaseModel):
    """The shape of synth-ai 0.7's RolloutResponse, as another library's pydantic model."""

    trace_correlation_id: str
    reward_info: ForeignReward
    success_status: str | None = None


SEEN: list[RolloutRequest] = []


def _rollout(request: RolloutRequest, _http: Any) -> Any:
    SEEN.append(request)
    shape = request.env.config.get("shape", "taskapp")
    if shape == "taskapp":
        return {"run_id": request.run_id, "metrics": {"outcome_score": 0.5}}
    if shape == "gen_c":
        return {
            "trace_correlation_id": request.trace_correlation_id,
            "reward_info": {"outcome_reward": 0.75, "details": {"why": "gen c"}},
            "success_status": "failure",
        }
    if shape == "gen_b":
        return {
            "run_id": request.run_id,
            "trajectories": [],
            "metrics": {"episode_returns": [0.25], "mean_return": 0.25, "num_steps": 1},
        }
    if shape == "model":
        return ForeignResponse(
            trace_correlation_id=str(request.trace_correlation_id),
            reward_info=ForeignReward(outcome_reward=1.0),
        )
    return {"run_id": request.run_id, "metrics": {"num_steps": 1}}  # no score anywhere


def _instances(seeds: list[int]) -> list[dict[str, Any]]:
    return [{"dataset": {"split": "train"}, "task_metadata": {"seed": seed}} for seed in seeds]


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    config = demo_config(
        rollout=_rollout,
        provide_task_instances=_instances,
        base_task_info={
            "task": {"id": "demo", "name": "Demo", "version": "3"},
            "dataset": {"id": "demo-set", "splits": ["train", "test"]},
            "inference": {"model": "gpt-test"},
            "limits": {"max_turns": 2},
        },
    )
    app = create_task_app(config, api_keys=[KEY])
    with InProcessTaskApp(app=app, port=free_port(), api_key=KEY) as task_app:
        assert task_app.url is not None
        yield task_app.url


def post(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/rollout", json=body, headers={"X-API-Key": KEY})


def test_gen_c_request_without_run_id_is_accepted_and_echoed(url: str) -> None:
    body = {
        "trace_correlation_id": "trace-gen-c-1",
        "env": {"env_name": "demo", "config": {}, "seed": 3},
        "policy": {"policy_name": "p", "config": {"model": "m"}},
        "on_done": "reset",
        "safety": {"max_time_s": 30.0},
        "training_session_id": None,
        "synth_base_url": None,
    }
    response = post(url, body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["run_id"] == "trace-gen-c-1"
    assert answer["trace_correlation_id"] == "trace-gen-c-1"
    assert answer["metrics"]["outcome_score"] == 0.5
    assert answer["reward_info"]["outcome_reward"] == 0.5
    assert answer["success_status"] == "success"
    assert SEEN[-1].run_id == "trace-gen-c-1" and SEEN[-1].env.seed == 3


def test_gen_b_request_with_mode_ops_record_is_accepted(url: str) -> None:
    body = {
        "run_id": "gen-b-run",
        "env": {"env_name": "demo", "config": {"shape": "gen_b"}, "seed": 1},
        "policy": {"policy_name": "p", "config": {}},
        "ops": ["agent", "env"],
        "record": {"trajectories": True, "logprobs": False, "value": False},
        "mode": "RL",
    }
    response = post(url, body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["run_id"] == answer["trace_correlation_id"] == "gen-b-run"
    assert answer["metrics"]["mean_return"] == 0.25
    assert answer["metrics"]["outcome_score"] == 0.25
    assert answer["reward_info"]["outcome_reward"] == 0.25
    request = SEEN[-1]
    assert request.mode == "rl"
    assert request.model_extra is not None and request.model_extra["ops"] == ["agent", "env"]


def test_request_without_any_id_gets_one(url: str) -> None:
    response = post(url, {"env": {"seed": 2}})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["run_id"].startswith("run-") and len(answer["run_id"]) == 20
    assert answer["trace_correlation_id"] == answer["run_id"]


def test_unknown_mode_is_still_refused(url: str) -> None:
    response = post(url, {"run_id": "x", "mode": "train"})
    assert response.status_code == 422
    assert response.json()["detail"]["error"]["code"] == "invalid_request"


@pytest.mark.parametrize(
    ("shape", "score", "status"),
    [("gen_c", 0.75, "failure"), ("model", 1.0, "success"), ("taskapp", 0.5, "success")],
)
def test_every_response_shape_answers_both_score_fields(
    url: str, shape: str, score: float, status: str
) -> None:
    response = post(url, {"run_id": f"r-{shape}", "env": {"seed": 0, "config": {"shape": shape}}})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["metrics"]["outcome_score"] == score
    assert answer["reward_info"]["outcome_reward"] == score
    assert answer["success_status"] == status
    assert answer["run_id"] == answer["trace_correlation_id"] == f"r-{shape}"


def test_gen_c_details_reach_taskapps_client(url: str) -> None:
    client = TaskAppClient(url, api_key=KEY)
    try:
        outcome = client.rollout(4, env_config={"shape": "gen_c"}, run_id="c-4")
    finally:
        client.close()
    assert outcome.score == 0.75 and outcome.score_field == "metrics.outcome_score"
    assert outcome.status == "failure" and outcome.details == {"why": "gen c"}


def test_a_response_without_score_is_500_naming_the_field(url: str) -> None:
    response = post(url, {"run_id": "none", "env": {"config": {"shape": "none"}}})
    assert response.status_code == 500
    error = response.json()["detail"]["error"]
    assert error["code"] == "invalid_rollout_response"
    assert "metrics.outcome_score" in error["message"]


def test_normalize_keeps_a_given_status_and_unknown_fields() -> None:
    request = RolloutRequest.model_validate({"trace_correlation_id": "t"})
    answer = normalize_rollout_response(
        {"reward_info": {"outcome_reward": 0}, "success_status": "timeout", "extra": [1]}, request
    )
    assert answer == {
        "run_id": "t",
        "metrics": {"outcome_score": 0.0, "outcome_reward": 0.0, "details": {}},
        "reward_info": {"outcome_reward": 0.0, "details": {}},
        "success_status": "timeout",
        "trace_correlation_id": "t",
        "extra": [1],
    }


def test_task_info_seed_and_seeds(url: str) -> None:
    headers = {"X-API-Key": KEY}
    one = httpx.get(f"{url}/task_info", params={"seeds": 5}, headers=headers).json()
    assert isinstance(one, dict) and one["task_metadata"] == {"seed": 5}
    # the base task info's defaults, one level deep, under the instance's own fields
    assert one["task"] == {"id": "demo", "name": "Demo", "version": "3"}
    assert one["dataset"] == {"id": "demo-set", "splits": ["train", "test"], "split": "train"}
    assert one["inference"] == {"model": "gpt-test"} and one["limits"] == {"max_turns": 2}
    many = httpx.get(
        f"{url}/task_info", params=[("seed", 1), ("seeds", 2), ("seeds", 3)], headers=headers
    ).json()
    assert [item["task_metadata"]["seed"] for item in many] == [1, 2, 3]
    assert all("inference" in item for item in many)
    none = httpx.get(f"{url}/task_info", headers=headers).json()
    assert none == {"taskset": {"splits": {"train": 4, "test": 2}}}


def test_info_is_a_superset_of_synth_ais(url: str) -> None:
    info = httpx.get(f"{url}/info", headers={"X-API-Key": KEY}).json()
    assert info["service"]["task"] == {
        "id": "demo",
        "name": "Demo",
        "version": "3",
        "description": "a demo task app",
    }
    assert info["service"]["version"] == "3"
    assert info["service"]["app_id"] == "demo"
    assert info["inference"] == {"model": "gpt-test"}
    assert info["limits"] == {"max_turns": 2}
    # taskapp's dataset (describe_taskset) over the base task info's dataset
    assert info["dataset"] == {"id": "demo-set", "splits": {"train": 4, "test": 2}}
