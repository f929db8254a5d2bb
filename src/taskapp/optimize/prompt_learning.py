"""The Synth ``[prompt_learning]`` TOML, read into an :class:`OptimizeConfig`.

One reader for ``taskapp optimize --config``, the job backend and
:class:`taskapp.PromptLearningJob`. Keys are mapped onto the local GEPA engine as
``docs/jobs.md`` lists; keys with no local equivalent are accepted and warned about by
name ("ignored: ..."), unknown keys are warned about with a "did you mean", nothing is
dropped silently. A malformed file is a :class:`ConfigurationError` naming the file,
line and key.

>>> spec = parse_prompt_learning('''
... [prompt_learning]
... algorithm = "gepa"
... task_app_url = "http://127.0.0.1:8114"
... [prompt_learning.gepa.evaluation]
... train_seeds = {start = 0, end = 20}
... val_seeds = [20, 21, 22, 23]
... [prompt_learning.gepa.rollout]
... budget = 60
... [prompt_learning.gepa.mutation]
... llm_provider = "stand-in"
... ''')
>>> spec.task_app_url, spec.config.budget, spec.config.reflection_lm
('http://127.0.0.1:8114', 60, 'stand-in')
>>> spec.warnings
[]
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from taskapp.core.errors import ConfigurationError
from taskapp.optimize.config import OptimizeConfig

__all__ = [
    "NO_ENVIRONMENT",
    "PromptLearningSpec",
    "expand_env",
    "load_prompt_learning",
    "parse_prompt_learning",
]

STAND_IN = "stand-in"

# Keys accepted with no local equivalent, and why (the warning says it).
_NO_EQUIVALENT = "GEPA starts from one seed prompt and merges candidates; no local equivalent"
IGNORED: dict[str, str] = {
    "task_app_id": "the task app is addressed by task_app_url",
    "gepa.population.initial_size": _NO_EQUIVALENT,
    "gepa.population.num_generations": "the run is bounded by rollout.budget",
    "gepa.population.children_per_generation": "one proposal per iteration",
    "gepa.population.crossover_rate": _NO_EQUIVALENT,
    "gepa.mutation.rate": _NO_EQUIVALENT,
    "gepa.archive": "gepa keeps its own Pareto archive",
    "gepa.token": "no token limit is enforced locally",
    "gepa.evaluation.validation_pool": "val_seeds are the validation pool",
    "gepa.evaluation.validation_top_k": "every candidate is scored on all val_seeds",
    "gepa.proposer_effort": "the reflection model is set in [prompt_learning.gepa.mutation]",
    "termination_config.max_cost_usd": "no price table for the reflection model",
    "termination_config.max_trials": "the run is bounded by rollout.budget",
}

# Every key the reader uses (dotted, below prompt_learning), with its OptimizeConfig field.
USED: dict[str, str] = {
    "algorithm": "",
    "task_app_url": "",
    "task_app_api_key": "",
    "results_folder": "",
    "initial_prompt": "seed_prompt",
    "policy": "policy",
    "env_config": "env_config",
    "env_name": "env_name",
    "gepa.env_name": "env_name",
    "gepa.env_config": "env_config",
    "gepa.proposer_mode": "",
    "gepa.proposer_type": "",
    "gepa.prompt_key": "prompt_key",
    "gepa.seed": "seed",
    "gepa.selection": "selection",
    "gepa.candidate_selection_strategy": "selection",
    "gepa.perfect_score": "perfect_score",
    "gepa.max_reflection_failures": "max_reflection_failures",
    "gepa.health_timeout": "health_timeout",
    "gepa.evaluation.train_seeds": "train_seeds",
    "gepa.evaluation.val_seeds": "val_seeds",
    "gepa.evaluation.validation_seeds": "val_seeds",
    "gepa.evaluation.test_pool": "test_seeds",
    "gepa.evaluation.test_seeds": "test_seeds",
    "gepa.rollout.budget": "budget",
    "gepa.rollout.max_concurrent": "max_concurrency",
    "gepa.rollout.minibatch_size": "minibatch_size",
    "gepa.rollout.timeout": "rollout_timeout",
    "gepa.mutation.llm_provider": "reflection_lm",
    "gepa.mutation.llm_model": "reflection_lm",
    "gepa.mutation.llm_inference_url": "reflection_lm",
    "gepa.mutation.llm_api_key_env": "reflection_lm",
    "gepa.mutation.temperature": "reflection_lm",
    "gepa.mutation.max_tokens": "reflection_lm",
    "gepa.mutation.prompt": "reflection_prompt_template",
    "gepa.population.patience_generations": "patience",
    "termination_config.max_time_seconds": "timeout_s",
    "termination_config.max_rollouts": "budget",
}

_TABLES = {"initial_prompt", "policy", "env_config", "gepa.env_config"}  # free-form below
MAX_UNKNOWN_WARNINGS = 50


@dataclasses.dataclass
class PromptLearningSpec:
    """A read ``[prompt_learning]`` config: the run, where the task app is, and warnings."""

    config: OptimizeConfig
    task_app_url: str | None = None
    #: the file's ``task_app_api_key`` as written (``${ENV}`` expanded by :meth:`task_app_key`)
    task_app_api_key: str | None = None
    results_folder: str | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    source: str = "<config>"
    #: the file's ``task_app_url`` as written (``task_app_url`` is None when it names a
    #: variable and the reader was given :data:`NO_ENVIRONMENT`)
    task_app_url_template: str | None = None
    #: ``gepa.mutation.llm_provider`` as written (a job backend matches it to the
    #: endpoints its operator configured)
    llm_provider: str | None = None

    def task_app_key(
        self, explicit: str | None = None, *, environ: Mapping[str, str] | None = None
    ) -> str | None:
        """The task app's key: ``explicit``, else the file's ``task_app_api_key`` (with
        ``${ENV}`` expansion), else the user's ``$ENVIRONMENT_API_KEY`` (never a key lent
        to a running app: :func:`taskapp.core.env_keys.environment_api_key`), else None.
        ``environ`` (default ``os.environ``) is where variables are looked up; with
        :data:`NO_ENVIRONMENT` (the job backend) a variable is an error and there is no
        ``$ENVIRONMENT_API_KEY`` fallback."""
        env = os.environ if environ is None else environ
        if explicit:
            return explicit
        if self.task_app_api_key:
            what = f"{self.source}: prompt_learning.task_app_api_key"
            return expand_env(self.task_app_api_key, what=what, environ=env) or None
        if environ is None:
            from taskapp.core.env_keys import environment_api_key

            return environment_api_key()
        return env.get("ENVIRONMENT_API_KEY") or None


class _NoEnvironment(Mapping[str, str]):
    """An environment with nothing in it, for values a job backend's client submitted:
    the backend never expands its own environment into them (see docs/jobs.md, "Security
    model")."""

    def __getitem__(self, name: str) -> str:
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "NO_ENVIRONMENT"


#: Pass as ``environ=`` where the values come from someone else (a job backend's client):
#: ``${VAR}`` is an error saying the client resolves it, nothing is read from os.environ.
NO_ENVIRONMENT: Mapping[str, str] = _NoEnvironment()


def expand_env(value: str, *, what: str, environ: Mapping[str, str] | None = None) -> str:
    """``${NAME}`` (and ``$NAME``) replaced by the environment's value; unset is an error."""
    env = os.environ if environ is None else environ

    def sub(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if env is NO_ENVIRONMENT:
            raise ConfigurationError(
                f"{what} refers to ${{{name}}}: the job backend never expands its own "
                "environment into a submitted job; resolve it on the client (PromptLearningJob "
                "does) or send the value itself"
            )
        if name not in env:
            raise ConfigurationError(f"{what} refers to ${{{name}}}, which is not set")
        return env[name]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", sub, value)


def load_prompt_learning(
    path: str | Path, *, overrides: Mapping[str, Any] | None = None
) -> PromptLearningSpec:
    """Read a ``[prompt_learning]`` TOML file (see :func:`parse_prompt_learning`)."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigurationError(f"config file {str(file)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read config file {str(file)!r}: {exc}") from None
    return parse_prompt_learning(text, source=str(file), overrides=overrides)


def parse_prompt_learning(
    text: str,
    *,
    source: str = "<config>",
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> PromptLearningSpec:
    """Parse ``[prompt_learning]`` TOML text into a :class:`PromptLearningSpec`.

    ``overrides`` maps dotted keys (``"gepa.rollout.budget"``, with or without the
    ``prompt_learning.`` prefix) to values that replace the file's. ``environ`` (default
    ``os.environ``) is where ``${VAR}`` in ``task_app_url`` is looked up; a job backend
    passes :data:`NO_ENVIRONMENT`.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(_decode_message(text, source, exc)) from None
    section = document.get("prompt_learning")
    if not isinstance(section, dict):
        raise ConfigurationError(
            f"{source}: no [prompt_learning] table (this reads Synth prompt-learning configs; "
            "see docs/jobs.md)"
        )
    for key, value in (overrides or {}).items():
        _set_dotted(section, key.removeprefix("prompt_learning."), value)
    return _Reader(section, source, environ).read()


def _decode_message(text: str, source: str, exc: tomllib.TOMLDecodeError) -> str:
    """'F: line N (key K in [T]): what is wrong' with the offending line quoted."""
    message = str(exc)
    match = re.search(r"\(at line (\d+), column (\d+)\)", message)
    if match is None:
        return f"{source}: malformed TOML: {message}"
    number = int(match.group(1))
    lines = text.splitlines()
    line = lines[number - 1] if 0 < number <= len(lines) else ""
    table = ""
    for previous in reversed(lines[: number - 1]):
        header = re.match(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$", previous)
        if header:
            table = header.group(1)
            break
    key_match = re.match(r"^\s*([A-Za-z0-9_.\"'-]+)\s*=", line)
    where = f"line {number}"
    if key_match:
        key = key_match.group(1).strip("\"'")
        where += f", key {table + '.' if table else ''}{key}"
    elif table:
        where += f", in [{table}]"
    reason = message[: match.start()].strip()
    return f"{source}: malformed TOML at {where}: {reason}\n  {number} | {line}"


def _set_dotted(section: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    table = section
    for part in parts[:-1]:
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            raise ConfigurationError(f"override {dotted!r}: {part!r} is not a table")
    table[parts[-1]] = value


class _Reader:
    def __init__(
        self, section: dict[str, Any], source: str, environ: Mapping[str, str] | None = None
    ) -> None:
        self.section = section
        self.source = source
        self.environ = environ
        self.warnings: list[str] = []

    # -- lookup ------------------------------------------------------------------------

    def get(self, dotted: str) -> Any:
        value: Any = self.section
        for part in dotted.split("."):
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
        return value

    def name(self, dotted: str) -> str:
        return f"prompt_learning.{dotted}"

    def fail(self, dotted: str, what: str) -> ConfigurationError:
        return ConfigurationError(f"{self.source}: {self.name(dotted)} {what}")

    def int_(self, dotted: str, *, minimum: int = 0) -> int | None:
        value = self.get(dotted)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(dotted, f"must be an integer >= {minimum}, got {value!r}")
        return value

    def num(self, dotted: str) -> float | None:
        value = self.get(dotted)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(dotted, f"must be a number, got {value!r}")
        if not math.isfinite(value):
            raise self.fail(dotted, f"must be finite, got {value!r}")
        return float(value)

    def str_(self, dotted: str) -> str | None:
        value = self.get(dotted)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(dotted, f"must be a string, got {value!r}")
        return value

    def table(self, dotted: str) -> dict[str, Any] | None:
        value = self.get(dotted)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.fail(dotted, f"must be a table, got {value!r}")
        return value

    # -- warnings ----------------------------------------------------------------------

    def check_keys(self) -> None:
        """Warn about ignored and unknown keys: each of the first
        :data:`MAX_UNKNOWN_WARNINGS` unknown keys by name (with a "did you mean"), the rest
        counted in one warning (a config with 100k keys must not cost 100k lookups)."""
        known_tables = {k.rsplit(".", 1)[0] for k in (*USED, *IGNORED) if "." in k}
        unknown = 0

        def walk(table: dict[str, Any], prefix: str) -> None:
            nonlocal unknown
            for key, value in table.items():
                dotted = f"{prefix}{key}"
                if dotted in IGNORED:
                    self.warnings.append(f"{self.name(dotted)} is ignored: {IGNORED[dotted]}")
                elif dotted in USED or dotted in _TABLES:
                    continue
                elif dotted in known_tables and isinstance(value, dict):
                    walk(value, dotted + ".")
                else:
                    unknown += 1
                    if unknown > MAX_UNKNOWN_WARNINGS:
                        continue
                    siblings = [
                        k.removeprefix(prefix)
                        for k in (*USED, *IGNORED, *known_tables)
                        if k.startswith(prefix) and "." not in k.removeprefix(prefix)
                    ]
                    close = difflib.get_close_matches(key, siblings, n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    self.warnings.append(f"unknown key {self.name(dotted)} is ignored{hint}")

        walk(self.section, "")
        if unknown > MAX_UNKNOWN_WARNINGS:
            self.warnings.append(
                f"... and {unknown - MAX_UNKNOWN_WARNINGS} more unknown keys, all ignored"
            )

    # -- the mapping -------------------------------------------------------------------

    def read(self) -> PromptLearningSpec:
        algorithm = self.str_("algorithm") or "gepa"
        if algorithm.lower() != "gepa":
            raise self.fail(
                "algorithm",
                f"is {algorithm!r}: taskapp runs 'gepa' only (the open-source GEPA engine)",
            )
        self.check_keys()
        self.check_proposer()
        fields: dict[str, Any] = {}
        seed_prompt = self.initial_prompt()
        if seed_prompt is not None:
            fields["seed_prompt"] = seed_prompt
        fields.update(self.seeds())
        budget = self.int_("gepa.rollout.budget", minimum=1)
        if budget is None:
            budget = self.int_("termination_config.max_rollouts", minimum=1)
        for field, value in (
            ("budget", budget),
            ("max_concurrency", self.int_("gepa.rollout.max_concurrent", minimum=1)),
            ("minibatch_size", self.int_("gepa.rollout.minibatch_size", minimum=1)),
            ("rollout_timeout", self.num("gepa.rollout.timeout")),
            ("patience", self.int_("gepa.population.patience_generations", minimum=1)),
            ("timeout_s", self.num("termination_config.max_time_seconds")),
            ("seed", self.int_("gepa.seed")),
            ("perfect_score", self.num("gepa.perfect_score")),
            ("max_reflection_failures", self.int_("gepa.max_reflection_failures", minimum=1)),
            ("health_timeout", self.num("gepa.health_timeout")),
            ("prompt_key", self.str_("gepa.prompt_key")),
            (
                "selection",
                self.str_("gepa.selection") or self.str_("gepa.candidate_selection_strategy"),
            ),
            ("reflection_prompt_template", self.str_("gepa.mutation.prompt")),
            ("env_name", self.str_("gepa.env_name") or self.str_("env_name")),
            ("env_config", self.table("gepa.env_config") or self.table("env_config")),
        ):
            if value is not None:
                fields[field] = value
        policy = self.table("policy")
        if policy is not None:
            policy = dict(policy)
            name = policy.pop("policy_name", None)
            if name is not None:
                if not isinstance(name, str):
                    raise self.fail("policy.policy_name", "must be a string")
                fields["policy_name"] = name
            fields["policy"] = policy
        fields["reflection_lm"] = self.reflection_lm()
        url = self.str_("task_app_url")
        api_key = self.str_("task_app_api_key")
        spec = PromptLearningSpec(
            config=OptimizeConfig().replace(**fields),
            task_app_url=self.task_app_url(url),
            task_app_api_key=api_key or None,
            results_folder=self.str_("results_folder"),
            warnings=self.warnings,
            source=self.source,
            task_app_url_template=url,
            llm_provider=self.str_("gepa.mutation.llm_provider"),
        )
        return spec

    def task_app_url(self, url: str | None) -> str | None:
        """``task_app_url`` with ``${ENV}`` expanded; None when it names a variable and
        there is no environment to look in (the backend: the client sends the URL)."""
        if not url:
            return None
        if self.environ is NO_ENVIRONMENT and "$" in url:
            return None
        return expand_env(url, what=self.name("task_app_url"), environ=self.environ)

    def check_proposer(self) -> None:
        for key in ("gepa.proposer_mode", "gepa.proposer_type"):
            proposer = self.str_(key)
            if proposer is not None and proposer.lower() not in ("gepa-ai", "gepa", "gepa_ai"):
                self.warnings.append(
                    f"{self.name(key)} = {proposer!r} runs as 'gepa-ai' (the open-source "
                    "GEPA proposer is the one taskapp has)"
                )

    def seeds(self) -> dict[str, list[int]]:
        from taskapp.core.seeds import parse_seeds

        fields: dict[str, list[int]] = {}
        for key, field in (
            ("gepa.evaluation.train_seeds", "train_seeds"),
            ("gepa.evaluation.val_seeds", "val_seeds"),
            ("gepa.evaluation.validation_seeds", "val_seeds"),
            ("gepa.evaluation.test_seeds", "test_seeds"),
            ("gepa.evaluation.test_pool", "test_seeds"),
        ):
            value = self.get(key)
            if value is None:
                continue
            if not isinstance(value, str | list | dict):
                raise self.fail(key, "must be a list, {start, end} or a string like '0-29'")
            fields[field] = parse_seeds(value, what=self.name(key))
        return fields

    def initial_prompt(self) -> str | dict[str, str] | None:
        value = self.get("initial_prompt")
        if value is None:
            return None
        if isinstance(value, str):
            return value
        if not isinstance(value, dict):
            raise self.fail("initial_prompt", "must be a string or a table with messages")
        messages = value.get("messages")
        if not isinstance(messages, list) or not messages:
            raise self.fail(
                "initial_prompt.messages",
                "must list at least one {role, pattern} message (or leave initial_prompt "
                "out: the prompt the task app advertises is used)",
            )
        ordered: list[tuple[int, str, str]] = []
        for index, message in enumerate(messages):
            where = f"initial_prompt.messages[{index}]"
            if not isinstance(message, dict):
                raise self.fail(where, "must be a table {role, pattern}")
            pattern = message.get("pattern", message.get("content"))
            if not isinstance(pattern, str) or not pattern.strip():
                raise self.fail(where + ".pattern", "must be a non-empty string")
            role = message.get("role", "system")
            order = message.get("order", index)
            if not isinstance(role, str) or isinstance(order, bool) or not isinstance(order, int):
                raise self.fail(where, "role must be a string and order an integer")
            ordered.append((order, role, pattern))
        ordered.sort()
        if len(ordered) == 1:
            return ordered[0][2]
        roles = [role for _, role, _ in ordered]
        if len(set(roles)) == len(roles):
            return {role: pattern for _, role, pattern in ordered}
        return {f"messages.{order}": pattern for order, _, pattern in ordered}

    def reflection_lm(self) -> str | dict[str, Any]:
        provider = self.str_("gepa.mutation.llm_provider")
        model = self.str_("gepa.mutation.llm_model")
        if provider is not None and provider.lower() == STAND_IN:
            return STAND_IN
        if model is None:
            raise self.fail(
                "gepa.mutation",
                'needs llm_provider = "stand-in" (the offline stand-in reflection model) '
                "or llm_model (+ llm_inference_url) for an OpenAI-compatible model",
            )
        spec: dict[str, Any] = {"model": model}
        url = self.str_("gepa.mutation.llm_inference_url")
        if url:
            spec["base_url"] = url
        env = self.str_("gepa.mutation.llm_api_key_env")
        if env is None and provider:
            env = re.sub(r"[^A-Z0-9]+", "_", provider.upper()) + "_API_KEY"
        if env:
            spec["api_key_env"] = env
        temperature = self.num("gepa.mutation.temperature")
        if temperature is not None:
            spec["temperature"] = temperature
        max_tokens = self.int_("gepa.mutation.max_tokens", minimum=1)
        if max_tokens is not None:
            spec["max_tokens"] = max_tokens
        return spec
