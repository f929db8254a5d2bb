"""A complete task app in one file: classify customer-support messages into intents.

Copy this file to start your own task app. Run it with::

    taskapp eval examples/support_intents_app.py             # evaluate the test split
    taskapp serve examples/support_intents_app.py            # serve it until Ctrl-C

It is the same task as the bundled ``support-intents`` example (and scores the same), in
one self-contained file. The parts to change for your own task are marked ``YOUR TASK``.

How a task app works (see docs/writing_task_apps.md):

* ``build_config()`` returns a ``TaskAppConfig``; taskapp turns it into an HTTP app with
  ``/health``, ``/info``, ``/task_info`` and ``/rollout``, protected by an API key.
* ``describe_taskset()`` tells clients what seeds exist (splits and sizes).
* ``provide_task_instances(seeds)`` describes individual seeds.
* ``rollout(request, http_request)`` runs the policy described by ``request.policy.config``
  on the example ``request.env.seed`` and returns a score in ``metrics.outcome_score``.
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.parse
from importlib import resources
from typing import Any

import httpx
from fastapi import HTTPException

from taskapp import RolloutRequest, TaskAppConfig

# -- YOUR TASK: the data ----------------------------------------------------------------
# A list of {"id", "text", "label"} rows. Seeds index it: seed n is row n. Here the rows
# come from the file bundled with taskapp; read your own JSONL file instead.

_DATA = resources.files("taskapp.examples.support_intents").joinpath("data.jsonl")
EXAMPLES: list[dict[str, str]] = [
    json.loads(line) for line in _DATA.read_text(encoding="utf-8").splitlines() if line.strip()
]
LABELS = (
    "refund",
    "cancel_subscription",
    "shipping_status",
    "password_reset",
    "billing_issue",
    "product_question",
    "complaint",
    "account_update",
    "technical_issue",
    "order_change",
)


def split_of(seed: int) -> str:
    """A fixed rule, so the split never changes: every fourth seed is test."""
    return "test" if seed % 4 == 3 else "train"


# -- YOUR TASK: the default policy prompt -----------------------------------------------

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

# -- the offline baseline policy ---------------------------------------------------------
# Without an inference_url the policy is this keyword matcher: it reads the
# "- intent: description" lines of the prompt and picks the intent sharing the most words
# with the message. It needs no network, and a better prompt makes it score better.

_STOPWORDS = frozenset(
    re.findall(
        r"\w+",
        """a about after again all am an and any are as at be been before being but by can
        could did do does doing for from get got had has have having he her here him his how
        i if in into is it its just me more my myself no nor not now of off on once only or
        other our out over own please same she should so some still such than that the their
        them then there these they this those through to too under until up very was we were
        what when where which while who why will with would you your yours hi hello thanks
        thank""",
    )
)
_INTENT_LINE = re.compile(
    r"^\s*(?:[-*\u2022]|\d+[.)])?\s*`?([A-Za-z][A-Za-z0-9_]*)`?\s*(?::|-|\u2013|\u2014)\s*(.*)$"
)
_FALLBACK_HINT = re.compile(r"\b(?:otherwise|if (?:none|no |nothing|unsure|in doubt))", re.I)


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and not word.endswith("ss") and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            if suffix in ("ing", "ed") and len(word) > 3 and word[-1] == word[-2]:
                word = word[:-1]
            break
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]
    return word


def _words(text: str) -> dict[str, str]:
    text = re.sub(r"n't\b|'(?:s|re|m|ll|d|ve)\b", " ", text.lower().replace("\u2019", "'"))
    found: dict[str, str] = {}
    for word in re.findall(r"[a-z0-9]+", text):
        if len(word) > 1 and word not in _STOPWORDS:
            found.setdefault(_stem(word), word)
    return found


def answer_to_label(answer: str) -> str | None:
    """Map free text ("Refund.", "cancel subscription") to an intent name, or None."""
    text = re.sub(r"[^a-z0-9_]", " ", re.sub(r"[\s\-]+", "_", answer.strip().lower()))
    if text.strip() in LABELS:
        return text.strip()
    hits = [
        (match.start(), label)
        for label in LABELS
        if (match := re.search(rf"(?<![a-z0-9]){re.escape(label)}(?![a-z0-9])", text))
    ]
    return min(hits)[1] if hits else None


def offline_policy(prompt: str, message: str) -> tuple[str | None, str]:
    """(predicted intent, why) from the prompt's intent descriptions."""
    intents: dict[str, set[str]] = {}
    fallback = None
    for line in prompt.splitlines():
        match = _INTENT_LINE.match(line)
        if match and match.group(1).lower() in LABELS:
            name = match.group(1).lower()
            intents.setdefault(name, set()).update(_words(name.replace("_", " ")))
            intents[name].update(_words(match.group(2)))
        elif fallback is None and (hint := _FALLBACK_HINT.search(line)):
            fallback = answer_to_label(line[hint.start() :])
    if not intents:
        return None, "the prompt lists no intent as a '- name: description' line"
    words = _words(message)
    best: str | None = None
    best_hits: list[str] = []
    for name, stems in intents.items():
        hits = [original for stem, original in words.items() if stem in stems]
        if len(hits) > len(best_hits):
            best, best_hits = name, hits
    if best is None:
        best = fallback or next(iter(intents))
        return best, f"no intent description shares a word with the message; fell back to {best}"
    return best, f"{best} matched ({', '.join(best_hits)})"


