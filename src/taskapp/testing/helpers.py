"""Small helpers for tests of task apps and taskapp plugins (no pytest needed).

* :func:`free_port`, :func:`port_is_free`, :func:`assert_released` -- ports;
* :func:`wait_until` -- poll a condition with a deadline;
* :func:`registered_plugin` -- register a plugin object for the duration of a ``with``;
* :class:`LeakCheck` -- what threads and child processes a block left running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from taskapp.core import proctable

__all__ = [
    "DEFAULT_IGNORED_THREADS",
    "LeakCheck",
    "assert_released",
    "child_pids",
    "free_port",
    "pid_alive",
    "port_is_free",
    "registered_plugin",
    "wait_until",
]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the kernel reported free a moment ago (for a test that needs a number)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when ``port`` can be bound and listened on right now (what "released" means).

    ``SO_REUSEADDR`` is set, as servers do: connections left in TIME_WAIT do not count.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(1)
        except OSError:
            return False
        return True


def wait_until(
    predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.02
) -> bool:
    """Call ``predicate`` until it returns something true or ``timeout`` seconds pass.

    Returns whether it became true (the last call is made at the deadline), so a test
    writes ``assert wait_until(lambda: ..., 5), "what did not happen"``.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def assert_released(port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> None:
    """Fail unless ``port`` on ``host`` can be bound again within ``timeout`` seconds."""
    if not wait_until(lambda: port_is_free(port, host), timeout):
        holders = ""
        with contextlib.suppress(Exception):
            from taskapp.core.ports import find_listeners

            found = find_listeners(port)
            holders = " (held by " + ", ".join(f.describe() for f in found) + ")" if found else ""
        raise AssertionError(f"port {port} on {host} is still in use after {timeout:g} s{holders}")


@contextlib.contextmanager
def registered_plugin(plugin: object, name: str) -> Iterator[object]:
    """Register ``plugin`` (a module or an object with ``@taskapp.hookimpl`` functions)
    under ``name`` in the process-wide registry for the ``with`` block, then unregister it.

    >>> with registered_plugin(my_plugin_module, "my-tunnel"):       # doctest: +SKIP
    ...     with InProcessTaskApp(config=config, tunnel_mode="mine"):
    ...         ...
    """
    from taskapp.core.plugins import get_registry

    registry = get_registry()
    if registry.pm.has_plugin(name):
        raise ValueError(f"a plugin named {name!r} is already registered; pick another name")
    registry.register(plugin, name)
    try:
        yield plugin
    finally:
        registry.unregister(name)


# -- processes -------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    if Path(proctable.PROC).is_dir():
        info = proctable.process(pid)
        return info is not None and info.alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def child_pids(root: int | None = None) -> set[int]:
    """Live descendants of ``root`` (default: this process). Empty where there is no /proc."""
    return {info.pid for info in proctable.descendants(os.getpid() if root is None else root)}


def _command(pid: int) -> str:
    raw = proctable.argv(pid)
    if not raw:
        return "?"
    # The program only: the rest of argv may hold someone else's secrets.
    return os.path.basename(raw[0].decode(errors="replace")) or "?"


#: Threads that outlive their users by design, not leaks: asyncio's default executor,
#: ``concurrent.futures`` workers, and taskapp's one process-wide child spawner
#: (``taskapp.core.processes``: children are forked from it so their death signal holds).
DEFAULT_IGNORED_THREADS: tuple[str, ...] = ("asyncio_", "ThreadPoolExecutor-", "taskapp-spawner")


@dataclasses.dataclass
class LeakCheck:
    """Threads and child processes present now, to compare with later.

    >>> leaks = LeakCheck.snapshot()
    >>> # ... start and stop something ...
    >>> leaks.assert_clean(timeout=5)

    ``ignore_threads`` are thread-name prefixes that may outlive the block (a library's
    own long-lived pool, for example); by default asyncio's and ``concurrent.futures``'
    worker pools.
    """

    threads: set[threading.Thread] = dataclasses.field(repr=False)
    children: set[int] = dataclasses.field(repr=False)
    ignore_threads: tuple[str, ...] = DEFAULT_IGNORED_THREADS
    only_threads: tuple[str, ...] | None = None
    check_children: bool = True
    #: seconds :meth:`assert_clean` waits by default
    timeout: float = 5.0

    @classmethod
    def snapshot(
        cls,
        *,
        ignore_threads: tuple[str, ...] = DEFAULT_IGNORED_THREADS,
        only_threads: tuple[str, ...] | None = None,
        check_children: bool = True,
    ) -> LeakCheck:
        """Record what runs now. ``only_threads``: consider only threads whose names start
        with one of these prefixes (None: every thread)."""
        return cls(
            set(threading.enumerate()),
            child_pids() if check_children else set(),
            tuple(ignore_threads),
            None if only_threads is None else tuple(only_threads),
            check_children,
        )

    def new_threads(self) -> list[threading.Thread]:
        found = []
        for thread in threading.enumerate():
            if thread in self.threads or not thread.is_alive():
                continue
            if self.ignore_threads and thread.name.startswith(self.ignore_threads):
                continue
            if self.only_threads is not None and not thread.name.startswith(self.only_threads):
                continue
            found.append(thread)
        return found

    def new_children(self) -> list[int]:
        if not self.check_children:
            return []
        return sorted(pid for pid in child_pids() - self.children if pid_alive(pid))

    def problems(self) -> list[str]:
        found = [f"thread {thread.name!r} still running" for thread in self.new_threads()]
        found += [
            f"child process {pid} ({_command(pid)}) still running" for pid in self.new_children()
        ]
        return found

    def assert_clean(self, timeout: float | None = None) -> None:
        """Fail, naming them, when threads or children started since the snapshot are still
        alive after ``timeout`` seconds (default: ``self.timeout``)."""
        timeout = self.timeout if timeout is None else timeout
        if not wait_until(lambda: not self.problems(), timeout, interval=0.05):
            raise AssertionError(f"left running after {timeout:g} s: " + "; ".join(self.problems()))
