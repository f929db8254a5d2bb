"""The task-app HTTP contract (docs/contract.md), served by real uvicorn over real HTTP."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from taskapp import InProcessTaskApp, RolloutRequest, RolloutResponse, TaskInfo, create_task_app
from tests.helpers import demo_config, free_port

KEY = "contract-key-0123456789"
ALIAS = "contract-alias-abcdefgh"


def _serve(app: Any) -> Iterator[str]:
    with InProcessTaskApp(app=app, port=free_port(), api_key=KEY) as task_app:
        assert task_app.url is not None
        yield task_app.url


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    def rollout(request: RolloutRequest, http_request: Any) -> Any:
        seed = request.env.seed
        if seed == 13:
            raise RuntimeError(f"unlucky seed; key was {KEY}")
        if seed == 14:
            return {"run_id": request.run_id}  # invalid: metrics missing
        return RolloutResponse.model_validate(
            {
                "run_id": request.run_id,
                "metrics": {"outcome_score": 0.25, "details": {"policy": request.policy.config}},
                "trace_correlation_id": request.trace_correlation_id,
                "custom_field": "passed through",
            }
        )

    def instances(seeds: list[int]) -> list[TaskInfo]:
        return [
            TaskInfo.model_validate(
                {
                    "task": {"id": "demo", "name": "Demo"},
                    "dataset": {"split": "train"},
                    "task_metadata": {"seed": seed},
                }
            )
            for seed in seeds
        ]

    config = demo_config(
        rollout=rollout,
        provide_task_instances=instances,
        base_task_info={"task": {"id": "demo", "name": "Demo"}},
    )
    yield from _serve(create_task_app(config, api_keys=[KEY, ALIAS]))


def h(key: str = KEY) -> dict[str, str]:
    return {"X-API-Key": key}


def test_root_needs_no_auth(url: str) -> None:
    assert httpx.get(f"{url}/").json() == {"status": "ok", "service": "demo"}
    assert httpx.head(f"{url}/").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"X-API-Key": KEY},
        {"X-API-Key": ALIAS},
        {"X-API-Keys": f"nope-nope-nope, {KEY}"},
        {"Authorization": f"Bearer {KEY}"},
        {"Authorization": f"bearer {ALIAS}"},
    ],
)
def test_accepted_key_forms(url: str, headers: dict[str, str]) -> None:
    response = httpx.get(f"{url}/health", headers=headers)
    assert response.status_code == 200
    assert response.json() == {"healthy": True}


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-API-Key": "wrong-key-0000"}, {"Authorization": KEY}, {"X-API-Keys": "a,b"}],
)
@pytest.mark.parametrize("path", ["/health", "/info", "/task_info"])
def test_rejections_leak_no_key_material(url: str, headers: dict[str, str], path: str) -> None:
    response = httpx.get(f"{url}{path}", headers=headers)
    assert response.status_code == 401
    body = response.json()
    assert body["detail"]["error"]["code"] == "unauthorized"
    assert KEY[:6] not in response.text and ALIAS[:6] not in response.text


def test_rollout_requires_auth(url: str) -> None:
    response = httpx.post(f"{url}/rollout", json={"run_id": "x"})
    assert response.status_code == 401


def test_info(url: str) -> None:
    info = httpx.get(f"{url}/info", headers=h()).json()
    assert info["service"] == {
        "app_id": "demo",
        "name": "Demo",
        "description": "a demo task app",
        # synth-ai's TaskDescriptor, from base_task_info.task over the config's fields
        "task": {"id": "demo", "name": "Demo", "description": "a demo task app"},
    }
    assert info["task_info"] == {"task": {"id": "demo", "name": "Demo"}}
    assert info["dataset"] == {"splits": {"train": 4, "test": 2}}
    assert info["inference"] == {} and info["limits"] == {}


def test_task_info(url: str) -> None:
    assert httpx.get(f"{url}/task_info", headers=h()).json() == {
        "taskset": {"splits": {"train": 4, "test": 2}}
    }
    one = httpx.get(f"{url}/task_info", params={"seed": 3}, headers=h()).json()
    assert one["task_metadata"] == {"seed": 3}
    many = httpx.get(f"{url}/task_info", params=[("seed", 1), ("seed", 2)], headers=h()).json()
    assert [item["task_metadata"]["seed"] for item in many] == [1, 2]


def test_task_info_bad_seed_is_422_envelope(url: str) -> None:
    response = httpx.get(f"{url}/task_info", params={"seed": "abc"}, headers=h())
    assert response.status_code == 422
    assert response.json()["detail"]["error"]["code"] == "invalid_request"


def test_rollout_round_trip_passes_unknown_fields(url: str) -> None:
    payload = {
        "run_id": "run-1",
        "env": {"seed": 2, "config": {}},
        "policy": {"policy_name": "p", "config": {"prompt": "hello", "model": "m"}},
        "mode": "eval",
        "trace_correlation_id": "trace-9",
        "extra_top_level": True,
    }
    response = httpx.post(f"{url}/rollout", json=payload, headers=h())
    assert response.status_code == 200
    body = response.json()
    assert body["run_id"] == "run-1"
    assert body["metrics"]["outcome_score"] == 0.25
    assert body["metrics"]["details"]["policy"] == {"prompt": "hello", "model": "m"}
    assert body["trace_correlation_id"] == "trace-9"
    assert body["custom_field"] == "passed through"


def test_malformed_rollout_is_422_with_validation_detail(url: str) -> None:
    response = httpx.post(f"{url}/rollout", json={"env": {"seed": "x"}}, headers=h())
    assert response.status_code == 422
    error = response.json()["detail"]["error"]
    assert error["code"] == "invalid_request"
    locations = [tuple(item["loc"]) for item in error["errors"]]
    assert locations == [("body", "env", "seed")]


def test_rollout_mode_is_checked(url: str) -> None:
    response = httpx.post(f"{url}/rollout", json={"run_id": "x", "mode": "train"}, headers=h())
    assert response.status_code == 422


def test_rollout_exception_is_500_with_request_id_and_no_secret(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="taskapp.app"):
        response = httpx.post(
            f"{url}/rollout", json={"run_id": "x", "env": {"seed": 13}}, headers=h()
        )
    assert response.status_code == 500
    error = response.json()["detail"]["error"]
    assert error["code"] == "internal_error"
    assert len(error["request_id"]) == 16
    assert KEY not in response.text
    assert error["request_id"] in caplog.text
    assert "unlucky seed" in caplog.text
    assert KEY not in caplog.text, "the log must redact the key"


def test_invalid_rollout_result_is_500(url: str) -> None:
    response = httpx.post(f"{url}/rollout", json={"run_id": "x", "env": {"seed": 14}}, headers=h())
    assert response.status_code == 500


def test_unknown_route_uses_envelope(url: str) -> None:
    response = httpx.get(f"{url}/nope", headers=h())
    assert response.status_code == 404
    assert response.json()["detail"]["error"]["code"] == "not_found"


def test_no_debug_route(url: str) -> None:
    assert httpx.get(f"{url}/debug/env", headers=h()).status_code == 404


def test_missing_key_configuration_is_503(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENVIRONMENT_API_KEY", raising=False)
    monkeypatch.delenv("ENVIRONMENT_API_KEY_ALIASES", raising=False)
    app = create_task_app(demo_config())
    from taskapp.core.contract import TaskAppAuth

    auth = app.state.taskapp_auth
    assert isinstance(auth, TaskAppAuth)
    assert auth.check({"x-api-key": "anything"}) == (
        503,
        {
            "detail": {
                "error": {
                    "code": "missing_api_key",
                    "message": auth.check({})[1]["detail"]["error"]["message"],  # type: ignore[index]
                }
            }
        },
    )


def test_environment_keys_and_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT_API_KEY", "env-primary-key-1")
    monkeypatch.setenv("ENVIRONMENT_API_KEY_ALIASES", "env-alias-a-123, env-alias-b-456")
    app = create_task_app(demo_config())
    auth = app.state.taskapp_auth
    for key in ("env-primary-key-1", "env-alias-a-123", "env-alias-b-456"):
        assert auth.check({"x-api-key": key}) is None
    assert auth.check({"x-api-key": "env-alias-c-789"})[0] == 401


def test_require_api_key_false_serves_without_key() -> None:
    app = create_task_app(demo_config(require_api_key=False), api_keys=[])
    assert app.state.taskapp_auth.check({}) is None


def test_sync_callables_run_off_the_event_loop() -> None:
    import threading

    threads: list[str] = []

    def describe() -> dict[str, Any]:
        threads.append(threading.current_thread().name)
        return {"splits": {}}

    app = create_task_app(demo_config(describe_taskset=describe), api_keys=[KEY])
    for base in _serve(app):
        httpx.get(f"{base}/task_info", headers=h())
    assert threads and not threads[0].startswith("taskapp-uvicorn")


def test_rollout_error_keeps_the_connection_usable(url: str) -> None:
    """A 500 must not make the server drop the client's kept-alive connection."""
    with httpx.Client(headers=h()) as client:
        first = client.post(f"{url}/rollout", json={"run_id": "x", "env": {"seed": 13}})
        assert first.status_code == 500
        second = client.post(f"{url}/rollout", json={"run_id": "y", "env": {"seed": 2}})
        assert second.status_code == 200
        assert second.json()["run_id"] == "y"


