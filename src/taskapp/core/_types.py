"""Structural types shared by the layers: what a hook implementation may rely on.

:class:`TaskAppLike` is what the lifecycle event hooks receive as ``task_app`` (the
:class:`~taskapp.InProcessTaskApp` instance). It is a Protocol, so the hook
specifications in :mod:`taskapp.core.hookspecs` can name it without importing the
lifecycle (which imports the plugin registry, which imports the hookspecs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from taskapp.core.backends import LoadedApp, ServerRunner, Tunnel

__all__ = ["TaskAppLike"]


class TaskAppLike(Protocol):
    """The attributes of a running task app that hooks may read.

    :class:`~taskapp.InProcessTaskApp` conforms (``mypy --strict`` checks it, see the end
    of :mod:`taskapp.core.lifecycle`).
    """

    api_key: str
    """The key the app accepts (``X-API-Key``)."""
    host: str
    """The address the server listens on."""
    port: int
    """The port the server listens on (the real one once the server started)."""
    url: str | None
    """The public URL once the tunnel is open; None before."""
    loaded: LoadedApp | None
    """The loaded app, from ``app_loaded`` on."""
    server: ServerRunner | None
    """The server runner, from ``server_started`` on."""
    tunnel: Tunnel | None
    """The open tunnel, from ``tunnel_opened`` on."""

    @property
    def local_url(self) -> str:
        """Where the server listens, reachable from this machine."""
        ...

    @property
    def running(self) -> bool:
        """True between a successful start and the end of stop."""
        ...
