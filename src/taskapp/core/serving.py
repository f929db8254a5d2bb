"""The one uvicorn ``Server`` subclass taskapp runs, and the per-server access-log switch.

:func:`fast_exit_server_class` returns ``FastExitServer`` (built on first use, so importing
this module does not import uvicorn). It is used by the ``thread`` runner, the
``subprocess`` runner's child (which adds a SIGTERM/SIGINT wake-up) and the relay server.
:func:`without_access_log` switches uvicorn's access log off for one server only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from typing import Any

from taskapp.core.logs import get_logger

__all__ = ["describe_stack", "fast_exit_server_class", "without_access_log"]

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


@functools.cache
def fast_exit_server_class() -> type[Any]:  # noqa: C901 -- complexity 20 before issue 21; split when next changed
    import uvicorn

    class FastExitServer(uvicorn.Server):
        """uvicorn.Server whose exit request wakes the main loop at once.

        ``on_started`` (if set) is called once the sockets serve; ``request_exit()`` is
        thread-safe; shutdown polls connections every few milliseconds and cancels what
        outlives ``timeout_graceful_shutdown``.
        """

        _wake: asyncio.Event | None = None
        _loop: asyncio.AbstractEventLoop | None = None
        on_started: Any = None

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
