"""Reflection models: an OpenAI-compatible client and a deterministic offline stand-in.

GEPA asks a *reflection model* to rewrite the prompt after reading rollouts and their
feedback. Anything callable as ``lm(prompt: str) -> str`` works; taskapp ships two:

* :class:`OpenAICompatLM`: ``POST {base_url}/chat/completions`` over httpx (OpenAI, vLLM,
  Ollama, LM Studio, Groq, ... or a local fake), with retries honouring ``Retry-After``
  and token/cost accounting. No litellm needed.
* :class:`StandInReflectionLM`: **a stand-in for a real model**, deterministic and
  offline, for tests and the bundled example. It adds words from misclassified inputs to
  the expected label's line of the prompt (``- label: words``), or appends the feedback as
  a hint. It behaves like a weak, greedy model; it is not one.

>>> lm = StandInReflectionLM()
>>> reply = lm("<instructions>\\n- refund: refund\\n</instructions>\\n<examples>\\n"
...            "# Example 1\\n## Inputs\\n### message\\nplease reverse this charge\\n\\n"
...            "## Generated Outputs\\nunknown\\n\\n## Expected\\nrefund\\n\\n"
...            "## Feedback\\nIncorrect\\n\\n</examples>")
>>> print(reply)
```
- refund: refund, reverse, charge
```
"""

from __future__ import annotations

import email.utils
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from taskapp.core.logs import get_logger
from taskapp.core.secrets import fingerprint, redact, register_secret
from taskapp.optimize.errors import ConfigurationError, ReflectionModelError

__all__ = [
    "REFLECTION_TEMPLATE",
    "OpenAICompatLM",
    "ReflectionRecorder",
    "StandInReflectionLM",
]

logger = get_logger("taskapp.optimize")

#: taskapp's reflection prompt. The current prompt and the examples sit between tags
#: rather than ``` fences, so a prompt that itself contains fences stays unambiguous.
REFLECTION_TEMPLATE = """I gave an assistant the following instructions for a task:
<instructions>
<curr_param>
</instructions>

Below are task inputs the assistant received, its responses, the expected answers when \
known, the score each response earned and feedback on how it could be better:
<examples>
<side_info>
</examples>

Write improved instructions for the assistant. Infer the task and the input format from \
the examples. Keep what already works. Put every niche or domain-specific fact the \
feedback reveals into the instructions: the assistant will not see these examples again. \
Keep every placeholder in curly braces (such as {name}) exactly as it is.

Reply with the new instructions only, inside one ``` block."""


def _text_of(prompt: str | list[dict[str, Any]]) -> str:
    """The text of a gepa reflection prompt (a string, or chat messages with images)."""
    if isinstance(prompt, str):
        return prompt
    parts: list[str] = []
    for message in prompt:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(
                str(part.get("text", ""))
                for part in content
                if isinstance(part, dict) and part.get("type") == "text"
            )
    return "\n".join(parts)


# -- the offline stand-in -----------------------------------------------------------------

_STOPWORDS = frozenset(
    re.findall(
        r"\S+",
        """a about above after again all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for
    from further had has have having he her here hers him his how i if in into is it its
    just me more most my no nor not now of off on once only or other our out over own same
    she should so some such than that the their them then there these they this those
    through to too under until up very was we were what when where which while who whom
    why will with would you your yours hi hello thanks thank please hey dear ok okay get
    got one can't don't i'm i've it's i'd i'll won't isn't like just still since way
    really also know want need make made tried trying yet ago today now back even""",
    )
)
_WORD = re.compile(r"[a-z][a-z']+")
_LABEL_IN_FEEDBACK = re.compile(
    r"(?:correct|expected|right|true)\s+(?:label|answer|intent|class|category)?\s*"
    r"(?:is|was|would be|should be|:)?\s*['\"`]?([A-Za-z0-9_\-./]+)",
    re.IGNORECASE,
)


