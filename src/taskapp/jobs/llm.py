"""Which reflection model a job may call, with whose key: the backend's LLM endpoints.

A job's ``[prompt_learning.gepa.mutation]`` names a model and, optionally, a URL and the
environment variable holding the key. The backend never reads that variable from its
own environment and never sends its own keys to a URL a client chose. Instead:

* **operator endpoints** — ``taskapp backend serve --llm-endpoint NAME=URL
  --llm-key-env NAME=VAR``: the operator names the endpoints the backend may call with
  its own key (read from ``$VAR`` once, at start). A job reaches one by its
  ``llm_provider = "NAME"`` or by ``llm_inference_url = URL``; the stored job names the
  endpoint, never the key.
* **client endpoints** — any other ``llm_inference_url``: called with the key the
  client sent (``PromptLearningJob`` resolves ``llm_api_key_env`` on the client's
  machine and sends the value as ``reflection_api_key``), or with no key.

>>> endpoints = parse_llm_endpoints(["local=http://127.0.0.1:9/v1"], [], environ={})
>>> bind_reflection_lm({"model": "m", "api_key_env": "HOME"}, "local", endpoints, None)
{'model': 'm', 'base_url': 'http://127.0.0.1:9/v1', 'endpoint': 'local'}
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from taskapp.core.errors import ConfigurationError
from taskapp.core.secrets import register_secret

__all__ = ["LlmEndpoint", "bind_reflection_lm", "build_reflection_lm", "parse_llm_endpoints"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PASSED_ON = ("temperature", "max_tokens")


@dataclasses.dataclass(frozen=True)
class LlmEndpoint:
    """An OpenAI-compatible endpoint the backend's operator configured."""

    name: str
    url: str
    key_env: str | None = None
    key: str | None = dataclasses.field(default=None, repr=False)


def _norm(url: str) -> str:
    return url.strip().rstrip("/").lower()


def parse_llm_endpoints(
    endpoints: Iterable[str], key_envs: Iterable[str], *, environ: Mapping[str, str]
) -> dict[str, LlmEndpoint]:
    """``NAME=URL`` and ``NAME=VAR`` options into endpoints; each key is read from
    ``environ`` now (an unset variable is an error, so a typo shows at start)."""
    urls: dict[str, str] = {}
    for option in endpoints:
        name, sep, url = option.partition("=")
        name, url = name.strip(), url.strip()
        if not sep or not _NAME.match(name) or not url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"--llm-endpoint {option!r}: expected NAME=URL with an http(s) URL, e.g. "
                "--llm-endpoint openai=https://api.openai.com/v1"
            )
        if name in urls:
            raise ConfigurationError(f"--llm-endpoint {name!r} is given twice")
        urls[name] = url.rstrip("/")
    found: dict[str, LlmEndpoint] = {name: LlmEndpoint(name, url) for name, url in urls.items()}
    for option in key_envs:
        name, sep, var = option.partition("=")
        name, var = name.strip(), var.strip()
        if not sep or name not in found:
            raise ConfigurationError(
                f"--llm-key-env {option!r}: expected NAME=VAR for an --llm-endpoint NAME "
                f"(configured: {', '.join(sorted(found)) or 'none'})"
            )
        value = environ.get(var, "").strip()
        if not value:
            raise ConfigurationError(f"--llm-key-env {name}={var}: ${var} is not set")
        register_secret(value)
        found[name] = dataclasses.replace(found[name], key_env=var, key=value)
    return found


def _endpoint_of(
    spec: Mapping[str, Any], provider: str | None, endpoints: Mapping[str, LlmEndpoint]
) -> LlmEndpoint | None:
    url = spec.get("base_url")
    if provider and provider in endpoints:
        endpoint = endpoints[provider]
        if isinstance(url, str) and url and _norm(url) != _norm(endpoint.url):
            raise ConfigurationError(
                f"prompt_learning.gepa.mutation: llm_provider {provider!r} is the backend's "
                f"endpoint {endpoint.url}, but llm_inference_url is {url}; give one of them"
            )
        return endpoint
    if isinstance(url, str):
        for endpoint in endpoints.values():
            if _norm(url) == _norm(endpoint.url):
                return endpoint
    return None


def bind_reflection_lm(
    spec: Any,
    provider: str | None,
    endpoints: Mapping[str, LlmEndpoint],
    client_key: str | None,
) -> Any:
    """The reflection model of a submitted job as the backend stores it: ``"stand-in"``
    as is; a model mapping with ``endpoint`` (an operator endpoint) or ``base_url`` plus
    the client's ``api_key`` (a client endpoint). ``api_key_env`` is dropped: the backend
    never looks it up."""
    if not isinstance(spec, Mapping):
        return spec
    stored: dict[str, Any] = {"model": spec.get("model")}
    endpoint = _endpoint_of(spec, provider, endpoints)
    if endpoint is not None:
        stored.update(base_url=endpoint.url, endpoint=endpoint.name)
    else:
        url = spec.get("base_url")
        if not isinstance(url, str) or not url:
            configured = ", ".join(f"{e.name}={e.url}" for e in endpoints.values()) or "none"
            raise ConfigurationError(
                "prompt_learning.gepa.mutation: no llm_inference_url, and the backend has no "
                f"endpoint named {provider!r} (its operator's --llm-endpoint: {configured}); "
                "name one of those in llm_provider, or give llm_inference_url (called with "
                "the key your client sends, never the backend's)"
            )
        stored["base_url"] = url
        if client_key:
            stored["api_key"] = client_key
    for name in _PASSED_ON:
        if spec.get(name) is not None:
            stored[name] = spec[name]
    return stored


def build_reflection_lm(
    stored: Any, endpoints: Mapping[str, LlmEndpoint]
) -> Callable[[Any], Any] | str | None:
    """The reflection model a stored job runs with (keys from the operator's endpoints
    or the client's stored key; nothing from the environment)."""
    if not isinstance(stored, Mapping):
        return stored  # type: ignore[no-any-return]
    from taskapp.optimize.lm import OpenAICompatLM

    name = stored.get("endpoint")
    key: str | None = stored.get("api_key") or None
    url = stored.get("base_url")
    if name is not None:
        endpoint = endpoints.get(str(name))
        if endpoint is None:
            raise ConfigurationError(
                f"the job's reflection model uses the backend endpoint {name!r}, which this "
                f"backend was not started with (--llm-endpoint {name}=URL)"
            )
        url, key = endpoint.url, endpoint.key or key
    if not isinstance(url, str) or not url:
        raise ConfigurationError("the job's reflection model has no URL")
    extra = {k: stored[k] for k in _PASSED_ON if stored.get(k) is not None}
    # api_key="" (not None): OpenAICompatLM then sends no key instead of reading one
    # from this process's environment.
    return OpenAICompatLM(str(stored.get("model")), base_url=url, api_key=key or "", **extra)
