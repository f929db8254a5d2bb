"""Server runner ``ray``: the task app as a Ray Serve deployment (extra ``taskapp[ray]``).

::

    with InProcessTaskApp(task_app_path="my_app.py", server="ray",
                          server_options={"num_replicas": 4},
                          health_check_timeout=120) as task_app:
        ...   # task_app.url is Serve's HTTP proxy, which spreads requests over 4 replicas

By default taskapp starts a **private local Ray instance** (``address="local"``, so
``RAY_ADDRESS`` is ignored and no stranger's cluster is ever joined by accident), deploys
the app on it, and shuts it down on stop. ``address="auto"``, ``"host:port"`` or
``"ray://..."`` deploy on an existing cluster instead; stop then deletes only taskapp's
own Serve application. Everything measured about this runner is in ``docs/ray.md``.

* **Nothing imports ray** until :meth:`RayServer.start`; the options check only that the
  ``ray`` package is installed (a :class:`~taskapp.core.errors.ConfigurationError`
  naming ``pip install '.[ray]'`` when it is not).
* **The app travels as an import target**: ``LoadedApp.reimport_target()`` (a ``.py``
  path or ``"module:attr"``) plus a builder that runs on each replica
  (:mod:`taskapp.plugins.servers._ray_app`), never a pickled app or TaskAppConfig. Each
  replica runs the app's lifespan itself. An app that has no import target is refused.
* **The API key** travels inside that builder (Ray's control plane): never in argv,
  environment variables, ``serve.status()``, Serve's config or logs.
* **Ray runs on a long-lived thread** (``taskapp-ray-driver``): Ray kills the processes of
  a local instance when the *thread* that called ``ray.init()`` ends (the parent-death
  signal is per thread), so every Ray call of this runner goes through that one thread.
  It also keeps Ray from replacing the process's SIGTERM handler.
* **A local instance is loopback-only** (Ray's "cluster mode" off for it, dashboard off,
  Serve's proxy on the lifecycle's host), with usage statistics off unless
  ``usage_stats=True``. Ray 2.60's token authentication stays on (Ray's default).
* **Port**: Serve's proxy cannot serve on the lifecycle's pre-bound socket. For a fresh
  local instance the runner closes that socket right before Serve starts and has the
  proxy bind the same port, then checks that the listener there is one of this
  instance's processes. When Serve already runs (an existing cluster, or a local
  instance kept by ``stop_policy="delete_app"``) its port is fixed cluster-wide: the
  runner reads it back and reports it through :attr:`RayServer.port`, which the
  lifecycle uses for ``task_app.port`` and the health check.
* **Readiness**: start waits (bounded by the start timeout) until Serve reports the
  application RUNNING, failing at once with the replica's own error when the deployment
  fails; then the lifecycle's usual ``/health`` check goes through Serve's proxy.
* **Stop** (``stop_policy``): ``"auto"`` deletes taskapp's application and, for a local
  instance taskapp started, shuts Serve and Ray down and waits until every process of
  that instance is gone (SIGKILL by recorded pid for stragglers; Ray processes are never
  looked up by name). ``"delete_app"`` keeps a local instance running for the next task
  app in this process (about 3 s to redeploy instead of about 10 s to start Ray); it
  ends at exit or with :func:`stop_local_ray`. ``"keep_app"`` (existing clusters only)
  leaves the application serving after this process exits.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import dataclasses
import importlib.util
import logging
import os
import queue
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from taskapp.core.backends import ServerContext, ServerRunner
from taskapp.core.errors import ConfigurationError, ServerStartError
from taskapp.core.extras import install_command
from taskapp.core.health import Backoff
from taskapp.core.hookspecs import RegisterServer, hookimpl
from taskapp.core.logs import get_logger
from taskapp.core.secrets import fingerprint

__all__ = ["INSTALL_HINT", "MIN_RAY_VERSION", "RayOptions", "RayServer", "stop_local_ray"]

logger = get_logger("taskapp.server.ray")

T = TypeVar("T")

INSTALL_HINT = install_command("ray")
#: Serve calls builder functions given to ``serve.ingress`` on each replica since 2.47.
MIN_RAY_VERSION = (2, 47)
DEPLOYMENT_NAME = "TaskApp"
LOCAL_ADDRESSES = (None, "local")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DRIVER_THREAD = "taskapp-ray-driver"
#: How long after ``ray.shutdown()`` processes of a local instance may take to exit
#: before the runner SIGKILLs them (by recorded pid).
EXIT_GRACE = 5.0
#: Bound on every Ray call made while stopping.
STOP_CALL_TIMEOUT = 30.0

StopPolicy = Literal["auto", "delete_app", "keep_app"]


def ray_installed() -> bool:
    """True when the ``ray`` package can be imported (without importing it)."""
    if "ray" in sys.modules:
        return sys.modules["ray"] is not None
    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        return False


@dataclasses.dataclass(frozen=True)
class RayOptions:
    address: str | None = None
    """None or ``"local"``: a private local Ray instance taskapp starts and stops
    (``RAY_ADDRESS`` is ignored). ``"auto"`` (honours ``RAY_ADDRESS``), ``"host:port"``
    or ``"ray://host:port"``: an existing cluster; taskapp deploys and deletes only its
    own application there."""
    num_replicas: int | str | None = None
    """Replicas (default 1), or ``"auto"``. Not together with ``autoscaling_config``."""
    autoscaling_config: dict[str, Any] | None = None
    """Serve's autoscaling config (``min_replicas``, ``max_replicas``,
    ``target_ongoing_requests``, ...), passed through."""
    max_ongoing_requests: int = 256
    """Concurrent requests per replica. Serve's default (5) starves rollouts that wait on
    a model or simulator: at concurrency 64 on a 50 ms route it gives 3-5x fewer
    requests/s than 200 (docs/ray.md)."""
    max_queued_requests: int = -1
    """Requests queued per caller before Serve answers 503; -1: unbounded."""
    ray_actor_options: dict[str, Any] | None = None
    """Per-replica resources etc.; default ``{"num_cpus": 0.5}`` (rollouts wait on I/O)."""
    runtime_env: dict[str, Any] | None = None
    """Given to ``ray.init``: ``working_dir`` / ``py_modules`` bring the app's code to
    remote nodes, ``pip``, ``env_vars``, ..."""
    http_host: str | None = None
    """Host of Serve's proxy when taskapp starts Serve; default: the task app's host."""
    http_port: int | None = None
    """Port of Serve's proxy when taskapp starts Serve; default: the task app's port."""
    app_name: str = "taskapp"
    """Name of the Serve application (unique on a shared cluster)."""
    stop_policy: StopPolicy = "auto"
    """``"auto"``, ``"delete_app"`` or ``"keep_app"`` (see the module docs)."""
    num_cpus: int | None = None
    """CPUs of a local instance (default: all)."""
    object_store_memory: int | None = None
    """Object store bytes of a local instance (default: Ray's, 30% of RAM)."""
    include_dashboard: bool = False
    """Start Ray's dashboard (127.0.0.1 only) with a local instance."""
    log_to_driver: bool = True
    """Show the replicas' stdout/stderr in this process."""
    access_log: bool = False
    """Serve's per-request access log on the replicas."""
    log_level: str = "WARNING"
    """Level of Serve's own logs (controller, proxy, replicas)."""
    usage_stats: bool = False
    """Allow Ray's usage statistics (off unless True)."""
    graceful_shutdown_timeout_s: float = 5.0
    """Seconds in-flight requests get when a replica stops."""
    max_constructor_retry_count: int | None = None
    """How often Serve retries a replica whose builder raised (Serve's default: 20,
    capped at 3 per replica) before the deployment fails."""
    request_timeout_s: float | None = None
    """Serve's end-to-end HTTP timeout when taskapp starts Serve (default: none)."""
    ship_taskapp: bool | None = None
    """Add taskapp's own package to ``runtime_env["py_modules"]`` so replicas can import
    the builder; default: True for existing clusters, False for a local instance."""
    init_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Extra keyword arguments for ``ray.init`` (for example ``_temp_dir``)."""

    def __post_init__(self) -> None:
        if self.address is not None and (not isinstance(self.address, str) or not self.address):
            raise ValueError("address must be a non-empty string or None")
        replicas = self.num_replicas
        if (
            replicas is not None
            and replicas != "auto"
            and (isinstance(replicas, str | bool) or replicas < 1)
        ):
            raise ValueError(f"num_replicas must be at least 1 or 'auto', got {replicas!r}")
        if replicas is not None and self.autoscaling_config is not None:
            raise ValueError("pass num_replicas or autoscaling_config, not both")
        if self.max_ongoing_requests < 1:
            raise ValueError(
                f"max_ongoing_requests must be at least 1, got {self.max_ongoing_requests}"
            )
        if self.max_queued_requests != -1 and self.max_queued_requests < 1:
            raise ValueError(
                f"max_queued_requests must be -1 (unbounded) or at least 1, "
                f"got {self.max_queued_requests}"
            )
        if self.http_port is not None and not 1 <= self.http_port <= 65535:
            raise ValueError(f"http_port must be in [1, 65535], got {self.http_port}")
        if not self.app_name or not isinstance(self.app_name, str):
            raise ValueError("app_name must be a non-empty string")
        if self.stop_policy == "keep_app" and self.address in LOCAL_ADDRESSES:
            raise ValueError(
                "stop_policy='keep_app' needs an existing cluster (address='auto', "
                "'host:port' or 'ray://...'): a local instance ends with this process"
            )
        if self.log_level.upper() not in LOG_LEVELS:
            raise ValueError(
                f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}"
            )
        if self.graceful_shutdown_timeout_s < 0:
            raise ValueError("graceful_shutdown_timeout_s must be >= 0")
        if self.max_constructor_retry_count is not None and self.max_constructor_retry_count < 1:
            raise ValueError("max_constructor_retry_count must be at least 1")
        for key in ("address", "runtime_env"):
            if key in self.init_kwargs:
                raise ValueError(f"pass {key} as its own option, not in init_kwargs")
        if not ray_installed():
            raise ConfigurationError(
                "server='ray' runs the task app on Ray Serve, which is not installed. "
                f"Install it with: {INSTALL_HINT}"
            )

    @property
    def local(self) -> bool:
        return self.address in LOCAL_ADDRESSES

    def session_key(self) -> tuple[Any, ...]:
        """What a kept Ray connection must have been started with to be reused."""
        return (
            "local" if self.local else self.address,
            repr(self.runtime_env),
            repr(sorted(self.init_kwargs.items())),
            self.num_cpus,
            self.object_store_memory,
            self.include_dashboard,
            self.log_to_driver,
            self.usage_stats,
            self.ship_taskapp,
        )


# -- the driver thread -------------------------------------------------------------------


class _CallTimeout(Exception):
    """A call on the driver thread did not finish in time (it may still be running)."""


class _Driver:
    """One long-lived daemon thread that makes every Ray call of this process's runner.

    ``ray.init`` for a local instance must run on a thread that outlives the instance
    (Ray arms the parent-death signal of its processes against the calling thread).
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[
            tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None
        ] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=DRIVER_THREAD, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def call(self, fn: Callable[[], T], timeout: float) -> T:
        if threading.current_thread() is self._thread:
            return fn()
        if not self._thread.is_alive():
            raise RuntimeError("the Ray driver thread has ended")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((fn, future))
        done, _ = concurrent.futures.wait([future], timeout=max(0.0, timeout))
        if not done:
            future.cancel()  # drops it if it has not started yet
            raise _CallTimeout
        return future.result()

    def submit(self, fn: Callable[[], Any]) -> None:
        """Queue ``fn`` without waiting for it."""
        self._jobs.put((fn, concurrent.futures.Future()))

    def close(self, timeout: float = 5.0) -> None:
        if not self._thread.is_alive():
            return
        self._jobs.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)


