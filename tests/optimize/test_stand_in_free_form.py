"""The offline stand-in reflection model improves a task whose answers are free-form
(numbers), not only label-style tasks (issue 21 item 6: it read ``details.expected`` as a
label, and such runs ended "succeeded +0.000").

The task app is real (uvicorn, HTTP); its policy is a deterministic lookup: it answers a
question right when the prompt holds a worked example for it (``... <question> -> <answer>``),
as a model given few-shot examples would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from taskapp import InProcessTaskApp, TaskAppConfig
from taskapp.optimize import StandInReflectionLM, run

QUESTIONS = [(f"what is {a} times {a + 3}?", str(a * (a + 3))) for a in range(2, 7)]
SEED_PROMPT = "Answer the arithmetic question with a number only."


def question_of(seed: int) -> tuple[str, str]:
    return QUESTIONS[seed % len(QUESTIONS)]


def answer(prompt: str, question: str) -> str:
    for line in prompt.splitlines():
        if question in line and "->" in line:
            return line.rsplit("->", 1)[1].strip()
    return "I don't know"


def arithmetic_config() -> TaskAppConfig:
    async def rollout(request: Any, http_request: Any) -> dict[str, Any]:
        question, expected = question_of(int(request.env.seed or 0))
        predicted = answer(str(request.policy.config.get("prompt", "")), question)
        correct = predicted == expected
        details = {
            "question": question,
            "predicted": predicted,
            "expected": expected,
            "feedback": "Correct." if correct else f"Wrong: the answer is {expected}.",
        }
        return {
            "run_id": request.run_id,
            "metrics": {"outcome_score": float(correct), "details": details},
        }

    return TaskAppConfig(
        app_id="arithmetic",
        name="Arithmetic",
        description="free-form numeric answers",
        describe_taskset=lambda: {"splits": {"train": 40}},
        provide_task_instances=lambda seeds: [{"task": {"id": "arithmetic"}} for _ in seeds],
        rollout=rollout,
    )


def test_the_stand_in_improves_free_form_numeric_answers(tmp_path: Path) -> None:
    with InProcessTaskApp(config=arithmetic_config(), port=0) as app:
        result = run(
            app,
            SEED_PROMPT,
            "0-9",
            "10-19",
            reflection_lm=StandInReflectionLM(),
            budget=120,
            minibatch_size=3,
            output_dir=tmp_path / "run",
        )
    assert result.baseline_score == 0.0
    assert result.best_score is not None and result.best_score > 0.0, result.best_prompt
    best = str(result.best_prompt)
    assert "Example:" in best and "- 18:" not in best  # a worked example, not a "label" line
