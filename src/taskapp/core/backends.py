"""The three kinds of backend a plugin can provide, and what the lifecycle hands them.

* a **loader** turns an :class:`AppTarget` into a :class:`LoadedApp` (hook ``load_app``);
* a **server runner** (:class:`ServerRunner`) serves that app on a pre-bound socket;
* a **tunnel backend** (:class:`TunnelBackend`) gives the local server a public URL.

Backends are plain classes registered by name from the ``register_servers`` and
``register_tunnels`` hooks. Each declares its options as a frozen dataclass in
``Options``; the lifecycle validates the user's ``server_options`` / ``tunnel_options``
against it before anything starts. A complete tunnel backend::

    import dataclasses
    import taskapp
    from taskapp.core.backends import Tunnel, TunnelBackend, TunnelContext

    class EchoTunnel(TunnelBackend):
        name = "echo"

        @dataclasses.dataclass(frozen=True)
        class Options:
            prefix: str = "http://"

        def open(self, ctx: TunnelContext) -> Tunnel:
            return Tunnel(url=f"{self.options.prefix}127.0.0.1:{ctx.port}")

    @taskapp.hookimpl
    def register_tunnels(register):
        register(EchoTunnel)
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from taskapp.core.options import NoOptions

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "AppTarget",
    "InProcessApp",
    "LoadedApp",
    "ServerContext",
    "ServerRunner",
    "Tunnel",
    "TunnelBackend",
    "TunnelContext",
]

TargetKind = Literal["app", "config", "config_factory", "path", "import_string", "named"]

# Any ASGI 3 application. Kept as Any to avoid importing starlette on the discovery path.
ASGIApp = Any


@dataclasses.dataclass(frozen=True)
class AppTarget:
    """What the user asked to serve, before any loader looked at it.

    ``kind`` says which constructor argument it came from: ``app`` (an ASGI object),
    ``config`` (a TaskAppConfig), ``config_factory`` (a callable), ``path`` (an existing
    file or folder: the builtin loader takes ``.py`` files, a plugin may claim others) or
    ``import_string`` (``"package.module:attr"``) or ``named`` (``FILE@NAME`` or
    ``package/name``, see :func:`taskapp.core.importing.looks_like_named_target`: only
    loader plugins take it). ``api_key`` is the key the
    instance will present; a loader that builds the app from a TaskAppConfig gives the app
    that key through its own configuration.
    """

    kind: TargetKind
    value: Any
    api_key: str

    def describe(self) -> str:
        if self.kind in ("path", "import_string", "named"):
            return f"{self.kind} {str(self.value)!r}"
        name = getattr(self.value, "__qualname__", None) or type(self.value).__name__
        return f"{self.kind} {name}"


@dataclasses.dataclass(frozen=True)
class LoadedApp:
    """An ASGI app ready to serve, plus how another process could load it again.

    ``target`` is a string ``taskapp serve`` accepts (a ``.py`` path or
    ``"module:attr"``) that reproduces the same app in a fresh interpreter. Loaders of
    in-memory objects leave it None and set ``origin`` (the object the user passed);
    :meth:`reimport_target` then searches for an import string only when a runner needs
    one (the search walks ``sys.modules``, too slow to do on every start). ``loader``
    names the loader that produced it; ``config`` is the TaskAppConfig, if any.
    """

    app: ASGIApp
    target: str | None
    loader: str
    config: Any = None
    origin: Any = dataclasses.field(default=None, repr=False, compare=False)

    def reimport_target(self) -> str | None:
        """``target``, or an import string found for ``origin``; None if there is none."""
        if self.target is not None:
            return self.target
        if self.origin is None:
            return None
        from taskapp.core.importing import import_string_for

        return import_string_for(self.origin)


@dataclasses.dataclass(frozen=True)
class ServerContext:
    """What a server runner gets from the lifecycle.

    ``sock`` is already bound and listening; the runner serves on it (or passes it to a
    child) and never binds a port itself. The lifecycle owns it and closes it after
    :meth:`ServerRunner.stop`; a runner (or its server library) may close it earlier, even
    behind the object's back (``os.close(sock.fileno())``): the lifecycle notices and does
    not close the number again (:func:`taskapp.core.ports.listener_closer`).
    """

    loaded: LoadedApp
    sock: socket.socket
    host: str
    port: int
    api_key: str
    start_timeout: float
    """Seconds left of the start's budget (what to wait at most)."""
    logger: logging.Logger
    timeout_setting: float | None = None
    """The timeout the user set (health_check_timeout), for messages; None when unknown."""

    def timeout_text(self) -> str:
        """How a message names the time limit: the user's setting, not the seconds left."""
        if self.timeout_setting is None:
            return f"{self.start_timeout:g} s"
        return f"the {self.timeout_setting:g} s health check timeout"