# -- the process-wide Ray connection ------------------------------------------------------


@dataclasses.dataclass
class _Session:
    """This process's connection to Ray, as far as taskapp knows it."""

    driver: _Driver
    owned: bool
    """taskapp started this local instance: it shuts it down."""
    by_taskapp: bool
    """taskapp called ``ray.init`` (else the caller had already)."""
    key: tuple[Any, ...] | None
    pids: dict[int, int] = dataclasses.field(default_factory=dict)
    """Local instance: pid -> start time of the processes ``ray.init`` started."""

    def instance_pids(self) -> dict[int, int]:
        """Every live process of the local instance (what ray.init started + descendants)."""
        if not self.pids:
            return {}
        table = _process_table()
        alive = {
            pid: start for pid, start in self.pids.items() if table.get(pid, (0, -1))[1] == start
        }
        found = dict(alive)
        frontier = list(alive)
        while frontier:
            parent = frontier.pop()
            for pid, (ppid, start) in table.items():
                if ppid == parent and pid not in found:
                    found[pid] = start
                    frontier.append(pid)
        return found

    def core_alive(self) -> bool:
        """False when a process ray.init started (GCS, raylet, ...) has died."""
        if not self.pids:
            return True
        table = _process_table()
        return all(table.get(pid, (0, -1))[1] == start for pid, start in self.pids.items())


