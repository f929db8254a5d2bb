"""The plugin registry: builtins and installed plugins, found through pluggy.

Builtins are registered from :data:`DEFAULT_PLUGINS` (module names, so a source checkout
works without being installed); third-party plugins from the entry-point group
``taskapp``::

    [project.entry-points.taskapp]
    mytunnel = "taskapp_mytunnel.plugin"

Each entry point is loaded and validated (``check_pending``) in its own ``try``: a broken
plugin is recorded as a :class:`PluginFailure` (distribution, version, error) and does not
stop unrelated work. It becomes fatal when the user selects a name nobody else provides
(the error names the broken plugins) or with ``TASKAPP_STRICT_PLUGINS=1``.

Environment:

``TASKAPP_LOAD_PLUGINS``     comma list of distributions whose entry points load (empty: none)
``TASKAPP_DISABLE_PLUGINS``  comma list of plugin names (entry-point names, distributions or
                             builtin module names) to block
``TASKAPP_STRICT_PLUGINS``   ``1``: any plugin failure is an error
``TASKAPP_TRACE_PLUGINS``    ``1``: log every hook call to the ``taskapp.plugins`` debug log

Nothing here runs at ``import taskapp``: :func:`get_registry` builds the registry on first
use. The builtin modules import neither fastapi nor uvicorn at module level, so listing
plugins stays fast.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.metadata
import inspect
import os
import re
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

from taskapp._version import __version__
from taskapp.core import hookspecs
from taskapp.core._types import TaskAppLike
from taskapp.core.backends import (
    AppTarget,
    LoadedApp,
    ServerRunner,
    TargetKind,
    Tunnel,
    TunnelBackend,
)
from taskapp.core.errors import (
    AppLoadError,
    PluginConflictError,
    PluginError,
    PluginLoadError,
    TaskAppError,
    UnknownBackendError,
)
from taskapp.core.importing import (
    install_command,
    looks_like_import_string,
    looks_like_named_target,
)
from taskapp.core.logs import get_logger

if TYPE_CHECKING:
    import argparse

__all__ = [
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "HookEvents",
    "PluginFailure",
    "PluginRegistry",
    "get_registry",
    "load_target_string",
    "reset_registry",
]

logger = get_logger("taskapp.plugins")

ENTRY_POINT_GROUP = "taskapp"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "taskapp.plugins.loaders.app",
    "taskapp.plugins.loaders.config",
    "taskapp.plugins.loaders.factory",
    "taskapp.plugins.loaders.path",
    "taskapp.plugins.loaders.import_string",
    "taskapp.plugins.loaders.synth_ai",
    "taskapp.plugins.loaders.synth_containers",
    "taskapp.plugins.loaders.inspect",
    "taskapp.plugins.servers.thread",
    "taskapp.plugins.servers.subprocess",
    "taskapp.plugins.servers.ray",
    "taskapp.plugins.tunnels.local",
    "taskapp.plugins.tunnels.preconfigured",
    "taskapp.plugins.tunnels.ssh",
    "taskapp.plugins.tunnels.cloudflare",
    "taskapp.plugins.tunnels.relay",
)

#: Names users may ask for that no builtin provides yet, with what would provide them.
KNOWN_ELSEWHERE: Mapping[str, str] = {}


@dataclasses.dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded, validated or registered."""

    name: str
    distribution: str | None
    version: str | None
    error: str
    traceback: str

    def describe(self) -> str:
        origin = f" ({self.distribution} {self.version})" if self.distribution else ""
        return f"{self.name}{origin}: {self.error}"


@dataclasses.dataclass(frozen=True)
class _Provided:
    cls: type[Any]
    plugin: str


