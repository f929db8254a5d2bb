"""Fixtures and pytest hooks shared by every test folder; plain helpers are in tests/helpers.py."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import free_port, server_stack, taskapp_threads, wait_until

# The testing kit's fixtures too, also where the installed metadata predates the pytest11
# entry point.
pytest_plugins = ["taskapp.testing"]


def pytest_report_header(config: Any) -> str:
    from taskapp.core.serving import describe_stack

    return f"taskapp server stack: {describe_stack()}"


def pytest_configure(config: Any) -> None:
    # A shell starts a background command (`cmd &` without job control) with SIGINT ignored,
    # and children inherit that: the Ctrl-C tests would then see nothing. Restore Python's
    # handler here (children started after this get SIGINT's default back).
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # .ci/run sets TASKAPP_EXPECT_STACK so a run meant for the plain stack cannot silently
    # run on uvloop/httptools (which once hid two real failures).
    expected = os.environ.get("TASKAPP_EXPECT_STACK")
    if expected and expected != server_stack():
        raise pytest.UsageError(
            f"TASKAPP_EXPECT_STACK={expected} but this environment has the {server_stack()} "
            "stack (uvloop/httptools installed?); run in the venv .ci/run creates"
        )


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """Every test must leave no taskapp server thread behind (module fixtures may keep theirs)."""
    before = set(taskapp_threads())

    def new_server_threads() -> list[threading.Thread]:
        return [t for t in taskapp_threads() if "uvicorn" in t.name and t not in before]

    yield
    assert wait_until(lambda: not new_server_threads(), 10), (
        f"taskapp threads leaked: {new_server_threads()}"
    )
