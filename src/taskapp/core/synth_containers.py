"""Hosting synth-containers ``Container`` apps (see docs/compat.md): the mechanics of the
``synth_containers`` loader plugin (:mod:`taskapp.plugins.loaders.synth_containers`), in
core because :func:`taskapp.core.loading.materialize` uses them for every loader.

Recognised by the module of their class, so synth-containers is never imported here; the
objects only exist when the user's code imported it:

* a ``synth_containers.sdk.Container`` (given as ``app=``, returned by a
  ``config_factory=``, or defined in a ``.py`` file): built with its own ``fastapi()``;
* the FastAPI app a ``Container.fastapi()`` returned (its routes live in
  ``synth_containers.sdk``).

Either is wrapped in :class:`ContainerHost`. A ``Container`` checks no key at all; the host
checks the instance's key on every route but ``GET /`` (answered by the host, as every
taskapp app answers it: the container's own ``/`` runs its metadata callbacks), the way a
taskapp app does (:class:`taskapp.core.contract.TaskAppAuth`: constant time, 401 in the
error envelope, no key material).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from types import SimpleNamespace
from typing import Any

from taskapp.core.errors import AppLoadError

__all__ = ["ContainerHost", "build_app", "is_container", "is_container_app"]

_MODULE = "synth_containers.sdk"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def is_container(obj: Any) -> bool:
    """A synth-containers ``Container`` (or a subclass), told by its class's module."""
    return any(
        cls.__name__ == "Container" and cls.__module__ == _MODULE for cls in type(obj).__mro__
    )


def is_container_app(obj: Any) -> bool:
    """The ASGI app a ``Container.fastapi()`` built (its ``/health`` is synth-containers')."""
    if isinstance(obj, ContainerHost):
        return False
    routes = getattr(obj, "routes", None)
    if not isinstance(routes, list):
        return False
    return any(
        getattr(route, "path", None) == "/health"
        and str(getattr(getattr(route, "endpoint", None), "__module__", "")) == _MODULE
        for route in routes
    )


def build_app(obj: Any, *, api_key: str, origin: str) -> ContainerHost:
    """A :class:`ContainerHost` for a ``Container`` or the app its ``fastapi()`` built,
    accepting ``api_key`` (granted; :func:`taskapp.core.loading.release_key` revokes it)."""
    name = str(getattr(obj, "name", "") or "container")
    if is_container(obj):
        try:
            app = obj.fastapi()
        except Exception as exc:
            raise AppLoadError(
                f"{origin}: the synth-containers Container {name!r} could not build its app "
                f"(Container.fastapi() raised {type(exc).__name__}: {exc})"
            ) from exc
    elif is_container_app(obj):
        app = obj
        name = str(getattr(obj, "title", "") or name)
    else:
        raise AppLoadError(f"{origin} is not a synth-containers Container")
    host = ContainerHost(app, name=name)
    host.state.taskapp_auth.grant(api_key)
    return host


class ContainerHost:
    """The ASGI app taskapp serves for a synth-containers ``Container``: the container's
    own app behind taskapp's key check. ``state.taskapp_auth`` holds the keys."""

    def __init__(self, app: Any, *, name: str) -> None:
        from taskapp.core.contract import TaskAppAuth, alias_keys_from_env

        self.app = app
        self.name = name
        self.state = SimpleNamespace(taskapp_auth=TaskAppAuth(alias_keys_from_env(), required=True))

    @property
    def routes(self) -> Any:
        return getattr(self.app, "routes", [])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan
            return
        if scope["type"] == "websocket":
            from starlette.datastructures import Headers

            if self.state.taskapp_auth.check(Headers(scope=scope)) is not None:
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        if scope.get("path") == "/" and scope.get("method") in ("GET", "HEAD"):
            await _answer(send, 200, {"status": "ok", "service": self.name}, scope["method"])
            return
        from starlette.datastructures import Headers

        denied = self.state.taskapp_auth.check(Headers(scope=scope))
        if denied is not None:
            status, body = denied
            await _answer(send, status, body, scope.get("method", "GET"))
            return
        await self.app(scope, receive, send)


async def _answer(send: Send, status: int, body: dict[str, Any], method: str) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else data})
