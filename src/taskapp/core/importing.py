"""Importing by name and by path: the leaf every layer may use to find code again.

``import_string_for`` finds the ``"module:attr"`` that imports an object again in a fresh
interpreter (what the subprocess and Ray runners send their children);
``import_from_string`` and ``exec_path`` are the two ways the builtin loaders import a
target. Standard library plus :mod:`taskapp.core.errors` only, so
:mod:`taskapp.core.backends` can use it without closing an import circle.

``lazy_exports`` is the one lazy package face (``taskapp``, ``taskapp.jobs``,
``taskapp.optimize``): names imported from their module on first use.

``install_command`` says one way everywhere how to install an optional extra when its
import fails: taskapp is installed from a clone (it is not on the package index yet), so
the command that works is ``pip install '.[extra]'`` run in the clone.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from taskapp.core.errors import AppLoadError, ConfigurationError

# pathlib, hashlib and importlib.util are imported inside the functions that need them:
# `import taskapp` imports this module (for lazy_exports) and stays at the asyncio floor.
if TYPE_CHECKING:
    from pathlib import Path
    from types import ModuleType

__all__ = [
    "exec_path",
    "import_from_string",
    "import_string_for",
    "install_command",
    "lazy_exports",
    "looks_like_import_string",
    "looks_like_named_target",
]

_IMPORT_STRING = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_NAME_IN_FILE = re.compile(r"^(?P<file>.+)@(?P<name>[A-Za-z_][\w.-]*)$")
_REGISTERED_NAME = re.compile(r"^(?P<package>[A-Za-z_][\w]*)/(?P<name>[A-Za-z_][\w.-]*)$")


def looks_like_import_string(text: str) -> bool:
    """``"package.module:attr"`` (not a path that happens to contain a colon).

    >>> looks_like_import_string("pkg.mod:app"), looks_like_import_string("dir/app.py")
    (True, False)
    """
    return bool(_IMPORT_STRING.match(text))


def looks_like_named_target(text: str) -> bool:
    """A target only a loader plugin reads: ``FILE@NAME`` (one of several named things in
    an existing FILE, Inspect's ``evals.py@my_task``) or ``package/name`` (a name an
    importable package registers, ``inspect_evals/gsm8k``). The builtin loaders take
    neither; :mod:`taskapp.plugins.loaders.inspect` takes both for Inspect AI tasks.

    >>> looks_like_named_target("json/decoder"), looks_like_named_target("no_such_pkg/x")
    (True, False)
    >>> looks_like_named_target("missing.py@task"), looks_like_named_target("app.py")
    (False, False)
    """
    import importlib.util
    from pathlib import Path

    if Path(text).exists():
        return False
    in_file = _NAME_IN_FILE.match(text)
    if in_file is not None:
        return Path(in_file.group("file")).expanduser().is_file()
    registered = _REGISTERED_NAME.match(text)
    if registered is None:
        return False
    try:
        return importlib.util.find_spec(registered.group("package")) is not None
    except (ImportError, ValueError):
        return False


def import_string_for(obj: Any) -> str | None:
    """``"module:attr"`` that imports ``obj`` again in a fresh interpreter, if there is one.

    Functions and classes name their module; instances (a FastAPI app, a TaskAppConfig)
    do not, so every imported module's namespace is searched for the very object.
    """
    own_module = getattr(obj, "__module__", None)
    candidates: list[str] = []
    if isinstance(own_module, str) and (inspect.isfunction(obj) or isinstance(obj, type)):
        candidates.append(own_module)
    else:
        for name, module in list(sys.modules.items()):
            namespace = getattr(module, "__dict__", None)
            if not isinstance(namespace, dict):
                continue
            if any(value is obj for value in list(namespace.values())):
                candidates.append(name)
    for name in candidates:
        if name == "__main__" or name.startswith("taskapp_path_"):
            continue  # not importable under that name by another interpreter
        found = sys.modules.get(name)
        if found is None or getattr(found, "__spec__", None) is None:
            continue
        for attr, value in list(vars(found).items()):
            if value is obj and not attr.startswith("_"):
                return f"{name}:{attr}"
    return None


def import_from_string(spec: str) -> Any:
    """Import ``"package.module:attr.sub"``; tell a missing module from a broken one."""
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ConfigurationError(
            f"import string {spec!r} must look like 'package.module:attribute'"
        )
    from taskapp.core.signals import imports_off_the_main_thread

    try:
        with imports_off_the_main_thread():
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (
            module_name == exc.name or module_name.startswith(exc.name + ".")
        ):
            raise AppLoadError(
                f"could not import module {module_name!r} from import string {spec!r}: no such "
                "module on sys.path. Check the spelling, install the package, or pass a .py "
                "path instead"
            ) from exc
        raise AppLoadError(
            f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    except Exception as exc:
        raise AppLoadError(
            f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(
                f"module {module_name!r} has no attribute {attr_path!r} (import string {spec!r})"
            ) from None
    return obj


def exec_path(path: Path) -> ModuleType:
    """Execute a ``.py`` file as a module with a unique name.

    The file's folder is on ``sys.path`` only while the file runs (so it can import its
    siblings), then removed. The module stays in ``sys.modules`` under its unique name, so
    dataclasses and pickling inside it work.
    """
    import hashlib
    import importlib.util

    path = path.resolve()
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    module_name = f"taskapp_path_{path.stem}_{digest}"
    existing = sys.modules.get(module_name)
    if existing is not None:
        return existing
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise AppLoadError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    sys.modules[module_name] = module
    from taskapp.core.signals import imports_off_the_main_thread

    try:
        with imports_off_the_main_thread():
            spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(module_name, None)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise AppLoadError(
            f"executing {path} failed: {type(exc).__name__}: {exc} (traceback above)"
        ) from exc
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)
    return module


def install_command(extra: str) -> str:
    """The command that installs ``extra``, as errors and help texts print it."""
    return (
        f"pip install '.[{extra}]' in your taskapp clone (or pip install 'taskapp[{extra}]' "
        "once taskapp is on the package index)"
    )


def lazy_exports(
    package: str, names: Mapping[str, str], public: Iterable[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``(__getattr__, __dir__)``: ``names`` maps each lazily imported name to
    the module that defines it; a name is imported on first use and then cached in the
    package, so ``import package`` stays cheap.

    >>> getattr_, dir_ = lazy_exports("taskapp", {"TaskAppConfig": "taskapp.core.config"}, [])
    >>> getattr_("TaskAppConfig").__name__
    'TaskAppConfig'
    """
    listed = sorted(public)

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return listed

    return __getattr__, __dir__
