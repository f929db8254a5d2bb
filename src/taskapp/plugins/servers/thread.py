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
import contextlib
import dataclasses
import functools
import socket
import threading
from typing import Any

from taskapp.core.backends import ServerContext, ServerRunner
from taskapp.core.errors import ServerStartError
from taskapp.core.hookspecs import RegisterServer, hookimpl
from taskapp.core.logs import get_logger

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

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        except BaseException as exc:
            self.error = exc
            raise


@functools.cache
def _server_class() -> type[Any]:
    import uvicorn

    class FastExitServer(uvicorn.Server):
        """uvicorn.Server whose exit request wakes the main loop at once."""

        _wake: asyncio.Event | None = None
        _loop: asyncio.AbstractEventLoop | None = None
        on_started: Any = None

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            self._loop = asyncio.get_running_loop()
            self._wake = asyncio.Event()
            await super().startup(sockets=sockets)
            if self.on_started is not None:
                self.on_started()

        async def main_loop(self) -> None:
            counter = 0
            should_exit = await self.on_tick(counter)
            while not should_exit:
                counter = (counter + 1) % 864000
                assert self._wake is not None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=0.1)
                should_exit = await self.on_tick(counter)

        def request_exit(self) -> None:
            self.should_exit = True
            loop, wake = self._loop, self._wake
            if loop is not None and wake is not None and not loop.is_closed():
                # RuntimeError: the loop closed between the check and the call.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(wake.set)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            # uvicorn's own shutdown sleeps a fixed 0.1 s and polls every 0.1 s; this one
            # polls every few milliseconds and cancels what outlives the grace period.
            for server in self.servers:
                server.close()
            for sock in sockets or []:
                sock.close()
            for connection in list(self.server_state.connections):
                connection.shutdown()
            loop = asyncio.get_running_loop()
            grace = self.config.timeout_graceful_shutdown
            deadline = loop.time() + (grace if grace is not None else 5.0)
            delay = 0.001
            while (
                self.server_state.connections or self.server_state.tasks
            ) and not self.force_exit:
                if loop.time() >= deadline:
                    logger.warning(
                        "cancelling %d request(s) still running after the %.1fs grace period",
                        len(self.server_state.tasks),
                        grace,
                    )
                    for task in list(self.server_state.tasks):
                        task.cancel(msg="taskapp: graceful shutdown timeout exceeded")
                    for connection in list(self.server_state.connections):
                        transport = getattr(connection, "transport", None)
                        if transport is not None:
                            transport.abort()
                    await asyncio.sleep(0)
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.02)
            for server in self.servers:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(server.wait_closed(), timeout=1.0)
            if not self.force_exit:
                await self.lifespan.shutdown()

    return FastExitServer


@functools.cache
def without_access_log(protocol: type[Any]) -> type[Any]:
    """``protocol`` (uvicorn's h11 or httptools class) with its access log off.

    Use it instead of ``uvicorn.Config(access_log=False)``, which empties the process-wide
    ``uvicorn.access`` logger and so silences every other uvicorn server in the process.
    """

    class QuietProtocol(protocol):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.access_log = False

    QuietProtocol.__name__ = QuietProtocol.__qualname__ = f"Quiet{protocol.__name__}"
    return QuietProtocol


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
        _server_class()

    def start(self, ctx: ServerContext) -> None:
        self._probe = _LifespanProbe(ctx.loaded.app)
        config = _uvicorn_config(self._probe, self.options)
        config.load()
        if not self.options.access_log:
            config.http_protocol_class = without_access_log(config.http_protocol_class)
        server = _server_class()(config)
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
                f"uvicorn did not finish starting within {ctx.start_timeout:g}s (a slow "
                "lifespan startup?); make startup faster or raise health_check_timeout="
            )
        if not self._started:
            thread.join(timeout=5)
            raise self._startup_failure()

    def _mark_started(self) -> None:
        self._started = True
        self._ready.set()

    def _run(self, config: Any, sock: socket.socket) -> None:
        factory = getattr(config, "get_loop_factory", lambda: None)()
        try:
            with asyncio.Runner(loop_factory=factory) as runner:
                runner.run(self._server.serve(sockets=[sock]))
        except BaseException as exc:  # SystemExit(3) from uvicorn on startup failure
            self._error = exc
            if self._started:
                logger.error("uvicorn thread ended with %r", exc)
        finally:
            self._ready.set()

    def _startup_failure(self) -> ServerStartError:
        probe_error = self._probe.error if self._probe is not None else None
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
