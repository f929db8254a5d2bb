"""Fixtures shared by the relay tests that run a relay in this process."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.helpers import wait_until
from tests.relay._relay_helpers import ErrorRecords, relay_threads


@pytest.fixture
def no_relay_threads() -> Iterator[None]:
    """Fails the test if a relay, agent or scripted-agent thread outlives it."""
    yield
    assert wait_until(lambda: not relay_threads(), 10), f"threads left: {relay_threads()}"


@pytest.fixture
def errors() -> Iterator[ErrorRecords]:
    """The error records logged during the test (``errors.unhandled()``)."""
    handler = ErrorRecords()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
