"""Entry point of the ``subprocess`` server runner's child process.

Started by :class:`taskapp.plugins.servers.subprocess.SubprocessServer` through the process
manager as::

    python -m taskapp.plugins.servers._subprocess_child FD TARGET OPTIONS_JSON

``FD`` is the listening socket the parent bound (inherited), ``TARGET`` a ``.py`` path or
``"module:attr"``, ``OPTIONS_JSON`` the uvicorn settings. The API key arrives only in the
environment (``TASKAPP_API_KEY``), never on the command line. The parent's ``sys.path``
arrives in ``TASKAPP_SYS_PATH`` so that import strings resolve as they did there.

With one worker this process *is* the server. With more, it runs uvicorn's multiprocess
supervisor on the shared socket; each worker arms its own parent-death signal (SIGKILL
when this supervisor dies) before it loads the app, so killing this process, even with
SIGKILL, never leaves workers behind.

Exit status 3 (uvicorn's "startup failure") when the app cannot be loaded or started;
the traceback is on stderr, where the parent reads it.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from types import FrameType
from typing import Any

STARTUP_FAILURE = 3
#: Printed on stdout once every worker serves; the parent waits for it.
READY_MARKER = "taskapp-subprocess-server ready"
ENV_API_KEY = "TASKAPP_API_KEY"
ENV_SYS_PATH = "TASKAPP_SYS_PATH"
ENV_TARGET = "TASKAPP_SERVER_TARGET"
ENV_SUPERVISOR = "TASKAPP_SERVER_SUPERVISOR_PID"
_MODULE = "taskapp.plugins.servers._subprocess_child"
_server_lock = threading.Lock()


def _fail(message: str) -> None:
    print(f"taskapp subprocess server: {message}", file=sys.stderr, flush=True)
    sys.exit(STARTUP_FAILURE)


def _adopt_parent_sys_path() -> None:
    raw = os.environ.get(ENV_SYS_PATH)
    if not raw:
        return
    parent = [entry for entry in raw.split(os.pathsep) if entry]
    sys.path[:] = parent + [entry for entry in sys.path if entry not in parent]


def _load_app(target: str) -> Any:
    """Rebuild the app from ``target``; on any failure print the traceback and exit 3."""
    api_key = os.environ.get(ENV_API_KEY)
    if not api_key:
        _fail(f"{ENV_API_KEY} is not set in the environment")
    try:
        from taskapp.core.plugins import load_target_string

        assert api_key is not None
        return load_target_string(target, api_key=api_key).app
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        traceback.print_exc()
        _fail(f"could not load {target!r}: {type(exc).__name__}: {exc}")


def worker_app() -> Any:
    """App factory uvicorn calls in each worker (``workers > 1``)."""
    supervisor = int(os.environ.get(ENV_SUPERVISOR, "0"))
    if sys.platform.startswith("linux") and supervisor:
        from taskapp.core._exec_guard import _set_death_signal

        _set_death_signal(signal.SIGKILL)
        if os.getppid() != supervisor:  # the supervisor died before the signal was armed
            os._exit(STARTUP_FAILURE)
    return _load_app(os.environ[ENV_TARGET])


def _config(app: Any, options: dict[str, Any], **extra: Any) -> Any:
    from taskapp.core.serving import uvicorn_config

    # Unloaded: uvicorn's supervisor pickles it to the workers. This process runs one
    # server, so uvicorn's own (process-wide) access_log switch is the right one here.
    config = uvicorn_config(
        app,
        load=False,
        log_level=options.get("log_level", "info"),
        access_log=bool(options.get("access_log", False)),
        lifespan="auto",
        loop=options.get("loop", "auto"),
        http=options.get("http", "auto"),
        limit_concurrency=options.get("limit_concurrency"),
        timeout_keep_alive=int(options.get("timeout_keep_alive", 5)),
        timeout_graceful_shutdown=int(options.get("graceful_timeout", 5.0)) or None,
        **extra,
    )
    # Typed int in uvicorn; keep the precise value.
    config.timeout_graceful_shutdown = float(options.get("graceful_timeout", 5.0))
    return config


def _ready(workers: int, pids: list[int]) -> None:
    print(
        f"{READY_MARKER} pid={os.getpid()} workers={workers} "
        f"worker_pids={','.join(map(str, pids))}",
        flush=True,
    )


@functools.cache
def _child_server_class() -> type[Any]:
    from taskapp.core.serving import fast_exit_server_class

    class ChildServer(fast_exit_server_class()):  # type: ignore[misc]
        """The thread runner's fast-exit uvicorn server, woken at once by SIGTERM/SIGINT."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            self.request_exit()

    return ChildServer


