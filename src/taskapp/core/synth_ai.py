"""Hosting task apps written with synth-ai (see docs/compat.md): the mechanics of the
``synth_ai`` loader plugin (:mod:`taskapp.plugins.loaders.synth_ai`), in core because
:func:`taskapp.core.loading.materialize` uses them for every loader.

Recognised by the module of their class, so synth-ai is never imported here; the objects
only exist when the user's code imported it:

* a synth-ai ``TaskAppConfig`` (synth-ai 0.3's ``synth_ai.sdk.task.server`` or 0.4-0.7's
  ``synth_ai.sdk.localapi._impl.server``), given as ``config=``, returned by a
  ``config_factory=`` or by a ``.py`` file's ``build_config()``: built into an app by
  synth-ai's own ``create_task_app`` (the function next to the config class);
* an ASGI app built by synth-ai's ``create_task_app`` (its routes live in ``synth_ai``).

Either is wrapped in :class:`SynthAiHost`, which gives the app the instance's key the way
synth-ai reads keys (``ENVIRONMENT_API_KEY``, else ``ENVIRONMENT_API_KEY_ALIASES``, lent
for the app's lifetime by :mod:`taskapp.core.env_keys` and removed after it stops) and
checks keys itself on synth-ai's own routes: synth-ai 0.7 answers a wrong key with the
first 15 characters of every accepted key (and prints them), and ``/health`` with the
first 6. The host answers instead: a wrong key (or one lent to another app of this
process) gets 400 ``unauthorised`` with no key material, ``/health`` ``{"healthy": true}``,
and ``/debug/env`` (key prefixes) is not served.

Other synth-ai objects cannot be hosted: :func:`unhostable_message` says so, naming the
object's full module path.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from taskapp.core import env_keys
from taskapp.core.errors import AppLoadError
from taskapp.core.secrets import constant_time_in

__all__ = [
    "SynthAiHost",
    "build_app",
    "is_synth_ai_app",
    "is_synth_ai_config",
    "is_synth_ai_object",
    "unhostable_message",
]

_PREFIX = "synth_ai"
_CONFIG_CLASSES = ("TaskAppConfig", "LocalAPIConfig")
#: where create_task_app lives when the config class's own module lacks it
_CREATE_MODULES = (
    "synth_ai.sdk.localapi._impl.server",
    "synth_ai.sdk.task.server",
    "synth_ai.task.server",
)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def _module_of(obj: Any) -> str:
    return str(getattr(type(obj), "__module__", "") or "")


def is_synth_ai_object(obj: Any) -> bool:
    """True when ``obj``'s class comes from the ``synth_ai`` package."""
    module = _module_of(obj)
    return module == _PREFIX or module.startswith(_PREFIX + ".")


def is_synth_ai_config(obj: Any) -> bool:
    """A synth-ai ``TaskAppConfig`` (any generation), told by its class's module."""
    return is_synth_ai_object(obj) and type(obj).__name__ in _CONFIG_CLASSES


def is_synth_ai_app(obj: Any) -> bool:
    """An ASGI app built by synth-ai's ``create_task_app`` (its endpoints are synth-ai's)."""
    if isinstance(obj, SynthAiHost):
        return False
    routes = getattr(obj, "routes", None)
    if not isinstance(routes, list):
        return False
    for route in routes:
        module = str(getattr(getattr(route, "endpoint", None), "__module__", "") or "")
        if module.startswith(_PREFIX + ".") and getattr(route, "path", None) == "/health":
            return True
    return False


def unhostable_message(obj: Any, origin: str) -> str:
    """Why a synth-ai object that is neither a config nor an app cannot be hosted."""
    cls = type(obj)
    return (
        f"{origin} gave a {cls.__module__}.{cls.__qualname__}, which taskapp cannot host: "
        "pass a synth-ai TaskAppConfig (config=, a config_factory= returning one, or a .py "
        "file with build_config()) or the app synth-ai's create_task_app(config) returns"
    )


