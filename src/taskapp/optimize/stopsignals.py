"""Ctrl-C and SIGTERM during a run: the first one stops it gracefully, a second aborts."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from taskapp.core.logs import get_logger
from taskapp.core.signals import capture_signals, hand_back

logger = get_logger("taskapp.optimize")

STOP_SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def first_signal_stops(event: threading.Event, caught: list[int]) -> Iterator[None]:
    """On the main thread: the first Ctrl-C or SIGTERM sets ``event`` (and is appended to
    ``caught``); a second one goes to the previous handler (abort, as before).

    Installed on top of the lifecycle's handlers, so a SIGTERM does not stop an
    in-process task app under the running optimization: the run ends after the current
    step and saves its result, then the task app is stopped as usual.
    """
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        if not event.is_set():
            event.set()
            caught.append(signum)
            logger.warning(
                "%s: stopping after the current step and saving the best prompt so far "
                "(%s again to abort)",
                signal.Signals(signum).name,
                "Ctrl-C" if signum == signal.SIGINT else "SIGTERM",
            )
            return
        hand_back(signum, frame, previous[signum])

    with capture_signals(handler, STOP_SIGNALS) as installed:
        previous.update(installed)
        yield