def _serve_single(target: str, options: dict[str, Any], sock: socket.socket) -> None:
    app = _load_app(target)
    server = _child_server_class()(_config(app, options))
    server.on_started = lambda: _ready(1, [os.getpid()])
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def _fast_worker_process_class() -> type[Any]:
    from uvicorn.supervisors import multiprocess

    class FastWorkerProcess(multiprocess.Process):
        """uvicorn's worker handle, running the fast-exit server in the worker."""

        @property
        def server(self) -> Any:
            # Read by the health-check thread and the main thread at once: create it once.
            with _server_lock:
                if self._server is None:
                    self._server = _child_server_class()(config=self.config)
                return self._server

    # Pickled by reference into each worker: must be found under this name.
    FastWorkerProcess.__qualname__ = "FastWorkerProcess"
    FastWorkerProcess.__module__ = _MODULE
    return FastWorkerProcess


def __getattr__(name: str) -> Any:
    # Workers unpickle ``_subprocess_child.FastWorkerProcess``; build it on first use so
    # that importing this module costs nothing.
    if name == "FastWorkerProcess":
        cls = _fast_worker_process_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


def _serve_workers(target: str, options: dict[str, Any], sock: socket.socket, workers: int) -> None:
    from uvicorn.supervisors.multiprocess import Multiprocess

    class Supervisor(Multiprocess):
        """uvicorn's supervisor, reporting once every worker serves, and quicker to stop."""

        def init_processes(self) -> None:
            super().init_processes()
            pending = list(self.processes)
            while pending:
                if self.signal_queue or self.should_exit.is_set():
                    return  # run() handles the signal
                process = pending[0]
                if not process.process.is_alive():
                    return  # its exit code is handled by uvicorn's keep-alive check
                is_ready = getattr(process, "is_ready", None)
                if is_ready is None or is_ready(timeout=0.2):  # uvicorn < 0.47: no probe
                    pending.pop(0)
            _ready(len(self.processes), [p.pid for p in self.processes if p.pid is not None])

        def run(self) -> None:
            # uvicorn's loop, but signals are looked at every 50 ms instead of 500 ms (stop
            # latency); the workers' health is still checked every 500 ms.
            self.init_processes()
            last_check = 0.0
            while not self.should_exit.wait(0.05):
                self.handle_signals()
                if time.monotonic() - last_check >= 0.5:
                    self.keep_subprocess_alive()
                    last_check = time.monotonic()
            self.terminate_all()
            self.join_all()

    from uvicorn.supervisors import multiprocess

    # uvicorn's supervisor creates workers through its module-level ``Process``; point it
    # at the fast-exit variant (this interpreter runs nothing else).
    # Taken from the module under its import name (this file runs as __main__), so that
    # pickling finds the very same class.
    real_module = importlib.import_module(_MODULE)
    multiprocess.Process = real_module.FastWorkerProcess  # type: ignore[misc]
    os.environ[ENV_TARGET] = target
    os.environ[ENV_SUPERVISOR] = str(os.getpid())
    config = _config(f"{_MODULE}:worker_app", options, factory=True, workers=workers)
    supervisor = Supervisor(config, sockets=[sock])
    supervisor.run()
    if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
        sys.exit(STARTUP_FAILURE)


def main(argv: list[str]) -> None:
    if len(argv) != 4:
        _fail("usage: python -m taskapp.plugins.servers._subprocess_child FD TARGET OPTIONS")
    fd, target, options = int(argv[1]), argv[2], json.loads(argv[3])
    _adopt_parent_sys_path()
    sock = socket.socket(fileno=fd)  # family and type detected from the descriptor
    workers = int(options.get("workers", 1))
    if workers <= 1:
        _serve_single(target, options, sock)
    else:
        _serve_workers(target, options, sock, workers)


if __name__ == "__main__":
    main(sys.argv)
