"""Loader for ``app=<ASGI app>``: serve the object as it is."""

from __future__ import annotations

from taskapp.core.backends import AppTarget, LoadedApp
from taskapp.core.hookspecs import hookimpl
from taskapp.core.loading import materialize


@hookimpl(trylast=True)
def load_app(target: AppTarget) -> LoadedApp | None:
    if target.kind != "app":
        return None
    app, config = materialize(target.value, api_key=target.api_key, origin="app=")
    return LoadedApp(app=app, target=None, origin=target.value, loader="app", config=config)
