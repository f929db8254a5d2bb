"""The hooks a taskapp plugin can implement.

Mark implementations with :data:`taskapp.hookimpl`. Hooks are called with keyword
arguments; an implementation may accept any subset of a hook's arguments, and must not
declare defaults. Hooks are synchronous: an ``async def`` implementation is refused with
a :class:`~taskapp.core.errors.PluginError` naming the plugin, and so is a pluggy wrapper
(``wrapper=True`` / ``hookwrapper=True``) when the plugin is registered. Every hook is
documented with its exact signature in ``docs/plugin_hooks.md``; the registry calls the
event hooks through one typed method each (:class:`taskapp.core.plugins.HookEvents`).

Phases, in the order they fire during ``InProcessTaskApp`` start and stop::

    discovery   register_servers, register_tunnels        (once per plugin manager)
    (cli)       register_commands                         (when ``taskapp`` needs them)
    load        load_app                                  (first non-None result wins)
    events      app_loaded -> server_started -> tunnel_opened -> task_app_started
                url_changed                               (whenever a tunnel's URL changes)
                before_shutdown                           (before the tunnel closes)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import argparse

    from taskapp.core._types import TaskAppLike
    from taskapp.core.backends import AppTarget, LoadedApp, ServerRunner, Tunnel, TunnelBackend

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]

PROJECT_NAME = "taskapp"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Marker for hook implementations: ``@taskapp.hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

RegisterServer = Callable[["type[ServerRunner]"], None]
RegisterTunnel = Callable[["type[TunnelBackend]"], None]


# -- discovery ---------------------------------------------------------------------------


@hookspec
def register_servers(register: RegisterServer) -> None:
    """Register server runner classes: call ``register(RunnerClass)`` once per runner.

    The class's ``name`` is the value users pass as ``server=``. Two plugins registering
    the same name is a :class:`~taskapp.core.errors.PluginConflictError` when that name
    is used. Called once, when the plugin manager is first needed.
    """


@hookspec
def register_tunnels(register: RegisterTunnel) -> None:
    """Register tunnel backend classes: call ``register(BackendClass)`` once per backend.

    The class's ``name`` is the value users pass as ``tunnel_backend=`` (or
    ``tunnel_mode=``). Called once, when the plugin manager is first needed.
    """


@hookspec
def register_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add commands to ``taskapp``: ``subparsers.add_parser(NAME, help=...)`` per command,
    its options, and ``set_defaults(run=FUNCTION)``, where ``FUNCTION(args)`` returns the
    exit status (``int``), as the builtin commands do (datasette's ``register_commands``).

    Called after the builtin commands are added, and only when ``taskapp`` needs the
    plugins' commands: its own ``--help`` and usage, or a command that is not a builtin
    one (so ``taskapp serve ...`` never imports a plugin to parse its arguments). A name
    already taken (by a builtin command or another plugin) is refused: that plugin's
    failure is logged and listed by ``taskapp plugins``; every other command still works.
    """


# -- load --------------------------------------------------------------------------------


@hookspec(firstresult=True)
def load_app(target: AppTarget) -> LoadedApp | None:
    """Turn ``target`` into a :class:`~taskapp.core.backends.LoadedApp`, or return None.

    Stops at the first non-None result. The builtin loaders are ``trylast``, so a
    third-party loader sees every target first and can claim it (for example a ``.py``
    file that builds its app in an unusual way). Raise
    :class:`~taskapp.core.errors.AppLoadError` (chaining the user's exception) when the
    target is yours but broken.
    """


# -- lifecycle events (1:N, return values ignored) -----------------------------------------


@hookspec
def app_loaded(task_app: TaskAppLike, loaded: LoadedApp) -> None:
    """The target was loaded; nothing is running yet. ``task_app`` is the InProcessTaskApp
    (:class:`~taskapp.core._types.TaskAppLike` says what hooks may read)."""


@hookspec
def server_started(task_app: TaskAppLike, server: ServerRunner) -> None:
    """The server runner started and ``/health`` answered 200 on the local URL."""


@hookspec
def tunnel_opened(task_app: TaskAppLike, tunnel: Tunnel) -> None:
    """The tunnel is open (and verified, unless skipped); ``tunnel.url`` is public."""


@hookspec
def task_app_started(task_app: TaskAppLike) -> None:
    """Everything is up and ``task_app.url`` is set; fires just before ``on_start``."""


@hookspec
def url_changed(task_app: TaskAppLike, old_url: str, new_url: str) -> None:
    """A supervised tunnel reconnected with a different public URL."""


@hookspec
def before_shutdown(task_app: TaskAppLike) -> None:
    """Shutdown begins: fires after ``on_stop``, before the tunnel closes and the server
    stops. Also fires when a signal triggers the cleanup."""
