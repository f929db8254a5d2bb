"""Loader for ``"package.module:attr"`` import strings (``app="pkg.mod:app"``, CLI targets).

The attribute may be an ASGI app, a TaskAppConfig, a zero-argument factory of either, or
a module (then it is searched like a ``.py`` path).
"""

from __future__ import annotations

from taskapp.core.backends import AppTarget, LoadedApp
from taskapp.core.hookspecs import hookimpl
from taskapp.core.loading import import_from_string, load_object


@hookimpl(trylast=True)
def load_app(target: AppTarget) -> LoadedApp | None:
    if target.kind != "import_string":
        return None
    spec = str(target.value)
    obj = import_from_string(spec)
    app, config = load_object(obj, api_key=target.api_key, origin=spec)
    return LoadedApp(app=app, target=spec, loader="import_string", config=config)
