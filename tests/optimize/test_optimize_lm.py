"""The reflection models: the OpenAI-compatible httpx client and the offline stand-in.

The model server is a **stand-in** (``fake_openai_app`` in ``tests/optimize/_optimize_helpers.py``):
a real FastAPI app on real uvicorn answering ``POST /v1/chat/completions`` with the
deterministic stand-in reflection model, or with scripted failures.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from taskapp import InProcessTaskApp
from taskapp.optimize import (
    OpenAICompatLM,
    ReflectionModelError,
    StandInReflectionLM,
    run,
)
from taskapp.optimize.lm import REFLECTION_TEMPLATE
from tests.optimize._optimize_helpers import ToyTask, fake_openai_app

KEY = "sk-test-0123456789abcdef"


@contextmanager
def model_server(**kw: Any) -> Iterator[tuple[str, Any]]:
    app = fake_openai_app(**kw)
    with InProcessTaskApp(app=app) as served:
        yield served.local_url + "/v1", app


def test_client_sends_the_key_and_counts_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_REFLECTION_KEY", KEY)
    with model_server(key=KEY) as (url, app):
        lm = OpenAICompatLM(
            "stand-in-model",
            base_url=url,
            api_key_env="TEST_REFLECTION_KEY",
            temperature=0.5,
            max_tokens=100,
            price_per_mtok_input=1.0,
            price_per_mtok_output=2.0,
        )
        try:
            reply = lm("<instructions>\n- refund: refund\n</instructions>")
        finally:
            lm.close()
    assert reply.startswith("```")
    sent = app.state.requests[0]
    assert sent["authorization"] == f"Bearer {KEY}"
    assert sent["body"]["model"] == "stand-in-model"
    assert sent["body"]["temperature"] == 0.5 and sent["body"]["max_tokens"] == 100
    assert lm.calls == 1 and lm.prompt_tokens > 0 and lm.completion_tokens > 0
    assert lm.total_cost == pytest.approx(
        (lm.prompt_tokens * 1.0 + lm.completion_tokens * 2.0) / 1e6
    )
    assert KEY not in repr(lm)


def test_retries_honour_retry_after() -> None:
    with model_server(fail_first=2, fail_status=429, retry_after="0.3") as (url, app):
        lm = OpenAICompatLM("m", base_url=url, api_key="", max_retries=3)
        started = time.monotonic()
        try:
            assert lm("hello").startswith("```")
        finally:
            lm.close()
        elapsed = time.monotonic() - started
    assert len(app.state.requests) == 3
    assert lm.retries == 2
    assert 0.6 <= elapsed < 5  # waited what Retry-After said, twice


def test_server_errors_are_retried_then_reported() -> None:
    with model_server(always_fail=503, retry_after=None) as (url, app):
        lm = OpenAICompatLM("m", base_url=url, max_retries=2)
        try:
            with pytest.raises(ReflectionModelError, match=r"failed 3 time.*HTTP 503"):
                lm("hello")
        finally:
            lm.close()
    assert len(app.state.requests) == 3


def test_rejected_key_fails_at_once_without_the_key() -> None:
    with model_server(key="the-right-key-123456") as (url, app):
        lm = OpenAICompatLM("m", base_url=url, api_key=KEY, max_retries=3)
        try:
            with pytest.raises(ReflectionModelError, match="rejected") as info:
                lm("hello")
        finally:
            lm.close()
    assert len(app.state.requests) == 1
    assert KEY not in str(info.value)


def test_not_found_and_bad_answers_are_explained() -> None:
    with model_server(always_fail=404, retry_after=None) as (url, _):
        lm = OpenAICompatLM("m", base_url=url)
        with pytest.raises(ReflectionModelError, match="ends in /v1"):
            lm("hello")
        lm.close()
    with model_server() as (url, _):
        lm = OpenAICompatLM("m", base_url=url.removesuffix("/v1") + "/health/x")
        with pytest.raises(ReflectionModelError, match="HTTP 404"):
            lm("hello")
        lm.close()


def test_optimization_through_the_http_model_matches_the_direct_stand_in() -> None:
    """The reflection path over HTTP gives exactly what calling the stand-in directly does."""
    task = ToyTask()
    with InProcessTaskApp(config=task.config()) as app, model_server() as (url, server):
        lm = OpenAICompatLM("stand-in-model", base_url=url, api_key="")
        try:
            over_http = run(app, None, "0-39", "100-129", reflection_lm=lm, budget=150)
        finally:
            lm.close()
        direct = run(app, None, "0-39", "100-129", reflection_lm=StandInReflectionLM(), budget=150)
    assert over_http.best_score > over_http.baseline_score
    assert over_http.best_candidate == direct.best_candidate
    assert over_http.best_score == direct.best_score
    assert over_http.reflection["calls"] == len(server.state.requests) >= 1
    assert over_http.reflection["prompt_tokens"] > 0
    first_prompt = server.state.requests[0]["body"]["messages"][0]["content"]
    assert "<instructions>" in first_prompt and "Feedback" in first_prompt


# -- the stand-in ---------------------------------------------------------------------------


def render(instruction: str, records: list[dict[str, Any]], template: str | None) -> str:
    from gepa.strategies.instruction_proposal import InstructionProposalSignature

    prompt = InstructionProposalSignature.prompt_renderer(
        {
            "current_instruction_doc": instruction,
            "dataset_with_feedback": records,
            "prompt_template": template,
        }
    )
    assert isinstance(prompt, str)
    return prompt


@pytest.mark.parametrize("template", [REFLECTION_TEMPLATE, None], ids=["taskapp", "gepa"])
def test_stand_in_teaches_the_expected_label(template: str | None) -> None:
    records = [
        {
            "Inputs": {"seed": 1, "message": "my wallet went missing today"},
            "Generated Outputs": "unknown",
            "Expected": "card_lost",
            "Score": "0",
            "Feedback": "Incorrect.",
        },
        {
            "Inputs": {"seed": 2, "message": "please reimburse me"},
            "Generated Outputs": "refund",
            "Score": "1",
            "Feedback": "Correct.",
        },
        {
            "Inputs": {"seed": 3, "message": "send a wire to payee"},
            "Generated Outputs": "unknown",
            "Score": "0",
            "Feedback": "Incorrect: the correct label is 'transfer'.",
        },
    ]
    current = "Classify {message}.\n- card_lost: lost\n- refund: refund"
    reply = StandInReflectionLM()(render(current, records, template))
    from gepa.strategies.instruction_proposal import InstructionProposalSignature

    new = InstructionProposalSignature.output_extractor(reply)["new_instruction"]
    assert new.startswith("Classify {message}.")  # placeholder and lines kept
    assert "- card_lost: lost, wallet, went" in new or "- card_lost: lost, wallet, missing" in new
    assert "reimburse" not in new  # perfect examples teach nothing
    assert "- transfer:" in new  # a missing label gets a line


def test_stand_in_falls_back_to_hints() -> None:
    records = [
        {
            "Inputs": {"seed": 1},
            "Generated Outputs": "42",
            "Score": "0",
            "Feedback": "Give the answer in words. Numbers are not accepted.",
        }
    ]
    reply = StandInReflectionLM()(render("Answer the question.", records, None))
    assert "Hint: Give the answer in words." in reply
    assert "Numbers are not accepted" not in reply
