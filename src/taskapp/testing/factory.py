"""Start task apps in tests and be sure they are gone afterwards.

:class:`TaskAppFactory` is what the ``taskapp_factory`` fixtures hand to a test:
``taskapp_factory(**kwargs)`` takes :class:`~taskapp.InProcessTaskApp`'s arguments and
returns the started instance. At teardown every instance it started is stopped and
checked: its port can be bound again, the server's and the tunnel's child processes have
exited and no ``taskapp-*`` thread it started is still running. A leftover fails the test
with what was left.

Unless the test passes ``port=``, each instance gets a port that was free a moment ago
(not 8114, which another task app on the machine may hold).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from taskapp.testing.helpers import LeakCheck, assert_released, free_port, pid_alive, wait_until

if TYPE_CHECKING:
    from taskapp.core.lifecycle import InProcessTaskApp

__all__ = ["AsyncTaskAppFactory", "TaskAppFactory"]


class TaskAppFactory:
    """Starts task apps for a test and stops and checks them at :meth:`close`.

    ``check_leaks=False`` skips the leftover checks (for a server that keeps a shared
    instance on purpose, such as Ray with ``stop_policy="delete_app"``). ``ignore_threads``
    adds thread-name prefixes allowed to outlive the instances; ``leak_timeout`` is how
    long (seconds) ports, processes and threads get to go away after the stop.
    """

    def __init__(
        self,
        *,
        check_leaks: bool = True,
        ignore_threads: tuple[str, ...] = (),
        leak_timeout: float = 5.0,
    ) -> None:
        self.apps: list[InProcessTaskApp] = []
        self.check_leaks = check_leaks
        self.leak_timeout = leak_timeout
        self.ignore_threads = ignore_threads
        self._leaks = LeakCheck.snapshot(only_threads=("taskapp-",), check_children=False)
        self._pids: dict[int, set[int]] = {}

    def create(self, **kwargs: Any) -> InProcessTaskApp:
        """The instance, not started (to test a failing start, or start it yourself)."""
        from taskapp.core.lifecycle import InProcessTaskApp

        kwargs.setdefault("port", free_port())
        app = InProcessTaskApp(**kwargs)
        self.apps.append(app)
        return app

    def __call__(self, **kwargs: Any) -> InProcessTaskApp:
        """Create and start an instance; it is stopped and checked at teardown."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            from taskapp.core.errors import LifecycleError

            raise LifecycleError(
                "taskapp_factory blocks the running event loop; in async tests use "
                "`await taskapp_factory_async(...)`"
            )
        app = self.create(**kwargs)
        app.start()
        self._remember(app)
        return app

    def _remember(self, app: InProcessTaskApp) -> None:
        pids = self._pids.setdefault(id(app), set())
        if app.server is not None:
            pids.update(app.server.pids)
        if app.tunnel is not None:
            pids.update(app.tunnel.pids)

    def close(self) -> None:
        """Stop every instance (newest first), then check that nothing is left."""
        errors: list[str] = []
        for app in reversed(self.apps):
            self._remember(app)  # a supervised tunnel may have new processes by now
            try:
                app.stop()
            except Exception as exc:
                errors.append(f"stopping {app!r} raised {type(exc).__name__}: {exc}")
        if self.check_leaks:
            for app in self.apps:
                errors += self._leftovers(app)
            self._leaks.ignore_threads += self.ignore_threads
            if not wait_until(lambda: not self._leaks.problems(), self.leak_timeout, 0.05):
                errors += self._leaks.problems()
        self.apps.clear()
        if errors:
            raise AssertionError("taskapp_factory teardown: " + "; ".join(errors))

    def _leftovers(self, app: InProcessTaskApp) -> list[str]:
        found: list[str] = []
        if app.server is not None:
            host = "::1" if app.host == "::1" else "127.0.0.1"
            try:
                assert_released(app.port, host, timeout=self.leak_timeout)
            except AssertionError as exc:
                found.append(str(exc))
        pids = self._pids.get(id(app), set())
        if not wait_until(lambda: not [p for p in pids if pid_alive(p)], self.leak_timeout):
            alive = sorted(p for p in pids if pid_alive(p))
            found.append(
                f"processes of {app.server_name!r}/{app.tunnel_backend!r} still running: {alive}"
            )
        return found


class AsyncTaskAppFactory(TaskAppFactory):
    """:class:`TaskAppFactory` for async tests: ``app = await taskapp_factory_async(...)``
    (``async with`` semantics: the event loop stays free while the app starts)."""

    async def __call__(self, **kwargs: Any) -> InProcessTaskApp:  # type: ignore[override]
        app = self.create(**kwargs)
        await app.__aenter__()
        self._remember(app)
        return app

    async def aclose(self) -> None:
        """Stop and check everything without blocking the event loop."""
        await asyncio.to_thread(self.close)