_lock = threading.RLock()
_session: _Session | None = None
_active: RayServer | None = None
_atexit_registered = False


def stop_local_ray(timeout: float = 30.0) -> bool:
    """Shut down the Ray instance taskapp keeps after ``stop_policy="delete_app"``.

    Returns True when there was one. Raises RuntimeError while a task app still uses it.
    """
    global _session
    with _lock:
        session = _session
        if session is None:
            return False
        if _active is not None:
            raise RuntimeError("a task app with server='ray' is still running; stop it first")
        _session = None
    _close_session(session, time.monotonic() + timeout)
    return True


def _at_exit() -> None:
    with _lock:
        active = _active
    if active is not None:
        with contextlib.suppress(Exception):
            active.stop()
    with contextlib.suppress(Exception):
        stop_local_ray(timeout=15.0)


def _close_session(session: _Session, deadline: float) -> None:
    """Disconnect; for a local instance taskapp started, shut it down and reap it."""
    if not session.by_taskapp:
        session.driver.close()
        return
    ray, serve = _module("ray"), _module("ray.serve")
    tree = session.instance_pids()
    if session.owned:
        _try_call(session, serve.shutdown, deadline, "serve.shutdown()")
    _try_call(session, ray.shutdown, deadline, "ray.shutdown()")
    session.driver.close()
    if tree:
        _reap(tree, time.monotonic() + EXIT_GRACE)


def _try_call(session: _Session, fn: Callable[[], Any], deadline: float, what: str) -> bool:
    try:
        session.driver.call(fn, min(STOP_CALL_TIMEOUT, max(0.5, deadline - time.monotonic())))
    except _CallTimeout:
        logger.warning("%s did not return in time", what)
        return False
    except Exception as exc:
        logger.warning("%s failed: %s: %s", what, type(exc).__name__, exc)
        return False
    return True


