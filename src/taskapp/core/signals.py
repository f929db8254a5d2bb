"""Chained SIGINT/SIGTERM handling while task apps are running.

Nothing is installed at import. While at least one task app is active and it was entered
on the main thread, SIGINT and SIGTERM first clean up every active task app (``on_stop``,
tunnel closed, server stopped; a start still in progress gives up at its next step and
what it started is undone), then behave as the handler that was there before would:

* a Python handler the host installed is called;
* SIGINT with Python's default handler raises KeyboardInterrupt;
* SIGTERM with the default disposition ends the process with the conventional status
  (killed by SIGTERM, exit status 143 in a shell);
* an ignored signal stays ignored.

The previous handlers are restored when the last task app stops (unless someone replaced
ours in the meantime: theirs is left in place). Off the main thread nothing is installed.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

from taskapp.core.logs import get_logger

__all__ = ["Stoppable", "activate", "deactivate"]

logger = get_logger("taskapp")

SIGNALS = (signal.SIGINT, signal.SIGTERM)

Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class Stoppable(Protocol):
    def stop_for_signal(self, signum: int) -> None: ...


_lock = threading.RLock()
_active: list[Stoppable] = []
_previous: dict[int, Handler] = {}


def activate(instance: Stoppable) -> bool:
    """Track ``instance``; install the handlers if this is the first one on the main thread.

    Returns True when the handlers are (now) installed.
    """
    with _lock:
        _active.append(instance)
        if _previous:
            return True
        if threading.current_thread() is not threading.main_thread():
            return False
        for signum in SIGNALS:
            try:
                _previous[signum] = signal.getsignal(signum)
                signal.signal(signum, _handle)
            except (ValueError, OSError):  # not the main interpreter / unsupported
                _previous.pop(signum, None)
        return bool(_previous)


def deactivate(instance: Stoppable) -> None:
    """Forget ``instance``; restore the previous handlers when none is left."""
    with _lock:
        try:
            _active.remove(instance)
        except ValueError:
            return
        if not _active:
            _restore()


def _restore() -> None:
    if threading.current_thread() is not threading.main_thread():
        # signal.signal only works on the main thread; restore at the next main-thread exit.
        return
    for signum, previous in list(_previous.items()):
        try:
            if signal.getsignal(signum) is _handle:
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        except (ValueError, OSError):
            pass
        _previous.pop(signum, None)


def _handle(signum: int, frame: FrameType | None) -> None:
    with _lock:
        instances = list(reversed(_active))
        previous = _previous.get(signum)
    name = signal.Signals(signum).name
    if instances:
        logger.info("%s received: stopping %d task app(s)", name, len(instances))
    for instance in instances:
        try:
            instance.stop_for_signal(signum)
        except Exception:
            logger.warning("cleanup after %s failed", name, exc_info=True)
    with _lock:
        _active.clear()
        _restore()
    _chain(signum, frame, previous)


def _chain(signum: int, frame: FrameType | None, previous: Handler) -> None:
    if callable(previous):
        previous(signum, frame)
        return
    if previous == signal.SIG_IGN:
        return
    # SIG_DFL or unknown (set from C): do what the default would.
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