def _sections(block: str, level: int) -> list[tuple[str, str]]:
    """Split markdown rendered by gepa into (heading, body) pairs at one heading level."""
    marker = "#" * level + " "
    out: list[tuple[str, str]] = []
    heading: str | None = None
    body: list[str] = []
    for line in block.splitlines():
        if line.startswith(marker) and not line.startswith(marker + "#"):
            if heading is not None:
                out.append((heading, "\n".join(body).strip()))
            heading, body = line[len(marker) :].strip(), []
        elif heading is not None:
            body.append(line)
    if heading is not None:
        out.append((heading, "\n".join(body).strip()))
    return out


class StandInReflectionLM:
    """A deterministic, offline **stand-in** for a reflection model.

    It reads the prompt gepa renders (taskapp's template or gepa's default), and for each
    example that did not score ``perfect_score``:

    * when the expected answer is known (an ``Expected`` record field, or feedback such as
      "the correct label is 'refund'"), it appends up to ``words_per_example`` new words
      of the example's input to that label's line (``- refund: ...``), adding the line
      when missing;
    * when the expected answer is free-form (a number like ``42``, a phrase: not a label
      of the prompt nor a single identifier), it appends a worked example
      ``Example: <input> -> <expected>``;
    * otherwise it appends the first sentence of the feedback as a ``Hint:`` line.

    So it needs the app to say what was expected: ``metrics.details.expected`` (or
    ``answer``/``label``), or feedback like "the correct label is 'refund'".

    Lines are never removed, placeholders are kept, the prompt is capped at ``max_chars``.
    The reply is the new prompt inside a ``` fence, like a real model's.
    """

    def __init__(
        self, *, words_per_example: int = 2, max_chars: int = 8000, perfect_score: float = 1.0
    ) -> None:
        self.words_per_example = words_per_example
        self.max_chars = max_chars
        self.perfect_score = perfect_score
        self.calls = 0

    def __call__(self, prompt: str | list[dict[str, Any]]) -> str:
        self.calls += 1
        text = _text_of(prompt)
        current, examples = self._split(text)
        lines = current.splitlines()
        for fields in examples:
            if self._is_perfect(fields):
                continue
            expected = self._expected(fields)
            if expected and _is_label(expected, lines):
                self._teach(lines, expected, self._input_text(fields))
            elif expected:  # a free-form answer (a number, a phrase): a worked example
                self._example(lines, fields, expected)
            else:
                self._hint(lines, fields.get("feedback", ""))
        new = "\n".join(lines)
        if len(new) > self.max_chars:
            new = current
        return f"```\n{new}\n```"

    # -- parsing -----------------------------------------------------------------------

    @staticmethod
    def _split(text: str) -> tuple[str, list[dict[str, str]]]:
        start = text.find("<instructions>\n")
        end = text.find("\n</instructions>")
        if start != -1 and end > start:
            current = text[start + len("<instructions>\n") : end]
            rest = text[end:]
        else:  # gepa's default template: the instruction is the first fenced block
            first = text.find("```")
            second = text.find("```", first + 3) if first != -1 else -1
            if first == -1 or second == -1:
                return text.strip(), []
            current = text[first + 3 : second].strip("\n")
            rest = text[second + 3 :]
        examples = [
            {heading.lower(): body for heading, body in _sections(body, 2)}
            for _, body in _sections(rest, 1)
        ]
        return current, examples

    def _is_perfect(self, fields: Mapping[str, str]) -> bool:
        score = fields.get("score")
        if score is not None:
            try:
                return float(score.split()[0]) >= self.perfect_score
            except (ValueError, IndexError):
                pass
        feedback = fields.get("feedback", "").strip().lower()
        return feedback.startswith("correct")

    @staticmethod
    def _expected(fields: Mapping[str, str]) -> str | None:
        for key in ("expected", "expected output", "expected answer", "label", "answer"):
            value = fields.get(key, "").strip()
            if value and "\n" not in value:
                return value.strip("'\"`")
        match = _LABEL_IN_FEEDBACK.search(fields.get("feedback", ""))
        return match.group(1).rstrip(".") if match else None

    @staticmethod
    def _input_text(fields: Mapping[str, str]) -> str:
        raw = fields.get("inputs", "")
        return "\n".join(line for line in raw.splitlines() if not line.startswith("#"))

    # -- editing -----------------------------------------------------------------------

    def _teach(self, lines: list[str], label: str, text: str) -> None:
        pattern = re.compile(
            r"^(\s*(?:[-*•]\s*)?)" + re.escape(label) + r"(\s*[:=]\s*|\s+[-–—]\s+)(.*)$",
            re.IGNORECASE,
        )
        index = next((i for i, line in enumerate(lines) if pattern.match(line)), None)
        prompt_words = set(_WORD.findall("\n".join(lines).lower()))
        line_words = set(_WORD.findall(lines[index].lower())) if index is not None else set()
        fresh: list[str] = []
        for word in _WORD.findall(text.lower()):
            word = word.strip("'")
            if len(word) < 3 or word in _STOPWORDS or word in line_words or word in fresh:
                continue
            fresh.append(word)
        # Prefer words the prompt does not use yet: they separate this label from others.
        fresh.sort(key=lambda word: word in prompt_words)
        chosen = fresh[: self.words_per_example]
        if not chosen:
            return
        if index is None:
            lines.append(f"- {label}: {', '.join(chosen)}")
            return
        line = lines[index].rstrip()
        separator = ", " if not line.endswith((":", "=")) else " "
        lines[index] = line + separator + ", ".join(chosen)

    def _example(self, lines: list[str], fields: Mapping[str, str], expected: str) -> None:
        raw = fields.get("inputs", "")
        # The record's input without its seed: the "input" (or "question") sub-heading.
        part = _INPUT_PART.search(raw)
        question = " ".join((part.group(1) if part else self._input_text(fields)).split())[:200]
        if not question:
            return
        example = f"Example: {question} -> {expected}"
        if example not in lines:
            lines.append(example)

    @staticmethod
    def _hint(lines: list[str], feedback: str) -> None:
        sentence = re.split(r"(?<=[.!?])\s", feedback.strip(), maxsplit=1)[0].strip()
        if not sentence:
            return
        hint = f"Hint: {sentence}"
        if hint not in lines:
            lines.append(hint)


