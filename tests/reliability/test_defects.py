"""One test per defect of issue 17 (items 1-5 and 8), each failing before its fix.

Real uvicorn, real sockets and HTTP; the model server is the ChatStandIn stand-in (no model
can run here).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from taskapp import InProcessTaskApp
from taskapp.examples.support_intents import build_config
from taskapp.examples.support_intents import policy as policy_module

from .._cli_helpers import EXAMPLES_DIR, ChatStandIn

# -- 17.1: a request never chooses which environment variable leaves the machine ---------

HOST_SECRET = "host-secret-value-that-must-stay-home-1234"


@pytest.fixture
def example_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[httpx.Client]:
    monkeypatch.setenv("RELIABILITY_HOST_SECRET", HOST_SECRET)
    monkeypatch.setenv("RELIABILITY_MODEL_KEY", "model-key-the-owner-allowed-5678")
    monkeypatch.delenv("SUPPORT_INTENTS_API_KEY_ENVS", raising=False)
    with InProcessTaskApp(config=build_config(api_key_envs=["RELIABILITY_MODEL_KEY"])) as app:
        assert app.url is not None
        with httpx.Client(
            base_url=app.url, headers={"X-API-Key": app.api_key}, trust_env=False, timeout=30
        ) as client:
            yield client


def rollout(client: httpx.Client, config: dict[str, Any], seed: int = 0) -> httpx.Response:
    body = {"run_id": "r", "env": {"seed": seed}, "policy": {"config": config}}
    return client.post("/rollout", json=body)


def test_17_1_a_request_cannot_send_an_unlisted_env_var_to_its_url(
    example_app: httpx.Client,
) -> None:
    with ChatStandIn() as model:
        stolen = rollout(
            example_app,
            {"inference_url": model.url + "/v1", "model": "m",
             "api_key_env": "RELIABILITY_HOST_SECRET"},
        )  # fmt: skip
        allowed = rollout(
            example_app,
            {"inference_url": model.url + "/v1", "model": "m",
             "api_key_env": "RELIABILITY_MODEL_KEY"},
        )  # fmt: skip
    assert stolen.status_code == 422
    error = stolen.json()["detail"]["error"]
    assert error["code"] == "api_key_env_not_allowed"
    assert error["field"] == "policy.config.api_key_env"
    assert "RELIABILITY_MODEL_KEY" in error["message"]  # names what is allowed
    assert HOST_SECRET not in stolen.text
    assert allowed.status_code == 200
    # Only the allowed rollout reached the model, with the allowed key.
    assert [r["authorization"] for r in model.requests] == [
        "Bearer model-key-the-owner-allowed-5678"
    ]


def test_17_1_the_default_allow_list_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SUPPORT_INTENTS_API_KEY_ENVS", "A_KEY, B_KEY")
    settings = policy_module.ChatSettings
    assert policy_module.allowed_key_envs_from_environment() == {"A_KEY", "B_KEY"}
    monkeypatch.delenv("SUPPORT_INTENTS_API_KEY_ENVS")
    with pytest.raises(policy_module.PolicyConfigError) as caught:
        settings.from_config(
            {"inference_url": "http://127.0.0.1:1/v1", "model": "m", "api_key_env": "HOME"},
            policy_module.allowed_key_envs_from_environment(),
        )
    assert caught.value.code == "api_key_env_not_allowed"
    assert "allowed: none" in str(caught.value)


def test_17_1_the_standalone_copy_refuses_unlisted_env_vars_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RELIABILITY_HOST_SECRET", HOST_SECRET)
    monkeypatch.delenv("SUPPORT_INTENTS_API_KEY_ENVS", raising=False)
    path = EXAMPLES_DIR / "support_intents_app.py"
    with ChatStandIn() as model, InProcessTaskApp(task_app_path=path) as app:
        assert app.url is not None
        with httpx.Client(base_url=app.url, headers={"X-API-Key": app.api_key}) as client:
            config = {"inference_url": model.url + "/v1", "model": "m"}
            stolen = rollout(client, {**config, "api_key_env": "RELIABILITY_HOST_SECRET"})
            bad_port = rollout(client, {**config, "inference_url": "http://127.0.0.1:99999"})
            nan = client.post(
                "/rollout",
                content='{"run_id": "r", "env": {"seed": 0}, "policy": {"config": '
                '{"inference_url": "http://x/v1", "model": "m", "timeout": NaN}}}',
                headers={"content-type": "application/json"},
            )
    assert stolen.status_code == 422
    assert stolen.json()["detail"]["error"]["code"] == "api_key_env_not_allowed"
    assert HOST_SECRET not in stolen.text
    assert model.requests == []
    assert bad_port.status_code == 422
    assert bad_port.json()["detail"]["error"]["field"] == "policy.config.inference_url"
    assert nan.status_code == 422
    assert nan.json()["detail"]["error"]["field"] == "policy.config.timeout"


# -- 17.5: bad policy.config is the caller's mistake: 4xx naming the field ---------------


@pytest.mark.parametrize(
    ("raw_config", "field"),
    [
        ('{"inference_url": "http://[::1", "model": "m"}', "inference_url"),
        ('{"inference_url": "http://127.0.0.1:99999/v1", "model": "m"}', "inference_url"),
        ('{"inference_url": "http://127.0.0.1:port/v1", "model": "m"}', "inference_url"),
        ('{"inference_url": "http://a b/v1", "model": "m"}', "inference_url"),
        ('{"inference_url": "http:///v1", "model": "m"}', "inference_url"),
        ('{"inference_url": "http://x/v1", "model": "m", "temperature": NaN}', "temperature"),
        ('{"inference_url": "http://x/v1", "model": "m", "temperature": Infinity}', "temperature"),
        ('{"inference_url": "http://x/v1", "model": "m", "temperature": "hot"}', "temperature"),
        ('{"inference_url": "http://x/v1", "model": "m", "max_tokens": 1e999}', "max_tokens"),
        ('{"inference_url": "http://x/v1", "model": "m", "max_tokens": 2.5}', "max_tokens"),
        ('{"inference_url": "http://x/v1", "model": "m", "max_tokens": true}', "max_tokens"),
        ('{"inference_url": "http://x/v1", "model": "m", "timeout": NaN}', "timeout"),
        ('{"inference_url": "http://x/v1", "model": "m", "timeout": -1}', "timeout"),
        ('{"inference_url": "http://x/v1", "model": ""}', "model"),
    ],
)
def test_17_5_bad_policy_config_is_422_naming_the_field(
    example_app: httpx.Client, raw_config: str, field: str
) -> None:
    # Python's json accepts NaN/Infinity/1e999 (inf) like many clients send them.
    body = '{"run_id": "r", "env": {"seed": 0}, "policy": {"config": ' + raw_config + "}}"
    response = example_app.post(
        "/rollout", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    error = response.json()["detail"]["error"]
    assert error["code"] == "invalid_policy"
    assert error["field"] == f"policy.config.{field}"
    assert f"policy.config.{field}" in error["message"]


def test_17_5_a_long_prompt_does_not_block_health(example_app: httpx.Client) -> None:
    # ~10 MB of intent lines: seconds of CPU work, which used to run on the event loop.
    prompt = "".join(f"- refund: money back word{i} please return it\n" for i in range(220_000))
    assert len(prompt) > 9_000_000
    result: dict[str, Any] = {}

    def long_rollout() -> None:
        result["response"] = rollout(example_app, {"prompt": prompt})

    worker = threading.Thread(target=long_rollout)
    worker.start()
    latencies = []
    while worker.is_alive():
        started = time.perf_counter()
        assert example_app.get("/health").status_code == 200
        latencies.append(time.perf_counter() - started)
        time.sleep(0.05)
    worker.join()
    assert result["response"].status_code == 200
    assert len(latencies) >= 3, "the long rollout finished too fast to measure anything"
    assert max(latencies) < 1.0, f"/health waited {max(latencies):.2f}s behind a long prompt"


def test_17_5_the_prompt_cache_is_bounded_by_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy_module, "CACHE_BUDGET_CHARS", 20_000)
    labels = ("refund",)
    for i in range(40):
        policy_module.parse_intents(f"- refund: money back {i}\n" + "x" * 2_000, labels)
        assert policy_module.cache_chars() <= 20_000
    assert policy_module.cache_chars() > 10_000  # it does cache
    before = policy_module.cache_chars()
    policy_module.parse_intents("- refund: huge\n" + "y" * 10_000, labels)  # > budget / 4
    assert policy_module.cache_chars() == before
    # A cached prompt gives the same answer as a fresh parse.
    prompt = "- refund: money back 39\n" + "x" * 2_000
    assert policy_module.parse_intents(prompt, labels) == policy_module._parse_intents(
        prompt, labels
    )


def test_17_5_config_errors_answer_fast_and_never_reach_the_model(
    example_app: httpx.Client,
) -> None:
    with ChatStandIn() as model:
        response = rollout(
            example_app, {"inference_url": model.url + "/v1", "model": "m", "timeout": 0}
        )
    assert response.status_code == 422
    assert model.requests == []
    assert json.loads(response.text)["detail"]["error"]["field"] == "policy.config.timeout"
