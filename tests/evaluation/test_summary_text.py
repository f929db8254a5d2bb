"""What ``taskapp eval`` / ``print_summary`` show a new user (issue 21 item 6): the summary is
titled with what was evaluated (never an object's repr), and the worst list shows the input
of a QA-style task (``details.question``), not only support-intents' ``message``."""

from __future__ import annotations

import io
from typing import Any

import taskapp
from taskapp.evaluation import print_summary
from tests.helpers import demo_config


def qa_config() -> Any:
    questions = {0: "6 x 7?", 1: "capital of France?"}

    async def rollout(request: Any, http_request: Any) -> dict[str, Any]:
        seed = request.env.seed or 0
        details = {"question": questions[seed], "answer": "42", "expected": "Paris"}
        return {
            "run_id": request.run_id,
            "metrics": {"outcome_score": 1.0 if seed == 0 else 0.0, "details": details},
        }

    return demo_config(app_id="tiny-qa", rollout=rollout)


def summary(result: Any) -> str:
    out = io.StringIO()
    print_summary(result, out)
    return out.getvalue()


def test_a_running_app_is_titled_by_what_it_hosts_and_where() -> None:
    with taskapp.InProcessTaskApp(config=demo_config(), port=0) as app:
        result = taskapp.evaluate(app, seeds=[0, 1])
        assert result.target == f"config 'demo' ({app.url})"
    text = summary(result)
    assert text.startswith(f"config 'demo' ({app.url}):")
    assert "<InProcessTaskApp" not in text and " object at 0x" not in text


def test_a_config_is_titled_by_its_app_id() -> None:
    assert taskapp.evaluate(demo_config(), seeds=[0]).target == "config 'demo'"


def test_the_worst_list_shows_a_question() -> None:
    text = summary(taskapp.evaluate(qa_config(), seeds=[0, 1]))
    worst = text[text.index("worst 1") :]
    assert '"capital of France?"' in worst
    assert "6 x 7?" not in worst  # seed 0 scored 1.0: not among the worst
