"""The one task-app client (``taskapp.core.client``): transports, reading every generation
of the rollout answer, synth-ai's 400 ``unauthorised`` as a wrong key."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from taskapp import ApiKeyRejectedError, InProcessTaskApp, TaskAppClient
from taskapp.core.client import (
    Answer,
    AsyncHttpxTransport,
    AsyncTaskAppClient,
    ClientTimeout,
    HttpxTransport,
    LoopbackTransport,
    RolloutOutcome,
    TransportError,
    rollout_request,
)
from taskapp.core.contract import create_task_app
from taskapp.core.errors import ConfigurationError, TaskAppRequestError
from taskapp.examples.support_intents import build_config
from tests.cli._cli_helpers import _ThreadedUvicorn
from tests.core._synth_style import synth_style_app
from tests.helpers import free_port

KEY = "client-key-0123456789abc"


def answer(body: Any, status: int = 200) -> Answer:
    return Answer(status, {}, json.dumps(body).encode())


@pytest.mark.parametrize(
    ("body", "score", "field", "status"),
    [
        ({"metrics": {"outcome_score": 0.5}}, 0.5, "metrics.outcome_score", "success"),
        (
            {"trace_correlation_id": "t", "reward_info": {"outcome_reward": 1}},
            1.0,
            "reward_info.outcome_reward",
            "success",
        ),
        (
            {"run_id": "r", "metrics": {"mean_return": 0.25, "episode_returns": [0.25]}},
            0.25,
            "metrics.mean_return",
            "success",
        ),
        (
            {"reward_info": {"outcome_reward": 0.0}, "success_status": "failure"},
            0.0,
            "reward_info.outcome_reward",
            "failure",
        ),
    ],
)
def test_the_score_is_read_from_every_generation(
    body: dict[str, Any], score: float, field: str, status: str
) -> None:
    outcome = RolloutOutcome.from_answer(answer(body), seed=1, run_id="r-1")
    assert (outcome.score, outcome.score_field, outcome.status) == (score, field, status)
    assert outcome.ok is (status == "success")


def test_a_malformed_answer_says_which_field_is_missing_or_wrong() -> None:
    missing = RolloutOutcome.from_answer(answer({"metrics": {"details": {}}}), seed=0, run_id="r")
    assert missing.status == "invalid_response" and missing.score is None
    assert missing.error == (
        "the rollout response has no score: none of metrics.outcome_score, "
        "reward_info.outcome_reward, metrics.outcome_reward, metrics.mean_return is present "
        "(its fields: metrics)"
    )
    wrong = RolloutOutcome.from_answer(
        answer({"metrics": {"outcome_score": None}}), seed=0, run_id="r"
    )
    assert "metrics.outcome_score is null, not a number" in str(wrong.error)
    not_object = RolloutOutcome.from_answer(answer([1, 2]), seed=0, run_id="r")
    assert not_object.error == "the rollout response is a JSON list, not a JSON object"


def test_details_and_verdicts() -> None:
    body = {
        "reward_info": {"outcome_reward": 0.0, "details": {"error": "model unreachable"}},
        "success_status": "runtime_error",
    }
    outcome = RolloutOutcome.from_answer(answer(body), seed=2, run_id="r")
    assert outcome.status == "runtime_error" and outcome.error == "model unreachable"
    assert outcome.details == {"error": "model unreachable"}
    synth_400 = answer({"detail": {"error": {"code": "unauthorised", "message": "no"}}}, 400)
    assert RolloutOutcome.from_answer(synth_400, seed=0, run_id="r").key_rejected
    other_400 = answer({"detail": {"error": {"code": "bad_request", "message": "no"}}}, 400)
    assert RolloutOutcome.from_answer(other_400, seed=0, run_id="r").status == "http_error"


def test_every_request_carries_run_id_and_trace_correlation_id() -> None:
    body = rollout_request(4, run_id="x-4", policy_config={"prompt": "p"}, max_time_s=9)
    assert body["run_id"] == body["trace_correlation_id"] == "x-4"
    assert body["safety"] == {"max_time_s": 9}
    generated = rollout_request(5)
    assert generated["run_id"] == generated["trace_correlation_id"]


def test_client_against_a_synth_ai_style_app() -> None:
    seen: list[dict[str, Any]] = []
    with _ThreadedUvicorn(synth_style_app(KEY, seen=seen)) as running:
        with TaskAppClient(running.url, KEY) as client:
            assert isinstance(client.transport, LoopbackTransport)
            client.health()
            assert client.info()["service"]["task"]["id"] == "synth-style"
            assert client.task_info()["taskset"]["default_split"] == "train"
            outcome = client.rollout(2, policy_config={"prompt": "hi"})
        with TaskAppClient(running.url, "wrong-key-123456") as wrong:
            with pytest.raises(ApiKeyRejectedError, match=r"HTTP 400"):
                wrong.health()
            assert wrong.rollout(0).key_rejected
    assert outcome.ok and outcome.score == 1.0
    assert outcome.score_field == "reward_info.outcome_reward"
    assert outcome.details == {"parity": 0}
    assert seen[0]["trace_correlation_id"] == outcome.run_id
    assert seen[0]["policy"]["config"] == {"prompt": "hi"}


def test_starting_a_synth_ai_style_app_with_the_wrong_key_fails_at_once() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(ApiKeyRejectedError, match=r"rejected the API key .*HTTP 400"):
        InProcessTaskApp(
            app=synth_style_app("the-apps-own-key-123"),
            port=port,
            api_key=KEY,
            health_check_timeout=30,
        ).start()
    assert time.monotonic() - started < 10  # not the whole health timeout


def test_transport_errors_are_described_in_words() -> None:
    port = free_port()
    with TaskAppClient(f"http://127.0.0.1:{port}", KEY, timeout=2) as client:
        with pytest.raises(TransportError, match="connection refused: nothing is listening"):
            client.health()
        outcome = client.rollout(0)
    assert outcome.status == "transport_error" and not outcome.answered
    assert "connection refused" in str(outcome.error)


def test_a_slow_rollout_is_a_timeout_not_a_transport_error() -> None:
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/rollout")
    async def rollout() -> Any:
        await asyncio.sleep(2)
        return {}

    with _ThreadedUvicorn(app) as running:
        with TaskAppClient(running.url, KEY, timeout=0.3) as client:
            outcome = client.rollout(0)
            with pytest.raises(ClientTimeout):
                client.request("POST", "/rollout", json_body={})
    assert outcome.status == "timeout"
    assert outcome.error is not None and "within 0.3 s" in outcome.error


def test_httpx_transport_and_errors_for_non_json() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            assert request.headers["x-api-key"] == KEY
            return httpx.Response(200, text="<!doctype html><p>hi")
        return httpx.Response(500, json={"detail": {"error": {"code": "x", "message": "boom"}}})

    transport = HttpxTransport(
        "https://tasks.invalid", timeout=5, transport=httpx.MockTransport(handler)
    )
    with TaskAppClient("https://tasks.invalid", KEY, transport=transport) as client:
        with pytest.raises(TaskAppRequestError, match="did not return JSON"):
            client.health()
        with pytest.raises(TaskAppRequestError, match=r"HTTP 500: boom \(x\)"):
            client.info()


def test_async_client_in_memory_over_asgi() -> None:
    app = create_task_app(build_config(), api_keys=[KEY])

    async def main() -> tuple[Any, RolloutOutcome]:
        transport = AsyncHttpxTransport(
            "http://app.local", timeout=10, transport=httpx.ASGITransport(app=app)
        )
        async with AsyncTaskAppClient("http://app.local", KEY, transport=transport) as client:
            await client.health()
            info = await client.task_info([0, 1])
            return info, await client.rollout(0)

    info, outcome = asyncio.run(main())
    assert isinstance(info, list) and len(info) == 2
    assert outcome.score is not None and outcome.score_field == "metrics.outcome_score"


@pytest.mark.parametrize(
    ("url", "message"),
    [("ftp://x", "expected http://host"), ("http://h:70000", "port is not a number")],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        TaskAppClient(url)


def test_url_without_scheme_means_http() -> None:
    with TaskAppClient("127.0.0.1:1/") as client:
        assert client.base_url == "http://127.0.0.1:1"
