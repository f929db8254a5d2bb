"""The two policies of the support-intents task: an offline baseline and a chat model.

**Offline baseline** (no ``inference_url`` in ``policy.config``): reads the intents the
prompt lists, one per line as ``- intent_name: description``, and picks the intent whose
name and description share the most words with the message (ties go to the intent listed
first). It knows nothing the prompt does not tell it, so a prompt that describes the
intents better scores better, deterministically and without any network.

**Chat model** (``inference_url`` set): one request to an OpenAI-compatible
``POST {inference_url}/chat/completions`` with the prompt and the message; the answer is
mapped back to an intent name. Every failure (refused connection, timeout, HTTP error,
unexpected answer) raises :class:`PolicyError` with a message that names the URL and
never contains the API key.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Collection, Sequence
from typing import Any

import httpx

from taskapp.core.secrets import redact, register_secret

__all__ = [
    "ChatPolicy",
    "OfflinePrediction",
    "PolicyConfigError",
    "PolicyError",
    "normalize_answer",
    "offline_predict",
    "parse_intents",
]

_WORD = re.compile(r"[a-z0-9]+")
_INTENT_LINE = re.compile(
    r"^\s*(?:[-*\u2022]|\d+[.)])?\s*`?([A-Za-z][A-Za-z0-9_]*)`?\s*(?::|-|\u2013|\u2014)\s*(.*)$"
)
_CONTRACTION = re.compile(r"n't\b|'(?:s|re|m|ll|d|ve)\b")
_FALLBACK_HINT = re.compile(r"\b(?:otherwise|if (?:none|no |nothing|unsure|in doubt))", re.I)
_STOPWORDS = frozenset(
    _WORD.findall(
        """a about after again all am an and any are as at be been before being but by can
    could did do does doing for from get got had has have having he her here him his how i
    if in into is it its just me more my myself no nor not now of off on once only or other
    our out over own please same she should so some still such than that the their them then
    there these they this those through to too under until up very was we were what when
    where which while who why will with would you your yours hi hello thanks thank"""
    )
)


class PolicyError(Exception):
    """The policy could not produce an answer; the message says why (no secrets)."""


class PolicyConfigError(PolicyError):
    """``policy.config`` is wrong: the caller's mistake, answered 422 naming ``field``."""

    def __init__(self, field: str, message: str, *, code: str = "invalid_policy") -> None:
        super().__init__(message)
        self.field = field
        self.code = code


def _stem(word: str) -> str:
    """A tiny suffix stripper: 'charged', 'charges', 'charging' and 'charge' -> 'charg'."""
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and not word.endswith("ss") and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            if suffix in ("ing", "ed") and len(word) > 3 and word[-1] == word[-2]:
                word = word[:-1]  # shipped -> shipp -> ship
            break
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]
    return word


def _words(text: str) -> dict[str, str]:
    """Content words of ``text`` as {stem: first original word}."""
    found: dict[str, str] = {}
    text = _CONTRACTION.sub(" ", text.lower().replace("\u2019", "'"))
    for word in _WORD.findall(text):
        if len(word) > 1 and word not in _STOPWORDS:
            found.setdefault(_stem(word), word)
    return found


@dataclasses.dataclass(frozen=True)
class ParsedPrompt:
    """What the offline baseline understands of a prompt."""

    #: (intent, keyword stems) in the order the prompt lists them
    intents: tuple[tuple[str, frozenset[str]], ...]
    #: the intent to answer when no keyword matches (default: the first one listed)
    fallback: str | None


#: The parse cache holds at most this many characters of prompts in total; a longer prompt
#: is parsed every time (bounded by bytes, not by count: 8 distinct 5 MB prompts once stayed).
CACHE_BUDGET_CHARS = 4_000_000
_cache: OrderedDict[tuple[str, tuple[str, ...]], ParsedPrompt] = OrderedDict()
_cache_chars = 0
_cache_lock = threading.Lock()


def parse_intents(prompt: str, labels: tuple[str, ...]) -> ParsedPrompt:
    """:func:`_parse_intents` through a small LRU cache bounded by total prompt size."""
    global _cache_chars
    key = (prompt, labels)
    with _cache_lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
            return found
    parsed = _parse_intents(prompt, labels)
    size = len(prompt)
    if size > CACHE_BUDGET_CHARS // 4:
        return parsed  # too big to be worth keeping
    with _cache_lock:
        if key not in _cache:
            _cache[key] = parsed
            _cache_chars += size
        while _cache_chars > CACHE_BUDGET_CHARS:
            (old_prompt, _), _ = _cache.popitem(last=False)
            _cache_chars -= len(old_prompt)
    return parsed


def cache_chars() -> int:
    """Characters of prompts the parse cache holds now (for tests and monitoring)."""
    with _cache_lock:
        return _cache_chars


