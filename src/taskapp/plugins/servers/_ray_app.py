"""What runs on each Ray Serve replica of the ``ray`` server runner: rebuild the task app.

The runner never ships the app object or a TaskAppConfig to Ray (locks, clients and open
files do not survive pickling, and each replica needs its own lifespan). It ships only a
small builder function made by :func:`make_builder`, which carries the import target (a
``.py`` path or ``"module:attr"``), the API key and, for a local instance, the caller's
``sys.path``. Serve calls the builder once per replica when the replica starts; the
builder loads the target through the plugin registry, exactly as ``taskapp serve`` would
in a fresh interpreter, so the replica runs the app's lifespan itself.

The API key travels inside the pickled builder (Ray's control plane), never in argv,
environment variables, Serve's status output or logs.

This module must be importable on every node that runs a replica: ``taskapp`` installed
in the cluster's environment, or shipped with ``runtime_env={"py_modules": [...]}`` (the
runner adds it for existing clusters unless ``ship_taskapp=False``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["build_task_app", "make_builder"]


def make_builder(target: str, api_key: str, sys_path: Sequence[str] = ()) -> Callable[[], Any]:
    """A zero-argument function Serve can call on a replica to get the ASGI app.

    It must be a plain function (Serve's ``serve.ingress`` calls functions and treats any
    other callable as the app itself), so the arguments are closed over.
    """
    paths = list(sys_path)

    def build_taskapp_replica_app() -> Any:
        return build_task_app(target, api_key, paths)

    return build_taskapp_replica_app


def build_task_app(target: str, api_key: str, sys_path: Sequence[str] = ()) -> Any:
    """Load ``target`` with ``api_key``; called on the replica."""
    missing = [entry for entry in sys_path if entry not in sys.path]
    if missing:
        sys.path[:0] = missing
    from taskapp.core.plugins import load_target_string
    from taskapp.core.secrets import register_secret

    register_secret(api_key)
    return load_target_string(target, api_key=api_key).app
