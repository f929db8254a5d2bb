"""The one uvicorn ``Server`` subclass taskapp runs, serving it in a thread, and the
per-server access-log switch. The home of ``uvicorn.Server`` and ``uvicorn.Config``
(ruff's banned-api rule keeps them here; see docs/architecture.md).

:func:`fast_exit_server_class` returns ``FastExitServer`` (built on first use, so importing
this module does not import uvicorn). It is used by the ``thread`` runner, the
``subprocess`` runner's child (which adds a SIGTERM/SIGINT wake-up), the relay server and
the job backend; its ``on_signal`` hook lets the relay drain and the backend stop its jobs
without signal handlers of their own. :func:`serve_in_thread` runs one in a daemon thread
(the ``thread`` runner, ``start_relay_thread``). :func:`without_access_log` switches
uvicorn's access log off for one server only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

from taskapp.core.logs import get_logger

__all__ = [
    "ServingThread",
    "describe_stack",
    "fast_exit_server_class",
    "serve_in_thread",
    "uvicorn_config",
    "without_access_log",
]

logger = get_logger("taskapp.server.thread")


def describe_stack() -> str:
    """The stack uvicorn's ``auto`` settings pick in this environment, for test headers and
    benchmark reports: ``"plain (asyncio event loop, h11)"`` after a plain install, or the
    fast modules found (the ``ray`` extra brings uvloop and httptools)."""
    import importlib.util

    fast = [name for name in ("uvloop", "httptools") if importlib.util.find_spec(name)]
    if not fast:
        return "plain (asyncio event loop, h11)"
    return " + ".join(fast) + " (uvicorn's auto picks them)"


if TYPE_CHECKING:
    from uvicorn import Server as _ServerBase
else:
    _ServerBase = object


class _FastExit(_ServerBase):
    """The behaviour of ``FastExitServer`` (a mixin, so this module imports uvicorn only
    when the class is first built; under type checking it is a ``uvicorn.Server``)."""

    _wake: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _signalled = False
    #: called once the sockets serve
    on_started: Callable[[], None] | None = None
    #: called with the signal number on the first SIGINT/SIGTERM while the server runs on
    #: the main thread; it decides how to stop (call ``request_exit()`` when ready). A
    #: second signal exits at once. None: uvicorn's own handling (exit, then re-raise the
    #: signal once the server stopped).
    on_signal: Callable[[int], None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        if self.should_exit:  # request_exit() came before the loop existed
            self._wake.set()
        # An exit request ends a startup in progress (a slow lifespan startup) at once;
        # uvicorn itself would wait for the lifespan, however long it takes.
        starting = asyncio.ensure_future(super().startup(sockets=sockets))
        # uvicorn's sys.exit(3) on a failed startup leaves the loop from inside the task;
        # mark its exception retrieved (the runner reports it), or asyncio logs it again.
        starting.add_done_callback(lambda task: task.cancelled() or task.exception())
        woken = asyncio.ensure_future(self._wake.wait())
        await asyncio.wait({starting, woken}, return_when=asyncio.FIRST_COMPLETED)
        woken.cancel()
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            # `started` stays False, so uvicorn's serve() returns without a shutdown,
            # and asyncio.Runner cancels the lifespan task as it closes the loop.
            self.should_exit = True
            return
        starting.result()
        if self.on_started is not None and not self.should_exit:
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
        """Stop serving (thread-safe): wakes the main loop at once."""
        self.should_exit = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            # RuntimeError: the loop closed between the check and the call.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's handlers; with ``on_signal`` set, the one home of signal handlers
        (:func:`taskapp.core.signals.capture_signals`) calling it."""
        hook = self.on_signal
        if hook is None:
            with super().capture_signals():
                yield
            return
        from taskapp.core.signals import capture_signals

        def handle(signum: int, frame: FrameType | None) -> None:
            if self._signalled:  # the second signal: now
                self.force_exit = True
                self.request_exit()
                return
            self._signalled = True
            assert hook is not None
            hook(signum)

        with capture_signals(handle):
            yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn's own shutdown sleeps a fixed 0.1 s and polls every 0.1 s; this one
        # polls every few milliseconds and cancels what outlives the grace period.
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        await self._wait_for_connections()
        for server in self.servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), timeout=1.0)
        if not self.force_exit:
            await self.lifespan.shutdown()

    async def _wait_for_connections(self) -> None:
        loop = asyncio.get_running_loop()
        grace = self.config.timeout_graceful_shutdown
        deadline = loop.time() + (grace if grace is not None else 5.0)
        delay = 0.001
        while (self.server_state.connections or self.server_state.tasks) and not self.force_exit:
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
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)


