"""Server runner ``thread``: uvicorn in a background thread of the caller's process.

* Serves on the socket the lifecycle pre-bound (no second bind, no race).
* Startup failures (a crashing lifespan, an app uvicorn refuses) raise at once with the
  original exception chained, instead of silently ending the thread (uvicorn >= 0.50 calls
  ``sys.exit(3)`` on startup failure).
* Stop is fast when idle (the exit request wakes uvicorn's main loop instead of waiting for
  its 0.1 s poll, and shutdown polls connections every few milliseconds) and bounded when a
  request hangs (``graceful_timeout``, after which in-flight tasks are cancelled).
* Never touches the process's logging configuration or signal handlers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from taskapp.core.backends import InProcessApp, ServerContext, ServerRunner
from taskapp.core.errors import ServerStartError
from taskapp.core.hookspecs import RegisterServer, hookimpl
from taskapp.core.logs import get_logger
from taskapp.core.serving import (
    ServingThread,
    fast_exit_server_class,
    serve_in_thread,
    uvicorn_config,
)

__all__ = ["ThreadServer"]

logger = get_logger("taskapp.server.thread")


@dataclasses.dataclass(frozen=True)
class ThreadOptions:
    graceful_timeout: float = 5.0
    """Seconds in-flight requests get to finish on stop before they are cancelled."""
    access_log: bool = False
    log_level: str | None = None
    """Level for uvicorn's own loggers; None leaves them as the host configured them."""
    loop: str = "auto"
    http: str = "auto"
    ws: str = "auto"
    limit_concurrency: int | None = None
    timeout_keep_alive: int = 5


class _LifespanProbe:
    """Wraps the app to keep the exception a crashing lifespan raises (uvicorn only logs it)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.error: BaseException | None = None
        self.stopping = False
        """Set when taskapp stops a startup in progress: the lifespan's CancelledError is
        then expected, and its traceback is not logged as an error."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def quiet_send(message: Any) -> None:
            if self.stopping and str(message.get("type", "")).endswith(".failed"):
                message = {"type": message["type"]}  # without the traceback text
            await send(message)

        try:
            await self.app(scope, receive, quiet_send)
        except BaseException as exc:
            self.error = exc
            raise


async def _idle_app(scope: Any, receive: Any, send: Any) -> None:
    """A placeholder app for :meth:`ThreadServer.prepare` (never served)."""


def _uvicorn_config(app: Any, opts: ThreadOptions) -> Any:
    config = uvicorn_config(
        app,
        log_config=None,
        log_level=opts.log_level,
        # Off for this server only (core/serving.without_access_log), never process-wide.
        access_log=opts.access_log,
        lifespan="auto",
        loop=opts.loop,
        http=opts.http,
        ws=opts.ws,
        timeout_graceful_shutdown=int(opts.graceful_timeout) or None,
        limit_concurrency=opts.limit_concurrency,
        timeout_keep_alive=opts.timeout_keep_alive,
    )
    # timeout_graceful_shutdown is typed int in uvicorn; keep the precise value.
    config.timeout_graceful_shutdown = opts.graceful_timeout
    return config


class ThreadServer(ServerRunner):
    """uvicorn in a daemon thread, on the pre-bound socket."""

    name = "thread"
    Options = ThreadOptions

    def __init__(self, options: ThreadOptions) -> None:
        super().__init__(options)
        self.options: ThreadOptions = options
        self._serving: ServingThread | None = None
        self._probe: _LifespanProbe | None = None

    @classmethod
    def prepare(cls, options: ThreadOptions) -> None:
        """Import uvicorn and the protocol, loop and lifespan classes ``start`` will use."""
        config = _uvicorn_config(_idle_app, options)
        config.get_loop_factory()
        fast_exit_server_class()

    def start(self, ctx: ServerContext) -> None:
        self._probe = _LifespanProbe(ctx.loaded.app)
        # A local reference: a signal handler may call stop() (which forgets it) meanwhile.
        serving = self._serving = serve_in_thread(
            _uvicorn_config(self._probe, self.options), ctx.sock, name=f"taskapp-uvicorn-{ctx.port}"
        )
        if not serving.ready.wait(ctx.start_timeout):
            self.stop()
            raise ServerStartError(
                f"uvicorn did not finish starting within {ctx.timeout_text()} (a slow "
                "lifespan startup?); make startup faster or raise health_check_timeout="
            )
        if not serving.started:
            serving.thread.join(timeout=5)
            raise self._startup_failure(serving)

    def _startup_failure(self, serving: ServingThread) -> ServerStartError:
        probe_error = self._probe.error if self._probe is not None else None
        error_ = serving.error
        if serving.started:
            # The server had started: whatever ended the thread is the story, not the
            # CancelledError the lifespan got when asyncio.Runner cleaned up after it.
            error = ServerStartError(
                "the task app failed to start: the uvicorn server thread ended after the "
                "server had started ("
                + (
                    f"{type(error_).__name__}: {error_}"
                    if error_ is not None
                    else "without an error"
                )
                + ")"
            )
            error.__cause__ = error_
            return error
        cause = probe_error or error_
        if probe_error is not None:
            detail = (
                f"the app's lifespan startup raised {type(probe_error).__name__}: {probe_error}"
            )
        elif isinstance(error_, SystemExit):
            detail = f"uvicorn refused to start (exit code {error_.code}); see its log above"
        elif error_ is not None:
            detail = f"{type(error_).__name__}: {error_}"
        else:
            detail = "the server thread ended without an error"
        error = ServerStartError(f"the task app failed to start: {detail}")
        error.__cause__ = cause
        return error

    def check_alive(self) -> None:
        serving = self._serving
        if serving is not None and not serving.thread.is_alive():
            raise self._startup_failure(serving)

    def stop(self) -> None:
        serving = self._serving
        if serving is None:
            return
        if self._probe is not None and not serving.started:
            self._probe.stopping = True
        serving.stop(self.options.graceful_timeout + 2.0)
        self._serving = None

    @property
    def in_process(self) -> InProcessApp | None:
        """The app as uvicorn calls it (its middleware included), on uvicorn's loop."""
        serving = self._serving
        if serving is None or not serving.started:
            return None
        server = serving.server
        loop = getattr(server, "_loop", None)
        lifespan = getattr(server, "lifespan", None)
        app = getattr(server.config, "loaded_app", None)
        if loop is None or app is None:
            return None
        state = getattr(lifespan, "state", None)
        return InProcessApp(app=app, loop=loop, state=state if isinstance(state, dict) else {})

    @property
    def started(self) -> bool:
        return self._serving is not None and self._serving.started


@hookimpl
def register_servers(register: RegisterServer) -> None:
    register(ThreadServer)
