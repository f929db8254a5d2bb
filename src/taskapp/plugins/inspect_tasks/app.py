"""An Inspect task as a task app: a :class:`taskapp.TaskAppConfig` built from it.

* seeds: the task's samples in the dataset's order (seed 0 is the first sample);
* ``/task_info``: the dataset (size, sample ids, splits from a ``split`` metadata field
  when every sample has one, else one split ``all``), the scorers and the solver chain;
* ``/rollout``: the task's solver chain on that sample, with ``policy.config.prompt`` as
  the prompt the task declares (its ``system_message``/``prompt_template`` template) or,
  when it declares none, as a system message in front; on the model
  ``policy.config.model`` (Inspect's ``provider/model``; provider keys come from this
  process's environment, never from a request); reward = the first scorer's value mapped
  as Inspect's metrics map it (``value_to_float``: C 1, P 0.5, I and N 0, numbers as
  they are); ``metrics.details`` carries the scorer's explanation, the model's output and
  the target as ``feedback``, ``predicted`` and ``expected``.

A model or solver error is a rollout with ``success_status`` ``runtime_error`` and the
message (secrets redacted), never an HTTP 500.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from fastapi import HTTPException

from taskapp.core.config import TaskAppConfig
from taskapp.core.contract import RolloutRequest
from taskapp.core.secrets import redact, register_secret
from taskapp.plugins.inspect_tasks.runner import EvalRunner, RolloutFailure
from taskapp.plugins.inspect_tasks.tasks import LoadedTask, _message, load_task

__all__ = ["DEFAULT_MODEL", "DEFAULT_SYSTEM_PROMPT", "InspectTaskApp", "build_config"]

#: The model a rollout runs on when ``policy.config.model`` names none and the process
#: sets no ``INSPECT_EVAL_MODEL``: taskapp's offline stand-in (see :mod:`.standin`).
DEFAULT_MODEL = "taskapp/standin"
#: The starting prompt advertised for a task that declares no system message or template.
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
#: policy.config keys a request may not set: keys and endpoints come from the environment.
_REFUSED_KEYS = ("api_key", "base_url", "model_base_url", "model_args", "api_key_env")
_SECRET_SUFFIXES = ("_API_KEY", "_KEY", "_TOKEN", "_SECRET")


def _error(status: int, code: str, message: str, **extra: Any) -> HTTPException:
    return HTTPException(
        status_code=status, detail={"error": {"code": code, "message": message, **extra}}
    )


def text_of(value: Any) -> str:
    """A sample input or output as text (chat messages joined)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(text_of(getattr(m, "text", m)) for m in value)
    return str(value)


def target_text(target: Any) -> str:
    if isinstance(target, list):
        return target[0] if len(target) == 1 else " | ".join(str(t) for t in target)
    return str(target)


def reward_of(value: Any) -> float:
    """A score value as Inspect's metrics read it (``value_to_float``); a dict or list
    value gives the mean of its elements."""
    from inspect_ai.scorer import value_to_float

    to_float = value_to_float()
    if isinstance(value, Mapping):
        items = [to_float(v) for v in value.values()]
        return sum(items) / len(items) if items else 0.0
    if isinstance(value, list):
        floats = [to_float(v) for v in value]
        return sum(floats) / len(floats) if floats else 0.0
    return float(to_float(value))


