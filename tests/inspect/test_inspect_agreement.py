"""Score agreement: taskapp's rewards equal what the real `inspect eval` CLI gives for the
same model and samples, on every sample (issue 23, Proof).

Three scorer kinds: match(), choice() after multiple_choice(), and model_graded_qa with
partial credit whose grader is Inspect's mockllm/model driven by a custom-output function.
The policy model is taskapp's stand-in provider, which `inspect eval` finds through
Inspect's entry point, so both sides run the same model.
"""

from __future__ import annotations

from pathlib import Path

from taskapp import evaluate
from tests.inspect._helpers import run_inspect_eval, target

TASKS = ("intents_match", "intents_choice", "intents_graded")


def test_rewards_equal_inspect_eval_on_every_sample(tmp_path: Path) -> None:
    cli = run_inspect_eval([target(name) for name in TASKS], "taskapp/standin", tmp_path)
    for name in TASKS:
        expected = cli[name.replace("_", "-")] if name.replace("_", "-") in cli else cli[name]
        result = evaluate(target(name), seeds="0-23", concurrency=8)
        ours = {r.details["sample_id"]: r.score for r in result.results}
        assert all(r.ok for r in result.results), name
        assert len(expected) == 24 and ours == expected, (name, ours, expected)
        # both kinds of outcome occur, so agreement is not the trivial all-0 or all-1
        assert 0.0 in ours.values() and 1.0 in ours.values(), name
        if name == "intents_graded":
            assert 0.5 in ours.values()  # partial credit (P) maps to 0.5 on both sides