class ServerRunner(abc.ABC):
    """Serves a loaded app on a pre-bound socket.

    Lifecycle: ``start(ctx)`` returns once the server runs (or raises
    :class:`~taskapp.core.errors.ServerStartError` with the cause chained); the lifecycle
    then polls ``/health`` and calls :meth:`check_alive` between polls, so a server that
    dies while starting fails at once. ``stop()`` must be idempotent, bounded in time and
    leave the port free.
    """

    name: ClassVar[str]
    Options: ClassVar[type[Any]] = NoOptions

    def __init__(self, options: Any) -> None:
        self.options = options

    @classmethod  # noqa: B027 - optional override
    def prepare(cls, options: Any) -> None:
        """Import what :meth:`start` will need (the server library, protocol classes).

        Called by the ``InProcessTaskApp`` constructor once the options are valid, so that
        entering the context only starts things. Must not bind, spawn or connect. The
        default does nothing.
        """

    @abc.abstractmethod
    def start(self, ctx: ServerContext) -> None:
        """Start serving ``ctx.loaded.app`` on ``ctx.sock``."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop serving. Idempotent; safe to call after a failed ``start``."""

    def check_alive(self) -> None:  # noqa: B027 - optional override
        """Raise ServerStartError when the server has died. Called between health polls."""

    @property
    def pids(self) -> tuple[int, ...]:
        """Process ids of child processes serving the app (empty for in-process runners)."""
        return ()

    @property
    def port(self) -> int | None:
        """The port the server really listens on, read by the lifecycle after ``start``.

        None (the default) means ``ctx.port``, the pre-bound socket. A runner whose server
        cannot serve on that socket (Ray Serve's proxy, whose port is fixed cluster-wide)
        returns the port it serves on; ``task_app.port`` and ``local_url`` then use it.
        """
        return None

    @property
    def in_process(self) -> InProcessApp | None:
        """The app as this runner serves it inside this process, for a tunnel that can
        call it without the loopback hop (the relay agent); None (the default) when the
        app runs elsewhere (a child process, Ray) or the runner does not say."""
        return None


@dataclasses.dataclass(frozen=True)
class InProcessApp:
    """An app served in this process: what a caller needs to dispatch to it as its
    server does.

    ``app`` is the ASGI callable the server calls (its middleware included), ``loop`` the
    event loop it runs on (calls must run there: the lifespan's objects live on it), and
    ``state`` the lifespan state each request's scope gets a shallow copy of.
    """

    app: Any
    loop: Any  # asyncio.AbstractEventLoop
    state: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Tunnel:
    """What an opened tunnel tells the lifecycle.

    ``url`` is the public base URL (no trailing slash). ``stable`` is False for URLs that
    change on reconnect (quick tunnels). ``headers`` are extra headers every client must
    send through this URL (e.g. a proxy's auth header). ``worker_token`` is a per-tunnel
    credential a remote job presents (exposed as ``task_app_worker_token``).
    """

    url: str
    stable: bool = True
    expires_at: float | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    pids: tuple[int, ...] = ()
    worker_token: str | None = None


@dataclasses.dataclass(frozen=True)
class TunnelContext:
    """What a tunnel backend gets from the lifecycle.

    ``local_url`` is where the server listens (``http://127.0.0.1:PORT`` even when bound
    to 0.0.0.0). Call ``url_changed(new_tunnel)`` when a supervised tunnel reconnects with
    a new URL; the lifecycle then updates ``task_app.url`` and fires the ``url_changed``
    hook and the ``on_url_change`` callback.
    """

    local_url: str
    host: str
    port: int
    api_key: str
    force_new: bool
    start_timeout: float
    logger: logging.Logger
    url_changed: Callable[[Tunnel], None]
    state_dir: Path | None = None
    #: The app served in this process (``ServerRunner.in_process``), or None.
    in_process: InProcessApp | None = None


class TunnelBackend(abc.ABC):
    """Gives the local server a public URL.

    ``open(ctx)`` returns a :class:`Tunnel` once the URL is usable (or raises a
    :class:`~taskapp.core.errors.TunnelError` subclass carrying the log tail);
    ``close()`` is idempotent and leaves no process behind. Unless the user passes
    ``skip_tunnel_verification=True`` the lifecycle then calls :meth:`verify`.
    """

    name: ClassVar[str]
    Options: ClassVar[type[Any]] = NoOptions
    #: Top-level InProcessTaskApp arguments this backend consumes, mapped to its option
    #: names (the preconfigured backend maps ``preconfigured_url`` to ``url``). Values the
    #: user passed there are merged into the options; ``tunnel_options`` wins on conflict.
    argument_options: ClassVar[Mapping[str, str]] = {}

    def __init__(self, options: Any) -> None:
        self.options = options

    @classmethod  # noqa: B027 - optional override
    def prepare(cls, options: Any) -> None:
        """Check what :meth:`open` will need (a program on ``PATH``, a key file), so a
        missing piece fails before the server starts.

        Called by the ``InProcessTaskApp`` constructor once the options are valid. Must not
        bind, spawn or connect. Raise a :class:`~taskapp.core.errors.TunnelError` subclass
        (``TunnelBinaryMissingError`` for a missing program). The default does nothing.
        """

    @abc.abstractmethod
    def open(self, ctx: TunnelContext) -> Tunnel:
        """Open the tunnel and return its public URL."""

    #: True when the lifecycle should supervise this backend: call :meth:`wait_dropped`
    #: and reopen the tunnel with backoff when it drops (see taskapp.core.supervisor).
    supervised: ClassVar[bool] = False

    def close(self) -> None:  # noqa: B027 - optional override, nothing to release by default
        """Close the tunnel. Idempotent."""

    def wait_dropped(self, stop: threading.Event) -> str | None:
        """Block until the open tunnel drops (return why) or ``stop`` is set (return None).

        Only called when ``supervised`` is True. The default never reports a drop.
        """
        stop.wait()
        return None

    def verify(self, tunnel: Tunnel, ctx: TunnelContext, timeout: float) -> None:
        """Check that ``tunnel.url`` serves ``/health`` with the API key.

        The default polls with backoff through :func:`taskapp.core.health.wait_healthy`.
        Backends override it to add their own transport (for example a resolver).
        """
        from taskapp.core.health import wait_healthy

        wait_healthy(
            tunnel.url,
            api_key=ctx.api_key,
            headers=tunnel.headers,
            timeout=timeout,
            what=f"the public URL of tunnel {self.name!r}",
            error=_verification_error(self.name),
        )


def _verification_error(backend: str) -> Callable[[str], Exception]:
    from taskapp.core.errors import TunnelVerificationError

    def make(message: str) -> Exception:
        return TunnelVerificationError(message, backend=backend)

    return make
