"""The support-intents task app: classify a customer-support message into one of 10 intents.

* ``describe_taskset()``: the splits and their seeds (``GET /task_info``, ``GET /info``).
* ``provide_task_instances(seeds)``: per seed, the message and its split.
* ``rollout(request)``: runs the policy on the seed's message and scores it, 1.0 when the
  predicted intent is the expected one, else 0.0. ``metrics.details`` carries the predicted
  and expected intents and a short ``feedback`` sentence explaining a mistake (what a
  prompt optimizer reads to improve the prompt).

The policy comes from ``policy.config``:

``prompt``          the instructions, listing the intents as ``- name: description`` lines
                    (default :data:`DEFAULT_PROMPT`); ``{message}`` in it is replaced by the
                    message, otherwise the message is sent as the user turn
``inference_url``   an OpenAI-compatible base URL (``http://host:port/v1``); without it the
                    deterministic offline baseline answers (see ``policy.py``)
``model``           the model name (required with ``inference_url``)
``api_key_env``     name of an environment variable of the task app's process holding the
                    model's API key (the key itself never travels in a request). Only names
                    the app's owner allowed count (``build_config(api_key_envs=...)`` or
                    ``$SUPPORT_INTENTS_API_KEY_ENVS``); any other is refused with 422
                    ``api_key_env_not_allowed``: a request never chooses which secret
                    leaves the machine
``temperature``, ``max_tokens``, ``timeout``   optional, defaults 0, 16 and 30 s

A wrong value in ``policy.config`` is the caller's mistake: 422 ``invalid_policy`` with the
field named in ``error.field``. All three callables are ``async``: the offline baseline is a
few microseconds of string work for a normal prompt (a long prompt is parsed in a worker
thread, so ``/health`` keeps answering) and the model call awaits httpx.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from fastapi import HTTPException

from taskapp import RolloutRequest, TaskAppConfig
from taskapp.examples.support_intents.dataset import (
    LABELS,
    SPLITS,
    Example,
    load_examples,
    seeds_of_split,
)
from taskapp.examples.support_intents.policy import (
    ChatPolicy,
    ChatSettings,
    OfflinePrediction,
    PolicyConfigError,
    PolicyError,
    allowed_key_envs_from_environment,
    normalize_answer,
    offline_predict,
)

__all__ = ["APP_ID", "DEFAULT_PROMPT", "SupportIntentsTask", "build_config"]

APP_ID = "support-intents"

#: A deliberately plain prompt: the offline baseline scores about 0.42 on the test split
#: with it. Describing each intent with the words customers actually use (and naming a
#: fallback intent) takes it above 0.8; see docs/writing_task_apps.md.
DEFAULT_PROMPT = """\
You are a customer-support assistant. Classify the customer's message into exactly one
of these intents:

- refund: refund or money back
- cancel_subscription: cancel a subscription
- shipping_status: where a package or delivery is
- password_reset: reset a password
- billing_issue: a wrong charge
- product_question: a question about a product
- complaint: unhappy with the service
- account_update: update account details
- technical_issue: an error, something is not working
- order_change: change an order

Answer with the intent name only.
"""


#: Prompts longer than this (characters) are parsed in a worker thread, off the event loop.
LONG_PROMPT = 50_000


def _error(status: int, code: str, message: str, **extra: Any) -> HTTPException:
    """An HTTP error in the task-app contract's envelope."""
    error = {"code": code, "message": message, **extra}
    return HTTPException(status_code=status, detail={"error": error})


