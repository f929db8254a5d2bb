"""This process's connection to Ray: the driver thread, the session (a private local
instance or an existing cluster), connecting to it, and reaping a local instance's
processes. Module state (``_session``, ``_active``) is process-wide and guarded by
``_lock``; the runner (``_runner.py``) reads and sets it here.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import importlib.util
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from taskapp.core import proctable
from taskapp.core.backends import ServerContext, ServerRunner
from taskapp.core.errors import ConfigurationError, ServerStartError
from taskapp.core.health import Backoff
from taskapp.core.jobthread import JobThread, JobTimeout
from taskapp.core.logs import get_logger
from taskapp.plugins.servers.ray._options import (
    _SLOW_HINT,
    DRIVER_THREAD,
    EXIT_GRACE,
    INSTALL_HINT,
    MIN_RAY_VERSION,
    STOP_CALL_TIMEOUT,
    RayOptions,
)

logger = get_logger("taskapp.server.ray")

# -- the driver thread -------------------------------------------------------------------


# One long-lived daemon thread makes every Ray call of this process's runner: ``ray.init``
# for a local instance must run on a thread that outlives the instance (Ray arms the
# parent-death signal of its processes against the calling thread).
_CallTimeout = JobTimeout


def _Driver() -> JobThread:
    return JobThread(DRIVER_THREAD)


# -- the process-wide Ray connection ------------------------------------------------------


@dataclasses.dataclass
class _Session:
    """This process's connection to Ray, as far as taskapp knows it."""

    driver: JobThread
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
_active: ServerRunner | None = None  # the RayServer using the session
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


def _start_session(opts: RayOptions, deadline: float, ctx: ServerContext) -> _Session:  # noqa: C901, PLR0915 -- complexity 16 and 56 statements at most (issue 21 ratchet); split when next changed
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
    """pid -> (parent pid, start time in clock ticks) of every live process."""
    return {pid: (info.ppid, info.start_time) for pid, info in proctable.processes().items()}


def _session_dir(pids: Mapping[int, int]) -> str | None:
    """``--session-dir`` from the command line of a process ``ray.init`` started."""
    for pid in pids:
        for arg in proctable.argv(pid) or []:
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
