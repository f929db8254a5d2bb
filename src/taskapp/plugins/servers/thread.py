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

import asyncio
import dataclasses
import socket
import threading
from typing import Any

from taskapp.core.backends import ServerContext, ServerRunner
from taskapp.core.errors import ServerStartError
from taskapp.core.hookspecs import RegisterServer, hookimpl
from taskapp.core.logs import get_logger
from taskapp.core.serving import fast_exit_server_class, without_access_log

__all__ = ["ThreadServer", "without_access_log"]

# The old private name (the subprocess child used it); the class lives in core/serving.py.
_server_class = fast_exit_server_class

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
    import uvicorn

    config = uvicorn.Config(
        app,
        log_config=None,
        log_level=opts.log_level,
        # uvicorn switches its access log off by emptying the process-wide "uvicorn.access"
        # logger (no handlers, no propagation), which would silence the host's own uvicorn
        # servers too; start() switches it off for this server only (without_access_log).
        access_log=True,
        lifespan="auto",
        loop=opts.loop,
        http=opts.http,
        ws=opts.ws,
        timeout_graceful_shutdown=int(opts.graceful_timeout) or None,
        limit_concurrency=opts.limit_concurrency,
        timeout_keep_alive=opts.timeout_keep_alive,
    )
    # timeout_graceful_shutdown is typed int in uvicorn; keep the precise value.
    config.timeout_graceful_shutdown = opts.graceful_timeout  # type: ignore[assignment]
    return config


class ThreadServer(ServerRunner):
    """uvicorn in a daemon thread, on the pre-bound socket."""

    name = "thread"
    Options = ThreadOptions

    def __init__(self, options: ThreadOptions) -> None:
        super().__init__(options)
        self.options: ThreadOptions = options
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._probe: _LifespanProbe | None = None
        self._started = False

    @classmethod
    def prepare(cls, options: ThreadOptions) -> None:
        """Import uvicorn and the protocol, loop and lifespan classes ``start`` will use."""
        config = _uvicorn_config(_idle_app, options)
        config.load()
        config.get_loop_factory()
        fast_exit_server_class()

    def start(self, ctx: ServerContext) -> None:
        self._probe = _LifespanProbe(ctx.loaded.app)
        config = _uvicorn_config(self._probe, self.options)
        config.load()
        if not self.options.access_log:
            config.http_protocol_class = without_access_log(config.http_protocol_class)
        server = fast_exit_server_class()(config)
        server.on_started = self._mark_started
        self._server = server
        # A local reference: a signal handler may call stop() (which forgets the thread)
        # while this method waits.
        thread = self._thread = threading.Thread(
            target=self._run,
            args=(config, ctx.sock),
            name=f"taskapp-uvicorn-{ctx.port}",
            daemon=True,
        )
        thread.start()
        if not self._ready.wait(ctx.start_timeout):
            self.stop()
            raise ServerStartError(
                f"uvicorn did not finish starting within {ctx.timeout_text()} (a slow "
                "lifespan startup?); make startup faster or raise health_check_timeout="
            )
        if not self._started:
            thread.join(timeout=5)
            raise self._startup_failure()

    def _mark_started(self) -> None:
        self._started = True
        self._ready.set()

    async def _serve(self, sock: socket.socket) -> None:
        server = self._server
        try:
            await server.serve(sockets=[sock])
        except BaseException:
            # The server crashed: drop its connections now. Closing the loop does not close
            # them on the plain asyncio loop, so a client would wait out its read timeout.
            for connection in list(server.server_state.connections):
                transport = getattr(connection, "transport", None)
                if transport is not None:
                    transport.abort()
            for listener in getattr(server, "servers", ()):  # none yet if startup failed
                listener.close()
            raise

    def _run(self, config: Any, sock: socket.socket) -> None:
        factory = getattr(config, "get_loop_factory", lambda: None)()
        try:
            with asyncio.Runner(loop_factory=factory) as runner:
                runner.run(self._serve(sock))
        except BaseException as exc:  # SystemExit(3) from uvicorn on startup failure
            self._error = exc
            if self._started:
                logger.error("uvicorn thread ended with %r", exc)
        finally:
            self._ready.set()

    def _startup_failure(self) -> ServerStartError:
        probe_error = self._probe.error if self._probe is not None else None
        if self._started:
            # The server had started: whatever ended the thread is the story, not the
            # CancelledError the lifespan got when asyncio.Runner cleaned up after it.
            error = ServerStartError(
                "the task app failed to start: the uvicorn server thread ended after the "
                "server had started ("
                + (
                    f"{type(self._error).__name__}: {self._error}"
                    if self._error is not None
                    else "without an error"
                )
                + ")"
            )
            error.__cause__ = self._error
            return error
        cause = probe_error or self._error
        if probe_error is not None:
            detail = (
                f"the app's lifespan startup raised {type(probe_error).__name__}: {probe_error}"
            )
        elif isinstance(self._error, SystemExit):
            detail = f"uvicorn refused to start (exit code {self._error.code}); see its log above"
        elif self._error is not None:
            detail = f"{type(self._error).__name__}: {self._error}"
        else:
            detail = "the server thread ended without an error"
        error = ServerStartError(f"the task app failed to start: {detail}")
        error.__cause__ = cause
        return error

    def check_alive(self) -> None:
        thread = self._thread
        if thread is not None and not thread.is_alive():
            raise self._startup_failure()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        if self._probe is not None and not self._started:
            self._probe.stopping = True
        server.request_exit()
        budget = self.options.graceful_timeout + 2.0
        thread.join(timeout=budget)
        if thread.is_alive():
            server.force_exit = True
            server.request_exit()
            thread.join(timeout=2.0)
        if thread.is_alive():
            logger.warning("uvicorn thread %s did not stop within %.1fs", thread.name, budget + 2)
        self._server = None
        self._thread = None

    @property
    def started(self) -> bool:
        return self._started


@hookimpl
def register_servers(register: RegisterServer) -> None:
    register(ThreadServer)
