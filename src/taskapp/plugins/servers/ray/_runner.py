"""The ``ray`` server runner itself: start (connect, start Serve, deploy, wait until
RUNNING), supervise, and stop by ``stop_policy``."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskapp.core.backends import ServerContext, ServerRunner
from taskapp.core.errors import ConfigurationError, ServerStartError
from taskapp.core.health import Backoff
from taskapp.core.logs import get_logger
from taskapp.core.secrets import fingerprint
from taskapp.plugins.servers.ray import _connection
from taskapp.plugins.servers.ray._connection import (
    _absolute_sys_path,
    _acquire_session,
    _CallTimeout,
    _close_session,
    _import_ray,
    _indent,
    _module,
    _serve_host,
    _serve_http,
    _Session,
    _session_dir,
    _try_call,
)
from taskapp.plugins.servers.ray._options import (
    _ANSI,
    _SLOW_HINT,
    DEPLOYMENT_NAME,
    STOP_CALL_TIMEOUT,
    RayOptions,
    T,
)

logger = get_logger("taskapp.server.ray")

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
        opts = self.options
        target = self._target_for(ctx)
        _import_ray()
        deadline = time.monotonic() + ctx.start_timeout
        with _connection._lock:
            if _connection._active is not None and _connection._active is not self:
                raise ServerStartError(
                    "another task app with server='ray' is running in this process; Ray "
                    "Serve serves one task app at '/' per cluster. Stop it first"
                )
            _connection._active = self
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
                with _connection._lock:
                    if _connection._active is self:
                        _connection._active = None

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
        with _connection._lock:
            keep = session.by_taskapp and policy == "delete_app"
            if not keep and _connection._session is session:
                _connection._session = None
        if not keep:
            _close_session(session, deadline)
        self._deployed = False