def _create_task_app(config: Any) -> Callable[[Any], Any]:
    names = [_module_of(config), *_CREATE_MODULES]
    for name in names:
        module = sys.modules.get(name)
        if module is None and name != names[0]:
            try:
                module = importlib.import_module(name)
            except Exception:  # noqa: S112 - try the next place
                continue
        create = getattr(module, "create_task_app", None)
        if callable(create):
            return create  # type: ignore[no-any-return]
    raise AppLoadError(
        f"found no create_task_app for {type(config).__module__}.{type(config).__qualname__}: "
        "the installed synth-ai does not provide one. Build the app with your synth-ai "
        "version's create_task_app(config) and pass the app instead"
    )


def build_app(obj: Any, *, api_key: str, origin: str) -> SynthAiHost:
    """The hosted app for a synth-ai config or app."""
    if is_synth_ai_config(obj):
        create = _create_task_app(obj)
        try:
            app = create(obj)
        except Exception as exc:
            raise AppLoadError(
                f"synth-ai's create_task_app failed on {origin}: {type(exc).__name__}: {exc}"
            ) from exc
        return SynthAiHost(app, api_key=api_key)
    if is_synth_ai_app(obj):
        return SynthAiHost(obj, api_key=api_key)
    raise AppLoadError(unhostable_message(obj, origin))


class SynthAiHost:
    """An ASGI wrapper around a synth-ai task app (see the module docstring)."""

    def __init__(self, app: Any, *, api_key: str) -> None:
        self.app = app
        self.api_key = api_key
        self.state = getattr(app, "state", None)
        self._loan: env_keys.Loan | None = None
        #: synth-ai's own routes (all but ``/`` check the key); the user's routes pass
        self.guarded = frozenset(
            str(route.path)
            for route in getattr(app, "routes", [])
            if str(getattr(getattr(route, "endpoint", None), "__module__", "") or "").startswith(
                _PREFIX + "."
            )
            and getattr(route, "path", "/") != "/"
        )

    def _lend(self) -> None:
        if self._loan is None or self._loan.returned:
            self._loan = env_keys.lend(self.api_key)

    def _give_back(self) -> None:
        if self._loan is not None:
            env_keys.give_back(self._loan)

    def give_back_key(self) -> None:
        """Give the lent key back now (the host calls it on stop, after the lifespan)."""
        self._give_back()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            # Before synth-ai's startup (which mints a key of its own when none is set)
            # and until its shutdown is over.
            self._lend()
            try:
                await self.app(scope, receive, send)
            finally:
                self._give_back()
            return
        if scope["type"] == "http":
            self._lend()  # served without a lifespan: lent until the process ends
            path = scope.get("path")
            if path == "/debug/env":
                await _answer(send, 404, {"code": "not_found", "message": "not served by taskapp"})
                return
            if path in self.guarded:
                if not self._key_accepted(scope):
                    await _answer(send, 400, _UNAUTHORISED)
                    return
                if path == "/health" and scope.get("method") == "GET":
                    await _answer(send, 200, None)
                    return
        await self.app(scope, receive, send)

    def _accepted_keys(self) -> list[str]:
        """The keys synth-ai accepts (read from ``os.environ`` on every request, as it
        does), without those lent to other apps of this process."""
        keys = [
            value.strip()
            for name in (
                "ENVIRONMENT_API_KEY",
                "dev_environment_api_key",
                "DEV_ENVIRONMENT_API_KEY",
            )
            if (value := os.environ.get(name, "")).strip()
        ]
        aliases = os.environ.get(env_keys.ALIASES_VARIABLE, "")
        keys.extend(part.strip() for part in aliases.split(",") if part.strip())
        foreign = env_keys.lent_keys() - {self.api_key}
        return [key for key in keys if key not in foreign]

    def _key_accepted(self, scope: Scope) -> bool:
        from taskapp.core.contract import TaskAppAuth

        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope.get("headers", [])
        }
        accepted = self._accepted_keys()
        found = False
        for key in TaskAppAuth.presented(headers):
            found |= constant_time_in(key, accepted)
        return found


_UNAUTHORISED = {"code": "unauthorised", "message": "API key missing or invalid"}


async def _answer(send: Send, status: int, error: dict[str, str] | None) -> None:
    """A JSON answer: synth-ai's error envelope, or ``{"healthy": true}`` for None."""
    payload = {"healthy": True} if error is None else {"detail": {"error": error}}
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
