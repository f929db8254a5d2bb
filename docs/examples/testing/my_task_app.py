"""The task app under test in docs/testing.md: guess a word's first letter.

Seeds index a tiny dataset; the "policy" is whatever ``policy.config["answer"]`` says (a
real app would call a model here), so the score depends on the policy, as it would.
"""

from __future__ import annotations

from typing import Any

from taskapp import TaskAppConfig

WORDS = ["apple", "banana", "cherry", "date", "elder", "fig"]


def describe_taskset() -> dict[str, Any]:
    return {"splits": {"train": 4, "test": 2}}


def provide_task_instances(seeds: list[int]) -> list[dict[str, Any]]:
    return [
        {"task": {"id": "first-letter", "name": "First letter"}, "task_metadata": {"seed": s}}
        for s in seeds
    ]


async def rollout(request: Any, http_request: Any) -> dict[str, Any]:
    word = WORDS[(request.env.seed or 0) % len(WORDS)]
    answer = request.policy.config.get("answer", "first")
    guess = word[0] if answer == "first" else word[-1]
    return {
        "run_id": request.run_id,
        "metrics": {"outcome_score": 1.0 if guess == word[0] else 0.0, "details": {"word": word}},
    }


def build_config() -> TaskAppConfig:
    return TaskAppConfig(
        app_id="first-letter",
        name="First letter",
        description="Say the first letter of a word",
        describe_taskset=describe_taskset,
        provide_task_instances=provide_task_instances,
        rollout=rollout,
    )