# -- the runner --------------------------------------------------------------------------


class RayServer(ServerRunner):
    """The task app as a Ray Serve application (see the module docs)."""

    name = "ray"
    Options = RayOptions

    def __init__(self, options: RayOptions) -> None:
        super().__init__(options)
        self.options: RayOptions = options
        self._session: _Session | None = None
        self._deployed = False
        self._running = False
        self._stopping = False
        self._stopped = False
        self._port: int | None = None
        self._host: str | None = None
        self._stop_lock = threading.Lock()
        self._released = False
        self._last_check = 0.0

    # -- ServerRunner ------------------------------------------------------------------

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def pids(self) -> tuple[int, ...]:
        """Every process of the local Ray instance (empty on an existing cluster)."""
        session = self._session
        if session is None or not session.owned:
            return ()
        return tuple(sorted(session.instance_pids()))

    @property
    def app_name(self) -> str:
        return self.options.app_name

    @property
    def session_dir(self) -> str | None:
        """The local instance's Ray session directory (its logs are under ``logs/``)."""
        session = self._session
        if session is None or not session.owned:
            return None
        return _session_dir(session.pids)

    def start(self, ctx: ServerContext) -> None:
        global _active
        opts = self.options
        target = self._target_for(ctx)
        _import_ray()
        deadline = time.monotonic() + ctx.start_timeout
        with _lock:
            if _active is not None and _active is not self:
                raise ServerStartError(
                    "another task app with server='ray' is running in this process; Ray "
                    "Serve serves one task app at '/' per cluster. Stop it first"
                )
            _active = self
        session = self._session = _acquire_session(opts, deadline, ctx)
        self._check_stopping()
        host, port = self._start_serve(ctx, session, deadline)
        self._host, self._port = host, port
        self._check_stopping()
        self._deploy(ctx, session, target, deadline)
        self._wait_running(session, deadline)
        self._running = True
        ctx.logger.info(
            "Ray Serve application %r running (%s) behind the proxy at %s:%d; key %s",
            opts.app_name,
            "private local Ray instance" if session.owned else "existing Ray cluster",
            host,
            port,
            fingerprint(ctx.api_key),
        )

    def check_alive(self) -> None:
        session = self._session
        if session is None or not self._deployed or self._stopping:
            return
        if not session.driver.alive:
            raise ServerStartError("the Ray driver thread ended; Ray is gone")
        if session.owned and not session.core_alive():
            logs = _session_dir(session.pids) or "the Ray session directory"
            raise ServerStartError(
                f"the local Ray instance died (its GCS or raylet process exited); see the "
                f"logs under {logs}/logs"
            )
        now = time.monotonic()
        if self._running and now - self._last_check < 1.0:
            return
        self._last_check = now
        status = self._app_status(session, timeout=10.0)
        if status is None:
            raise ServerStartError(
                f"the Serve application {self.options.app_name!r} no longer exists (deleted "
                "from outside, or Serve was shut down)"
            )
        state, message = status
        if state in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise ServerStartError(self._failure_message(state, message))

    def stop(self) -> None:
        global _active, _session
        with self._stop_lock:
            if self._stopped:
                return
            self._stopping = True
            session = self._session
            try:
                if session is not None:
                    self._stop_session(session)
            finally:
                self._stopped = True
                self._running = False
                with _lock:
                    if _active is self:
                        _active = None

    # -- start steps -------------------------------------------------------------------

    def _check_stopping(self) -> None:
        if not self._stopping:
            return
        with self._stop_lock:
            session = self._session
            if self._stopped and session is not None and not self._released:
                self._stop_session(session)  # stop() ran before the session existed
        raise ServerStartError("the ray server was stopped while it was starting")

    def _target_for(self, ctx: ServerContext) -> str:
        target = ctx.loaded.reimport_target()
        if target is None:
            raise ConfigurationError(
                "server='ray' builds the app again on every Ray Serve replica from an import "
                f"path, but the app loaded by {ctx.loaded.loader!r} has none (it was defined "
                "in __main__, inside a function, or built at run time). Pass "
                "task_app_path='path/to/app.py', or app='package.module:app' (or a "
                "TaskAppConfig / factory defined at module level of an importable module), "
                "or keep server='thread'"
            )
        working_dir = (self.options.runtime_env or {}).get("working_dir")
        if target.endswith(".py") and not self.options.local and isinstance(working_dir, str):
            # Replicas on a cluster run inside the uploaded working_dir.
            with contextlib.suppress(ValueError):
                target = str(Path(target).resolve().relative_to(Path(working_dir).resolve()))
        return target

    def _start_serve(
        self, ctx: ServerContext, session: _Session, deadline: float
    ) -> tuple[str, int]:
        serve = _module("ray.serve")
        opts = self.options
        want_host = opts.http_host or _serve_host(ctx.host)
        want_port = opts.http_port or ctx.port
        current = self._call(session, _serve_http, deadline, "reading Serve's HTTP options")
        moved = current is not None and (
            opts.http_port not in (None, current[1]) or want_host != current[0]
        )
        if current is not None and session.owned and moved:
            ctx.logger.info(
                "restarting Serve's proxy on %s:%d (was %s:%d)", want_host, want_port, *current
            )
            self._call(session, serve.shutdown, deadline, "serve.shutdown()")
            current = None
        # Serve's proxy cannot use the pre-bound socket: release it (the proxy binds the
        # same port for a fresh local instance; otherwise Serve's port is reported).
        ctx.sock.close()
        if current is None:
            http: dict[str, Any] = {"host": want_host, "port": want_port}
            if opts.request_timeout_s is not None:
                http["request_timeout_s"] = opts.request_timeout_s

            def start_serve() -> None:
                serve.start(http_options=http, logging_config={"log_level": opts.log_level.upper()})

            self._call(session, start_serve, deadline, "serve.start()")
            current = self._call(session, _serve_http, deadline, "reading Serve's HTTP options")
            if current is None:
                raise ServerStartError("Serve did not start (no controller after serve.start())")
        elif (opts.http_host, opts.http_port) != (None, None):
            ctx.logger.info(
                "Serve already runs on this cluster with its proxy on %s:%d; http_host/"
                "http_port apply only when taskapp starts Serve",
                *current,
            )
        host, port = current
        if host not in ("127.0.0.1", "localhost", "0.0.0.0", "::1", "::"):
            raise ServerStartError(
                f"Serve's proxy on this cluster listens on {host}:{port} (fixed when Serve "
                "first started there), which taskapp's health check and tunnel on "
                "127.0.0.1 cannot reach. Restart Serve with http_options host 0.0.0.0 or "
                "127.0.0.1"
            )
        self._wait_proxy(session, host, port, deadline)
        if session.owned:
            self._check_listener(session, port)
        return host, port

    def _wait_proxy(self, session: _Session, host: str, port: int, deadline: float) -> None:
        serve = _module("ray.serve")

        def read() -> dict[str, str]:
            return {node: str(getattr(s, "value", s)) for node, s in serve.status().proxies.items()}

        backoff = Backoff(first=0.05, maximum=0.5)
        while True:
            proxies = self._call(session, read, deadline, "serve.status()")
            states = set(proxies.values())
            if "UNHEALTHY" in states:
                raise ServerStartError(
                    f"Serve's HTTP proxy could not start on {host}:{port} (is the port taken "
                    "by another program?). Pass server_options http_port=... or another port="
                )
            if proxies and states <= {"HEALTHY"}:
                return
            delay = backoff.next_delay()
            if time.monotonic() + delay >= deadline:
                raise ServerStartError(
                    f"Serve's HTTP proxy on {host}:{port} was not ready in time "
                    f"(proxies: {proxies or 'none yet'}); {_SLOW_HINT}"
                )
            time.sleep(delay)

    def _check_listener(self, session: _Session, port: int) -> None:
        """The process listening on ``port`` must belong to this Ray instance."""
        from taskapp.core.ports import find_listeners

        ours = session.instance_pids()
        listeners = find_listeners(port)
        strangers = [item for item in listeners if item.pid not in ours]
        if strangers and not any(item.pid in ours for item in listeners):
            raise ServerStartError(
                f"port {port} is held by {', '.join(i.describe() for i in strangers)}, not by "
                "Ray Serve's proxy (it was taken while Ray started). Pass another port= or "
                "server_options http_port=..."
            )

    def _deploy(self, ctx: ServerContext, session: _Session, target: str, deadline: float) -> None:
        from taskapp.plugins.servers._ray_app import make_builder

        serve = _module("ray.serve")

        opts = self.options
        existing = self._app_status(session, timeout=max(0.5, deadline - time.monotonic()))
        if existing is not None:
            raise ServerStartError(
                f"a Serve application named {opts.app_name!r} already runs on this Ray cluster "
                f"(status {existing[0]}); taskapp will not replace it. Pass server_options "
                "app_name=... or delete it (serve.delete(name) / `serve shutdown`)"
            )
        sys_path = _absolute_sys_path() if session.owned else []
        builder = make_builder(target, ctx.api_key, sys_path)
        kwargs: dict[str, Any] = {
            "name": DEPLOYMENT_NAME,
            "max_ongoing_requests": opts.max_ongoing_requests,
            "max_queued_requests": opts.max_queued_requests,
            "ray_actor_options": dict(
                opts.ray_actor_options if opts.ray_actor_options is not None else {"num_cpus": 0.5}
            ),
            "graceful_shutdown_timeout_s": opts.graceful_shutdown_timeout_s,
            "graceful_shutdown_wait_loop_s": 0.1,
            "logging_config": {
                "enable_access_log": opts.access_log,
                "log_level": opts.log_level.upper(),
            },
        }
        if opts.autoscaling_config is not None:
            kwargs["autoscaling_config"] = dict(opts.autoscaling_config)
        else:
            kwargs["num_replicas"] = opts.num_replicas if opts.num_replicas is not None else 1
        if opts.max_constructor_retry_count is not None:
            kwargs["max_constructor_retry_count"] = opts.max_constructor_retry_count

        def deploy() -> None:
            deployment = serve.deployment(serve.ingress(builder)(), **kwargs)
            application = deployment.bind()
            run_many = getattr(serve, "run_many", None)
            if run_many is not None and hasattr(serve, "RunTarget"):
                run_many(
                    [serve.RunTarget(target=application, name=opts.app_name, route_prefix="/")],
                    wait_for_ingress_deployment_creation=False,
                    wait_for_applications_running=False,
                )
            else:  # pragma: no cover - older Serve
                serve._run(application, _blocking=False, name=opts.app_name, route_prefix="/")

        self._deployed = True  # from here on, stop() deletes the application
        self._call(session, deploy, deadline, f"deploying {opts.app_name!r}")
        ctx.logger.debug(
            "deployed %s as Serve application %r (%s replicas)",
            target,
            opts.app_name,
            kwargs.get("num_replicas", "autoscaling"),
        )

    def _wait_running(self, session: _Session, deadline: float) -> None:
        backoff = Backoff(first=0.05, maximum=0.5)
        last: tuple[str, str] | None = None
        while True:
            self._check_stopping()
            last = self._app_status(session, timeout=max(0.5, deadline - time.monotonic()))
            if last is None:
                raise ServerStartError(
                    f"the Serve application {self.options.app_name!r} vanished while deploying"
                )
            state, message = last
            if state == "RUNNING":
                return
            if state in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise ServerStartError(self._failure_message(state, message))
            delay = backoff.next_delay()
            if time.monotonic() + delay >= deadline:
                detail = f": {message.strip()}" if message.strip() else ""
                raise ServerStartError(
                    f"the Serve application {self.options.app_name!r} was not RUNNING in time "
                    f"(status {state}{detail}); {_SLOW_HINT}"
                )
            time.sleep(delay)

    # -- helpers -----------------------------------------------------------------------

    def _failure_message(self, state: str, message: str) -> str:
        text = _ANSI.sub("", message).strip() or "(no message)"
        return (
            f"the Serve application {self.options.app_name!r} is {state}: the task app could "
            "not be built or started on a replica. Ray Serve reports:\n" + _indent(text)
        )

    def _app_status(self, session: _Session, timeout: float) -> tuple[str, str] | None:
        """(status, message) of this runner's application; None when it does not exist."""
        name = self.options.app_name

        def read() -> tuple[str, str] | None:
            app = _module("ray.serve").status().applications.get(name)
            if app is None:
                return None
            messages = [app.message] if app.message else []
            for deployment in app.deployments.values():
                if deployment.message:
                    messages.append(deployment.message)
            return str(getattr(app.status, "value", app.status)), "\n".join(messages)

        try:
            return session.driver.call(read, timeout)
        except _CallTimeout:
            raise ServerStartError(
                f"Ray Serve did not answer a status request within {timeout:.0f}s"
            ) from None

    def _call(self, session: _Session, fn: Callable[[], T], deadline: float, what: str) -> T:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ServerStartError(f"no time left for {what}; {_SLOW_HINT}")
        try:
            return session.driver.call(fn, remaining)
        except _CallTimeout:
            raise ServerStartError(f"{what} did not finish in time; {_SLOW_HINT}") from None
        except ServerStartError:
            raise
        except Exception as exc:
            error = ServerStartError(f"{what} failed: {type(exc).__name__}: {exc}")
            raise error from exc

    def _stop_session(self, session: _Session) -> None:
        global _session
        if self._released:
            return
        self._released = True
        opts = self.options
        deadline = time.monotonic() + opts.graceful_shutdown_timeout_s + STOP_CALL_TIMEOUT
        policy = opts.stop_policy
        shut_down = session.by_taskapp and policy == "auto"
        if self._deployed and policy != "keep_app" and not (shut_down and session.owned):
            # (serve.shutdown() below deletes it too, gracefully.)
            serve = _module("ray.serve")
            if not _try_call(
                session,
                lambda: serve.delete(opts.app_name, _blocking=True),
                deadline,
                f"deleting Serve application {opts.app_name!r}",
            ):
                logger.warning(
                    "the Serve application %r may still be running on the cluster",
                    opts.app_name,
                )
        elif self._deployed and policy == "keep_app":
            logger.info(
                "leaving Serve application %r running on the cluster (stop_policy='keep_app')",
                opts.app_name,
            )
        with _lock:
            keep = session.by_taskapp and policy == "delete_app"
            if not keep and _session is session:
                _session = None
        if not keep:
            _close_session(session, deadline)
        self._deployed = False


