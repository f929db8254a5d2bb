"""Helpers for the ``taskapp optimize`` tests.

* :class:`ToyTask`: a small keyword-classification task app (a real ``TaskAppConfig``)
  whose deterministic policy reads ``- label: words`` lines from
  ``policy.config["prompt"]``, so a better prompt scores better. It records every
  request it receives.
* :func:`fake_openai_app`: a **stand-in** for an OpenAI-compatible model server
  (``POST /v1/chat/completions``). There is no model here, so it answers with
  :class:`~taskapp.optimize.StandInReflectionLM` (or a scripted failure) and records what
  it was sent.
* :func:`taskapp`: run the installed console script from the repository (``child_env``
  drops the keys and proxies of this environment).
* :func:`toy_app_config`: the toy task for the command line (``module:attr`` target),
  configured through ``TOY_*`` environment variables.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import threading
from typing import Any

from fastapi import Request  # module level: FastAPI resolves the handler's annotation here

from taskapp import TaskAppConfig
from tests.helpers import REPO, run_child

TASKAPP = shutil.which("taskapp") or ""

LABELS = ("card_lost", "refund", "transfer", "balance")
KEYWORDS = {
    "card_lost": ["lost", "missing", "stolen", "disappeared", "misplaced", "wallet", "gone"],
    "refund": ["refund", "dispute", "return", "money", "reimburse", "cancelled", "charged"],
    "transfer": ["transfer", "payee", "swift", "wire", "sending", "recipient", "iban"],
    "balance": ["balance", "statement", "available", "funds", "remaining", "total", "left"],
}
FILLER = ["today", "urgent", "account", "bank", "customer", "yesterday", "phone", "help"]
SEED_PROMPT = (
    "Classify the customer message into one label.\n"
    "- card_lost: lost\n- refund: refund\n- transfer: transfer\n- balance: balance\n"
    "Answer with the label only."
)


def message_of(seed: int) -> tuple[str, str]:
    label = LABELS[seed % len(LABELS)]
    rng = random.Random(seed)
    words = rng.sample(KEYWORDS[label], 2) + rng.sample(FILLER, 3)
    rng.shuffle(words)
    return " ".join(words), label


def predict(prompt: str, message: str) -> str:
    words = set(message.split())
    best, best_count = "unknown", 0
    for line in prompt.splitlines():
        line = line.strip()
        if not line.startswith("- ") or ":" not in line:
            continue
        label, _, description = line[2:].partition(":")
        keywords = {w.strip(" ,.") for w in description.split()}
        count = len(words & keywords)
        if count > best_count:
            best, best_count = label.strip(), count
    return best


class ToyTask:
    """The toy task app; knobs: latency, failing seeds, score scale, /info prompts."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        fail_seeds: frozenset[int] = frozenset(),
        scale: float = 1.0,
        advertise: bool = True,
        size: int = 1000,
        echo_input: bool = True,
    ) -> None:
        self.latency = latency
        self.fail_seeds = fail_seeds
        self.scale = scale
        self.advertise = advertise
        self.size = size
        self.echo_input = echo_input
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def config(self) -> TaskAppConfig:
        metadata: dict[str, Any] = {"labels": list(LABELS)}
        if self.advertise:
            metadata["prompts"] = {"prompt": SEED_PROMPT}
        return TaskAppConfig(
            app_id="toy-keywords",
            name="Toy keywords",
            description="keyword classification for the optimize tests",
            describe_taskset=lambda: {"size": self.size},
            provide_task_instances=self.instances,
            rollout=self.rollout,
            base_task_info={"task": {"id": "toy", "name": "Toy"}, "task_metadata": metadata},
        )

    def instances(self, seeds: list[int]) -> list[dict[str, Any]]:
        return [
            {"task": {"id": "toy", "name": "Toy"}, "task_metadata": {"message": message_of(s)[0]}}
            for s in seeds
        ]

    async def rollout(self, request: Any, http_request: Any) -> dict[str, Any]:
        from fastapi import HTTPException

        with self._lock:
            self.requests.append(request.model_dump())
        if self.latency:
            await asyncio.sleep(self.latency)
        seed = int(request.env.seed)
        if seed >= self.size:
            raise HTTPException(
                422, detail={"error": {"code": "seed_out_of_range", "message": f"seed {seed}"}}
            )
        if seed in self.fail_seeds:
            raise RuntimeError(f"the toy policy crashed on seed {seed}")
        message, expected = message_of(seed)
        predicted = predict(str(request.policy.config.get("prompt", "")), message)
        correct = predicted == expected
        feedback = (
            "Correct."
            if correct
            else f"Incorrect: predicted '{predicted}' but the correct label is '{expected}'."
        )
        details: dict[str, Any] = {"predicted": predicted, "expected": expected}
        if self.echo_input:
            details["message"] = message
        details["feedback"] = feedback
        return {
            "run_id": request.run_id,
            "metrics": {"outcome_score": self.scale * float(correct), "details": details},
        }

    def prompts_seen(self) -> list[str]:
        with self._lock:
            return [str(r["policy"]["config"].get("prompt", "")) for r in self.requests]