_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_INPUT_PART = re.compile(
    r"^#+ *(?:input|inputs|question|message|text|query) *\n(.*?)(?=^#|\Z)", re.M | re.S | re.I
)


def _is_label(expected: str, lines: Sequence[str]) -> bool:
    """A class label (``refund``, ``card_lost``): a single identifier, or a word the prompt
    already lists as ``- label: ...``. Numbers and phrases are free-form answers."""
    if _IDENTIFIER.fullmatch(expected):
        return True
    listed = re.compile(r"^\s*(?:[-*•]\s*)?" + re.escape(expected) + r"\s*[:=]", re.IGNORECASE)
    return any(listed.match(line) for line in lines)


# -- an OpenAI-compatible client ----------------------------------------------------------

_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class OpenAICompatLM:
    """A minimal OpenAI-compatible ``/chat/completions`` client, usable as a reflection LM.

    ``base_url`` ends in ``/v1`` (default: ``$OPENAI_BASE_URL``, else OpenAI's). The key
    comes from ``api_key`` or the environment variable ``api_key_env`` (default
    ``OPENAI_API_KEY``); without one no ``Authorization`` header is sent (local servers).
    Failed calls are retried ``max_retries`` times on 429/5xx/transport errors, waiting
    what ``Retry-After`` says (capped at ``max_retry_wait``), else an exponential backoff.
    ``prompt_tokens``/``completion_tokens`` add up the ``usage`` of every reply;
    ``total_cost`` is computed when prices per million tokens are given.

    >>> lm = OpenAICompatLM("gpt-4.1-mini", base_url="http://127.0.0.1:8000/v1")  # doctest: +SKIP
    >>> lm("Rewrite this prompt: ...")                                            # doctest: +SKIP
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        temperature: float | None = 0.7,
        max_tokens: int | None = 2048,
        timeout: float = 120.0,
        max_retries: int = 4,
        max_retry_wait: float = 60.0,
        price_per_mtok_input: float | None = None,
        price_per_mtok_output: float | None = None,
        extra_body: Mapping[str, Any] | None = None,
        transport: Any = None,
    ) -> None:
        if not isinstance(model, str) or not model.strip():
            raise ConfigurationError("the reflection model name must be a non-empty string")
        url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        if not url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"the reflection base URL must start with http:// or https://, got {url!r}"
            )
        if max_retries < 0 or not math.isfinite(timeout) or timeout <= 0:
            raise ConfigurationError("max_retries must be >= 0 and timeout > 0")
        if temperature is not None and not (math.isfinite(temperature) and temperature >= 0):
            raise ConfigurationError(
                f"the reflection temperature must be a number >= 0, got {temperature}"
            )
        if max_tokens is not None and max_tokens < 1:
            raise ConfigurationError(f"the reflection max_tokens must be >= 1, got {max_tokens}")
        self.model = model
        self.base_url = url.rstrip("/")
        self.api_key_env = api_key_env
        key = api_key if api_key is not None else os.environ.get(api_key_env) or None
        register_secret(key)
        self._api_key = key
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.price_per_mtok_input = price_per_mtok_input
        self.price_per_mtok_output = price_per_mtok_output
        self.extra_body = dict(extra_body or {})
        self._transport = transport
        self._client: Any = None
        self._lock = threading.Lock()
        self.calls = 0
        self.retries = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def __repr__(self) -> str:
        key = fingerprint(self._api_key) if self._api_key else "no key"
        return f"<OpenAICompatLM model={self.model!r} base_url={self.base_url!r} key={key}>"

    @property
    def total_cost(self) -> float:
        """USD spent so far (0.0 without prices)."""
        cost = 0.0
        if self.price_per_mtok_input:
            cost += self.prompt_tokens * self.price_per_mtok_input / 1e6
        if self.price_per_mtok_output:
            cost += self.completion_tokens * self.price_per_mtok_output / 1e6
        return cost

    def usage(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "calls": self.calls,
            "retries": self.retries,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.total_cost, 6),
        }

    def _http(self) -> Any:
        with self._lock:
            if self._client is None:
                from taskapp.core.transport import http_client

                headers = {"Content-Type": "application/json"}
                if self._api_key:
                    headers["Authorization"] = f"Bearer {self._api_key}"
                self._client = http_client(
                    timeout=self.timeout, headers=headers, transport=self._transport
                )
            return self._client

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __call__(self, prompt: str | list[dict[str, Any]]) -> str:
        messages = (
            [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        )
        body: dict[str, Any] = {"model": self.model, "messages": messages, **self.extra_body}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        url = f"{self.base_url}/chat/completions"
        client = self._http()
        attempt = 0
        while True:
            attempt += 1
            wait: float | None = None
            try:
                response = client.post(url, json=body)
            except Exception as exc:  # transport: refused, reset, timeout, DNS, TLS
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    return self._parse(response, url)
                problem = f"HTTP {response.status_code}: {_error_message(response)}"
                if response.status_code in (401, 403):
                    key = f"key {fingerprint(self._api_key)}" if self._api_key else "no key sent"
                    raise ReflectionModelError(
                        f"the reflection model at {url} rejected the request ({problem}; {key}). "
                        f"Set ${self.api_key_env} to a valid key"
                    )
                if response.status_code not in _RETRY_STATUS:
                    hint = (
                        " (check the base URL: it usually ends in /v1, and the model name)"
                        if response.status_code == 404
                        else ""
                    )
                    raise ReflectionModelError(
                        redact(f"the reflection model at {url} failed: {problem}{hint}")
                    )
                wait = _retry_after(response)
            if attempt > self.max_retries:
                raise ReflectionModelError(
                    redact(
                        f"the reflection model at {url} failed {attempt} time(s); last: {problem}"
                    )
                )
            delay = wait if wait is not None else min(0.25 * 2 ** (attempt - 1), 8.0)
            delay = max(0.0, min(delay, self.max_retry_wait))
            with self._lock:
                self.retries += 1
            logger.info(
                "reflection model: %s; retry %d/%d in %.2fs",
                redact(problem),
                attempt,
                self.max_retries,
                delay,
            )
            time.sleep(delay)

    def _parse(self, response: Any, url: str) -> str:
        try:
            payload = response.json()
            content = payload["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ReflectionModelError(
                f"the reflection model at {url} answered 200 without "
                "choices[0].message.content; is it OpenAI-compatible?"
            ) from None
        usage = payload.get("usage") if isinstance(payload, dict) else None
        with self._lock:
            self.calls += 1
            if isinstance(usage, dict):
                self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
                self.completion_tokens += int(usage.get("completion_tokens") or 0)
        if isinstance(content, list):  # content parts
            content = "".join(
                str(part.get("text", "")) for part in content if isinstance(part, dict)
            )
        return str(content or "")


def _error_message(response: Any) -> str:
    try:
        payload = response.json()
    except ValueError:
        return str(response.text[:200].strip() or response.reason_phrase)
    if isinstance(payload, dict):
        error = payload.get("error", payload.get("detail", payload))
        if isinstance(error, dict):
            return str(error.get("message") or error)[:300]
        return str(error)[:300]
    return str(payload)[:300]


def _retry_after(response: Any) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


# -- accounting wrapper -------------------------------------------------------------------


class ReflectionRecorder:
    """Wraps any reflection LM: counts calls and failures, remembers the last error.

    gepa swallows reflection errors (the proposal is dropped and the iteration's rollouts
    are wasted); the optimizer reads these counters to stop a run whose model fails every
    time. Exposes ``total_cost`` so gepa's cost stopper sees the wrapped model's spend.
    """

    def __init__(self, lm: Callable[[Any], Any]) -> None:
        if not callable(lm):
            raise ConfigurationError(
                f"reflection_lm must be callable (prompt -> text), got {type(lm).__name__}"
            )
        self.lm = lm
        self.calls = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self.fatal: ReflectionModelError | None = None
        self._lock = threading.Lock()

    @property
    def total_cost(self) -> float:
        return float(getattr(self.lm, "total_cost", 0.0) or 0.0)

    def __call__(self, prompt: str | list[dict[str, Any]]) -> str:
        with self._lock:
            self.calls += 1
        try:
            reply = self.lm(prompt)
        except Exception as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            if isinstance(exc, ReflectionModelError) and "rejected" in str(exc):
                self.fatal = exc
            raise
        if not isinstance(reply, str) or not reply.strip():
            self._failed("the model returned an empty reply")
            return ""
        with self._lock:
            self.consecutive_failures = 0
        return reply

    def _failed(self, problem: str) -> None:
        problem = redact(problem)
        with self._lock:
            self.failures += 1
            self.consecutive_failures += 1
            self.last_error = problem
        logger.warning("reflection model call failed: %s", problem)

    def usage(self) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "calls": self.calls,
            "failures": self.failures,
            "last_error": self.last_error,
        }
        inner = getattr(self.lm, "usage", None)
        if callable(inner):
            details = inner()
            if isinstance(details, dict):
                usage.update({k: v for k, v in details.items() if k not in ("calls",)})
        return usage


def describe_lm(lm: Any) -> dict[str, Any]:
    """A JSON-able description of a reflection LM (no key material)."""
    if isinstance(lm, ReflectionRecorder):
        lm = lm.lm
    if isinstance(lm, OpenAICompatLM):
        return {"kind": "openai-compatible", "model": lm.model, "base_url": lm.base_url}
    if isinstance(lm, StandInReflectionLM):
        return {"kind": "stand-in"}
    return {"kind": "callable", "type": type(lm).__qualname__}