_ANSI = re.compile(r"\x1b\[[0-9;]*m")

_SLOW_HINT = (
    "Ray needs about 8-15 s to start a local instance and deploy on a 2-core machine; raise "
    "health_check_timeout (e.g. 120)"
)


# -- connecting --------------------------------------------------------------------------


def _import_ray() -> tuple[Any, Any]:
    try:
        ray = _module("ray")
        serve = _module("ray.serve")
    except ImportError as exc:
        raise ConfigurationError(
            f"server='ray' needs Ray Serve, which could not be imported ({exc}). Install it "
            f"with: {INSTALL_HINT}"
        ) from exc
    version = _version_tuple(getattr(ray, "__version__", "0"))
    if version < MIN_RAY_VERSION:
        wanted = ".".join(map(str, MIN_RAY_VERSION))
        raise ConfigurationError(
            f"server='ray' needs ray >= {wanted} (builder functions for serve.ingress); "
            f"ray {ray.__version__} is installed. Upgrade with: {INSTALL_HINT}"
        )
    return ray, serve


def _acquire_session(opts: RayOptions, deadline: float, ctx: ServerContext) -> _Session:
    global _session, _atexit_registered
    ray = _module("ray")

    with _lock:
        session = _session
        if session is not None and session.by_taskapp:
            if session.key == opts.session_key() and session.driver.alive and session.core_alive():
                ctx.logger.debug("reusing the Ray instance kept by a previous task app")
                return session
            _session = None
        elif session is not None:
            _session = None
            session.driver.close()
            session = None
    if session is not None:
        ctx.logger.info("shutting down the kept Ray instance (other options requested)")
        _close_session(session, time.monotonic() + STOP_CALL_TIMEOUT)
    if ray.is_initialized():
        if opts.runtime_env or opts.init_kwargs:
            raise ConfigurationError(
                "ray.init() was already called in this process, so server_options "
                "runtime_env/init_kwargs cannot apply; pass them to your own ray.init()"
            )
        ctx.logger.info("using the Ray connection this process already has (ray.init was called)")
        session = _Session(driver=_Driver(), owned=False, by_taskapp=False, key=None)
    else:
        session = _start_session(opts, deadline, ctx)
    with _lock:
        _session = session
        if not _atexit_registered:
            atexit.register(_at_exit)
            _atexit_registered = True
    return session


