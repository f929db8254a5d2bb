"""taskapp: run a task app in your own Python process, give it a public URL through a
pluggable tunnel, check it is healthy, and tear everything down cleanly.

>>> from taskapp import InProcessTaskApp, TaskAppConfig
>>> with InProcessTaskApp(task_app_path="my_task_app.py") as task_app:  # doctest: +SKIP
...     print(task_app.url)

Everything public is listed in ``__all__``. Names are imported on first use, so
``import taskapp`` loads neither fastapi nor uvicorn and installs nothing (no signal
handler, no environment change, no plugin loading).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from taskapp.core.hookspecs import hookimpl

if TYPE_CHECKING:
    from taskapp.core.backends import (
        AppTarget,
        LoadedApp,
        ServerContext,
        ServerRunner,
        Tunnel,
        TunnelBackend,
        TunnelContext,
    )
    from taskapp.core.config import TaskAppConfig
    from taskapp.core.contract import (
        RolloutMetrics,
        RolloutRequest,
        RolloutResponse,
        TaskInfo,
        create_task_app,
    )
    from taskapp.core.errors import (
        ApiKeyRejectedError,
        AppLoadError,
        ConfigurationError,
        HealthCheckError,
        PluginConflictError,
        PluginError,
        PluginLoadError,
        PortError,
        ProcessError,
        ProcessTimeoutError,
        ServerStartError,
        TaskAppError,
        TaskAppFileNotFoundError,
        TunnelAuthError,
        TunnelBinaryMissingError,
        TunnelError,
        TunnelProtocolError,
        TunnelRateLimitedError,
        TunnelTimeoutError,
        TunnelVerificationError,
        UnknownBackendError,
    )
    from taskapp.core.lifecycle import InProcessTaskApp

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
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
}
_ERRORS = (
    "ApiKeyRejectedError",
    "AppLoadError",
    "ConfigurationError",
    "HealthCheckError",
    "PluginConflictError",
    "PluginError",
    "PluginLoadError",
    "PortError",
    "ProcessError",
    "ProcessTimeoutError",
    "ServerStartError",
    "TaskAppError",
    "TaskAppFileNotFoundError",
    "TunnelAuthError",
    "TunnelBinaryMissingError",
    "TunnelError",
    "TunnelProtocolError",
    "TunnelRateLimitedError",
    "TunnelTimeoutError",
    "TunnelVerificationError",
    "UnknownBackendError",
)
_LAZY.update(dict.fromkeys(_ERRORS, "taskapp.core.errors"))

__all__ = [
    "ApiKeyRejectedError",
    "AppLoadError",
    "AppTarget",
    "ConfigurationError",
    "HealthCheckError",
    "InProcessTaskApp",
    "LoadedApp",
    "PluginConflictError",
    "PluginError",
    "PluginLoadError",
    "PortError",
    "ProcessError",
    "ProcessTimeoutError",
    "RolloutMetrics",
    "RolloutRequest",
    "RolloutResponse",
    "ServerContext",
    "ServerRunner",
    "ServerStartError",
    "TaskAppConfig",
    "TaskAppError",
    "TaskAppFileNotFoundError",
    "TaskInfo",
    "Tunnel",
    "TunnelAuthError",
    "TunnelBackend",
    "TunnelBinaryMissingError",
    "TunnelContext",
    "TunnelError",
    "TunnelProtocolError",
    "TunnelRateLimitedError",
    "TunnelTimeoutError",
    "TunnelVerificationError",
    "UnknownBackendError",
    "__version__",
    "create_task_app",
    "hookimpl",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'taskapp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