class InspectTaskApp:
    """The task app's state: the loaded task, its samples and the eval runner."""

    def __init__(
        self, loaded: LoadedTask, *, model: str | None = None, log_dir: str | None = None
    ) -> None:
        self.loaded = loaded
        self.runner = EvalRunner(loaded, log_dir=log_dir)
        self.samples = self.runner.samples
        self.default_model = model or os.environ.get("INSPECT_EVAL_MODEL") or DEFAULT_MODEL
        self.splits = _splits(self.samples)
        for name, value in os.environ.items():
            if name.upper().endswith(_SECRET_SUFFIXES):
                register_secret(value)  # provider messages may quote a key: redact it

    @property
    def default_prompt(self) -> str:
        return self.loaded.prompt.text or DEFAULT_SYSTEM_PROMPT

    def describe_taskset(self) -> dict[str, Any]:
        task = self.loaded.task
        return {
            "id": f"inspect:{self.loaded.name}",
            "name": self.loaded.name,
            "size": len(self.samples),
            "seed_range": [0, len(self.samples)],
            "seed_rule": "seed N is the task's sample N, in the dataset's order",
            "sample_ids": [s.id for s in self.samples],
            "splits": {
                name: {"size": len(seeds), "seeds": seeds} for name, seeds in self.splits.items()
            },
            "default_split": "test" if "test" in self.splits else next(iter(self.splits)),
            "default_prompt": self.default_prompt,
            "inspect": {
                "task": self.loaded.spec,
                "dataset": getattr(task.dataset, "name", None),
                "scorers": _names(task.scorer or []),
                "solver": _names(_unrolled(task.solver)),
                "prompt": self.loaded.prompt.kind,
                "default_model": self.default_model,
            },
        }

    def provide_task_instances(self, seeds: list[int]) -> list[dict[str, Any]]:
        return [self._instance(seed) for seed in seeds]

    def _instance(self, seed: int) -> dict[str, Any]:
        sample = self._sample(seed)
        return {
            "task": {"id": f"inspect:{self.loaded.name}", "name": self.loaded.name},
            "environment": self.loaded.name,
            "dataset": {"id": self.loaded.spec, "split": self._split_of(seed), "index": seed},
            "task_metadata": {
                "seed": seed,
                "sample_id": sample.id,
                "input": text_of(sample.input),
                "target": target_text(sample.target),
                "choices": list(sample.choices) if sample.choices else None,
                "metadata": sample.metadata or {},
            },
        }

    def _split_of(self, seed: int) -> str:
        return next((name for name, seeds in self.splits.items() if seed in seeds), "all")

    def _sample(self, seed: int | None) -> Any:
        if seed is None:
            raise _error(422, "missing_seed", f"env.seed is required (0-{len(self.samples) - 1})")
        if not 0 <= seed < len(self.samples):
            raise _error(
                422,
                "seed_out_of_range",
                f"seed {seed} is outside the task set: seeds are 0-{len(self.samples) - 1}",
            )
        return self.samples[seed]

    def _policy(self, config: Mapping[str, Any]) -> tuple[str | None, str]:
        refused = [key for key in _REFUSED_KEYS if key in config]
        if refused:
            raise _error(
                422,
                "invalid_policy",
                f"policy.config.{refused[0]} is not accepted: provider keys and endpoints "
                "come from the task app's environment, never from a request",
                field=f"policy.config.{refused[0]}",
            )
        prompt = config.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise _error(
                422,
                "invalid_policy",
                "policy.config.prompt must be a string",
                field="policy.config.prompt",
            )
        model = config.get("model") or self.default_model
        if not isinstance(model, str) or "/" not in model:
            raise _error(
                422,
                "invalid_policy",
                "policy.config.model must be an Inspect model name (provider/model), "
                f"got {model!r}",
                field="policy.config.model",
            )
        return prompt, model

    async def rollout(self, request: RolloutRequest, http_request: Any) -> dict[str, Any]:
        sample = self._sample(request.env.seed)
        seed = int(request.env.seed or 0)
        prompt, model_name = self._policy(request.policy.config)
        base = {
            "seed": seed,
            "sample_id": sample.id,
            "model": model_name,
            "input": text_of(sample.input),
            "expected": target_text(sample.target),
        }
        try:
            from inspect_ai.model import get_model

            model = get_model(model_name)
        except Exception as exc:
            return self._failed(
                request, base, f"the model {model_name!r} cannot be used: {_message(exc)}"
            )
        try:
            result = await self.runner.run(seed, prompt, model)
        except RolloutFailure as exc:
            return self._failed(request, base, str(exc))
        if result.error is not None:
            return self._failed(request, base, _message(result.error))
        return self._scored(request, base, result)

    def _scored(self, request: RolloutRequest, base: dict[str, Any], result: Any) -> dict[str, Any]:
        scores = result.scores or {}
        if not scores:
            return self._failed(request, base, "the task's scorer gave no score")
        first = next(iter(scores.values()))
        reward = reward_of(first.value)
        output = result.output.completion if result.output is not None else ""
        explanation = first.explanation or ""
        feedback = (
            f"score {first.value!r} ({reward:g}); expected {base['expected']!r}; "
            f"the model answered {output[:300]!r}"
            + (
                f"; the scorer explains: {explanation[:500]}"
                if explanation and explanation != output
                else ""
            )
        )
        details = {
            **base,
            "predicted": output[:2000],
            "answer": first.answer,
            "explanation": explanation[:2000],
            "scores": {
                name: {"value": s.value, "reward": reward_of(s.value)} for name, s in scores.items()
            },
            "feedback": feedback,
        }
        return _response(request, reward, details, "success")

    def _failed(
        self, request: RolloutRequest, base: dict[str, Any], message: str
    ) -> dict[str, Any]:
        message = redact(message)
        details = {**base, "error": message, "feedback": f"the rollout failed: {message}"}
        return _response(request, 0.0, details, "runtime_error")


