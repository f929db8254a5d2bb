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

from typing import TYPE_CHECKING

from taskapp.core.importing import lazy_exports

if TYPE_CHECKING:
    from taskapp.optimize.adapter import TaskAppAdapter
    from taskapp.optimize.config import OptimizeConfig
    from taskapp.optimize.errors import (
        GepaNotInstalledError,
        OptimizeError,
        ReflectionModelError,
        RunRecordError,
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

_LAZY: dict[str, str] = {
    "run": "taskapp.optimize.runner",
    "run_async": "taskapp.optimize.runner",
    "advertised_prompts": "taskapp.optimize.runner",
    "OptimizeResult": "taskapp.optimize.result",
    "OptimizeConfig": "taskapp.optimize.config",
    "TaskAppAdapter": "taskapp.optimize.adapter",
    "OpenAICompatLM": "taskapp.optimize.lm",
    "StandInReflectionLM": "taskapp.optimize.lm",
    "ReflectionRecorder": "taskapp.optimize.lm",
    "REFLECTION_TEMPLATE": "taskapp.optimize.lm",
    "OptimizeError": "taskapp.optimize.errors",
    "GepaNotInstalledError": "taskapp.optimize.errors",
    "ReflectionModelError": "taskapp.optimize.errors",
    "RunRecordError": "taskapp.optimize.errors",
    "TaskAppUnavailableError": "taskapp.optimize.errors",
}

__all__ = [
    "REFLECTION_TEMPLATE",
    "GepaNotInstalledError",
    "OpenAICompatLM",
    "OptimizeConfig",
    "OptimizeError",
    "OptimizeResult",
    "ReflectionModelError",
    "ReflectionRecorder",
    "RunRecordError",
    "StandInReflectionLM",
    "TaskAppAdapter",
    "TaskAppUnavailableError",
    "advertised_prompts",
    "run",
    "run_async",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
