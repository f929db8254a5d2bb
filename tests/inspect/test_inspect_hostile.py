"""An Inspect task app under bad and hostile requests, and as a GEPA-ready container
(GET /program from TaskAppConfig.prompts) (issue 23)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from taskapp import InProcessTaskApp
from taskapp.testing.helpers import free_port
from tests.inspect._helpers import EXAMPLE, target


@pytest.fixture(scope="module")
def app() -> Iterator[InProcessTaskApp]:
    with InProcessTaskApp(task_app_path=target("intents_match"), port=free_port()) as running:
        yield running


def _rollout(app: InProcessTaskApp, body: Any) -> httpx.Response:
    return httpx.post(
        f"{app.url}/rollout", headers={"X-API-Key": app.api_key}, json=body, timeout=120
    )


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"prompt": {"nested": ["x"]}}, "policy.config.prompt"),
        ({"model": "no-slash"}, "policy.config.model"),
        ({"model": 42}, "policy.config.model"),
        ({"model": "openai/gpt-4o", "api_key": "sk-from-request-123456"}, "policy.config.api_key"),
        ({"model_args": {"base_url": "http://evil"}}, "policy.config.model_args"),
    ],
)
def test_bad_policy_is_422_naming_the_field(
    app: InProcessTaskApp, config: dict[str, Any], field: str
) -> None:
    answer = _rollout(app, {"run_id": "r", "env": {"seed": 0}, "policy": {"config": config}})
    assert answer.status_code == 422, answer.text
    error = answer.json()["detail"]["error"]
    assert error["code"] == "invalid_policy" and error["field"] == field
    assert "sk-from-request" not in answer.text


@pytest.mark.parametrize("seed", [-1, 24, 10**12, None])
def test_bad_seed_is_422(app: InProcessTaskApp, seed: Any) -> None:
    answer = _rollout(app, {"run_id": "r", "env": {"seed": seed}})
    assert answer.status_code == 422, answer.text


def test_unknown_provider_is_a_failed_rollout_not_a_500(app: InProcessTaskApp) -> None:
    answer = _rollout(
        app,
        {"run_id": "r", "env": {"seed": 1}, "policy": {"config": {"model": "nosuchprovider/x"}}},
    )
    assert answer.status_code == 200
    body = answer.json()
    assert body["success_status"] == "runtime_error"
    assert "nosuchprovider" in body["metrics"]["details"]["error"]


def test_huge_prompt_and_many_concurrent_clients(app: InProcessTaskApp) -> None:
    import concurrent.futures

    huge = "- refund: money back\n" + "filler words " * 80_000  # ~1 MB
    bodies = [
        {
            "run_id": f"r{n}",
            "env": {"seed": n % 24},
            "policy": {"config": {"prompt": huge if n % 4 == 0 else f"p{n}"}},
        }
        for n in range(24)
    ]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda body: _rollout(app, body), bodies))
    assert [a.status_code for a in answers] == [200] * 24
    assert all(a.json()["success_status"] == "success" for a in answers)
    assert (
        httpx.get(f"{app.url}/health", headers={"X-API-Key": app.api_key}, timeout=10).status_code
        == 200
    )


def test_program_exposes_the_tasks_system_prompt() -> None:
    with InProcessTaskApp(task_app_path=f"{EXAMPLE}@intents", port=free_port()) as app:
        answer = httpx.get(f"{app.url}/program", headers={"X-API-Key": app.api_key}, timeout=30)
    assert answer.status_code == 200, answer.text
    module = answer.json()["modules"][0]
    assert module["candidate_field"] == "prompt" and module["mutable"] is True
    assert module["content"].startswith("You are a customer-support assistant")


def test_the_same_config_served_again_after_a_stop() -> None:
    from taskapp.plugins.inspect_tasks.app import build_config

    config = build_config(target("no_prompt"))
    for _ in range(2):  # a new server, a new event loop: the runner follows it
        with InProcessTaskApp(config=config, port=free_port()) as app:
            answer = _rollout(app, {"run_id": "r", "env": {"seed": 0}})
            assert answer.status_code == 200 and answer.json()["success_status"] == "success"