def _start_session(opts: RayOptions, deadline: float, ctx: ServerContext) -> _Session:
    ray = _module("ray")

    owned = opts.local
    kwargs: dict[str, Any] = {
        "address": "local" if owned else opts.address,
        "configure_logging": False,
        "log_to_driver": opts.log_to_driver,
    }
    runtime_env = dict(opts.runtime_env or {})
    ship = opts.ship_taskapp if opts.ship_taskapp is not None else not owned
    if ship:
        from taskapp import _version

        package = os.path.dirname(os.path.abspath(_version.__file__))
        modules = list(runtime_env.get("py_modules") or [])
        if package not in modules:
            runtime_env["py_modules"] = [*modules, package]
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    if owned:
        kwargs["include_dashboard"] = opts.include_dashboard
        if opts.include_dashboard:
            kwargs["dashboard_host"] = "127.0.0.1"
        if opts.num_cpus is not None:
            kwargs["num_cpus"] = opts.num_cpus
        if opts.object_store_memory is not None:
            kwargs["object_store_memory"] = opts.object_store_memory
    kwargs.update(opts.init_kwargs)
    if not owned and os.environ.get("RAY_ADDRESS") and opts.address == "auto":
        ctx.logger.info("connecting to the Ray cluster named by RAY_ADDRESS")
    elif owned and os.environ.get("RAY_ADDRESS"):
        ctx.logger.info(
            "RAY_ADDRESS is set but ignored: server='ray' starts a private local instance "
            "unless server_options address='auto' (or an address) is given"
        )

    driver = _Driver()
    before = _children(os.getpid())
    started: dict[int, int] = {}

    def init() -> dict[int, int]:
        with _ray_environment(opts, owned), _quiet_sigterm_notice():
            ray.init(**kwargs)
        new = _children(os.getpid()) - before
        table = _process_table()
        return {pid: table[pid][1] for pid in new if pid in table}

    what = "starting a local Ray instance" if owned else f"connecting to Ray at {opts.address!r}"
    began = time.perf_counter()
    try:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _CallTimeout
        started = driver.call(init, remaining)
    except _CallTimeout:
        # ray.init goes on in the driver thread: undo it there once it returns.
        driver.submit(ray.shutdown)
        driver.close(timeout=0.0)
        if owned:
            _kill_new_children(before)
        raise ServerStartError(f"{what} did not finish in time; {_SLOW_HINT}") from None
    except Exception as exc:
        with contextlib.suppress(Exception):
            driver.call(ray.shutdown, STOP_CALL_TIMEOUT)
        driver.close()
        if owned:
            _kill_new_children(before)
        raise ServerStartError(f"{what} failed: {type(exc).__name__}: {exc}") from exc
    ctx.logger.debug("%s took %.1fs", what, time.perf_counter() - began)
    return _Session(
        driver=driver,
        owned=owned,
        by_taskapp=True,
        key=opts.session_key(),
        pids=started if owned else {},
    )


