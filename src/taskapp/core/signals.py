"""SIGINT/SIGTERM handling: the one place taskapp installs signal handlers.

:func:`capture_signals` installs a handler for the length of a ``with`` block (main thread
only; the previous handlers come back afterwards unless someone replaced ours), and
:func:`call_previous` does what a previous handler would have done. The CLI commands
(``cli/_common.SignalFlag``) and ``taskapp optimize`` use them; the lifecycle uses the
process-wide chain below, which ends in :func:`call_previous` too.

Chained handling while task apps are running: nothing is installed at import. While at
least one task app is active and it was entered on the main thread, SIGINT and SIGTERM
first clean up every active task app (``on_stop``, tunnel closed, server stopped; a start
still in progress gives up at its next step and what it started is undone), then behave as
the handler that was there before would:

* a Python handler the host installed is called;
* SIGINT with Python's default handler raises KeyboardInterrupt;
* SIGTERM with the default disposition ends the process with the conventional status
  (killed by SIGTERM, exit status 143 in a shell);
* an ignored signal stays ignored.

The previous handlers are restored when the last task app stops (unless someone replaced
ours in the meantime: theirs is left in place). Off the main thread nothing is installed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, Protocol

from taskapp.core.logs import get_logger

__all__ = [
    "Stoppable",
    "activate",
    "call_previous",
    "capture_signals",
    "deactivate",
    "hand_back",
    "imports_off_the_main_thread",
]

logger = get_logger("taskapp")

SIGNALS = (signal.SIGINT, signal.SIGTERM)

Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


@contextlib.contextmanager
def capture_signals(
    handler: Callable[[int, FrameType | None], Any], signals: tuple[int, ...] = SIGNALS
) -> Iterator[dict[int, Handler]]:
    """Handle ``signals`` (SIGINT and SIGTERM) with ``handler`` inside the block.

    Yields the previous handlers (signal number -> handler) for :func:`call_previous`; on
    exit each is restored unless the handler was replaced meanwhile (the replacement stays).
    Off the main thread (or in a sub-interpreter) nothing is installed and ``{}`` is yielded.

    >>> import signal
    >>> seen = []
    >>> with capture_signals(lambda signum, frame: seen.append(signum)):
    ...     signal.raise_signal(signal.SIGTERM)
    >>> seen == [signal.SIGTERM], signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    (True, True)
    """
    previous: dict[int, Handler] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in signals:
            try:
                previous[signum] = signal.getsignal(signum)
                signal.signal(signum, handler)
            except (ValueError, OSError):  # not the main interpreter / unsupported
                previous.pop(signum, None)
    try:
        yield previous
    finally:
        for signum, before in previous.items():
            with contextlib.suppress(ValueError, OSError):
                if signal.getsignal(signum) == handler:
                    signal.signal(signum, before if before is not None else signal.SIG_DFL)


def call_previous(signum: int, frame: FrameType | None, previous: Handler) -> None:
    """Do what ``previous`` (a handler :func:`capture_signals` replaced) would have done.

    A Python handler is called; an ignored signal stays ignored; otherwise the default:
    SIGINT raises KeyboardInterrupt, SIGTERM (any other) is re-raised with the default
    disposition, so the process ends as if killed by it (exit status 143 in a shell).
    """
    if callable(previous):
        previous(signum, frame)
        return
    if previous == signal.SIG_IGN:
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def hand_back(signum: int, frame: FrameType | None, previous: Handler) -> None:
    """Give ``signum`` back to ``previous`` (installed again, so later signals go straight
    to it) and do what it would have done with this one (:func:`call_previous`)."""
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
    call_previous(signum, frame, previous)


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
    call_previous(signum, frame, previous)


_import_guard_lock = threading.Lock()
_import_guard_depth = 0
_original_signal: Any = None
_importing_threads: dict[int, int] = {}  # thread id -> nesting depth of guarded imports


@contextlib.contextmanager
def imports_off_the_main_thread() -> Iterator[None]:
    """Import user code that installs signal handlers at import, without letting it.

    Some task-app libraries (synth-ai 0.7's ``synth_ai.sdk.localapi``) call
    ``signal.signal`` for SIGINT and SIGTERM when imported: off the main thread that
    raises ``ValueError`` and the import fails (taskapp loads apps on a worker thread in
    ``async with InProcessTaskApp``, ``taskapp eval``, a notebook); on the main thread it
    replaces taskapp's handlers, so Ctrl-C and SIGTERM no longer stop ``taskapp serve``.
    Inside this block such calls made by the importing thread install nothing (logged at
    INFO): SIGINT and SIGTERM on the main thread, every signal off it. Other threads'
    calls (taskapp's own handlers) are unaffected.
    """
    global _import_guard_depth, _original_signal
    with _import_guard_lock:
        if _import_guard_depth == 0:
            _original_signal = signal.signal
            original = _original_signal

            def guarded(signalnum: Any, handler: Any) -> Any:
                on_main = threading.current_thread() is threading.main_thread()
                importing = threading.get_ident() in _importing_threads
                if not importing or (on_main and signalnum not in SIGNALS):
                    return original(signalnum, handler)  # not from the imported code
                logger.info(
                    "skipped a handler for signal %s installed by code taskapp was importing "
                    "(taskapp handles SIGINT and SIGTERM itself)",
                    signalnum,
                )
                return signal.getsignal(signalnum)

            signal.signal = guarded
        _import_guard_depth += 1
        _importing_threads[threading.get_ident()] = (
            _importing_threads.get(threading.get_ident(), 0) + 1
        )
    try:
        yield
    finally:
        with _import_guard_lock:
            ident = threading.get_ident()
            _importing_threads[ident] -= 1
            if not _importing_threads[ident]:
                del _importing_threads[ident]
            _import_guard_depth -= 1
            if _import_guard_depth == 0:
                signal.signal = _original_signal
                _original_signal = None
