"""Blocking calls made from a thread that runs an event loop (Jupyter, IPython, async code).

A notebook cell runs inside ipykernel's event loop, so ``asyncio.run`` and anything built on
it fail there ("cannot be called from a running event loop"). :func:`call_blocking` runs
such a call on a helper thread and waits for it, so the sync forms of the API
(``with InProcessTaskApp(...)``, ``start()``/``stop()``, :func:`taskapp.evaluate`,
:func:`taskapp.optimize.run`) behave the same inside and outside a running loop.

Waiting blocks the caller's loop for as long as the call takes. That is safe for anything
taskapp serves itself (its servers run their own loops in their own threads or processes);
it is not for a task app served *on the caller's loop*, which cannot answer meanwhile: use
the ``async`` forms there (``async with``, ``aevaluate``, ``run_async``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["call_blocking", "in_running_loop"]

T = TypeVar("T")


def in_running_loop() -> bool:
    """True when this thread is running an event loop (a notebook cell, a coroutine)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def call_blocking(function: Callable[..., T], *args: Any, name: str = "taskapp-call") -> T:
    """``function(*args)``; on a helper thread when this thread runs an event loop.

    Exceptions (also ``KeyboardInterrupt`` and ``SystemExit``) are re-raised in the caller.
    """
    if not in_running_loop():
        return function(*args)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = function(*args)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        error: BaseException = box["error"]
        raise error
    value: T = box["value"]
    return value