#: The toy task's ``[prompt_learning]`` config (GEPA, the offline stand-in reflection model).
TOY_TOML = """
[prompt_learning]
{head}algorithm = "gepa"
{gepa}[prompt_learning.gepa.evaluation]
train_seeds = "0-39"
val_seeds = "100-{val_end}"
[prompt_learning.gepa.rollout]
budget = {budget}
max_concurrent = 8
minibatch_size = 3
[prompt_learning.gepa.mutation]
{mutation}
[prompt_learning.gepa.population]
patience_generations = {patience}
"""

STAND_IN_MUTATION = 'llm_provider = "stand-in"'


def toy_toml(
    budget: int = 150,
    val: int = 30,
    patience: int = 50,
    *,
    health_timeout: float | None = None,
    mutation: str = STAND_IN_MUTATION,
    head: str = "",
) -> str:
    """The one toy job config the job tests and benchmarks submit: ``budget`` rollouts,
    ``val`` validation seeds; ``health_timeout`` (seconds) when given; ``mutation`` the
    body of ``[prompt_learning.gepa.mutation]``; ``head`` lines of ``[prompt_learning]``."""
    gepa = ""
    if health_timeout is not None:
        gepa = f"[prompt_learning.gepa]\nhealth_timeout = {health_timeout}\n"
    return TOY_TOML.format(
        head=head, gepa=gepa, val_end=100 + val - 1, budget=budget, mutation=mutation,
        patience=patience,
    )  # fmt: skip


def toy_app_config() -> TaskAppConfig:
    """The toy task for CLI tests: ``tests.optimize._optimize_helpers:toy_app_config``."""
    fail = os.environ.get("TOY_FAIL_SEEDS", "")
    return ToyTask(
        latency=float(os.environ.get("TOY_LATENCY", "0") or 0),
        fail_seeds=frozenset(int(s) for s in fail.split(",") if s.strip()),
        advertise=os.environ.get("TOY_ADVERTISE", "1") == "1",
    ).config()


def fake_openai_app(
    *,
    key: str | None = None,
    fail_first: int = 0,
    fail_status: int = 429,
    always_fail: int | None = None,
    retry_after: str | None = "0",
    reply: str | None = None,
) -> Any:
    """**Stand-in** OpenAI-compatible server: answers chat completions with the stand-in LM.

    ``fail_first`` requests fail with ``fail_status`` (``Retry-After: retry_after``);
    ``always_fail`` makes every request fail with that status; ``key`` requires
    ``Authorization: Bearer <key>``; ``reply`` replaces the stand-in's answer. The app
    keeps ``app.state.requests`` (bodies and auth headers).
    """
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from taskapp.optimize import StandInReflectionLM

    app = FastAPI()
    app.state.requests = []
    lm = StandInReflectionLM()
    counter = {"n": 0}

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"healthy": True}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        app.state.requests.append(
            {"body": body, "authorization": request.headers.get("authorization")}
        )
        counter["n"] += 1
        if key is not None and request.headers.get("authorization") != f"Bearer {key}":
            return JSONResponse({"error": {"message": "invalid api key"}}, status_code=401)
        if always_fail is not None or counter["n"] <= fail_first:
            headers = {"retry-after": retry_after} if retry_after is not None else {}
            return JSONResponse(
                {"error": {"message": "try again later"}},
                status_code=always_fail or fail_status,
                headers=headers,
            )
        prompt = body["messages"][-1]["content"]
        content = reply if reply is not None else lm(prompt)
        return {
            "id": f"chatcmpl-{counter['n']}",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(content) // 4},
        }

    return app


def child_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ENVIRONMENT_API_KEY", "TOY_", "OPENAI_"))
        and not k.lower().endswith("_proxy")
    }
    env.update(extra)
    return env


def taskapp(*args: str, timeout: float = 45, **env: str) -> subprocess.CompletedProcess[str]:
    assert TASKAPP, "the taskapp console script is not installed (pip install -e .)"
    return run_child(
        [TASKAPP, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=child_env(**env),
        stdin=subprocess.DEVNULL,
        check=False,
    )
