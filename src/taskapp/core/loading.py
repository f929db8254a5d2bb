"""Shared mechanics of the builtin loaders: importing, executing files, building apps.

The loaders in ``taskapp.plugins.loaders`` decide *which* target they accept; the work of
turning an object into a servable ASGI app lives here once. Importing by string or
path lives in :mod:`taskapp.core.importing`; rebuilding an app from a target string in a
child process (``load_target_string``) in :mod:`taskapp.core.plugins`, next to the
registry it goes through.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from taskapp.core.config import TaskAppConfig
from taskapp.core.errors import AppLoadError, ConfigurationError
from taskapp.core.importing import (
    exec_path,
    import_from_string,
    import_string_for,
    looks_like_import_string,
    looks_like_named_target,
)

__all__ = [
    "APP_ATTRIBUTES",
    "CONFIG_ATTRIBUTES",
    "FACTORY_ATTRIBUTES",
    "did_you_mean_file",
    "exec_path",
    "import_from_string",
    "import_string_for",
    "is_asgi_app",
    "looks_like_import_string",
    "materialize",
    "target_kwargs",
]

APP_ATTRIBUTES = ("app", "application")
#: ``fastapi_app`` first: synth-ai's own loaders (0.2.24 - 0.7.3) prefer it to ``build_config``
#: in its example files, which define both
FACTORY_ATTRIBUTES = (
    "fastapi_app",
    "create_app",
    "build_app",
    "make_app",
    "get_app",
    "app_factory",
)
CONFIG_ATTRIBUTES = ("build_config", "create_config", "get_config", "config", "task_app_config")


def is_asgi_app(obj: Any) -> bool:
    """A callable taking (scope, receive, send): a FastAPI/Starlette app or an ASGI function."""
    if isinstance(obj, type) or not callable(obj):
        return False
    target = obj if inspect.isfunction(obj) or inspect.ismethod(obj) else obj.__call__
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return len(positional) == 3 or any(p.kind == p.VAR_POSITIONAL for p in params)


def _is_factory(obj: Any) -> bool:
    if isinstance(obj, type) or not callable(obj) or is_asgi_app(obj):
        return False
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return False
    return all(
        p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params
    )


def materialize(obj: Any, *, api_key: str, origin: str) -> tuple[Any, TaskAppConfig | None]:
    """Turn a TaskAppConfig or an ASGI app into (ASGI app, config or None).

    A config becomes an app accepting ``api_key`` (plus any ``ENVIRONMENT_API_KEY_ALIASES``,
    as the contract says); an app built by ``create_task_app`` is granted ``api_key`` too
    (through ``app.state.taskapp_auth``, never ``os.environ``) until :func:`release_key`.
    """
    if isinstance(obj, TaskAppConfig):
        from taskapp.core.contract import alias_keys_from_env, create_task_app

        return create_task_app(obj, api_keys=[api_key, *alias_keys_from_env()]), obj
    containers = _containers_loader()
    if containers.is_container(obj) or containers.is_container_app(obj):
        # synth-containers' Container (or its app): behind taskapp's key check
        return containers.build_app(obj, api_key=api_key, origin=origin), None
    synth_ai = _synth_ai_loader()
    if synth_ai.is_synth_ai_object(obj) or synth_ai.is_synth_ai_app(obj):
        # synth-ai's configs and apps: built and hosted the way synth-ai does it
        return synth_ai.build_app(obj, api_key=api_key, origin=origin), None
    if is_asgi_app(obj):
        auth = getattr(getattr(obj, "state", None), "taskapp_auth", None)
        if auth is not None and hasattr(auth, "grant"):
            auth.grant(api_key)
        elif auth is not None and hasattr(auth, "add_key"):
            auth.add_key(api_key)
        config = getattr(getattr(obj, "state", None), "taskapp_config", None)
        return obj, config if isinstance(config, TaskAppConfig) else None
    raise AppLoadError(
        f"{origin} gave a {_full_name(obj)}, which is neither an ASGI app (e.g. FastAPI) nor "
        "a taskapp.TaskAppConfig (nor a synth-ai TaskAppConfig or synth-containers "
        "Container). Return "
        "taskapp.TaskAppConfig(...) or create_task_app(config), or pass the app itself"
    )


def _full_name(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _synth_ai_loader() -> Any:
    """The synth-ai hosting mechanics (imported lazily; they never import synth-ai)."""
    from taskapp.core import synth_ai

    return synth_ai


def _containers_loader() -> Any:
    """The synth-containers hosting mechanics (they never import synth-containers)."""
    from taskapp.core import synth_containers

    return synth_containers


def _is_config(obj: Any) -> bool:
    """A taskapp TaskAppConfig, a synth-ai one, or a synth-containers Container (each
    describes an app taskapp builds)."""
    return (
        isinstance(obj, TaskAppConfig)
        or bool(_synth_ai_loader().is_synth_ai_config(obj))
        or bool(_containers_loader().is_container(obj))
    )


def release_key(app: Any, api_key: str) -> None:
    """Undo what :func:`materialize` granted: ``app`` refuses ``api_key`` from now on.

    The host calls it when its instance stops, so serving the same app object (a ``.py``
    path or ``app=``) again never accepts a stopped instance's key.
    """
    auth = getattr(getattr(app, "state", None), "taskapp_auth", None)
    if auth is not None and hasattr(auth, "revoke"):
        auth.revoke(api_key)
    give_back = getattr(app, "give_back_key", None)  # a hosted synth-ai app's lent key
    if callable(give_back):
        give_back()


def call_factory(factory: Any, origin: str) -> Any:
    try:
        result = factory()
    except Exception as exc:
        raise AppLoadError(f"{origin} raised {type(exc).__name__}: {exc}") from exc
    if inspect.isawaitable(result):
        raise AppLoadError(f"{origin} is async; app factories must be plain functions")
    return result


def app_from_module(
    module: ModuleType, *, api_key: str, origin: str
) -> tuple[Any, TaskAppConfig | None]:
    """Find the app in a module: ``app``, then app factories, then config builders."""
    for attr in APP_ATTRIBUTES:
        obj = getattr(module, attr, None)
        if obj is not None and (is_asgi_app(obj) or _is_config(obj)):
            return materialize(obj, api_key=api_key, origin=f"{origin}:{attr}")
    for attr in FACTORY_ATTRIBUTES + CONFIG_ATTRIBUTES:
        obj = getattr(module, attr, None)
        if obj is None:
            continue
        if _is_config(obj):
            return materialize(obj, api_key=api_key, origin=f"{origin}:{attr}")
        if _is_factory(obj):
            result = call_factory(obj, f"{origin}:{attr}()")
            return materialize(result, api_key=api_key, origin=f"{origin}:{attr}()")
    found = [
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and _containers_loader().is_container(value)
    ]
    if len(found) == 1:  # a file defining one Container under any name
        return materialize(
            getattr(module, found[0]), api_key=api_key, origin=f"{origin}:{found[0]}"
        )
    tried = ", ".join(APP_ATTRIBUTES + FACTORY_ATTRIBUTES + CONFIG_ATTRIBUTES)
    raise AppLoadError(
        f"found no task app in {origin}: looked for an ASGI app or TaskAppConfig named "
        f"{', '.join(APP_ATTRIBUTES)}, then zero-argument factories or configs named {tried}. "
        "Define `app = create_task_app(config)` or `def build_config() -> TaskAppConfig`"
    )


def load_object(obj: Any, *, api_key: str, origin: str) -> tuple[Any, TaskAppConfig | None]:
    """An ASGI app, a TaskAppConfig, or a zero-argument factory of either."""
    if isinstance(obj, ModuleType):
        return app_from_module(obj, api_key=api_key, origin=origin)
    if _is_config(obj) or is_asgi_app(obj):
        return materialize(obj, api_key=api_key, origin=origin)
    if _is_factory(obj):
        return materialize(call_factory(obj, f"{origin}()"), api_key=api_key, origin=f"{origin}()")
    raise AppLoadError(
        f"{origin} is a {_full_name(obj)}: expected an ASGI app, a TaskAppConfig, or a "
        "zero-argument function returning one"
    )


def did_you_mean_file(spec: str) -> str:
    """`` Did you mean 'x.py'?`` for a missing path, or ``""``: the same name with ``.py``
    appended, else the closest file name in the same folder."""
    path = Path(spec).expanduser()
    if path.suffix != ".py" and Path(f"{path}.py").is_file():
        return f" Did you mean {spec}.py?"
    folder = path.parent
    try:
        names = [entry.name for entry in folder.iterdir() if entry.is_file()]
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.75)
    if not close:
        return ""
    suggestion = close[0] if str(folder) in ("", ".") else str(folder / close[0])
    return f" Did you mean {suggestion}?"


def target_kwargs(spec: Any, *, aliases: Mapping[str, str] | None = None) -> dict[str, Any]:  # noqa: C901 -- complexity 17 at most (issue 21 ratchet); split when next changed
    """The :class:`~taskapp.InProcessTaskApp` keyword arguments for ``spec``: the one
    target resolution of ``taskapp serve``/``eval``/``optimize``, :func:`taskapp.evaluate`
    and :func:`taskapp.optimize.run`.

    ``spec`` is a ``.py`` path (str or PathLike), a ``"module:attr"`` import string, a name
    in ``aliases`` (the bundled examples: name -> import string; ``_`` and ``-`` alike), a
    :class:`TaskAppConfig`, an ASGI app, or a zero-argument factory of either. Raises
    :class:`ConfigurationError` (or :class:`TaskAppFileNotFoundError`) saying why not.

    >>> target_kwargs("json:loads")
    {'app': 'json:loads'}
    >>> target_kwargs("support_intents", aliases={"support-intents": "pkg.mod:build"})
    {'app': 'pkg.mod:build'}
    """
    from taskapp.core.errors import TaskAppFileNotFoundError

    if isinstance(spec, TaskAppConfig):
        return {"config": spec}
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        if is_asgi_app(spec):
            return {"app": spec}
        if callable(spec):
            return {"config_factory": spec}
        raise ConfigurationError(
            f"cannot run a {type(spec).__name__}: pass a .py path, a 'module:attr' import "
            "string, a TaskAppConfig, an ASGI app, or a zero-argument factory of either"
        )
    if aliases:
        alias = aliases.get(spec.strip().lower().replace("_", "-"))
        if alias is not None:
            return {"app": alias}
    if looks_like_named_target(spec):
        return {"task_app_path": spec}  # FILE@NAME, package/name: for a loader plugin
    path = Path(spec).expanduser()
    if spec.endswith(".py") or path.is_file():
        # Any existing file: the loaders decide whether they can run it (the builtin one
        # takes .py files; an installed plugin may claim e.g. *.qa.json).
        if not path.is_file():
            raise TaskAppFileNotFoundError(f"no such file: {spec}.{did_you_mean_file(spec)}")
        return {"task_app_path": str(path)}
    if looks_like_import_string(spec):
        module = spec.partition(":")[0]
        # Like uvicorn: modules in the current directory are importable by name.
        cwd = os.getcwd()
        if cwd not in sys.path and "" not in sys.path:
            sys.path.insert(0, cwd)
        try:
            found = importlib.util.find_spec(module)
        except Exception:
            # A parent package failed to import: the loader imports it again and shows why.
            return {"app": spec}
        if found is None:
            raise ConfigurationError(
                f"no module named {module!r} (from {spec!r}); check the spelling, install "
                "the package, or pass the path of a .py file instead"
            )
        return {"app": spec}
    names = f"a bundled example name ({', '.join(sorted(aliases))}), " if aliases else ""
    hint = did_you_mean_file(spec)
    if not hint and aliases:
        close = difflib.get_close_matches(spec.lower().replace("_", "-"), list(aliases), n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
    if not aliases:
        hint += (
            " (A bundled example's name, such as support-intents, is known to the CLI and "
            "taskapp.evaluate; elsewhere pass aliases=taskapp.examples.BUNDLED or the "
            "example's build_config.)"
        )
    raise ConfigurationError(
        f"unknown target {spec!r}: expected {names}the path of a file (a .py file, or one an "
        f"installed loader plugin takes), or a 'package.module:attr' import string.{hint}"
    )