def _response(
    request: RolloutRequest, reward: float, details: dict[str, Any], status: str
) -> dict[str, Any]:
    return {
        "run_id": request.run_id,
        "metrics": {
            "outcome_score": reward,
            "mean_return": reward,
            "num_steps": 1,
            "details": details,
        },
        "trajectories": [
            {
                "steps": [
                    {
                        "observation": {"input": details.get("input")},
                        "action": {"output": details.get("predicted")},
                        "reward": reward,
                    }
                ]
            }
        ],
        "success_status": status,
        "trace_correlation_id": request.trace_correlation_id,
    }


def _splits(samples: list[Any] | Any) -> dict[str, list[int]]:
    names = [(s.metadata or {}).get("split") for s in samples]
    if names and all(isinstance(n, str) and n for n in names):
        splits: dict[str, list[int]] = {}
        for seed, name in enumerate(names):
            splits.setdefault(str(name), []).append(seed)
        return splits
    return {"all": list(range(len(samples)))}


def _unrolled(solver: Any) -> list[Any]:
    from inspect_ai.solver._chain import unroll

    return list(unroll(solver))


def _names(objects: list[Any]) -> list[str]:
    from inspect_ai._util.registry import registry_info

    names = []
    for obj in objects:
        try:
            names.append(str(registry_info(obj).name))
        except (ValueError, AttributeError):
            names.append(getattr(obj, "__name__", type(obj).__name__))
    return names


def build_config(
    target: str,
    *,
    task_args: Mapping[str, Any] | None = None,
    model: str | None = None,
    log_dir: str | None = None,
) -> TaskAppConfig:
    """The task app of the Inspect task ``target`` (``evals.py@my_task`` or ``package/name``).

    ``model``: the model when a request names none (default ``$INSPECT_EVAL_MODEL``, else
    the offline stand-in ``taskapp/standin``). ``log_dir``: keep Inspect's eval logs there
    (default: none written). ``task_args``: the task function's arguments (``-T``).
    """
    loaded = load_task(target, task_args)
    state = InspectTaskApp(
        loaded, model=model, log_dir=log_dir or os.environ.get("TASKAPP_INSPECT_LOG_DIR")
    )
    return TaskAppConfig(
        app_id=f"inspect-{loaded.name}",
        name=f"Inspect task {loaded.name}",
        description=f"The Inspect AI task {target!r} ({len(state.samples)} samples) as a task app.",
        base_task_info={
            "task": {"id": f"inspect:{loaded.name}", "name": loaded.name},
            "environment": loaded.name,
            "dataset": {"id": target, "size": len(state.samples), "splits": list(state.splits)},
            "task_metadata": {
                "default_prompt": state.default_prompt,
                "prompt_kind": loaded.prompt.kind,
            },
        },
        describe_taskset=state.describe_taskset,
        provide_task_instances=state.provide_task_instances,
        rollout=state.rollout,
        prompts={"prompt": state.default_prompt},  # GET /program: a GEPA-ready container
        app_state={"inspect_task_app": state},
        shutdown_hooks=(state.runner.aclose,),  # the live eval run ends with the app
    )
