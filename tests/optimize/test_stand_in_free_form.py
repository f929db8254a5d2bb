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


def test_rejected_proposals_are_shown_at_the_default_verbosity(tmp_path: Path) -> None:
    """A task no prompt can help: every proposal is rejected, and the default console
    output says what each one tried (a run at +0.000 is no longer silent)."""
    import io

    from taskapp.optimize.progress import ConsolePrinter

    async def hopeless(request: Any, http_request: Any) -> dict[str, Any]:
        question, expected = question_of(int(request.env.seed or 0))
        details = {"question": question, "predicted": "?", "expected": expected}
        return {"run_id": request.run_id, "metrics": {"outcome_score": 0.0, "details": details}}

    events: list[dict[str, Any]] = []
    config = arithmetic_config()
    config.rollout = hopeless
    with InProcessTaskApp(config=config, port=0) as app:
        run(app, SEED_PROMPT, "0-9", "10-14", reflection_lm=StandInReflectionLM(), budget=40,
            minibatch_size=3, output_dir=tmp_path / "run", on_progress=events.append)  # fmt: skip
    rejected = [e for e in events if e.get("event") == "iteration" and e.get("rejected")]
    assert rejected, events
    assert rejected[0]["rejected_scores"] == [0.0, 0.0]
    assert any(line.startswith("Example: what is") for line in rejected[0]["proposed_lines"])
    out = io.StringIO()
    printer = ConsolePrinter(out)
    for event in events:
        printer(event)
    text = out.getvalue()
    assert "rejected (minibatch 0.00, parent 0.00)" in text
    assert "      tried: Example: what is" in text, text
