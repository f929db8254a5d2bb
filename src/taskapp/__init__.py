"""taskapp: run a task app in your own Python process, give it a public URL through a
pluggable tunnel, check it is healthy, and tear everything down cleanly.

>>> from taskapp import InProcessTaskApp, TaskAppConfig
>>> with InProcessTaskApp(task_app_path="my_task_app.py") as task_app:  # doctest: +SKIP
...     print(task_app.url)

Everything public is listed in ``__all__``. Names are imported on first use, so
``import taskapp`` loads neither fastapi, uvicorn nor pluggy and installs nothing (no signal
handler, no environment change, no plugin loading); ``from taskapp import
InProcessTaskApp`` imports little beyond what ``import asyncio, http.client`` does
(``benchmarks/bench_import.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from taskapp._version import __version__

# The error tree is standard-library only: imported eagerly.
from taskapp.core.errors import *  # noqa: F403
from taskapp.core.errors import __all__ as _ERRORS
from taskapp.core.importing import lazy_exports

if TYPE_CHECKING:
    from taskapp.core.backends import (
        AppTarget as AppTarget,
    )
    from taskapp.core.backends import (
        LoadedApp as LoadedApp,
    )
    from taskapp.core.backends import (
        ServerContext as ServerContext,
    )
    from taskapp.core.backends import (
        ServerRunner as ServerRunner,
    )
    from taskapp.core.backends import (
        Tunnel as Tunnel,
    )
    from taskapp.core.backends import (
        TunnelBackend as TunnelBackend,
    )
    from taskapp.core.backends import (
        TunnelContext as TunnelContext,
    )
    from taskapp.core.check import CheckReport as CheckReport
    from taskapp.core.check import CheckResult as CheckResult
    from taskapp.core.check import acheck as acheck
    from taskapp.core.check import check as check
    from taskapp.core.client import TaskAppClient as TaskAppClient
    from taskapp.core.config import TaskAppConfig as TaskAppConfig
    from taskapp.core.contract import (
        RolloutMetrics as RolloutMetrics,
    )
    from taskapp.core.contract import (
        RolloutRequest as RolloutRequest,
    )
    from taskapp.core.contract import (
        RolloutResponse as RolloutResponse,
    )
    from taskapp.core.contract import (
        TaskInfo as TaskInfo,
    )
    from taskapp.core.contract import (
        create_task_app as create_task_app,
    )
    from taskapp.core.hookspecs import hookimpl as hookimpl
    from taskapp.core.lifecycle import InProcessTaskApp as InProcessTaskApp
    from taskapp.core.process_tunnel import ProcessTunnel as ProcessTunnel
    from taskapp.evaluation import EvaluationResult as EvaluationResult
    from taskapp.evaluation import aevaluate as aevaluate
    from taskapp.evaluation import evaluate as evaluate
    from taskapp.jobs.client import PromptLearningJob as PromptLearningJob
    from taskapp.jobs.client import PromptLearningResult as PromptLearningResult
    from taskapp.jobs.client import run_in_process_job as run_in_process_job


# Imported on first use: these pull in fastapi/pydantic or the plugin machinery (the
# hook marker is pluggy's, so `@taskapp.hookimpl` imports pluggy, `import taskapp` not).
_LAZY: dict[str, str] = {
    "hookimpl": "taskapp.core.hookspecs",
    "InProcessTaskApp": "taskapp.core.lifecycle",
    "TaskAppConfig": "taskapp.core.config",
    "create_task_app": "taskapp.core.contract",
    "RolloutRequest": "taskapp.core.contract",
    "RolloutResponse": "taskapp.core.contract",
    "RolloutMetrics": "taskapp.core.contract",
    "TaskInfo": "taskapp.core.contract",
    "AppTarget": "taskapp.core.backends",
    "LoadedApp": "taskapp.core.backends",
    "ServerContext": "taskapp.core.backends",
    "ServerRunner": "taskapp.core.backends",
    "Tunnel": "taskapp.core.backends",
    "TunnelBackend": "taskapp.core.backends",
    "TunnelContext": "taskapp.core.backends",
    "ProcessTunnel": "taskapp.core.process_tunnel",
    "check": "taskapp.core.check",
    "acheck": "taskapp.core.check",
    "CheckReport": "taskapp.core.check",
    "CheckResult": "taskapp.core.check",
    "TaskAppClient": "taskapp.core.client",
    "evaluate": "taskapp.evaluation",
    "aevaluate": "taskapp.evaluation",
    "EvaluationResult": "taskapp.evaluation",
    "PromptLearningJob": "taskapp.jobs.client",
    "PromptLearningResult": "taskapp.jobs.client",
    "run_in_process_job": "taskapp.jobs.client",
}

__all__ = ["__version__", *_LAZY, *_ERRORS]


_lazy_getattr, __dir__ = lazy_exports(__name__, _LAZY, __all__)


def __getattr__(name: str) -> Any:
    value = _lazy_getattr(name)
    if name in ("evaluate", "aevaluate"):
        value = globals()[name] = _knowing_the_bundled_examples(value)
    return value


def _knowing_the_bundled_examples(function: Any) -> Any:
    """``function`` with ``aliases=`` defaulting to the bundled examples, so that
    ``taskapp.evaluate("support-intents")`` works as ``taskapp eval support-intents`` does.

    The top-level face passes the names; :mod:`taskapp.evaluation` and the layers below
    take them from their caller and never import :mod:`taskapp.examples`.
    """
    import functools
    import inspect

    def with_aliases(kwargs: dict[str, Any]) -> dict[str, Any]:
        if kwargs.get("aliases") is None:
            from taskapp.examples import BUNDLED

            kwargs["aliases"] = BUNDLED
        return kwargs

    if inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        async def awaited(*args: Any, **kwargs: Any) -> Any:
            return await function(*args, **with_aliases(kwargs))

        return awaited

    @functools.wraps(function)
    def called(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **with_aliases(kwargs))

    return called
