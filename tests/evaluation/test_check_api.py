"""``taskapp.check`` / ``taskapp.acheck``: the contract check from Python, on real servers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

import taskapp
from taskapp import CheckReport, ConfigurationError, InProcessTaskApp
from taskapp.core.secrets import fingerprint
from taskapp.examples.support_intents import build_config
from tests.cli._cli_helpers import _ThreadedUvicorn
from tests.core._synth_style import synth_style_app
from tests.helpers import free_port

KEY = "check-api-key-0123456789"


@pytest.fixture(scope="module")
def example() -> Iterator[InProcessTaskApp]:
    with InProcessTaskApp(config=build_config(), port=free_port(), api_key=KEY) as task_app:
        yield task_app


def test_check_the_bundled_example_with_rollouts(example: InProcessTaskApp) -> None:
    assert example.url is not None
    report = taskapp.check(example.url, api_key=KEY, seeds=[0, 1, 2])
    assert isinstance(report, CheckReport)
    assert report.ok, report.format()
    assert report.failures == []
    names = [c.name for c in report.checks]
    assert names == [
        "GET /",
        "GET /health",
        "GET /health without key",
        "GET /info",
        "GET /task_info",
        "GET /metadata",
        "POST /rollout seed 0",
        "POST /rollout seed 1",
        "POST /rollout seed 2",
        "error envelope",
        "key not echoed",
    ]
    rollout = report.checks[6]
    assert rollout.detail.startswith("score ") and "metrics.outcome_score" in rollout.detail
    text = report.format()
    assert text.splitlines()[-1] == "task app OK"
    assert len(text.splitlines()) == len(report.checks) + 1
    as_dict = report.to_dict()
    assert as_dict["ok"] is True and as_dict["key"] == fingerprint(KEY)
    assert KEY not in text + json.dumps(as_dict)


def test_acheck_from_async_code(example: InProcessTaskApp) -> None:
    assert example.url is not None
    url = example.url

    async def main() -> CheckReport:
        return await taskapp.acheck(url, api_key=KEY)

    report = asyncio.run(main())
    assert report.ok, report.format()


def test_wrong_key_stops_after_health(example: InProcessTaskApp) -> None:
    assert example.url is not None
    report = taskapp.check(example.url, api_key="wrong-key-abcdef", seeds=[0])
    assert not report.ok
    assert [c.name for c in report.failures] == ["GET /health"]
    assert "auth rejected (HTTP 401)" in report.failures[0].detail
    assert report.format().splitlines()[-1] == "1 of 2 checks failed"


def test_nothing_listening_is_one_failure() -> None:
    port = free_port()
    report = taskapp.check(f"127.0.0.1:{port}", timeout=2)
    assert report.url == f"http://127.0.0.1:{port}"
    assert [c.name for c in report.checks] == ["GET /"]
    assert "connection refused: nothing is listening at" in report.checks[0].detail


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "ftp://x"}, "expected http://host"),
        ({"url": "http://127.0.0.1:1", "timeout": 0}, "timeout must be a positive number"),
        ({"url": "http://127.0.0.1:1", "seeds": "0-3"}, "seeds must be a sequence of integers"),
        ({"url": "http://127.0.0.1:1", "seeds": [-1]}, "seeds must be integers >= 0"),
    ],
)
def test_bad_arguments_raise_configuration_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        taskapp.check(**kwargs)


def _broken_app() -> FastAPI:
    """Answers without a key, echoes the key, has no score, and 500s on bad bodies."""
    app = FastAPI()

    @app.get("/")
    async def root() -> Any:
        return {"status": "ok", "service": "broken"}

    @app.get("/health")
    async def health(request: Request) -> Any:
        return {"healthy": True, "you_sent": request.headers.get("x-api-key")}

    @app.get("/info")
    async def info() -> Any:
        return {"name": "no service object"}

    @app.get("/task_info")
    async def task_info() -> Any:
        return {"taskset": {"size": 3}}

    @app.post("/rollout")
    async def rollout(request: Request) -> Any:
        body = await request.json()
        if not isinstance(body, dict):
            return JSONResponse({"oops": True}, status_code=500)
        return {"metrics": {"outcome_score": "high"}}

    return app


def test_a_broken_app_gets_every_violation_listed() -> None:
    with _ThreadedUvicorn(_broken_app()) as running:
        report = taskapp.check(running.url, api_key=KEY, seeds=[0])
    failed = {c.name: c.detail for c in report.failures}
    assert set(failed) == {
        "GET /health without key",
        "GET /info",
        "POST /rollout seed 0",
        "error envelope",
        "key not echoed",
    }, report.format()
    assert "answered 200 without a key" in failed["GET /health without key"]
    assert "without a 'service' object" in failed["GET /info"]
    assert 'metrics.outcome_score is "high", not a number' in failed["POST /rollout seed 0"]
    assert "HTTP 500" in failed["error envelope"]
    assert (
        f"the API key ({fingerprint(KEY)}) appears in the answer to /health"
        in (failed["key not echoed"])
    )
    lines = report.format().splitlines()
    assert sum(line.startswith("  FAIL") for line in lines) == 5
    assert KEY not in report.format()


def test_a_synth_ai_style_app_passes_and_its_400_is_a_wrong_key() -> None:
    seen: list[dict[str, Any]] = []
    with _ThreadedUvicorn(synth_style_app(KEY, seen=seen)) as running:
        good = taskapp.check(running.url, api_key=KEY, seeds=[0, 1])
        wrong = taskapp.check(running.url, api_key="not-the-key-999", seeds=[0])
    assert good.ok, good.format()
    details = {c.name: c.detail for c in good.checks}
    assert "from reward_info.outcome_reward" in details["POST /rollout seed 0"]
    assert details["POST /rollout seed 1"].startswith("score 0 (failure")
    assert details["GET /health without key"].startswith("refused with HTTP 400")
    assert details["GET /info"] == "service 'Synth style' (app_id 'synth-style')"
    assert all(body["trace_correlation_id"] for body in seen) and len(seen) == 2
    assert [c.name for c in wrong.failures] == ["GET /health"]
    assert "auth rejected (HTTP 400)" in wrong.failures[0].detail
