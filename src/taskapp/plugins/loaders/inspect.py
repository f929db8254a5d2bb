"""Loader plugin ``inspect``: Inspect AI tasks as task apps (docs/inspect.md).

Takes ``named`` targets (:func:`taskapp.core.importing.looks_like_named_target`):
``evals.py@my_task`` (a ``@task`` function in a file, what ``inspect eval`` takes) and
``package/name`` (a task an installed package registers with Inspect, such as
``inspect_evals/gsm8k`` or taskapp's own ``taskapp/intents``). Inspect is imported only
here, once such a target is loaded; without it (``pip install '.[inspect]'``) the error
says how to install it.
"""

from __future__ import annotations

from taskapp.core.backends import AppTarget, LoadedApp
from taskapp.core.errors import AppLoadError
from taskapp.core.hookspecs import hookimpl
from taskapp.core.importing import install_command
from taskapp.core.loading import materialize


@hookimpl(trylast=True)
def load_app(target: AppTarget) -> LoadedApp | None:
    if target.kind != "named":
        return None
    spec = str(target.value)
    try:
        import inspect_ai  # noqa: F401 - only to say clearly when it is missing
    except ImportError:
        raise AppLoadError(
            f"{spec!r} names an Inspect AI task, and Inspect is not installed: "
            f"{install_command('inspect')}"
        ) from None
    from taskapp.plugins.inspect_tasks.app import build_config

    app, config = materialize(build_config(spec), api_key=target.api_key, origin=spec)
    return LoadedApp(app=app, target=spec, loader="inspect", config=config)
