"""``taskapp.evaluate`` / ``aevaluate`` from Python: the engine of ``taskapp eval``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

import taskapp
from taskapp import (
    ApiKeyRejectedError,
    ConfigurationError,
    EvaluationResult,
    InProcessTaskApp,
    TaskAppRequestError,
)
from taskapp.core.client import RolloutOutcome
from taskapp.evaluation import REPORT_FORMAT, EvaluationPlanError
from taskapp.examples.support_intents import build_config
from tests.cli._cli_helpers import _ThreadedUvicorn
from tests.core._synth_style import synth_style_app
from tests.helpers import assert_released, free_port

KEY = "evaluate-api-key-0123456789"


@pytest.fixture(scope="module")
def example() -> Iterator[InProcessTaskApp]:
    with InProcessTaskApp(config=build_config(), port=free_port(), api_key=KEY) as task_app:
        yield task_app


def test_evaluate_a_bundled_example_by_name_starts_and_stops_it() -> None:
    port = free_port()
    seen: list[RolloutOutcome] = []
    result = taskapp.evaluate(
        "support-intents", seeds="0-19", concurrency=4, start={"port": port}, on_result=seen.append
    )
    assert isinstance(result, EvaluationResult)
    assert result.ok and result.failures == []
    assert result.url == f"http://127.0.0.1:{port}"
    assert result.seeds == list(range(20)) and result.split is None
    assert [r.seed for r in result.by_seed()] == list(range(20))
    assert len(seen) == 20
    summary = result.summary
    assert summary.completed == summary.requested == summary.success == 20
    assert summary.mean_score == pytest.approx(sum(r.score or 0 for r in result.results) / 20)
    report = result.to_dict()
    assert report["format"] == REPORT_FORMAT and report["summary"]["completed"] == 20
    assert set(report["results"][0]) == {
        "seed", "run_id", "status", "score", "latency_s", "http_status", "error", "details",
    }  # fmt: skip
    assert_released(port)


def test_the_same_scores_through_a_url_and_a_running_instance(
    example: InProcessTaskApp,
) -> None:
    assert example.url is not None
    bare = example.url.removeprefix("http://")  # host:port means http://host:port
    by_url = taskapp.evaluate(bare, seeds=range(10), api_key=KEY, concurrency=2)
    assert by_url.url == example.url
    by_instance = taskapp.evaluate(example, seeds=[*range(10)])
    by_name = taskapp.evaluate("support-intents", seeds="0-9")
    scores = [r.score for r in by_name.by_seed()]
    assert [r.score for r in by_url.by_seed()] == scores
    assert [r.score for r in by_instance.by_seed()] == scores
    assert example.running  # a running instance is used, not stopped


def test_default_split_and_policy(example: InProcessTaskApp) -> None:
    assert example.url is not None
    result = taskapp.evaluate(example.url, api_key=KEY, policy={"prompt": "{message}"})
    assert result.split == "test" and len(result.results) == 100
    assert result.policy_config == {"prompt": "{message}"}


def test_a_synth_ai_style_app_by_url() -> None:
    sent: list[dict[str, Any]] = []
    with _ThreadedUvicorn(synth_style_app(KEY, seen=sent)) as running:
        result = taskapp.evaluate(running.url, api_key=KEY, keep_going=True)
        with pytest.raises(ApiKeyRejectedError, match=r"HTTP 400"):
            taskapp.evaluate(running.url, api_key="not-the-key-123456")
    assert result.split == "train" and result.seeds == list(range(6))
    assert [r.score for r in result.by_seed()] == [1.0, 0.0] * 3
    assert [r.seed for r in result.failures] == [1, 3, 5]
    assert {r.status for r in result.failures} == {"failure"}
    assert result.summary.mean_score == 0.5
    assert all(body["trace_correlation_id"].startswith("eval-") for body in sent)


def test_aevaluate_and_evaluate_inside_a_running_loop(example: InProcessTaskApp) -> None:
    url = example.url
    assert url is not None

    async def main() -> tuple[EvaluationResult, EvaluationResult]:
        awaited = await taskapp.aevaluate(url, seeds="0-4", api_key=KEY)
        # A notebook cell: sync evaluate() while a loop runs (on a helper thread).
        blocking = taskapp.evaluate(url, seeds="0-4", api_key=KEY)
        return awaited, blocking

    awaited, blocking = asyncio.run(main())
    assert awaited.ok and blocking.ok
    assert [r.score for r in awaited.by_seed()] == [r.score for r in blocking.by_seed()]


def test_errors_are_typed_and_say_what_to_do(example: InProcessTaskApp) -> None:
    url = example.url
    assert url is not None
    with pytest.raises(EvaluationPlanError, match=r"seeds: 400-401 outside the task set"):
        taskapp.evaluate(url, seeds="398-401", api_key=KEY)
    with pytest.raises(ConfigurationError, match=r"split 'dev' is not in the task set"):
        taskapp.evaluate(url, split="dev", api_key=KEY)
    with pytest.raises(ConfigurationError, match="either seeds or split"):
        taskapp.evaluate(url, seeds="0", split="test", api_key=KEY)
    with pytest.raises(ConfigurationError, match=r"start options \(port, server\) start a target"):
        taskapp.evaluate(url, start={"server": "subprocess", "port": 9}, api_key=KEY)
    with pytest.raises(ConfigurationError, match="concurrency must be an integer >= 1"):
        taskapp.evaluate(url, concurrency=0)
    with pytest.raises(ConfigurationError, match="unknown target 'no-such-target'"):
        taskapp.evaluate("no-such-target")
    with pytest.raises(ApiKeyRejectedError, match="it needs an API key"):
        taskapp.evaluate(url, api_key="")
    port = free_port()
    with pytest.raises(TaskAppRequestError, match="connection refused"):
        taskapp.evaluate(f"http://127.0.0.1:{port}", api_key=KEY)
