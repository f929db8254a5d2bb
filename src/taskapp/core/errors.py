"""Every error taskapp raises, in one tree.

Each error says what happened, why, and what to do next. Errors that involve a child
process carry the tail of its output (secrets redacted) in ``log_tail``.

The built-in base classes follow the seed's documented exception types, so code written
against synth-ai's ``InProcessTaskApp`` (``except ValueError`` / ``RuntimeError`` /
``FileNotFoundError``) keeps working::

    TaskAppError
    ├── ConfigurationError (ValueError)         bad arguments, caught in the constructor
    │   └── UnknownBackendError                 no server/tunnel registered under that name
    ├── TaskAppFileNotFoundError (FileNotFoundError)
    ├── PluginError (RuntimeError)
    │   ├── PluginLoadError                     a plugin the run needs failed to load
    │   └── PluginConflictError                 two plugins register the same name
    ├── LifecycleError (RuntimeError)           the call does not fit the instance's state
    │   └── StartInterruptedError               SIGINT/SIGTERM or a cancellation hit a start
    ├── AppLoadError (RuntimeError)             the target could not be turned into an app
    ├── PortError (RuntimeError)                the port could not be bound
    ├── ServerStartError (RuntimeError)         the server died or failed while starting
    ├── HealthCheckError (RuntimeError)         /health never answered 200
    │   └── ApiKeyRejectedError                 the app refused the key (401, 403, synth-ai's 400)
    ├── TaskAppRequestError (RuntimeError)      a call to a running task app failed
    │   └── TransportError, ClientTimeout       no answer (taskapp.core.client)
    ├── ProcessError (RuntimeError)             a managed child process failed
    │   └── ProcessTimeoutError                 ... did not print what we waited for
    └── TunnelError (RuntimeError)              a tunnel backend failed
        ├── TunnelBinaryMissingError            the tunnel program is not installed
        ├── TunnelAuthError                     credentials rejected
        ├── TunnelRateLimitedError              the service refused for now
        ├── TunnelTimeoutError                  no URL / no connection in time
        ├── TunnelProtocolError                 unexpected output or answer
        └── TunnelVerificationError             the public URL does not serve /health
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApiKeyRejectedError",
    "AppLoadError",
    "ConfigurationError",
    "HealthCheckError",
    "LifecycleError",
    "PluginConflictError",
    "PluginError",
    "PluginLoadError",
    "PortError",
    "ProcessError",
    "ProcessTimeoutError",
    "ServerStartError",
    "StartInterruptedError",
    "TaskAppError",
    "TaskAppFileNotFoundError",
    "TaskAppRequestError",
    "TunnelAuthError",
    "TunnelBinaryMissingError",
    "TunnelError",
    "TunnelProtocolError",
    "TunnelRateLimitedError",
    "TunnelTimeoutError",
    "TunnelVerificationError",
    "UnknownBackendError",
]


class TaskAppError(Exception):
    """Base class of every taskapp error.

    ``log_tail`` holds the last lines a child process printed (already redacted) when the
    error involves one; ``str(error)`` includes it.
    """

    def __init__(self, message: str, *, log_tail: str | None = None) -> None:
        self.message = message
        self.log_tail = log_tail or None
        super().__init__(self._render())

    def _render(self) -> str:
        if not self.log_tail:
            return self.message
        indented = "\n".join("    " + line for line in self.log_tail.rstrip().splitlines())
        return f"{self.message}\n  last output:\n{indented}"


class ConfigurationError(TaskAppError, ValueError):
    """An argument or option is invalid. Raised before anything is started."""


class UnknownBackendError(ConfigurationError):
    """No server runner or tunnel backend is registered under the requested name."""


class TaskAppFileNotFoundError(TaskAppError, FileNotFoundError):
    """``task_app_path`` does not exist."""


class PluginError(TaskAppError, RuntimeError):
    """A plugin is broken in a way that matters for this run."""


class PluginLoadError(PluginError):
    """A plugin the run depends on failed to import or validate."""


class PluginConflictError(PluginError):
    """Two plugins register a backend under the same name."""


class LifecycleError(TaskAppError, RuntimeError):
    """The call does not fit the instance's state (already running; a blocking ``with``
    inside a running event loop)."""


class StartInterruptedError(LifecycleError):
    """SIGINT/SIGTERM or a cancelled ``async with`` arrived while the task app was starting.

    Everything started so far has been stopped before this is raised.
    """


class AppLoadError(TaskAppError, RuntimeError):
    """The target (path, import string, factory, ...) could not be turned into an ASGI app.

    The user's own exception (ImportError, SyntaxError, ...) is chained as ``__cause__``
    so its traceback is shown.
    """


class PortError(TaskAppError, RuntimeError):
    """The listening socket could not be bound."""


class ServerStartError(TaskAppError, RuntimeError):
    """The server runner failed or died while starting. The cause is chained."""


class HealthCheckError(TaskAppError, RuntimeError):
    """``GET /health`` did not answer 200 within the allowed time."""


class ApiKeyRejectedError(HealthCheckError):
    """``GET /health`` answered 401 or 403: the task app does not accept the API key."""


class TaskAppRequestError(TaskAppError, RuntimeError):
    """A call to a running task app failed: no answer, or not the answer the contract
    promises (the message says which, and what to check)."""


class ProcessError(TaskAppError, RuntimeError):
    """A child process started by the process manager failed."""


class ProcessTimeoutError(ProcessError):
    """A child process did not print the awaited output in time."""


class TunnelError(TaskAppError, RuntimeError):
    """A tunnel backend failed. ``backend`` names it."""

    def __init__(self, message: str, *, backend: str = "", log_tail: str | None = None) -> None:
        self.backend = backend
        super().__init__(message, log_tail=log_tail)


class TunnelBinaryMissingError(TunnelError):
    """The program the tunnel needs is not installed (it is never downloaded)."""


class TunnelAuthError(TunnelError):
    """The tunnel service or server rejected the credentials."""


class TunnelRateLimitedError(TunnelError):
    """The tunnel service refused because of a rate limit; retry later."""


class TunnelTimeoutError(TunnelError):
    """The tunnel did not become ready (URL, connection) in the allowed time."""


class TunnelProtocolError(TunnelError):
    """The tunnel program or service answered something unexpected."""


class TunnelVerificationError(TunnelError):
    """The public URL was handed out but does not serve ``/health``."""


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The one error envelope on the wire: ``{"detail": {"error": {"code", "message"}}}``.

    Task apps (:mod:`taskapp.core.contract`) and the relay answer every error with it, and
    :func:`taskapp.core.transport.error_message` reads it. Never put key material in it.
    (Not in ``__all__``: the package's top level re-exports this module's names.)

    >>> error_body("unauthorized", "wrong worker token")
    {'detail': {'error': {'code': 'unauthorized', 'message': 'wrong worker token'}}}
    """
    return {"detail": {"error": {"code": code, "message": message, **extra}}}