def _env_list(name: str) -> list[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return [item.strip() for item in raw.split(",") if item.strip()]


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _short_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class PluginRegistry:
    """All loaded plugins, and the servers, tunnels and loaders they provide.

    Build one with :func:`get_registry`. The methods are a typed facade over
    ``pm.hook``: they attribute every exception to the plugin that raised it.
    """

    def __init__(
        self,
        *,
        builtins: Iterable[str] = DEFAULT_PLUGINS,
        load_entry_points: bool = True,
        strict: bool | None = None,
    ) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.strict = _truthy("TASKAPP_STRICT_PLUGINS") if strict is None else strict
        self.failures: list[PluginFailure] = []
        self.distributions: dict[str, tuple[str, str]] = {}  # plugin name -> (dist, version)
        self.servers: dict[str, _Provided] = {}
        self.tunnels: dict[str, _Provided] = {}
        self.conflicts: dict[tuple[str, str], list[str]] = {}
        self._blocked = set(_env_list("TASKAPP_DISABLE_PLUGINS") or [])
        self._trace = _truthy("TASKAPP_TRACE_PLUGINS")
        self.events = HookEvents(self)
        for module_name in builtins:
            self._register_builtin(module_name)
        if load_entry_points:
            self._load_entry_points()
        self._collect()
        if self.strict and (self.failures or self.conflicts):
            problems = [f.describe() for f in self.failures] + [
                f"{kind} {name!r} registered by {', '.join(owners)}"
                for (kind, name), owners in self.conflicts.items()
            ]
            raise PluginLoadError(
                "TASKAPP_STRICT_PLUGINS is set and plugins failed: " + "; ".join(problems)
            )

    # -- loading -----------------------------------------------------------------------

    def _is_blocked(self, *names: str | None) -> bool:
        return any(n in self._blocked for n in names if n)

    def _register_builtin(self, module_name: str) -> None:
        if self._is_blocked(module_name, module_name.rsplit(".", 1)[-1]):
            self.pm.set_blocked(module_name)
            return
        module = importlib.import_module(module_name)
        self.pm.register(module, name=module_name)
        self.pm.check_pending()
        self._refuse_wrappers(module_name)

    def _load_entry_points(self) -> None:
        allowed = _env_list("TASKAPP_LOAD_PLUGINS")
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist_name = ep.dist.name if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            if allowed is not None and dist_name not in allowed and ep.name not in allowed:
                continue
            if self._is_blocked(ep.name, dist_name):
                self.pm.set_blocked(ep.name)
                continue
            if self.pm.is_blocked(ep.name):
                continue
            if self.pm.has_plugin(ep.name):
                owner = self.distributions.get(ep.name)
                if owner is None or owner[0] != dist_name:
                    # Two distributions use one entry-point name (the same distribution
                    # seen twice on sys.path is not a conflict): the first one wins.
                    first = f"{owner[0]} {owner[1]}" if owner else "a builtin plugin"
                    self._fail(
                        ep.name,
                        dist_name,
                        version,
                        PluginConflictError(
                            f"the plugin name {ep.name!r} is already taken by {first}; this "
                            "one is skipped. Uninstall one of them, or block one with "
                            "TASKAPP_DISABLE_PLUGINS=<distribution>"
                        ),
                    )
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                self._fail(ep.name, dist_name, version, exc)
                continue
            try:
                self._register_checked(plugin, ep.name)
            except Exception as exc:
                self._fail(ep.name, dist_name, version, exc)
                continue
            if dist_name is not None and version is not None:
                self.distributions[ep.name] = (dist_name, version)

    def register(self, plugin: object, name: str) -> None:
        """Register a plugin object (a module or any object with ``@hookimpl`` methods) at
        run time, e.g. from a notebook or a test, without packaging it.

        Its hooks are validated at once (``check_pending``) and the servers and tunnels it
        registers become available immediately.
        """
        self._register_checked(plugin, name)
        self._recollect()

    def _register_checked(self, plugin: object, name: str) -> None:
        """Register and validate ``plugin``; short, typed errors instead of pluggy's.

        A name already taken is a :class:`PluginConflictError` naming both plugins (not
        pluggy's dump of every registered plugin); an unknown hook name is a
        :class:`PluginError` with the closest hook name.
        """
        existing = self.pm.get_plugin(name)
        if existing is not None or self.pm.has_plugin(name):
            raise PluginConflictError(
                f"cannot register {_describe_plugin(plugin)} as plugin {name!r}: that name is "
                f"already taken by {_describe_plugin(existing)}. Unregister the first one "
                f"(registry.unregister({name!r})) or choose another name"
            )
        other_name = self.pm.get_name(plugin)
        if other_name is not None:
            raise PluginConflictError(
                f"{_describe_plugin(plugin)} is already registered as plugin {other_name!r}; "
                f"register it once (or unregister {other_name!r} first)"
            )
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(self._validation_message(exc, name)) from None
        try:
            self.pm.check_pending()
            self._refuse_wrappers(name)
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=name)
            raise PluginError(self._validation_message(exc, name)) from None
        except Exception:
            self.pm.unregister(name=name)
            raise

    def _validation_message(self, exc: pluggy.PluginValidationError, name: str) -> str:
        text = str(exc.args[0]) if exc.args else str(exc)
        match = re.search(r"unknown hook '([^']+)'", text)
        if match is None:
            return f"plugin {name!r} is invalid: {text}"
        hook = match.group(1)
        known = sorted(
            n
            for n in dir(self.pm.hook)
            if not n.startswith("_") and getattr(self.pm.hook, n).spec is not None
        )
        close = difflib.get_close_matches(hook, known, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return (
            f"plugin {name!r} implements unknown hook {hook!r}.{hint} The hooks are: "
            f"{', '.join(known)} (docs/plugin_hooks.md)"
        )

    def _refuse_wrappers(self, name: str) -> None:
        """Raise :class:`PluginError` if plugin ``name`` has a pluggy wrapper
        (``wrapper=True`` / ``hookwrapper=True``): taskapp calls each implementation
        itself, one at a time, so a wrapper would never run; refusing beats skipping it."""
        plugin = self.pm.get_plugin(name)
        for caller in self.pm.get_hookcallers(plugin) or []:
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin and (impl.wrapper or impl.hookwrapper):
                    kind = "wrapper=True" if impl.wrapper else "hookwrapper=True"
                    raise PluginError(
                        f"plugin {name!r} implements hook {caller.name} with {kind}; "
                        "taskapp calls each hook implementation itself, so a wrapper would "
                        "never run. Use a plain @taskapp.hookimpl (tryfirst=True or "
                        "trylast=True to order it)"
                    )

    def unregister(self, name: str) -> None:
        """Remove a plugin registered with :meth:`register` (no-op when unknown)."""
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)
            self._recollect()

    def _recollect(self) -> None:
        self.servers.clear()
        self.tunnels.clear()
        self.conflicts.clear()
        self._collect()

    def _fail(self, name: str, dist: str | None, version: str | None, exc: BaseException) -> None:
        failure = PluginFailure(
            name=name,
            distribution=dist,
            version=version,
            error=_short_error(exc),
            traceback="".join(traceback.format_exception(exc)),
        )
        self.failures.append(failure)
        logger.warning("plugin %s failed to load and is skipped", failure.describe())

    def _collect(self) -> None:
        for hook_name, table, base in (
            ("register_servers", self.servers, ServerRunner),
            ("register_tunnels", self.tunnels, TunnelBackend),
        ):
            kind = "server" if base is ServerRunner else "tunnel"
            for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
                plugin = impl.plugin_name
                register = self._registrar(kind, base, table, plugin)
                try:
                    self._call(hook_name, impl, {"register": register})
                except Exception as exc:
                    dist, version = self.distributions.get(plugin, (None, None))
                    self._fail(plugin, dist, version, exc)

    def _registrar(
        self, kind: str, base: type[Any], table: dict[str, _Provided], plugin: str
    ) -> Callable[[type[Any]], None]:
        def register(cls: type[Any]) -> None:
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise TypeError(f"register_{kind}s: {cls!r} is not a subclass of {base.__name__}")
            name = getattr(cls, "name", None)
            if not isinstance(name, str) or not name:
                raise TypeError(f"register_{kind}s: {cls.__name__} has no 'name'")
            if name in table and table[name].plugin != plugin:
                owners = self.conflicts.setdefault((kind, name), [table[name].plugin])
                owners.append(plugin)
                logger.warning(
                    "%s %r is registered by more than one plugin: %s",
                    kind,
                    name,
                    ", ".join(owners),
                )
                return
            table[name] = _Provided(cls, plugin)

        return register

    def _call(self, hook: str, impl: Any, available: Mapping[str, Any]) -> Any:
        """Call one hook implementation with the arguments it asks for (traced on demand)."""
        if self._trace:
            logger.debug("hook %s -> plugin %r", hook, impl.plugin_name)
        result = impl.function(**_kwargs(impl.argnames, available))
        if inspect.iscoroutine(result):
            result.close()  # never awaited: close it, instead of a nameless RuntimeWarning
            raise PluginError(
                f"plugin {impl.plugin_name!r} implements hook {hook} with `async def`; "
                "taskapp hooks are synchronous and their results are not awaited. Make it a "
                "plain `def` (start async work from it yourself if you need to)"
            )
        if self._trace:
            logger.debug("hook %s <- plugin %r returned %r", hook, impl.plugin_name, result)
        return result

    # -- lookups -----------------------------------------------------------------------

    def server(self, name: str) -> type[ServerRunner]:
        """The server runner class registered as ``name``."""
        return self._lookup("server", name, self.servers, "server=")

    def tunnel(self, name: str) -> type[TunnelBackend]:
        """The tunnel backend class registered as ``name``."""
        return self._lookup("tunnel", name, self.tunnels, "tunnel_backend=")

    def _lookup(
        self, kind: str, name: str, table: Mapping[str, _Provided], argument: str
    ) -> type[Any]:
        owners = self.conflicts.get((kind, name))
        if owners:
            raise PluginConflictError(
                f"{kind} {name!r} is registered by more than one plugin: "
                f"{', '.join(sorted(owners))}. "
                "Uninstall one, or block it with TASKAPP_DISABLE_PLUGINS=<name>."
            )
        provided = table.get(name)
        if provided is not None:
            return provided.cls
        available = ", ".join(sorted(table)) or "(none)"
        parts = [f"unknown {kind} {name!r} ({argument}{name!r}); available: {available}."]
        hint = KNOWN_ELSEWHERE.get(name)
        if hint:
            parts.append(hint)
        if self.failures:
            failed = "; ".join(f.describe() for f in self.failures)
            parts.append(f"These plugins failed to load and may provide it: {failed}.")
            raise PluginLoadError(" ".join(parts))
        raise UnknownBackendError(" ".join(parts))

    # -- typed hook facade -------------------------------------------------------------

    def add_commands(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        """Let every plugin add its ``taskapp`` commands (hook ``register_commands``).

        Each plugin is called on its own: one that fails (a name already taken, an
        exception) is recorded as a failure naming it, and the others' commands and the
        builtin ones still work. A command without ``run`` answers with an error naming
        its plugin.
        """
        for impl in reversed(self.pm.hook.register_commands.get_hookimpls()):
            before = set(subparsers.choices)
            try:
                self._call("register_commands", impl, {"subparsers": subparsers})
            except Exception as exc:
                dist, version = self.distributions.get(impl.plugin_name, (None, None))
                self.failures.append(
                    PluginFailure(
                        name=impl.plugin_name,
                        distribution=dist,
                        version=version,
                        error=f"register_commands: {_short_error(exc)}",
                        traceback="".join(traceback.format_exception(exc)),
                    )
                )
                logger.warning(
                    "taskapp: plugin %r could not add its commands (%s); the other commands work",
                    impl.plugin_name,
                    _short_error(exc),
                )
            for name in sorted(set(subparsers.choices) - before):
                parser = subparsers.choices[name]
                parser.set_defaults(plugin=impl.plugin_name)
                if parser.get_default("run") is None:
                    parser.set_defaults(run=_no_run(impl.plugin_name, name))

    def load_app(self, target: AppTarget) -> LoadedApp:
        """Ask the loaders, third-party first, to load ``target``."""
        for impl in reversed(self.pm.hook.load_app.get_hookimpls()):
            try:
                result = self._call("load_app", impl, {"target": target})
            except TaskAppError:
                raise
            except Exception as exc:
                raise AppLoadError(
                    f"loader plugin {impl.plugin_name!r} failed on {target.describe()}: "
                    f"{_short_error(exc)}"
                ) from exc
            if result is not None:
                if not isinstance(result, LoadedApp):
                    raise AppLoadError(
                        f"loader plugin {impl.plugin_name!r} returned {type(result).__name__}, "
                        "not a taskapp.core.backends.LoadedApp"
                    )
                return result
        hint = ""
        if self.failures:
            hint = " Plugins that failed to load: " + "; ".join(f.describe() for f in self.failures)
        if target.kind == "path":
            raise AppLoadError(self.unclaimed_path_message(Path(target.value)) + hint)
        if target.kind == "named":
            installed = ", ".join(self.third_party_loaders()) or "none"
            raise AppLoadError(
                f"no loader takes {str(target.value)!r}: FILE@NAME and package/name targets "
                "are read by loader plugins (Inspect AI tasks: "
                f"{install_command('inspect')}); installed loader plugins: {installed}.{hint}"
            )
        raise AppLoadError(f"no loader accepts {target.describe()}.{hint}")

    def third_party_loaders(self) -> list[str]:
        """Names of the installed (non-builtin) plugins implementing ``load_app``."""
        return [
            impl.plugin_name
            for impl in self.pm.hook.load_app.get_hookimpls()
            if impl.plugin_name not in DEFAULT_PLUGINS
        ]

    def may_claim_path(self, path: Path) -> bool:
        """False when no loader can take ``path``: it is not a ``.py`` file and only the
        builtin loaders are installed. (With a loader plugin, the plugin decides.)"""
        if path.is_file() and path.suffix == ".py":
            return True
        return bool(self.third_party_loaders())

    def unclaimed_path_message(self, path: Path) -> str:
        """Why nobody loads ``path``, and what to do about it."""
        kind = "folder" if path.is_dir() else "file"
        installed = self.third_party_loaders()
        plugins = (
            f"the installed loader plugins ({', '.join(installed)}) do not take it either"
            if installed
            else "no loader plugin is installed"
        )
        return (
            f"no loader claims the {kind} {str(path)!r}: the builtin loader runs .py files and "
            f"{plugins}. Pass a .py file defining `app` or `build_config()`, or install a "
            "loader plugin for this kind of file (`taskapp plugins` lists the installed ones)"
        )

    def _fire(self, event: str, **kwargs: Any) -> None:
        """Call every implementation of event hook ``event``; a failing plugin is logged
        at WARNING (with its name), not raised. Use the typed methods of :attr:`events`."""
        caller = getattr(self.pm.hook, event)
        for impl in reversed(caller.get_hookimpls()):
            try:
                self._call(event, impl, kwargs)
            except Exception:
                logger.warning(
                    "plugin %r raised in hook %s; continuing",
                    impl.plugin_name,
                    event,
                    exc_info=True,
                )

    # -- listing -----------------------------------------------------------------------

    def describe(self, *, include_builtins: bool = False) -> list[dict[str, Any]]:
        """One dict per plugin: name, version, hooks, what it provides; failures too."""
        provides: dict[str, dict[str, list[str]]] = {}
        for kind, table in (("servers", self.servers), ("tunnels", self.tunnels)):
            for name, provided in table.items():
                provides.setdefault(provided.plugin, {}).setdefault(kind, []).append(name)
        rows: list[dict[str, Any]] = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:  # blocked with TASKAPP_DISABLE_PLUGINS
                continue
            builtin = name in DEFAULT_PLUGINS
            if builtin and not include_builtins:
                continue
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            dist, version = self.distributions.get(name, ("taskapp", _own_version()))
            entry = provides.get(name, {})
            rows.append(
                {
                    "name": name,
                    "distribution": dist,
                    "version": version,
                    "builtin": builtin,
                    "hooks": hooks,
                    "servers": sorted(entry.get("servers", [])),
                    "tunnels": sorted(entry.get("tunnels", [])),
                    "loader": "load_app" in hooks,
                    "error": None,
                }
            )
        for failure in self.failures:
            rows.append(
                {
                    "name": failure.name,
                    "distribution": failure.distribution,
                    "version": failure.version,
                    "builtin": False,
                    "hooks": [],
                    "servers": [],
                    "tunnels": [],
                    "loader": False,
                    "error": failure.error,
                }
            )
        return rows


def _no_run(plugin: str, command: str) -> Callable[[Any], int]:
    def run(args: Any) -> int:
        raise PluginError(
            f"plugin {plugin!r} added the command {command!r} without a run function "
            "(parser.set_defaults(run=FUNCTION)); report it to the plugin's authors"
        )

    return run


def _describe_plugin(plugin: object) -> str:
    """A short name for a plugin object: its module (and file) or its class."""
    if plugin is None:
        return "a blocked plugin"
    if inspect.ismodule(plugin):
        origin = getattr(plugin, "__file__", None)
        return f"module {plugin.__name__!r}" + (f" ({origin})" if origin else "")
    cls = type(plugin)
    return f"a {cls.__module__}.{cls.__qualname__} object"


def _kwargs(argnames: Iterable[str], available: Mapping[str, Any]) -> dict[str, Any]:
    return {name: available[name] for name in argnames if name in available}


def _own_version() -> str:
    return __version__


_lock = threading.Lock()
_registry: PluginRegistry | None = None


def get_registry() -> PluginRegistry:
    """The process-wide registry, built on first use (never at ``import taskapp``)."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = PluginRegistry()
        return _registry


def reset_registry() -> None:
    """Forget the registry so the next :func:`get_registry` reloads plugins (tests)."""
    global _registry
    with _lock:
        _registry = None


def load_target_string(target: str, *, api_key: str) -> LoadedApp:
    """Load a target string (a file path or ``module:attr``) through the plugin registry.

    This is what a child process (the subprocess and Ray runners) calls to rebuild the app
    the parent loaded. A path may be any file a loader claims (``.py`` for the builtin one,
    ``*.qa.json`` for a plugin's).
    """
    kind: TargetKind = "path"
    if not Path(target).exists():
        if looks_like_import_string(target):
            kind = "import_string"
        elif looks_like_named_target(target):
            kind = "named"
    value: Any = Path(target) if kind == "path" else target
    return get_registry().load_app(AppTarget(kind=kind, value=value, api_key=api_key))


class HookEvents:
    """The lifecycle event hooks, one typed method each (``registry.events.<hook>``).

    Each calls every plugin's implementation in turn with the arguments it asks for; an
    exception is logged at WARNING with the plugin's name and the run goes on. Return
    values are ignored. The signatures are the hook specifications'
    (:mod:`taskapp.core.hookspecs`, ``docs/plugin_hooks.md``).
    """

    def __init__(self, registry: PluginRegistry) -> None:
        self._registry = registry

    def app_loaded(self, task_app: TaskAppLike, loaded: LoadedApp) -> None:
        self._registry._fire("app_loaded", task_app=task_app, loaded=loaded)

    def server_started(self, task_app: TaskAppLike, server: ServerRunner) -> None:
        self._registry._fire("server_started", task_app=task_app, server=server)

    def tunnel_opened(self, task_app: TaskAppLike, tunnel: Tunnel) -> None:
        self._registry._fire("tunnel_opened", task_app=task_app, tunnel=tunnel)

    def task_app_started(self, task_app: TaskAppLike) -> None:
        self._registry._fire("task_app_started", task_app=task_app)

    def url_changed(self, task_app: TaskAppLike, old_url: str, new_url: str) -> None:
        self._registry._fire("url_changed", task_app=task_app, old_url=old_url, new_url=new_url)

    def before_shutdown(self, task_app: TaskAppLike) -> None:
        self._registry._fire("before_shutdown", task_app=task_app)
