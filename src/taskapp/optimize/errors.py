"""Errors of ``taskapp optimize``, part of taskapp's error tree.

::

    TaskAppError
    ├── ConfigurationError (ValueError)      bad arguments: seeds, budget, prompt, output dir
    └── OptimizeError (RuntimeError)         the optimization could not run or finish
        ├── GepaNotInstalledError (+ImportError)  the optional ``gepa`` package is missing
        ├── TaskAppUnavailableError          /health fails, the key is rejected, or the
        │                                    rollouts fail (transport errors, HTTP errors)
        └── ReflectionModelError             the reflection model failed on every call

Every error that ends a run after it started carries the partial result (``result``),
already saved when an output directory was given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from taskapp.core.errors import ConfigurationError, TaskAppError

if TYPE_CHECKING:
    from taskapp.optimize.result import OptimizeResult

__all__ = [
    "ConfigurationError",
    "GepaNotInstalledError",
    "OptimizeError",
    "ReflectionModelError",
    "RunRecordError",
    "TaskAppUnavailableError",
]


class OptimizeError(TaskAppError, RuntimeError):
    """The optimization could not run or could not finish.

    ``result`` is the partial :class:`~taskapp.optimize.OptimizeResult` when the run got
    far enough to have one (the baseline at least), else None.
    """

    def __init__(self, message: str, *, result: OptimizeResult | None = None, **kwargs: Any):
        self.result = result
        super().__init__(message, **kwargs)


class GepaNotInstalledError(OptimizeError, ImportError):
    """The optional dependency ``gepa`` is not installed."""


class TaskAppUnavailableError(OptimizeError):
    """The task app is down, rejects the key, or its rollouts fail.

    Without this check gepa alone would "succeed" with a score of 0.
    """


class ReflectionModelError(OptimizeError):
    """The reflection model failed (every call, or a call could not be made at all)."""


class RunRecordError(OptimizeError):
    """The run's own records in its output folder (``history.jsonl``, ``run.json``) could
    not be written (a full disk, say): the run stopped, as ``--resume`` could not go on
    from records with a hole. ``__cause__`` is the ``OSError``."""
