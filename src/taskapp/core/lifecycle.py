"""``InProcessTaskApp``: run a task app in this process, behind a tunnel, and clean up.

Start, in order (each step registers its undo before the next runs, so a failure at any
point releases everything already started, in reverse order)::

    load    -> registry.load_app(target)              loader plugins
    bind    -> ports.bind_listener(host, port)        pre-bound socket, no race
    serve   -> ServerRunner.start(ctx)                server plugins
    health  -> health.wait_healthy(local URL)         200 only; 401/403 and dead server fail fast
    tunnel  -> TunnelBackend.open(ctx)                tunnel plugins
    verify  -> TunnelBackend.verify(...)              unless skip_tunnel_verification
    events  -> hook task_app_started, on_start(task_app)

Stop: ``on_stop(task_app)``, hook ``before_shutdown``, close the tunnel, stop the server,
release the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import threading
import time
from collections.abc import Callable, Collection, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from taskapp.core import signals
from taskapp.core._types import TaskAppLike
from taskapp.core.blocking import call_blocking
from taskapp.core.errors import (
    ConfigurationError,
    LifecycleError,
    StartInterruptedError,
    TaskAppError,
    TaskAppFileNotFoundError,
    TunnelError,
)
from taskapp.core.logs import get_logger
from taskapp.core.secrets import fingerprint, generate_key, redact, register_secret

if TYPE_CHECKING:
    from taskapp.core.backends import (
        AppTarget,
        LoadedApp,
        ServerRunner,
        Tunnel,
        TunnelBackend,
        TunnelContext,
    )

__all__ = ["MODE_ALIASES", "InProcessTaskApp", "resolve_tunnel_name"]

logger = get_logger("taskapp")

#: Seed tunnel modes that name a backend differently (matched in any case, with
#: surrounding whitespace ignored and ``_`` read as ``-``; see :func:`resolve_tunnel_name`).
MODE_ALIASES: Mapping[str, str] = {
    "quick": "cloudflare-quick",
    "named": "cloudflare-named",
    "synthtunnel": "relay",
    "synth-tunnel": "relay",
    "localhost": "local",
}

#: The tunnel mode used when none is passed (synth-ai's variable), else ``"local"``.
TUNNEL_MODE_VARIABLE = "SYNTH_TUNNEL_MODE"
#: The preconfigured URL used when ``tunnel_mode="preconfigured"`` is given none.
TASK_APP_URL_VARIABLE = "SYNTH_TASK_APP_URL"


def resolve_tunnel_name(name: str, registered: Collection[str]) -> str:
    """The backend a tunnel spelling names: a registered name as it is, else the seed's
    spellings in any case, surrounding whitespace ignored, ``_`` as ``-``.

    >>> names = ["local", "cloudflare-quick", "relay"]
    >>> [resolve_tunnel_name(n, names) for n in (" Quick", "cloudflare_quick", "SYNTH_TUNNEL")]
    ['cloudflare-quick', 'cloudflare-quick', 'relay']
    >>> resolve_tunnel_name("LocalHost ", names)
    'local'
    """
    if name in registered:
        return name
    folded = name.strip().lower()
    for candidate in (folded, folded.replace("_", "-")):
        if candidate in MODE_ALIASES:
            return MODE_ALIASES[candidate]
        if candidate in registered:
            return candidate
    return name.strip()


ALLOWED_HOSTS = ("127.0.0.1", "localhost", "0.0.0.0", "::1")

Callback = Callable[["InProcessTaskApp"], Any]


class InProcessTaskApp:
    """Run a task app inside this process and give it a URL.

    Pass exactly one of ``app`` (an ASGI app, or a ``"module:attr"`` import string),
    ``config`` (a :class:`~taskapp.TaskAppConfig`), ``config_factory`` (a callable
    returning either) or ``task_app_path`` (a ``.py`` file, or a file a loader plugin takes)::

        async with InProcessTaskApp(config=build_config(), port=8114) as task_app:
            print(task_app.url)        # http://127.0.0.1:8114
            ...                        # hand task_app.url and task_app.api_key to a job

        with InProcessTaskApp(task_app_path="my_app.py") as task_app:  # scripts, notebooks
            ...

    Differences from synth-ai's class of the same name: ``tunnel_mode`` defaults to
    ``$SYNTH_TUNNEL_MODE``, else ``"local"`` (nothing is exposed unless asked); the
    seed's spellings (``quick``, ``cloudflare_quick``, ``synth_tunnel``, ``localhost``, any
    case) name the same backends; ``server`` picks the server runner, and
    ``server_options``/``tunnel_options`` carry backend settings.
    """

    def __init__(  # noqa: PLR0915 -- 64 statements at most (issue 21 ratchet; the target choice moved to _app_target); split when next changed
        self,
        *,
        app: Any = None,
        config: Any = None,
        config_factory: Callable[[], Any] | None = None,
        task_app_path: str | os.PathLike[str] | None = None,
        port: int = 8114,
        host: str = "127.0.0.1",
        tunnel_mode: str | None = None,
        tunnel_backend: str | None = None,
        preconfigured_url: str | None = None,
        preconfigured_auth_header: str | None = None,
        preconfigured_auth_token: str | None = None,
        api_key: str | None = None,
        health_check_timeout: float = 30.0,
        auto_find_port: bool = True,
        skip_tunnel_verification: bool = True,
        force_new_tunnel: bool = False,
        on_start: Callback | None = None,
        on_stop: Callback | None = None,
        on_url_change: Callback | None = None,
        server: str = "thread",
        server_options: Mapping[str, Any] | None = None,
        tunnel_options: Mapping[str, Any] | None = None,
    ) -> None:
        # 1. inputs: exactly one
        given = {
            name: value
            for name, value in (
                ("app", app),
                ("config", config),
                ("config_factory", config_factory),
                ("task_app_path", task_app_path),
            )
            if value is not None
        }
        if len(given) != 1:
            which = ", ".join(given) if given else "none"
            raise ConfigurationError(
                "pass exactly one of app=, config=, config_factory= or task_app_path= "
                f"(got {which})"
            )
        # 2. port
        if (
            isinstance(port, bool)
            or not isinstance(port, int)
            or not (port == 0 or 1024 <= port <= 65535)
        ):
            raise ConfigurationError(
                f"port must be an integer in [1024, 65535], or 0 for any free port; got {port!r}"
            )
        # 3. host
        if host not in ALLOWED_HOSTS:
            raise ConfigurationError(
                f"host must be one of {', '.join(ALLOWED_HOSTS)}, got {host!r}"
            )
        if not isinstance(health_check_timeout, int | float) or health_check_timeout <= 0:
            raise ConfigurationError(
                f"health_check_timeout must be a positive number, got {health_check_timeout!r}"
            )
        # 4. tunnel mode / backend, resolved against the plugin registry. Not passed:
        # $SYNTH_TUNNEL_MODE (the seed's variable), else "local".
        if tunnel_mode is None:
            tunnel_mode = os.environ.get(TUNNEL_MODE_VARIABLE, "").strip() or "local"
        if not isinstance(tunnel_mode, str) or not tunnel_mode.strip():
            raise ConfigurationError(f"tunnel_mode must be a non-empty string, got {tunnel_mode!r}")
        if tunnel_backend is not None and (
            not isinstance(tunnel_backend, str) or not tunnel_backend
        ):
            raise ConfigurationError(
                f"tunnel_backend must be a non-empty string, got {tunnel_backend!r}"
            )
        # The backends' dataclasses, the option parser and the registry are imported by
        # the first construct, not by `from taskapp import InProcessTaskApp`
        # (benchmarks/bench_import.py); the registry imports them anyway.
        from taskapp.core.env_keys import environment_api_key
        from taskapp.core.options import parse_options
        from taskapp.core.plugins import get_registry

        self._registry = get_registry()
        registered = list(self._registry.tunnels)
        backend_name = resolve_tunnel_name(tunnel_backend or tunnel_mode, registered)
        if (
            backend_name == "preconfigured"
            and preconfigured_url is None
            and not (tunnel_options or {}).get("url")
        ):
            # the seed's variable for the preconfigured URL; an explicit URL wins
            preconfigured_url = os.environ.get(TASK_APP_URL_VARIABLE, "").strip() or None
        self._tunnel_cls = self._registry.tunnel(backend_name)
        # The user's ENVIRONMENT_API_KEY; never a key lent to a running synth-ai app
        key = api_key if api_key is not None else environment_api_key()
        if api_key is not None and (not isinstance(api_key, str) or not api_key):
            raise ConfigurationError("api_key must be a non-empty string")
        self.api_key: str = key or generate_key()
        register_secret(self.api_key)
        target = self._app_target(app, config, config_factory, task_app_path)
        for name, callback in (
            ("on_start", on_start),
            ("on_stop", on_stop),
            ("on_url_change", on_url_change),
        ):
            if callback is not None and not callable(callback):
                raise ConfigurationError(f"{name} must be callable, got {type(callback).__name__}")

        # What actually runs: an explicit tunnel_backend= (a plugin's name, say) wins over
        # the default tunnel_mode="local"; seed spellings ("quick", ...) stay as given.
        self.tunnel_mode = backend_name if tunnel_backend is not None else tunnel_mode
        self._server_cls = self._registry.server(server)
        self._server_options = parse_options(
            self._server_cls.Options, server_options, owner=f"server {server!r}"
        )
        self._server_cls.prepare(self._server_options)
        arguments = {
            "preconfigured_url": preconfigured_url,
            "preconfigured_auth_header": preconfigured_auth_header,
            "preconfigured_auth_token": preconfigured_auth_token,
        }
        self._tunnel_options = parse_options(
            self._tunnel_cls.Options,
            _merge_argument_options(self._tunnel_cls, arguments, tunnel_options),
            owner=f"tunnel {backend_name!r}",
        )
        # A missing program (cloudflared, ssh) fails here, before any server starts.
        self._tunnel_cls.prepare(self._tunnel_options)

        self._target = target
        self.host = host
        self.port = port
        self.requested_port = port
        self.url: str | None = None
        self.task_app_worker_token: str | None = None
        self.server_name = server
        self.tunnel_backend = backend_name
        self.health_check_timeout = float(health_check_timeout)
        self.auto_find_port = auto_find_port
        self.skip_tunnel_verification = skip_tunnel_verification
        self.force_new_tunnel = force_new_tunnel
        self.on_start = on_start
        self.on_stop = on_stop
        self.on_url_change = on_url_change

        self.loaded: LoadedApp | None = None
        self.server: ServerRunner | None = None
        self.tunnel: Tunnel | None = None
        self._tunnel_backend: TunnelBackend | None = None
        self._cleanups: list[tuple[str, Callable[[], None]]] = []
        self._lock = threading.RLock()
        self._running = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # Set by a signal or a cancelled `async with` while starting: the start gives up at
        # its next step (see _check_interrupted) instead of running on half torn down.
        self._interrupted: str | None = None

    def _app_target(
        self,
        app: Any,
        config: Any,
        config_factory: Callable[[], Any] | None,
        task_app_path: str | os.PathLike[str] | None,
    ) -> AppTarget:
        """What to load: the one of ``app=``, ``config=``, ``config_factory=`` and
        ``task_app_path=`` the caller gave (validated above: exactly one)."""
        from taskapp.core.backends import AppTarget

        if task_app_path is not None:
            # 5./6. path exists and is a .py file
            return self._path_target(task_app_path)
        if app is not None:
            kind: Literal["app", "import_string"] = (
                "import_string" if isinstance(app, str) else "app"
            )
            return AppTarget(kind=kind, value=app, api_key=self.api_key)
        if config is not None:
            return AppTarget(kind="config", value=config, api_key=self.api_key)
        return AppTarget(kind="config_factory", value=config_factory, api_key=self.api_key)

    def _path_target(self, task_app_path: str | os.PathLike[str]) -> AppTarget:
        """``task_app_path=``: any existing file goes to the loaders (the builtin one takes
        ``.py`` files, a plugin may claim others); ``"module:attr"`` is an import string."""
        from pathlib import Path

        from taskapp.core.backends import AppTarget
        from taskapp.core.importing import looks_like_named_target
        from taskapp.core.loading import did_you_mean_file, looks_like_import_string

        text = os.fspath(task_app_path)
        path = Path(text).expanduser()
        if not path.exists():
            if looks_like_import_string(text):
                # "pkg.mod:attr" passed as a path: it is an import string (what app= takes).
                return AppTarget(kind="import_string", value=text, api_key=self.api_key)
            if looks_like_named_target(text):
                # "evals.py@my_task", "inspect_evals/gsm8k": for a loader plugin
                return AppTarget(kind="named", value=text, api_key=self.api_key)
            raise TaskAppFileNotFoundError(
                f"task_app_path {str(path)!r} does not exist.{did_you_mean_file(text)}"
            )
        path = path.resolve()
        if not self._registry.may_claim_path(path):
            raise ConfigurationError(self._registry.unclaimed_path_message(path))
        return AppTarget(kind="path", value=path, api_key=self.api_key)

    # -- public ------------------------------------------------------------------------

    @property
    def local_url(self) -> str:
        """Where the server listens, reachable from this machine."""
        from taskapp.core.ports import url_host

        return f"http://{url_host(self.host)}:{self.port}"

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> InProcessTaskApp:
        """Start everything (what ``with`` does). Prefer the context managers.

        Inside a running event loop (a Jupyter cell) the start runs on a helper thread
        while this one waits (see :mod:`taskapp.core.blocking`), so it works the same.
        """
        self._interrupted = None
        signals.activate(self)
        try:
            call_blocking(self._start, name="taskapp-start")
        except BaseException:
            signals.deactivate(self)
            raise
        return self

    def stop(self) -> None:
        """Stop everything (what leaving ``with`` does). Idempotent."""
        try:
            call_blocking(self._stop, name="taskapp-stop")
        finally:
            signals.deactivate(self)

    def __enter__(self) -> InProcessTaskApp:
        # Also inside a running event loop (Jupyter): the server runs in its own thread or
        # process, so waiting here blocks nothing it needs. `async with` does not wait.
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> InProcessTaskApp:
        self._loop = asyncio.get_running_loop()
        self._interrupted = None
        signals.activate(self)
        future = self._loop.run_in_executor(None, self._start)
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            # The start goes on in its thread: make it give up at its next step, wait for
            # it (however often we are cancelled meanwhile), then undo what it left.
            self._interrupted = "cancellation of `async with`"
            try:
                await _finish(asyncio.ensure_future(self._undo_start(future)))
            finally:
                signals.deactivate(self)
            raise
        except BaseException:
            signals.deactivate(self)
            raise
        return self

    async def _undo_start(self, future: asyncio.Future[None]) -> None:
        with contextlib.suppress(BaseException):  # a failed start cleaned up after itself
            await future
        await asyncio.to_thread(self._stop)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            # Stop completely even when cancelled meanwhile (an expiring asyncio.timeout, a
            # second Ctrl-C): leaving the block means the port is free and nothing runs.
            cancelled = await _finish(asyncio.ensure_future(asyncio.to_thread(self._stop)))
        finally:
            signals.deactivate(self)
        if cancelled:
            raise asyncio.CancelledError

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return (
            f"<InProcessTaskApp {state} url={self.url!r} server={self.server_name!r} "
            f"tunnel={self.tunnel_backend!r} key={fingerprint(self.api_key)}>"
        )

    # -- start / stop ------------------------------------------------------------------

    def _push(self, label: str, undo: Callable[[], None]) -> None:
        self._cleanups.append((label, undo))
        self._check_interrupted()

    def _check_interrupted(self) -> None:
        """Give up a start that a signal or a cancellation interrupted (between steps)."""
        reason = self._interrupted
        if reason is not None:
            raise StartInterruptedError(
                f"the task app start was interrupted by {reason}; everything started so far "
                "has been stopped. Start it again when you are ready"
            )

    def _start(self) -> None:
        with self._lock:
            if self._running:
                raise LifecycleError(
                    "this InProcessTaskApp is already running; leave its `with` block (or "
                    "call stop()) before starting it again, or create a second instance"
                )
            self._cleanups = []
            started = time.perf_counter()
            deadline = time.monotonic() + self.health_check_timeout
            try:
                self._start_steps(deadline)
                self._check_interrupted()
            except BaseException:
                self._teardown()
                raise
            self._running = True
        logger.info(
            "task app ready at %s (server=%s, tunnel=%s, key %s, %.0f ms)",
            self.url,
            self.server_name,
            self.tunnel_backend,
            fingerprint(self.api_key),
            (time.perf_counter() - started) * 1000,
        )
        self._registry.events.task_app_started(task_app=self)
        try:
            self._callback("on_start", self.on_start)
        except BaseException:
            # SystemExit or KeyboardInterrupt from on_start (exceptions are only logged):
            # the caller never gets the instance to stop, so stop it here.
            self._stop()
            raise

    def _start_steps(self, deadline: float) -> None:
        # The steps' machinery (the health client, ports, the tunnel supervisor) is
        # imported when a start runs, so `from taskapp import InProcessTaskApp` stays near
        # the asyncio floor (benchmarks/bench_import.py).
        from taskapp.core.backends import ServerContext, TunnelContext
        from taskapp.core.health import wait_healthy
        from taskapp.core.loading import release_key
        from taskapp.core.ports import bind_listener, listener_closer
        from taskapp.core.supervisor import TunnelSupervisor

        registry = self._registry
        loaded = registry.load_app(self._target)
        self.loaded = loaded
        # The app object may be served again (same .py path or app=): this instance's key
        # is refused once it stops.
        self._push("instance key", lambda: release_key(loaded.app, self.api_key))
        logger.debug("loaded %s with loader %r", self._target.describe(), loaded.loader)
        registry.events.app_loaded(task_app=self, loaded=loaded)

        sock = bind_listener(self.host, self.requested_port, auto_find_port=self.auto_find_port)
        self._push("socket", listener_closer(sock))
        self.port = sock.getsockname()[1]
        logger.debug("bound %s:%d", self.host, self.port)

        runner = self._server_cls(self._server_options)
        self.server = runner
        self._push(f"server {self.server_name!r}", runner.stop)
        runner.start(
            ServerContext(
                loaded=loaded,
                sock=sock,
                host=self.host,
                port=self.port,
                api_key=self.api_key,
                start_timeout=_remaining(deadline),
                logger=get_logger(f"taskapp.server.{self.server_name}"),
                timeout_setting=self.health_check_timeout,
            )
        )
        if runner.port is not None and runner.port != self.port:
            logger.debug("server %r serves on port %d instead", self.server_name, runner.port)
            self.port = runner.port

        def alive() -> None:
            self._check_interrupted()
            runner.check_alive()

        wait_healthy(
            self.local_url,
            api_key=self.api_key,
            timeout=_remaining(deadline),
            alive=alive,
            limit=f"the {self.health_check_timeout:g} s health check timeout",
        )
        registry.events.server_started(task_app=self, server=runner)

        backend = self._tunnel_cls(self._tunnel_options)
        self._tunnel_backend = backend
        self._push(f"tunnel {self.tunnel_backend!r}", backend.close)
        ctx = TunnelContext(
            local_url=self.local_url,
            host=self.host,
            port=self.port,
            api_key=self.api_key,
            force_new=self.force_new_tunnel,
            start_timeout=self.health_check_timeout,
            logger=get_logger(f"taskapp.tunnel.{self.tunnel_backend}"),
            url_changed=self._tunnel_url_changed,
            in_process=runner.in_process,
        )
        tunnel = _open_tunnel(backend, ctx, self.tunnel_backend)
        verify = None
        if not self.skip_tunnel_verification:

            def verify(opened: Tunnel) -> None:
                backend.verify(opened, ctx, self.health_check_timeout)

            verify(tunnel)
        if backend.supervised:
            supervisor = TunnelSupervisor(backend, ctx, verify=verify)
            self._push(
                "tunnel supervisor",
                lambda: supervisor.stop(timeout=self.health_check_timeout + 5.0),
            )
            supervisor.start()
        self.tunnel = tunnel
        self.url = tunnel.url
        self.task_app_worker_token = tunnel.worker_token
        registry.events.tunnel_opened(task_app=self, tunnel=tunnel)

    def _stop(self) -> None:
        with self._lock:
            if not self._running:
                return
            self._running = False
        self._callback("on_stop", self.on_stop)
        self._registry.events.before_shutdown(task_app=self)
        self._teardown()
        logger.info("task app stopped (%s)", self.url)

    def stop_for_signal(self, signum: int) -> None:
        """Called by the signal handler: the same cleanup as leaving the context.

        A start still in progress is interrupted: it gives up at its next step (raising
        :class:`StartInterruptedError` if the signal does not end the process) and what
        it started is undone. A start running in another thread (``async with``) is
        waited for until it has given up, so nothing it starts afterwards is left behind.
        """
        self._interrupted = signal.Signals(signum).name
        if not self._lock.acquire(timeout=self.health_check_timeout + 10.0):
            logger.warning(
                "a start in another thread did not give up in time; it cleans up after itself"
            )
            return
        try:
            running = self._running
        finally:
            self._lock.release()
        if running:
            self._stop()
        else:
            self._teardown()

    def _teardown(self) -> None:
        with self._lock:
            cleanups, self._cleanups = self._cleanups, []
        pending: BaseException | None = None
        for label, undo in reversed(cleanups):
            try:
                undo()
            except Exception:
                logger.warning("stopping %s failed", label, exc_info=True)
            except BaseException as exc:
                # KeyboardInterrupt (a second Ctrl-C) or SystemExit: finish the cleanup
                # first, so no thread, socket or child outlives it, then raise it.
                pending = pending or exc
        if pending is not None:
            raise pending

    # -- events ------------------------------------------------------------------------

    def _tunnel_url_changed(self, tunnel: Tunnel) -> None:
        old = self.url
        self.tunnel = tunnel
        self.url = tunnel.url
        self.task_app_worker_token = tunnel.worker_token
        if old == tunnel.url:
            return
        logger.info("tunnel URL changed: %s -> %s", old, tunnel.url)
        self._registry.events.url_changed(task_app=self, old_url=old or "", new_url=tunnel.url)
        self._callback("on_url_change", self.on_url_change)

    def _callback(self, name: str, callback: Callback | None) -> None:
        if callback is None:
            return
        try:
            result = callback(self)
            if inspect.isawaitable(result):
                self._await(result)
        except Exception:
            logger.warning("%s callback raised; continuing", name, exc_info=True)

    def _await(self, awaitable: Any) -> None:
        loop = self._loop
        on_loop_thread = False
        if loop is not None:
            try:
                on_loop_thread = asyncio.get_running_loop() is loop
            except RuntimeError:
                on_loop_thread = False
        if loop is not None and loop.is_running() and not on_loop_thread:
            asyncio.run_coroutine_threadsafe(_as_coroutine(awaitable), loop).result()
            return
        # No usable loop (sync mode, or called on the loop's own thread by a signal):
        # run it to completion on a fresh loop in a helper thread.
        error: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(_as_coroutine(awaitable))
            except BaseException as exc:
                error.append(exc)

        thread = threading.Thread(target=run, name="taskapp-callback")
        thread.start()
        thread.join()
        if error:
            raise error[0]


async def _as_coroutine(awaitable: Any) -> Any:
    return await awaitable


async def _finish(future: asyncio.Future[Any]) -> bool:
    """Await ``future`` to the end even if the caller is cancelled meanwhile.

    Returns True when the caller was cancelled (it should then raise CancelledError); the
    future's own exception propagates. For work running in a thread, which cannot be
    cancelled: returning early would leave it running after the caller moved on.
    """
    cancelled = False
    while True:
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.done():
                raise
            cancelled = True
            continue
        return cancelled


def _open_tunnel(backend: TunnelBackend, ctx: TunnelContext, name: str) -> Tunnel:
    """``backend.open(ctx)``; any error it raises names the backend (plugins' errors too)."""
    try:
        return backend.open(ctx)
    except TunnelError as exc:
        if not exc.backend:
            exc.backend = name
        if name not in exc.message:
            exc.message = f"tunnel {name!r}: {exc.message}"
            exc.args = (exc._render(),)
        raise
    except TaskAppError:
        raise
    except Exception as exc:
        raise TunnelError(
            f"tunnel {name!r} failed to open: {type(exc).__name__}: {redact(str(exc))}. "
            "The error comes from the tunnel backend (a plugin?); see the chained traceback",
            backend=name,
        ) from exc


def _remaining(deadline: float) -> float:
    return max(0.05, deadline - time.monotonic())


def _merge_argument_options(
    cls: type[TunnelBackend],
    arguments: Mapping[str, Any],
    options: Mapping[str, Any] | None,
) -> dict[str, Any]:
    merged = dict(options or {})
    for argument, value in arguments.items():
        if value is None:
            continue
        option = cls.argument_options.get(argument)
        if option is None:
            raise ConfigurationError(
                f"{argument}= applies to tunnel_mode='preconfigured', not to tunnel {cls.name!r}"
            )
        if option in merged and merged[option] != value:
            raise ConfigurationError(
                f"{argument}= and tunnel_options[{option!r}] disagree; pass one of them"
            )
        merged[option] = value
    return merged


if TYPE_CHECKING:

    def _conforms(task_app: InProcessTaskApp) -> TaskAppLike:
        """mypy checks that InProcessTaskApp is what the hooks are promised."""
        return task_app
