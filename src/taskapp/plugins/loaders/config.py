"""Loader for ``config=<TaskAppConfig>``: build the app with ``create_task_app``."""

from __future__ import annotations

from taskapp.core.backends import AppTarget, LoadedApp
from taskapp.core.config import TaskAppConfig
from taskapp.core.errors import ConfigurationError
from taskapp.core.hookspecs import hookimpl
from taskapp.core.loading import materialize
from taskapp.plugins.loaders.synth_ai import is_synth_ai_object


@hookimpl(trylast=True)
def load_app(target: AppTarget) -> LoadedApp | None:
    if target.kind != "config":
        return None
    if not isinstance(target.value, TaskAppConfig):
        if is_synth_ai_object(target.value):
            return None  # taskapp.plugins.loaders.synth_ai hosts it
        cls = type(target.value)
        raise ConfigurationError(
            "config= must be a taskapp.TaskAppConfig (or a synth-ai TaskAppConfig), got "
            f"{cls.__module__}.{cls.__qualname__}"
        )
    app, config = materialize(target.value, api_key=target.api_key, origin="config=")
    return LoadedApp(app=app, target=None, origin=target.value, loader="config", config=config)
