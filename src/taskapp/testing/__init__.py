"""taskapp's testing kit: a pytest plugin for task-app authors and plugin authors.

Active wherever taskapp is installed (entry point ``pytest11``: ``taskapp.testing``);
also usable explicitly with ``pytest_plugins = ["taskapp.testing"]``. It adds fixtures
only -- nothing runs unless a test asks for it:

``taskapp_factory``
    ``taskapp_factory(**InProcessTaskApp kwargs)`` -> the started instance; stopped at
    teardown, then checked: port released, no child process or ``taskapp-*`` thread left.
``taskapp_factory_async``
    the same for async tests: ``app = await taskapp_factory_async(...)``.
``taskapp_factory_module``
    a module-scoped factory (one app shared by the tests of a module).
``taskapp_leak_check``
    opt-in: fails the test when it leaves threads or child processes running.

And for any test (see docs/testing.md): :func:`assert_task_app_contract`,
:func:`check_task_app_contract`, :class:`TunnelBackendConformance`,
:class:`ServerRunnerConformance`, :func:`registered_plugin`, :func:`free_port`,
:func:`wait_until`, :func:`assert_released`, :class:`LeakCheck`.

``import taskapp`` does not import this package (nor pytest).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from taskapp.testing.assertions import assert_task_app_contract, check_task_app_contract
from taskapp.testing.conformance import ServerRunnerConformance, TunnelBackendConformance
from taskapp.testing.factory import AsyncTaskAppFactory, TaskAppFactory
from taskapp.testing.helpers import (
    LeakCheck,
    assert_released,
    child_pids,
    free_port,
    pid_alive,
    port_is_free,
    registered_plugin,
    wait_until,
)

__all__ = [
    "AsyncTaskAppFactory",
    "LeakCheck",
    "ServerRunnerConformance",
    "TaskAppFactory",
    "TunnelBackendConformance",
    "assert_released",
    "assert_task_app_contract",
    "check_task_app_contract",
    "child_pids",
    "free_port",
    "pid_alive",
    "port_is_free",
    "registered_plugin",
    "taskapp_factory",
    "taskapp_factory_async",
    "taskapp_factory_module",
    "taskapp_leak_check",
    "wait_until",
]


@pytest.fixture
def taskapp_factory() -> Iterator[TaskAppFactory]:
    """``taskapp_factory(**kwargs)``: start an ``InProcessTaskApp`` for this test; it is
    stopped and checked for leftovers (port, children, threads) at teardown."""
    factory = TaskAppFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def taskapp_factory_async() -> Iterator[AsyncTaskAppFactory]:
    """``await taskapp_factory_async(**kwargs)`` in async tests (anyio, pytest-asyncio)."""
    factory = AsyncTaskAppFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def taskapp_factory_module() -> Iterator[TaskAppFactory]:
    """A factory whose task apps live until the end of the test module."""
    factory = TaskAppFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def taskapp_leak_check() -> Iterator[LeakCheck]:
    """Fail the test if it leaves threads or child processes running (opt-in; extend
    ``.ignore_threads`` with prefixes your own libraries keep alive on purpose; ``.timeout``
    is how long they get to end, 5 s by default)."""
    leaks = LeakCheck.snapshot()
    yield leaks
    leaks.assert_clean()
