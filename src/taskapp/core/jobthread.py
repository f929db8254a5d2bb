"""One long-lived thread that runs jobs one at a time: the process spawner's and the Ray
runner's.

Both need a thread that outlives the work it does: Linux's parent-death signal fires when
the *thread* that forked a child exits, so children are forked from one long-lived thread
(:mod:`taskapp.core.processes`), and Ray kills a local instance's processes when the
thread that called ``ray.init()`` ends (:mod:`taskapp.plugins.servers.ray`).

>>> worker = JobThread("taskapp-doctest")
>>> worker.run(lambda: 6 * 7)
42
>>> worker.call(lambda: "done", timeout=5)
'done'
>>> worker.close(); worker.alive
False
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["JobThread", "JobTimeout"]

T = TypeVar("T")

_Job = tuple[Callable[[], Any], "concurrent.futures.Future[Any]"]


class JobTimeout(Exception):
    """A job did not finish in time (it may still be running)."""


class JobThread:
    """A daemon thread named ``name`` running submitted jobs in order.

    A job submitted from the thread itself runs at once (no deadlock). ``pid`` is the
    process that started the thread: after a fork the child must make its own.
    """

    def __init__(self, name: str) -> None:
        self.pid = os.getpid()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, future = job
            if future.set_running_or_notify_cancel():
                _settle(future, fn)

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Queue ``fn``; its future holds the result or the exception."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        if threading.current_thread() is self.thread:
            future.set_running_or_notify_cancel()
            _settle(future, fn)
            return future
        self._jobs.put((fn, future))
        return future

    def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the thread and wait for it, however long it takes."""
        return self.submit(fn).result()

    def call(self, fn: Callable[[], T], timeout: float) -> T:
        """Run ``fn`` on the thread; :class:`JobTimeout` after ``timeout`` seconds (a job
        that has not started by then is dropped). RuntimeError when the thread ended."""
        if threading.current_thread() is self.thread:
            return fn()
        if not self.thread.is_alive():
            raise RuntimeError(f"the {self.thread.name} thread has ended")
        future = self.submit(fn)
        done, _ = concurrent.futures.wait([future], timeout=max(0.0, timeout))
        if not done:
            future.cancel()  # drops it if it has not started yet
            raise JobTimeout
        return future.result()

    def close(self, timeout: float = 5.0) -> None:
        """End the thread after the jobs queued before; wait up to ``timeout`` seconds."""
        if not self.thread.is_alive():
            return
        self._jobs.put(None)
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)


def _settle(future: concurrent.futures.Future[Any], fn: Callable[[], Any]) -> None:
    try:
        future.set_result(fn())
    except BaseException as exc:
        future.set_exception(exc)