@functools.cache
def fast_exit_server_class() -> type[Any]:
    """``FastExitServer``: the one ``uvicorn.Server`` subclass taskapp runs.

    Its exit request (``request_exit()``, thread-safe) wakes the main loop at once;
    ``on_started`` is called once the sockets serve; shutdown polls connections every few
    milliseconds and cancels what outlives ``timeout_graceful_shutdown``; ``on_signal``
    replaces uvicorn's signal handling on the main thread (see :class:`_FastExit`).
    """
    import uvicorn

    class FastExitServer(_FastExit, uvicorn.Server):
        pass

    return FastExitServer


class ServingThread:
    """A uvicorn server serving a pre-bound socket in a daemon thread (see
    :func:`serve_in_thread`): ``server``, ``thread``, ``started`` and ``error`` (what ended
    the thread: ``SystemExit(3)`` when uvicorn refused to start, a crash after)."""

    def __init__(self, server: Any, sock: socket.socket, name: str) -> None:
        self.server = server
        self.sock = sock
        self.started = False
        self.error: BaseException | None = None
        #: set once the server serves or its thread ended, whichever comes first
        self.ready = threading.Event()
        previous = server.on_started

        def on_started() -> None:
            if previous is not None:
                previous()
            self.started = True
            self.ready.set()

        server.on_started = on_started
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def wait_started(self, timeout: float) -> bool:
        """Wait until the server serves (True), its thread ended first (False, see
        ``error``) or ``timeout`` seconds passed (False, still starting)."""
        self.ready.wait(timeout)
        return self.started

    def stop(self, grace: float) -> bool:
        """Ask the server to exit; after ``grace`` seconds force it (2 s more). True when
        the thread ended."""
        self.server.request_exit()
        self.thread.join(timeout=grace)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.server.request_exit()
            self.thread.join(timeout=2.0)
        if self.thread.is_alive():
            logger.warning(
                "uvicorn thread %s did not stop within %.1fs", self.thread.name, grace + 2
            )
            return False
        return True

    def _run(self) -> None:
        factory = getattr(self.server.config, "get_loop_factory", lambda: None)()
        try:
            with asyncio.Runner(loop_factory=factory) as runner:
                runner.run(self._serve())
        except BaseException as exc:  # SystemExit(3) from uvicorn on startup failure
            self.error = exc
            if self.started:
                logger.error("uvicorn thread ended with %r", exc)
        finally:
            self.ready.set()

    async def _serve(self) -> None:
        server = self.server
        try:
            await server.serve(sockets=[self.sock])
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


def serve_in_thread(
    config: Any, sock: socket.socket, *, name: str, server: Any = None
) -> ServingThread:
    """Serve ``config`` (a loaded ``uvicorn.Config``) on the pre-bound ``sock`` in a daemon
    thread named ``name``, with a ``FastExitServer`` (or ``server``, one built on it);
    returns at once: ``wait_started(timeout)`` tells when it serves. The one "uvicorn in a
    thread" of the ``thread`` runner and the relay's ``start_relay_thread``."""
    serving = ServingThread(
        server if server is not None else fast_exit_server_class()(config), sock, name
    )
    serving.thread.start()
    return serving


def uvicorn_config(app: Any, *, access_log: bool = False, load: bool = True, **options: Any) -> Any:
    """The ``uvicorn.Config`` of a taskapp server (the one place one is built): ``options``
    are uvicorn's own; loaded, with the access log switched off for this server only
    unless ``access_log`` (:func:`without_access_log`). ``load=False`` (a process that runs
    one server and pickles its config to workers: the ``subprocess`` runner's child)
    leaves it unloaded and passes ``access_log`` to uvicorn, which then applies it to the
    whole process."""
    import uvicorn

    config: Any = uvicorn.Config(app, access_log=access_log or load, **options)
    if load:
        config.load()
        if not access_log:
            config.http_protocol_class = without_access_log(config.http_protocol_class)
    return config


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
