"""Running a :class:`RelayAgent` in its own thread and event loop, so user code that
blocks the caller's loop cannot starve it."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
from typing import Any

from taskapp.core.errors import TunnelTimeoutError
from taskapp.core.logs import get_logger
from taskapp.relay.agent.config import AgentConfig
from taskapp.relay.agent.connection import RelayAgent

__all__ = ["AgentThread"]

logger = get_logger("taskapp.tunnel.relay")


class AgentThread:
    """Runs a :class:`RelayAgent` in its own thread and event loop.

    ``start(timeout)`` returns once ATTACH_ACK arrived (or raises a TunnelError);
    ``stop()`` is idempotent and bounded; ``lost`` is set when the lease is gone for good.
    """

    def __init__(self, config: AgentConfig, *, name: str = "taskapp-relay-agent") -> None:
        self.config = config
        self.agent: RelayAgent | None = None
        self.lost = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = threading.Event()
        self._done = threading.Event()  # set once the agent's run ended
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    @property
    def lost_reason(self) -> str | None:
        return self.agent.lost_reason if self.agent is not None else None

    @property
    def alive(self) -> bool:
        return self._started.is_set() and not self._done.is_set()

    def _main(self) -> None:
        factory: Any = None
        with contextlib.suppress(ImportError):
            # importlib: mypy on a plain install (no uvloop) must not flag the import.
            factory = importlib.import_module("uvloop").new_event_loop
        with (
            asyncio.Runner(loop_factory=factory) as runner,
            contextlib.suppress(asyncio.CancelledError),
        ):
            runner.run(self._amain())

    async def _amain(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self.agent = RelayAgent(self.config)
            self._task = asyncio.current_task()
            self._started.set()
            try:
                await self.agent.run()
            finally:
                if self.agent.lost_reason:
                    self.lost.set()
        finally:
            self._done.set()

    def _launch(self) -> None:
        """The agent on its own thread and loop; or, when the task app is served in this
        process (``config.in_process``), on the server's loop, which it calls directly."""
        target = self.config.in_process
        if target is None:
            self._thread.start()
            return
        with contextlib.suppress(RuntimeError):  # the server's loop is closed
            future = asyncio.run_coroutine_threadsafe(self._amain(), target.loop)
            future.add_done_callback(lambda _: self._done.set())

    def start(self, timeout: float) -> None:
        self._launch()
        self._started.wait(5)
        agent, loop = self.agent, self._loop
        if agent is None or loop is None:
            raise TunnelTimeoutError("the relay agent did not start", backend="relay")
        ready = asyncio.run_coroutine_threadsafe(_wait_ready(agent, timeout), loop)
        with contextlib.suppress(TimeoutError):
            ready.result(timeout + 1)
        if agent.ready.is_set():
            return
        self.stop()
        if agent.first_error is not None:
            raise agent.first_error
        last = agent.last_error or "no answer"
        raise TunnelTimeoutError(
            f"the relay agent did not attach within {timeout:g}s (last error: {last}); "
            f"check that the relay at {self.config.agent_url} is reachable",
            backend="relay",
        )

    def stop(self, timeout: float = 5.0) -> None:
        loop, agent = self._loop, self.agent
        if loop is not None and agent is not None and self.alive:
            with contextlib.suppress(Exception):  # a closed loop: nothing runs there
                future = asyncio.run_coroutine_threadsafe(agent.shutdown(), loop)
                future.result(timeout)
            task = self._task
            if task is not None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(task.cancel)
            if self._loop_thread_is_not_this_one():
                self._done.wait(timeout)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _loop_thread_is_not_this_one(self) -> bool:
        with contextlib.suppress(RuntimeError):
            return asyncio.get_running_loop() is not self._loop
        return True


async def _wait_ready(agent: RelayAgent, seconds: float) -> None:
    ready = asyncio.ensure_future(agent.ready.wait())
    failed = asyncio.ensure_future(agent.failed.wait())
    try:
        await asyncio.wait({ready, failed}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ready.cancel()
        failed.cancel()