def test_apps_share_the_contract_routes_and_each_answers_for_its_own_config() -> None:
    """Issue 27: the routes are built once per process (building an app from a config
    analyses no signature); two apps served at once still answer with their own config,
    their own keys and their own async-rollout table."""
    from taskapp.core import contract

    def rollout_scoring(score: float) -> Any:
        async def rollout(request: Any, http_request: Any) -> dict[str, Any]:
            return {"run_id": request.run_id, "metrics": {"outcome_score": score}}

        return rollout

    one = create_task_app(
        demo_config(app_id="one", rollout=rollout_scoring(0.25), prompts={"prompt": "P1"}),
        api_keys=[KEY],
    )
    two = create_task_app(
        demo_config(app_id="two", rollout=rollout_scoring(0.75)), api_keys=[ALIAS]
    )
    shared = set(map(id, contract._contract_routes()))
    assert shared <= set(map(id, one.routes)) and shared <= set(map(id, two.routes))
    body = {"run_id": "r", "env": {"seed": 1}}
    for url_one in _serve(one):
        for url_two in _serve(two):
            assert httpx.get(url_one + "/").json()["service"] == "one"
            assert httpx.head(url_two + "/").status_code == 200
            assert httpx.get(url_two + "/").json()["service"] == "two"
            assert httpx.get(url_one + "/info", headers=h()).json()["service"]["app_id"] == "one"
            assert httpx.get(url_two + "/metadata", headers=h(ALIAS)).status_code == 200
            assert httpx.get(url_one + "/health", headers=h(ALIAS)).status_code == 401  # two's
            scored = httpx.post(url_one + "/rollout", json=body, headers=h()).json()
            assert scored["metrics"]["outcome_score"] == 0.25
            scored = httpx.post(url_two + "/rollout", json=body, headers=h(ALIAS)).json()
            assert scored["metrics"]["outcome_score"] == 0.75
            assert httpx.get(url_one + "/program", headers=h()).status_code == 200
            assert httpx.get(url_two + "/program", headers=h(ALIAS)).status_code == 404
            missing = httpx.get(url_two + "/rollouts/nope", headers=h(ALIAS))
            assert missing.status_code == 404
            assert missing.json()["detail"]["error"]["code"] == "unknown_rollout"