@contextlib.contextmanager
def _ray_environment(opts: RayOptions, owned: bool) -> Iterator[None]:
    """Environment for ray.init: inherited by every process of a local instance."""
    values: dict[str, str] = {}
    if not opts.usage_stats and "RAY_USAGE_STATS_ENABLED" not in os.environ:
        values["RAY_USAGE_STATS_ENABLED"] = "0"
    patched: list[tuple[Any, str, Any]] = []
    if owned and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ:
        # "Cluster mode" off: every socket of the instance on 127.0.0.1, not on the
        # host's routable address. Ray reads this at import, so patch it as well.
        values["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        try:
            ray_constants = _module("ray._private.ray_constants")
            if getattr(ray_constants, "ENABLE_RAY_CLUSTER", None) is True:
                patched.append((ray_constants, "ENABLE_RAY_CLUSTER", True))
                ray_constants.ENABLE_RAY_CLUSTER = False
        except ImportError:  # pragma: no cover - layout of another Ray version
            pass
    try:
        # The driver must not take over SIGTERM: Ray's C++ core installs a crash handler
        # for it (dump, then die) over the lifecycle's graceful-stop handler.
        ray_constants = _module("ray._private.ray_constants")
        if getattr(ray_constants, "RAY_DISABLE_FAILURE_SIGNAL_HANDLER", None) is False:
            patched.append((ray_constants, "RAY_DISABLE_FAILURE_SIGNAL_HANDLER", False))
            ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
    except ImportError:  # pragma: no cover - layout of another Ray version
        pass
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
        for module, attr, value in patched:
            setattr(module, attr, value)


class _SigtermNoticeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


@contextlib.contextmanager
def _quiet_sigterm_notice() -> Iterator[None]:
    """Drop Ray's warning that it did not install its SIGTERM handler: on purpose, the
    lifecycle's handler (graceful stop) stays in charge."""
    target = logging.getLogger("ray._private.worker")
    notice = _SigtermNoticeFilter()
    target.addFilter(notice)
    try:
        yield
    finally:
        target.removeFilter(notice)


def _serve_http() -> tuple[str, int] | None:
    """(host, port) of Serve's proxies, or None when Serve does not run on the cluster."""
    client = _module("ray.serve.context")._get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return None
    http = client.get_serve_details().get("http_options") or {}
    if "port" not in http:
        config = client.http_config
        return str(config.host), int(config.port)
    return str(http.get("host") or "127.0.0.1"), int(http["port"])


def _module(name: str) -> Any:
    """Import a Ray module at run time (never at import of taskapp; typed Any on purpose,
    so type-checking taskapp does not need ray installed)."""
    return importlib.import_module(name)


def _serve_host(host: str) -> str:
    return "127.0.0.1" if host == "localhost" else host


def _absolute_sys_path() -> list[str]:
    cwd = os.getcwd()
    return [entry if os.path.isabs(entry) else os.path.join(cwd, entry) for entry in sys.path]


def _version_tuple(version: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


# -- processes (Linux /proc; elsewhere these find nothing and the sweep is skipped) -------


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time in clock ticks) of every visible process."""
    table: dict[int, tuple[int, int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return table
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read().decode(errors="replace")
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] == "Z":
                continue  # a zombie has exited; it only waits to be reaped
            table[int(entry)] = (int(fields[1]), int(fields[19]))
        except (OSError, ValueError, IndexError):
            continue
    return table


def _session_dir(pids: Mapping[int, int]) -> str | None:
    """``--session-dir`` from the command line of a process ``ray.init`` started."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        for arg in argv:
            if arg.startswith(b"--session-dir="):
                return arg.split(b"=", 1)[1].decode(errors="replace")
    return None


def _children(pid: int) -> set[int]:
    return {child for child, (ppid, _) in _process_table().items() if ppid == pid}


def _kill_new_children(before: set[int]) -> None:
    """After a failed ray.init: kill the processes it had started (by pid)."""
    table = _process_table()
    new = {pid: table[pid][1] for pid in _children(os.getpid()) - before if pid in table}
    if new:
        _reap(new, time.monotonic() + 1.0)


def _reap(pids: Mapping[int, int], deadline: float) -> None:
    """Wait until ``pids`` (pid -> start time) are gone; SIGKILL what is left at ``deadline``."""
    backoff = Backoff(first=0.02, maximum=0.2, deadline=deadline)
    while True:
        table = _process_table()
        left = {pid: start for pid, start in pids.items() if table.get(pid, (0, -1))[1] == start}
        if not left:
            return
        if backoff.expired():
            break
        backoff.sleep()
    logger.warning(
        "%d process(es) of the local Ray instance still ran %.0fs after shutdown; "
        "sending SIGKILL to pid(s) %s",
        len(left),
        EXIT_GRACE,
        ", ".join(map(str, sorted(left))),
    )
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        table = _process_table()
        if not any(table.get(pid, (0, -1))[1] == start for pid, start in left.items()):
            return
        time.sleep(0.05)


@hookimpl
def register_servers(register: RegisterServer) -> None:
    register(RayServer)