def _parse_intents(prompt: str, labels: tuple[str, ...]) -> ParsedPrompt:
    """The intents ``prompt`` lists, in order, each with its keyword stems.

    A line ``- refund: the customer wants money back`` gives ``refund`` the stems of
    "refund", "customer", "want", "money", "back". Only names in ``labels`` count, so
    lines such as ``Message: ...`` are ignored; a name listed twice merges its keywords.
    A line such as ``If none fits, answer product_question.`` sets the fallback intent.
    """
    keywords: dict[str, set[str]] = {}
    fallback: str | None = None
    for line in prompt.splitlines():
        match = _INTENT_LINE.match(line)
        if match is not None and match.group(1).lower() in labels:
            name = match.group(1).lower()
            stems = keywords.setdefault(name, set())
            stems.update(_words(name.replace("_", " ")))
            stems.update(_words(match.group(2)))
            continue
        hint = _FALLBACK_HINT.search(line) if fallback is None else None
        if hint is not None:
            fallback = normalize_answer(line[hint.start() :], labels)
    intents = tuple((name, frozenset(stems)) for name, stems in keywords.items())
    if fallback is None and intents:
        fallback = intents[0][0]
    return ParsedPrompt(intents, fallback)


@dataclasses.dataclass(frozen=True)
class OfflinePrediction:
    label: str | None
    #: intent -> the message words that matched it (only intents with at least one match)
    matches: dict[str, list[str]]
    listed: tuple[str, ...]
    fell_back: bool


def offline_predict(prompt: str, message: str, labels: Sequence[str]) -> OfflinePrediction:
    """The offline baseline: the listed intent sharing the most words with ``message``."""
    parsed = parse_intents(prompt, tuple(labels))
    words = _words(message)
    best: str | None = None
    best_count = 0
    matches: dict[str, list[str]] = {}
    for name, stems in parsed.intents:
        hit = [original for stem, original in words.items() if stem in stems]
        if hit:
            matches[name] = hit
        if len(hit) > best_count:
            best, best_count = name, len(hit)
    listed = tuple(name for name, _ in parsed.intents)
    if best is None:
        return OfflinePrediction(parsed.fallback, matches, listed, fell_back=True)
    return OfflinePrediction(best, matches, listed, fell_back=False)


def normalize_answer(answer: str, labels: Sequence[str]) -> str | None:
    """Map a model's free-text answer to an intent name, or None.

    ``"Refund."``, ``"intent: refund"`` and ``"cancel subscription"`` all map; when
    several names appear, the first one in the answer wins.
    """
    text = re.sub(r"[\s\-]+", "_", answer.strip().lower())
    text = re.sub(r"[^a-z0-9_]", " ", text)
    if text.strip() in labels:
        return text.strip()
    positions = []
    for label in labels:
        match = re.search(rf"(?<![a-z0-9]){re.escape(label)}(?![a-z0-9])", text)
        if match:
            positions.append((match.start(), label))
    return min(positions)[1] if positions else None


@dataclasses.dataclass(frozen=True)
class ChatSettings:
    """What ``policy.config`` says about the model (validated)."""

    url: str
    model: str
    api_key: str | None
    api_key_env: str | None
    temperature: float
    max_tokens: int
    timeout: float

    @classmethod
    def from_config(
        cls, config: dict[str, Any], allowed_key_envs: Collection[str] = ()
    ) -> ChatSettings:
        """Validated settings; :class:`PolicyConfigError` names the field that is wrong.

        ``allowed_key_envs`` is the owner's allow-list: a request may only name one of these
        environment variables in ``api_key_env`` (it never chooses which secret leaves the
        machine).
        """
        url = _inference_url(config.get("inference_url"))
        model = config.get("model")
        if not isinstance(model, str) or not model.strip():
            raise PolicyConfigError(
                "model", "policy.config.model is required when inference_url is set"
            )
        env_name = config.get("api_key_env")
        api_key = None
        if env_name is not None:
            if not isinstance(env_name, str) or not env_name:
                raise PolicyConfigError(
                    "api_key_env", "policy.config.api_key_env must name an environment variable"
                )
            if env_name not in allowed_key_envs:
                allowed = ", ".join(sorted(allowed_key_envs)) or "none"
                raise PolicyConfigError(
                    "api_key_env",
                    f"policy.config.api_key_env {env_name!r} is not one of the environment "
                    f"variables this task app's owner allows (allowed: {allowed}); the owner "
                    "allows one with build_config(api_key_envs=[...]) or "
                    f"{API_KEY_ENVS_VARIABLE}=NAME in the task app's environment",
                    code="api_key_env_not_allowed",
                )
            api_key = os.environ.get(env_name) or None
            if api_key is None:
                raise PolicyError(
                    f"policy.config.api_key_env is {env_name!r} but that environment variable "
                    "is not set in the task app's process"
                )
            register_secret(api_key)
        temperature = _number(config, "temperature", 0.0, low=0.0, high=100.0)
        max_tokens = _integer(config, "max_tokens", 16, low=1, high=1_000_000)
        timeout = _number(config, "timeout", 30.0, low=0.001, high=3600.0)
        return cls(url, model, api_key, env_name, temperature, max_tokens, timeout)


