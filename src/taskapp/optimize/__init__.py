"""Local GEPA prompt optimization against any task app's ``POST /rollout``.

>>> from taskapp.optimize import run, StandInReflectionLM, OpenAICompatLM
>>> result = run(
...     "support-intents",                      # a URL, InProcessTaskApp, app, path, ...
...     seed_prompt=None,                       # None: the default advertised in /info
...     train_seeds="0-59", val_seeds="60-89", test_seeds="300-339",
...     reflection_lm=StandInReflectionLM(),    # or OpenAICompatLM(model="...", base_url=...)
...     budget=300,
... )  # doctest: +SKIP
>>> result.baseline_score, result.best_score, result.test_scores  # doctest: +SKIP

Needs the optional extra ``pip install '.[optimize]'`` (in a clone) (the ``gepa`` package),
imported only when a run starts. Names are imported on first use, so importing this
package is cheap. See docs/optimize.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskapp.optimize.adapter import TaskAppAdapter
    from taskapp.optimize.errors import (
        GepaNotInstalledError,
        OptimizeError,
        ReflectionModelError,
        TaskAppUnavailableError,
    )
    from taskapp.optimize.lm import (
        REFLECTION_TEMPLATE,
        OpenAICompatLM,
        ReflectionRecorder,
        StandInReflectionLM,
    )
    from taskapp.optimize.result import OptimizeResult
    from taskapp.optimize.runner import advertised_prompts, run, run_async
    from taskapp.optimize.seeds import SeedLoader, format_seeds, parse_seeds

_LAZY: dict[str, str] = {
    "run": "taskapp.optimize.runner",
    "run_async": "taskapp.optimize.runner",
    "advertised_prompts": "taskapp.optimize.runner",
    "OptimizeResult": "taskapp.optimize.result",
    "TaskAppAdapter": "taskapp.optimize.adapter",
    "OpenAICompatLM": "taskapp.optimize.lm",
    "StandInReflectionLM": "taskapp.optimize.lm",
    "ReflectionRecorder": "taskapp.optimize.lm",
    "REFLECTION_TEMPLATE": "taskapp.optimize.lm",
    "OptimizeError": "taskapp.optimize.errors",
    "GepaNotInstalledError": "taskapp.optimize.errors",
    "ReflectionModelError": "taskapp.optimize.errors",
    "TaskAppUnavailableError": "taskapp.optimize.errors",
    "SeedLoader": "taskapp.optimize.seeds",
    "format_seeds": "taskapp.optimize.seeds",
    "parse_seeds": "taskapp.optimize.seeds",
}

__all__ = [
    "REFLECTION_TEMPLATE",
    "GepaNotInstalledError",
    "OpenAICompatLM",
    "OptimizeError",
    "OptimizeResult",
    "ReflectionModelError",
    "ReflectionRecorder",
    "SeedLoader",
    "StandInReflectionLM",
    "TaskAppAdapter",
    "TaskAppUnavailableError",
    "advertised_prompts",
    "format_seeds",
    "parse_seeds",
    "run",
    "run_async",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'taskapp.optimize' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
