"""Loader plugin ``synth_containers``: a synth-containers ``Container`` as a task app.

``InProcessTaskApp(app=container)`` (or the app its ``fastapi()`` built) is claimed here;
factories, ``.py`` files and import strings returning or defining one reach the same
mechanics through :func:`taskapp.core.loading.materialize` (see
:mod:`taskapp.core.synth_containers`). synth-containers itself is never imported: a
``Container`` only exists when the user's code imported it (the ``containers`` extra
installs it).
"""

from __future__ import annotations

from taskapp.core.backends import AppTarget, LoadedApp
from taskapp.core.hookspecs import hookimpl
from taskapp.core.synth_containers import build_app, is_container, is_container_app

__all__ = ["load_app"]


@hookimpl(trylast=True)
def load_app(target: AppTarget) -> LoadedApp | None:
    """``app=<Container>`` or ``app=<Container.fastapi()>``, and ``config=<Container>``."""
    if target.kind not in ("app", "config"):
        return None
    if not (is_container(target.value) or is_container_app(target.value)):
        return None
    app = build_app(target.value, api_key=target.api_key, origin=f"{target.kind}=")
    return LoadedApp(app=app, target=None, origin=target.value, loader="synth_containers")