# -- the model policy: any OpenAI-compatible chat-completions endpoint -------------------


def _config_error(field: str, message: str, code: str = "invalid_policy") -> HTTPException:
    """A wrong policy.config is the caller's mistake: 422 naming the field."""
    error = {"code": code, "message": message, "field": f"policy.config.{field}"}
    return HTTPException(422, detail={"error": error})


def _finite(config: dict[str, Any], name: str, default: float) -> float:
    value = config.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _config_error(name, f"policy.config.{name} must be a finite number")
    return float(value)


async def chat_policy(config: dict[str, Any], prompt: str, message: str) -> str:
    """The model's answer. Raises RuntimeError with a readable message on any failure."""
    url = str(config["inference_url"]).rstrip("/")
    try:
        if not url.startswith(("http://", "https://")) or not httpx.URL(url).host:
            raise ValueError("not an http(s) URL with a host")
        urllib.parse.urlsplit(url).port  # noqa: B018 (raises ValueError: port out of range)
    except (ValueError, httpx.InvalidURL) as exc:
        raise _config_error("inference_url", f"policy.config.inference_url: {exc}") from None
    if not url.endswith("/chat/completions"):
        url += "/chat/completions"
    model = config.get("model")
    if not model:
        raise RuntimeError("policy.config.model is required with inference_url")
    headers = {}
    if config.get("api_key_env"):  # the NAME of an env var; the key never travels in requests
        # A request must never choose which secret leaves the machine: only the names you,
        # the owner, list in $SUPPORT_INTENTS_API_KEY_ENVS (comma-separated) are allowed.
        allowed = set(re.split(r"[\s,]+", os.environ.get("SUPPORT_INTENTS_API_KEY_ENVS", "")))
        if config["api_key_env"] not in allowed - {""}:
            raise _config_error(
                "api_key_env",
                "policy.config.api_key_env names an environment variable the task app's "
                "owner has not allowed (set SUPPORT_INTENTS_API_KEY_ENVS=NAME to allow one)",
                code="api_key_env_not_allowed",
            )
        key = os.environ.get(config["api_key_env"])
        if not key:
            raise RuntimeError(f"environment variable {config['api_key_env']} is not set")
        headers["Authorization"] = f"Bearer {key}"
    if "{message}" in prompt:
        messages = [{"role": "user", "content": prompt.replace("{message}", message)}]
    else:
        messages = [{"role": "system", "content": prompt}, {"role": "user", "content": message}]
    body = {"model": model, "messages": messages, "temperature": 0, "max_tokens": 16}
    timeout = _finite(config, "timeout", 30.0)
    if timeout <= 0:
        raise _config_error("timeout", "policy.config.timeout must be a positive number")
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.post(url, json=body, headers=headers)
    except httpx.TimeoutException:
        raise RuntimeError(f"the inference URL {url} did not answer within {timeout:g}s") from None
    except httpx.HTTPError as exc:
        raise RuntimeError(f"could not reach the inference URL {url} ({exc})") from None
    if response.status_code != 200:
        raise RuntimeError(f"the inference URL {url} answered HTTP {response.status_code}")
    try:
        return str(response.json()["choices"][0]["message"]["content"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise RuntimeError(f"the inference URL {url} did not return a chat completion") from None


# -- the task app ------------------------------------------------------------------------


def _example(seed: int | None) -> dict[str, str]:
    if seed is None or not 0 <= seed < len(EXAMPLES):
        raise HTTPException(
            422,
            detail={
                "error": {
                    "code": "seed_out_of_range",
                    "message": f"seed {seed} is outside the task set: seeds are "
                    f"0-{len(EXAMPLES) - 1}",
                }
            },
        )
    return EXAMPLES[seed]


async def describe_taskset() -> dict[str, Any]:
    splits: dict[str, list[int]] = {"train": [], "test": []}
    for seed in range(len(EXAMPLES)):
        splits[split_of(seed)].append(seed)
    return {
        "id": "support-intents",
        "size": len(EXAMPLES),
        "splits": {name: {"size": len(seeds), "seeds": seeds} for name, seeds in splits.items()},
        "labels": list(LABELS),
        "default_split": "test",
    }


async def provide_task_instances(seeds: list[int]) -> list[dict[str, Any]]:
    return [
        {
            "task": {"id": "support-intents", "name": "Customer-support intents"},
            "dataset": {"id": "support-intents", "split": split_of(seed), "index": seed},
            "task_metadata": {"message": _example(seed)["text"], "split": split_of(seed)},
        }
        for seed in seeds
    ]


async def rollout(request: RolloutRequest, http_request: Any) -> dict[str, Any]:
    seed = request.env.seed
    example = _example(seed)
    config = request.policy.config
    prompt = config.get("prompt", DEFAULT_PROMPT)
    expected = example["label"]
    status = "success"
    if config.get("inference_url"):
        try:
            answer = await chat_policy(config, prompt, example["text"])
        except RuntimeError as exc:
            predicted, why, status = None, f"the policy failed: {exc}", "runtime_error"
        else:
            predicted = answer_to_label(answer)
            why = f"the model answered {answer.strip()[:80]!r}"
    else:
        predicted, why = offline_policy(prompt, example["text"])
    score = 1.0 if predicted == expected else 0.0
    return {
        "run_id": request.run_id,
        "metrics": {
            "outcome_score": score,
            "num_steps": 1,
            "details": {
                "message": example["text"],
                "predicted": predicted,
                "expected": expected,
                # what a prompt optimizer reads to learn from the mistake
                "feedback": "correct" if score == 1.0 else f"{why}; expected {expected}",
            },
        },
        "success_status": status,
    }


def build_config() -> TaskAppConfig:
    return TaskAppConfig(
        app_id="support-intents",
        name="Customer-support intents (standalone example)",
        description="Classify a customer-support message into one of 10 intents.",
        # /info advertises the default prompt, so `taskapp optimize` (and a
        # [prompt_learning] job without initial_prompt) can start from it
        base_task_info={
            "task": {"id": "support-intents", "name": "Customer-support intents"},
            "task_metadata": {"labels": list(LABELS), "default_prompt": DEFAULT_PROMPT},
        },
        describe_taskset=describe_taskset,
        provide_task_instances=provide_task_instances,
        rollout=rollout,
    )