#: The environment variable an owner sets to allow ``api_key_env`` names (comma-separated).
API_KEY_ENVS_VARIABLE = "SUPPORT_INTENTS_API_KEY_ENVS"


def allowed_key_envs_from_environment() -> frozenset[str]:
    """The names in ``$SUPPORT_INTENTS_API_KEY_ENVS`` (comma- or space-separated)."""
    raw = os.environ.get(API_KEY_ENVS_VARIABLE, "")
    return frozenset(name for name in re.split(r"[\s,]+", raw) if name)


def _inference_url(value: object) -> str:
    """``policy.config.inference_url`` as the chat-completions URL, or PolicyConfigError."""
    field = "inference_url"
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise PolicyConfigError(
            field, f"policy.config.inference_url must be an http(s) URL, got {value!r:.200}"
        )
    if len(value) > 2048 or any(ord(ch) < 33 or ord(ch) == 127 for ch in value):
        raise PolicyConfigError(
            field,
            "policy.config.inference_url must be a URL of at most 2048 characters "
            "without spaces or control characters",
        )
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port  # ValueError when not a number in 0-65535
        httpx.URL(value)
    except (ValueError, httpx.InvalidURL) as exc:
        raise PolicyConfigError(
            field, f"policy.config.inference_url is not a valid URL ({exc}): {value!r:.200}"
        ) from None
    if not parts.hostname or port == 0:
        raise PolicyConfigError(
            field, f"policy.config.inference_url needs a host and a port 1-65535: {value!r:.200}"
        )
    base = value.rstrip("/")
    return base if base.endswith("/chat/completions") else base + "/chat/completions"


def _number(config: dict[str, Any], name: str, default: float, *, low: float, high: float) -> float:
    value = config.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyConfigError(name, f"policy.config.{name} must be a number, got {value!r:.80}")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise PolicyConfigError(
            name,
            f"policy.config.{name} must be a finite number from {low:g} to {high:g}, "
            f"got {value!r:.80}",
        )
    return number


def _integer(config: dict[str, Any], name: str, default: int, *, low: int, high: int) -> int:
    value = config.get(name, default)
    integral = isinstance(value, int) or (
        isinstance(value, float) and math.isfinite(value) and value.is_integer()
    )
    if isinstance(value, bool) or not integral or not low <= value <= high:
        raise PolicyConfigError(
            name, f"policy.config.{name} must be an integer from {low} to {high}, got {value!r:.80}"
        )
    return int(value)


class ChatPolicy:
    """Calls an OpenAI-compatible chat-completions endpoint. One shared HTTP client.

    The client is created on first use (inside the server's event loop) and closed by
    :meth:`aclose`, which the task app registers as a shutdown hook.
    """

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None

    async def answer(self, settings: ChatSettings, prompt: str, message: str) -> str:
        """The model's raw answer text for ``message``."""
        if "{message}" in prompt:
            messages = [{"role": "user", "content": prompt.replace("{message}", message)}]
        else:
            messages = [
                {"role": "system", "content": prompt},
                {"role": "user", "content": message},
            ]
        body = {
            "model": settings.model,
            "messages": messages,
            "temperature": settings.temperature,
            "max_tokens": settings.max_tokens,
        }
        headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        if self._client is None:
            self._client = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=64)
            )
        try:
            response = await self._client.post(
                settings.url, json=body, headers=headers, timeout=settings.timeout
            )
        except httpx.TimeoutException:
            raise PolicyError(
                f"the inference URL {settings.url} did not answer within {settings.timeout:g}s"
            ) from None
        except httpx.HTTPError as exc:
            detail = redact(f"{type(exc).__name__}: {exc}", extra=_keys(settings))
            raise PolicyError(
                f"could not reach the inference URL {settings.url} ({detail})"
            ) from None
        if response.status_code in (401, 403):
            where = (
                f"the key in ${settings.api_key_env}"
                if settings.api_key_env
                else "no key (set policy.config.api_key_env to the name of an environment "
                "variable holding one)"
            )
            raise PolicyError(
                f"the inference URL {settings.url} rejected the request with HTTP "
                f"{response.status_code}; it was sent {where}"
            )
        if response.status_code != 200:
            text = redact(response.text[:300], extra=_keys(settings))
            raise PolicyError(
                f"the inference URL {settings.url} answered HTTP {response.status_code}: {text}"
            )
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise PolicyError(
                f"the inference URL {settings.url} did not answer with an OpenAI chat "
                "completion (expected choices[0].message.content)"
            ) from None
        if not isinstance(content, str):
            raise PolicyError(f"the inference URL {settings.url} returned no text content")
        return content

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def _keys(settings: ChatSettings) -> list[str]:
    return [settings.api_key] if settings.api_key else []
