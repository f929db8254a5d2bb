"""Loader plugin ``synth_ai``: task apps written with synth-ai (see docs/compat.md).

The mechanics (recognising synth-ai objects by their class's module, building and hosting
them) live in :mod:`taskapp.core.synth_ai`, because :func:`taskapp.core.loading.materialize`
uses them for every loader; this module is the plugin and keeps the old names importable.
"""

from __future__ import annotations

from taskapp.core.backends import AppTarget, LoadedApp
from taskapp.core.hookspecs import hookimpl
from taskapp.core.synth_ai import (
    SynthAiHost,
    build_app,
    is_synth_ai_app,
    is_synth_ai_config,
    is_synth_ai_object,
    unhostable_message,
)

__all__ = [
    "SynthAiHost",
    "build_app",
    "is_synth_ai_app",
    "is_synth_ai_config",
    "is_synth_ai_object",
    "load_app",
    "unhostable_message",
]


@hookimpl(trylast=True)
def load_app(target: AppTarget) -> LoadedApp | None:
    """``config=<synth-ai TaskAppConfig>`` (factories, files and import strings reach
    :func:`build_app` through :func:`taskapp.core.loading.materialize`)."""
    if target.kind != "config" or not is_synth_ai_object(target.value):
        return None
    app = build_app(target.value, api_key=target.api_key, origin="config=")
    return LoadedApp(app=app, target=None, origin=target.value, loader="synth_ai")
