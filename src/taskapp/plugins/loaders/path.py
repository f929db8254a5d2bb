"""Loader for ``task_app_path=<file.py>``: execute the file and find its app.

It claims ``.py`` files only; other paths are left to loader plugins.

Looks for ``app`` (an ASGI app or TaskAppConfig), then zero-argument app factories
(``create_app``, ``build_app``, ...), then config builders (``build_config``, ...).
"""

from __future__ import annotations

from pathlib import Path

from taskapp.core.backends import AppTarget, LoadedApp
from taskapp.core.hookspecs import hookimpl
from taskapp.core.loading import app_from_module, exec_path


@hookimpl(trylast=True)
def load_app(target: AppTarget) -> LoadedApp | None:
    if target.kind != "path":
        return None
    path = Path(target.value).resolve()
    if path.suffix != ".py" or not path.is_file():
        return None  # not ours: another loader may claim it, else the registry says so
    module = exec_path(path)
    app, config = app_from_module(module, api_key=target.api_key, origin=str(path))
    return LoadedApp(app=app, target=str(path), loader="path", config=config)
