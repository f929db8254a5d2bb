"""What ``taskapp optimize`` runs against: a URL, or a task app it starts in-process.

``open_target(target)`` accepts:

* an ``http://`` / ``https://`` URL of a running task app (key: ``api_key=`` or
  ``$ENVIRONMENT_API_KEY``);
* an :class:`~taskapp.InProcessTaskApp`, running (used as is) or not (started, then
  stopped);
* a :class:`~taskapp.TaskAppConfig`, an ASGI app, or a zero-argument factory of either;
* anything ``taskapp serve`` accepts: a ``.py`` path, a ``"module:attr"`` import string,
  or a bundled example's name (``support-intents``).

Everything it starts is stopped when the ``with`` block ends, also on errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

from taskapp.core.secrets import register_secret

__all__ = ["Endpoint", "open_target"]


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where the task app answers, the key it accepts, and a label for messages."""

    url: str
    api_key: str | None
    label: str
    started_here: bool = False
    #: a taskapp relay's worker token, sent with every request when set
    worker_token: str | None = None


def _in_process(target: Any) -> Any:
    """An (unstarted) InProcessTaskApp for a non-URL target (one resolution for the whole
    package: :func:`taskapp.core.loading.target_kwargs`)."""
    from taskapp.core.lifecycle import InProcessTaskApp
    from taskapp.core.loading import target_kwargs
    from taskapp.examples import BUNDLED

    return InProcessTaskApp(**target_kwargs(target, aliases=BUNDLED))


def _describe(target: Any, task_app: Any) -> str:
    """'examples/app.py', 'pkg.mod:attr' or 'config build_config': what the user gave."""
    if isinstance(target, str | os.PathLike):
        return os.fspath(target)
    app_target = getattr(task_app, "_target", None)
    kind, value = getattr(app_target, "kind", None), getattr(app_target, "value", None)
    if kind in ("path", "import_string") and value is not None:
        return str(value)
    describe = getattr(app_target, "describe", None)
    return str(describe()) if callable(describe) else str(task_app.local_url)


@contextlib.contextmanager
def open_target(
    target: Any, *, api_key: str | None = None, worker_token: str | None = None
) -> Iterator[Endpoint]:
    """Yield the :class:`Endpoint` of ``target``, starting (and later stopping) it if needed."""
    from taskapp.core.lifecycle import InProcessTaskApp

    if isinstance(target, str) and target.startswith(("http://", "https://")):
        key = api_key if api_key is not None else os.environ.get("ENVIRONMENT_API_KEY") or None
        register_secret(key)
        register_secret(worker_token)
        yield Endpoint(
            url=target.rstrip("/"),
            api_key=key,
            label=target.rstrip("/"),
            worker_token=worker_token or None,
        )
        return
    task_app = target if isinstance(target, InProcessTaskApp) else _in_process(target)
    if task_app.running:
        yield Endpoint(url=task_app.local_url, api_key=task_app.api_key, label=repr(task_app))
        return
    task_app.start()
    # Messages name what the user gave (a file, module:attr), not the app's temporary URL.
    label = _describe(target, task_app)
    try:
        yield Endpoint(
            url=task_app.local_url,
            api_key=task_app.api_key,
            label=label,
            started_here=True,
        )
    finally:
        task_app.stop()
