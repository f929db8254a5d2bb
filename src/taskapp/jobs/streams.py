"""Long polls and server-sent event streams without a thread each, and their caps.

* :class:`ChangeHub`: worker threads call :meth:`ChangeHub.notify` when a job changes;
  coroutines waiting on that job wake at once. A waiter also re-reads the store every
  ``fallback`` seconds, so a change no one announced (another process writing the
  database) is seen late, never missed.
* :class:`HoldLimits`: how many streams and long polls may be open at once, per key and
  in all. Past the per-key cap the answer is 429, past the total 503, both with
  ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

from taskapp.core.errors import TaskAppError

__all__ = ["Busy", "ChangeHub", "HoldLimits"]


class Busy(TaskAppError):
    """Too many streams or long polls open (``status`` 429 per key, 503 in all)."""

    def __init__(self, message: str, *, status: int, retry_after: float) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class ChangeHub:
    """Wakes coroutines waiting on a job when a thread reports a change to it."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._any: set[asyncio.Future[None]] = set()  # waiting for a change to any job
        self.generation = 0  # bumped (on the loop) by every change

    def notify(self, job_id: str) -> None:
        """Thread-safe: ``job_id`` changed."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(self._wake, job_id)

    def _wake(self, job_id: str) -> None:
        self.generation += 1
        woken, self._any = self._any, set()
        for future in (*self._waiters.pop(job_id, set()), *woken):
            if not future.done():
                future.set_result(None)

    async def wait(self, job_id: str, since: int, *, within: float) -> None:
        """Return when ``job_id`` changes, after ``within`` seconds, or at once if any
        change came since generation ``since`` (read before the caller's last read)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        if self.generation != since:
            return
        future: asyncio.Future[None] = loop.create_future()
        waiters = self._waiters.setdefault(job_id, set())
        waiters.add(future)
        try:
            await asyncio.wait_for(future, within)
        except TimeoutError:
            pass
        finally:
            waiters.discard(future)
            if not waiters and self._waiters.get(job_id) is waiters:
                del self._waiters[job_id]

    async def wait_any(self, since: int, *, within: float) -> None:
        """Like :meth:`wait`, for a change to any job."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        if self.generation != since:
            return
        future: asyncio.Future[None] = loop.create_future()
        self._any.add(future)
        try:
            await asyncio.wait_for(future, within)
        except TimeoutError:
            pass
        finally:
            self._any.discard(future)

    def attach(self) -> None:
        """Bind to the running loop (so notifications before the first wait count)."""
        self._loop = asyncio.get_running_loop()


class HoldLimits:
    """Open streams and long polls, per key and in all."""

    def __init__(self, *, total: int = 1024, per_key: int = 512, retry_after: float = 5.0):
        self.total = total
        self.per_key = per_key
        self.retry_after = retry_after
        self._lock = threading.Lock()
        self._open = 0
        self._by_key: dict[str, int] = {}

    @property
    def open(self) -> int:
        return self._open

    def acquire(self, key_id: str) -> None:
        with self._lock:
            if self._open >= self.total:
                raise Busy(
                    f"the backend holds {self._open} streams and long polls, its limit; "
                    f"retry in {self.retry_after:g} s",
                    status=503,
                    retry_after=self.retry_after,
                )
            mine = self._by_key.get(key_id, 0)
            if mine >= self.per_key:
                raise Busy(
                    f"this key holds {mine} streams and long polls, the most one key may; "
                    f"close some, or retry in {self.retry_after:g} s",
                    status=429,
                    retry_after=self.retry_after,
                )
            self._open += 1
            self._by_key[key_id] = mine + 1

    def release(self, key_id: str) -> None:
        with self._lock:
            self._open -= 1
            left = self._by_key.get(key_id, 1) - 1
            if left > 0:
                self._by_key[key_id] = left
            else:
                self._by_key.pop(key_id, None)

    @contextlib.contextmanager
    def hold(self, key_id: str) -> Iterator[None]:
        self.acquire(key_id)
        try:
            yield
        finally:
            self.release(key_id)