class SupportIntentsTask:
    """The task's state: the examples (loaded once), the shared model client and the
    owner's allow-list of environment variables a request may name in ``api_key_env``."""

    def __init__(self, api_key_envs: Iterable[str] = ()) -> None:
        self.examples = load_examples()
        self.chat = ChatPolicy()
        self.api_key_envs = frozenset(api_key_envs)

    def example(self, seed: int | None) -> Example:
        if seed is None:
            raise _error(422, "missing_seed", "env.seed is required (an integer, 0-399)")
        if not 0 <= seed < len(self.examples):
            raise _error(
                422,
                "seed_out_of_range",
                f"seed {seed} is outside the task set: seeds are 0-{len(self.examples) - 1}",
            )
        return self.examples[seed]

    async def describe_taskset(self) -> dict[str, Any]:
        splits = {name: seeds_of_split(name) for name in SPLITS}
        return {
            "id": APP_ID,
            "name": "Customer-support intents",
            "size": len(self.examples),
            "seed_range": [0, len(self.examples)],
            "seed_rule": "seeds index the whole data set; seed % 4 == 3 is test, else train",
            "splits": {
                name: {"size": len(seeds), "seeds": seeds} for name, seeds in splits.items()
            },
            "labels": list(LABELS),
            "default_split": "test",
        }

    async def provide_task_instances(self, seeds: list[int]) -> list[dict[str, Any]]:
        instances = []
        for seed in seeds:
            example = self.example(seed)
            instances.append(
                {
                    "task": {"id": APP_ID, "name": "Customer-support intents", "version": "1"},
                    "environment": APP_ID,
                    "dataset": {"id": APP_ID, "split": example.split, "index": seed},
                    "limits": {"max_turns": 1},
                    "task_metadata": {
                        "seed": seed,
                        "example_id": example.id,
                        "message": example.text,
                        "split": example.split,
                        "labels": list(LABELS),
                    },
                }
            )
        return instances

    async def rollout(self, request: RolloutRequest, http_request: Any) -> dict[str, Any]:
        example = self.example(request.env.seed)
        config = request.policy.config
        prompt = config.get("prompt", DEFAULT_PROMPT)
        if not isinstance(prompt, str) or not prompt.strip():
            raise _error(422, "invalid_policy", "policy.config.prompt must be a non-empty string")

        if config.get("inference_url"):
            try:
                settings = ChatSettings.from_config(config, self.api_key_envs)
                answer = await self.chat.answer(settings, prompt, example.text)
            except PolicyConfigError as exc:
                raise _error(422, exc.code, str(exc), field=f"policy.config.{exc.field}") from None
            except PolicyError as exc:
                return self._response(
                    request,
                    example,
                    None,
                    f"the policy failed: {exc}",
                    status="runtime_error",
                    extra={"error": str(exc), "policy": "chat"},
                )
            predicted = normalize_answer(answer, LABELS)
            if predicted == example.label:
                feedback = "correct"
            elif predicted is None:
                feedback = (
                    f"the model answered {answer.strip()[:80]!r}, which names none of the "
                    f"intents; expected {example.label}"
                )
            else:
                feedback = f"the model answered {predicted}; the message is {example.label}"
            return self._response(
                request,
                example,
                predicted,
                feedback,
                extra={"answer": answer[:200], "policy": f"chat:{settings.model}"},
            )

        if len(prompt) > LONG_PROMPT:
            prediction = await asyncio.to_thread(offline_predict, prompt, example.text, LABELS)
        else:
            prediction = offline_predict(prompt, example.text, LABELS)
        return self._response(
            request,
            example,
            prediction.label,
            _offline_feedback(prediction, example),
            extra={"matched_words": prediction.matches, "policy": "offline-baseline"},
        )

    def _response(
        self,
        request: RolloutRequest,
        example: Example,
        predicted: str | None,
        feedback: str,
        *,
        status: str = "success",
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        score = 1.0 if predicted == example.label else 0.0
        return {
            "run_id": request.run_id,
            "metrics": {
                "outcome_score": score,
                "mean_return": score,
                "num_steps": 1,
                "details": {
                    "seed": example.seed,
                    "split": example.split,
                    "message": example.text,
                    "predicted": predicted,
                    "expected": example.label,
                    "correct": predicted == example.label,
                    "feedback": feedback,
                    **(extra or {}),
                },
            },
            "trajectories": [
                {
                    "steps": [
                        {
                            "observation": {"message": example.text},
                            "action": {"intent": predicted},
                            "reward": score,
                        }
                    ]
                }
            ],
            "success_status": status,
            "trace_correlation_id": request.trace_correlation_id,
        }

    async def aclose(self) -> None:
        await self.chat.aclose()


def _offline_feedback(prediction: OfflinePrediction, example: Example) -> str:
    """One sentence on why the offline baseline got ``example`` wrong."""
    expected = example.label
    if prediction.label == expected:
        return "correct"
    if not prediction.listed:
        return "the prompt lists no intent as a '- name: description' line"
    if expected not in prediction.listed:
        return f"the prompt does not list {expected}"
    if prediction.fell_back:
        return (
            f"no intent description shares a word with the message; fell back to {prediction.label}"
        )
    got = ", ".join(prediction.matches.get(prediction.label or "", []))
    want = prediction.matches.get(expected)
    if want:
        return f"{prediction.label} matched more words ({got}) than {expected} ({', '.join(want)})"
    return f"{prediction.label} matched ({got}); {expected}'s description shares no word with it"


def build_config(api_key_envs: Iterable[str] | None = None) -> TaskAppConfig:
    """The support-intents task app. ``taskapp serve support-intents`` serves this.

    ``api_key_envs``: the environment variables a rollout may name in
    ``policy.config.api_key_env`` (their values are sent as bearer tokens to the request's
    ``inference_url``, so allow only keys any holder of the task app's key may use). Default:
    the names in ``$SUPPORT_INTENTS_API_KEY_ENVS`` (comma-separated), else none.
    """
    if api_key_envs is None:
        api_key_envs = allowed_key_envs_from_environment()
    task = SupportIntentsTask(api_key_envs)
    return TaskAppConfig(
        app_id=APP_ID,
        name="Customer-support intents",
        description=(
            "Classify a customer-support message into one of 10 intents. 400 messages "
            "written for taskapp; seed % 4 == 3 is the test split (100), the rest train "
            "(300). Offline baseline policy by default; set policy.config.inference_url "
            "and model to use any OpenAI-compatible chat model."
        ),
        base_task_info={
            "task": {"id": APP_ID, "name": "Customer-support intents", "version": "1"},
            "environment": APP_ID,
            "dataset": {"id": APP_ID, "name": "support-intents", "splits": list(SPLITS)},
            "limits": {"max_turns": 1},
            "task_metadata": {"labels": list(LABELS), "default_prompt": DEFAULT_PROMPT},
        },
        describe_taskset=task.describe_taskset,
        provide_task_instances=task.provide_task_instances,
        rollout=task.rollout,
        prompts={"prompt": DEFAULT_PROMPT},  # what an optimizer may change (GET /program)
        shutdown_hooks=(task.aclose,),
    )
