"""Loader for ``config_factory=<callable>``: call it; it returns a TaskAppConfig or an app."""

from __future__ import annotations

from taskapp.core.backends import AppTarget, LoadedApp
from taskapp.core.errors import ConfigurationError
from taskapp.core.hookspecs import hookimpl
from taskapp.core.loading import call_factory, materialize


@hookimpl(trylast=True)
def load_app(target: AppTarget) -> LoadedApp | None:
    if target.kind != "config_factory":
        return None
    factory = target.value
    if not callable(factory):
        raise ConfigurationError(f"config_factory= must be callable, got {type(factory).__name__}")
    name = getattr(factory, "__qualname__", "config_factory")
    result = call_factory(factory, f"config_factory {name}()")
    app, config = materialize(result, api_key=target.api_key, origin=f"config_factory {name}()")
    return LoadedApp(app=app, target=None, origin=factory, loader="factory", config=config)
