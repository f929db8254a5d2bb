"""Server runner ``subprocess``: uvicorn in a child process, with ``workers=N`` for real
parallelism across cores.

::

    with InProcessTaskApp(task_app_path="my_app.py", server="subprocess",
                          server_options={"workers": 2}) as task_app:
        ...

* The child serves on the socket the lifecycle pre-bound, inherited as a file descriptor
  (no second bind, no race). With ``workers > 1`` uvicorn's multiprocess supervisor shares
  that socket between the workers. The parent closes its own copy once the child has it,
  so a dead child means "connection refused" at once and the port is free as soon as the
  child is gone.
* The child imports the app again from ``LoadedApp.reimport_target()`` (a ``.py`` path or
  ``"module:attr"``); an ``app=`` object that exists only in this process is refused with
  a :class:`~taskapp.core.errors.ConfigurationError` saying what to pass instead.
* The API key reaches the child only through its environment (``TASKAPP_API_KEY``).
* Readiness: ``start()`` returns once every worker serves (the child prints a marker
  line when uvicorn's startup has completed in all workers), and fails at once when the
  child exits first (exit 3 on an import error or a failing lifespan), with the child's
  own output, its traceback, in the error. :meth:`check_alive` does the same between the
  lifecycle's health polls.
* The child goes through :mod:`taskapp.core.processes`: its own process group, a death
  signal if this process dies (the workers arm theirs too), output drained. ``stop()``
  sends SIGTERM to the group, allows ``graceful_timeout`` plus two seconds, then SIGKILL.
* Child output is kept (bounded) for errors and logged line by line on the
  ``taskapp.server.subprocess`` logger at INFO.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys

from taskapp.core import proctable
from taskapp.core.backends import ServerContext, ServerRunner
from taskapp.core.env_keys import without_lent_keys
from taskapp.core.errors import (
    ConfigurationError,
    ProcessError,
    ProcessTimeoutError,
    ServerStartError,
)
from taskapp.core.hookspecs import RegisterServer, hookimpl
from taskapp.core.logs import get_logger
from taskapp.core.processes import ManagedProcess, describe_returncode, spawn

__all__ = ["SubprocessOptions", "SubprocessServer"]

logger = get_logger("taskapp.server.subprocess")

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
CHILD_MODULE = "taskapp.plugins.servers._subprocess_child"
READY_LINE = re.compile(r"^taskapp-subprocess-server ready pid=\d+ workers=\d+")


@dataclasses.dataclass(frozen=True)
class SubprocessOptions:
    workers: int = 1
    """Worker processes (uvicorn's multiprocess supervisor when above 1)."""
    graceful_timeout: float = 5.0
    """Seconds in-flight requests get on stop; SIGKILL follows two seconds later."""
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    """Extra environment variables for the child (added to this process's environment)."""
    log_level: str = "info"
    """uvicorn's log level in the child (its output is captured, see the module doc)."""
    access_log: bool = False
    loop: str = "auto"
    http: str = "auto"
    limit_concurrency: int | None = None
    timeout_keep_alive: int = 5
    python: str | None = None
    """Interpreter for the child; default: the one running taskapp (``sys.executable``)."""
    buffer_lines: int = 2000
    """Lines of child output kept for error messages."""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.graceful_timeout < 0:
            raise ValueError(f"graceful_timeout must be >= 0, got {self.graceful_timeout}")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ValueError(
                f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}"
            )
        for key, value in self.env.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ValueError("env must map strings to strings")
        if self.buffer_lines < 1:
            raise ValueError(f"buffer_lines must be at least 1, got {self.buffer_lines}")

    def child_settings(self) -> dict[str, object]:
        return {
            "workers": self.workers,
            "graceful_timeout": self.graceful_timeout,
            "log_level": self.log_level.lower(),
            "access_log": self.access_log,
            "loop": self.loop,
            "http": self.http,
            "limit_concurrency": self.limit_concurrency,
            "timeout_keep_alive": self.timeout_keep_alive,
        }


class SubprocessServer(ServerRunner):
    """uvicorn in a child process (optionally with workers) on the pre-bound socket."""

    name = "subprocess"
    Options = SubprocessOptions

    def __init__(self, options: SubprocessOptions) -> None:
        super().__init__(options)
        self.options: SubprocessOptions = options
        self._proc: ManagedProcess | None = None
        self._target: str | None = None

    def start(self, ctx: ServerContext) -> None:
        target = ctx.loaded.reimport_target()
        if target is None:
            raise ConfigurationError(
                "server='subprocess' runs the app in a fresh Python process, which must import "
                f"it again, but the app loaded by {ctx.loaded.loader!r} has no import path (it "
                "was defined in __main__ or built at run time). Pass "
                "task_app_path='path/to/app.py', or app='package.module:app' as an import "
                "string, or keep server='thread'"
            )
        self._target = target
        opts = self.options
        env = {
            # keys lent to synth-ai apps of this process are theirs, not the child's
            **without_lent_keys(os.environ),
            **opts.env,
            "TASKAPP_API_KEY": ctx.api_key,
            "TASKAPP_SYS_PATH": os.pathsep.join(_absolute_sys_path()),
            "PYTHONUNBUFFERED": "1",
        }
        fd = ctx.sock.fileno()
        argv = [
            opts.python or sys.executable,
            "-m",
            CHILD_MODULE,
            str(fd),
            target,
            json.dumps(opts.child_settings(), separators=(",", ":")),
        ]
        try:
            self._proc = spawn(
                argv,
                env=env,
                secrets=[ctx.api_key],
                pass_fds=[fd],
                name=f"uvicorn-{ctx.port}",
                buffer_lines=opts.buffer_lines,
                on_line=_log_line,
            )
        except ProcessError as exc:
            raise ServerStartError(
                f"could not start the subprocess server: {exc.message}", log_tail=exc.log_tail
            ) from exc
        # The child has its own copy now. Without ours, a dead child means "connection
        # refused" for the health check at once, and the port frees when the child exits.
        ctx.sock.close()
        try:
            self._proc.wait_for_line(READY_LINE, timeout=ctx.start_timeout, stream="stdout")
        except ProcessTimeoutError as exc:
            raise ServerStartError(
                f"the subprocess server (pid {self._proc.pid}) did not start serving within "
                f"{ctx.timeout_text()} (a slow import or lifespan startup?)",
                log_tail=exc.log_tail,
            ) from None
        except ProcessError:
            self.check_alive()
            raise
        ctx.logger.debug(
            "subprocess server pid %d serving %s on port %d (%d worker(s))",
            self._proc.pid,
            target,
            ctx.port,
            opts.workers,
        )

    def check_alive(self) -> None:
        proc = self._proc
        if proc is None or proc.alive:
            return
        proc.output_drained(timeout=1.0)
        code = proc.returncode
        if code == 3:
            what = f"could not load or start the app {self._target!r}"
        else:
            what = "exited while starting"
        raise ServerStartError(
            f"the subprocess server (pid {proc.pid}) {what} ({describe_returncode(code)}); "
            "its output follows. Fix the error, or try server='thread' to debug in-process",
            log_tail=proc.tail(120),
        )

    def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        proc.close(grace=self.options.graceful_timeout + 2.0)
        self._proc = None

    @property
    def pids(self) -> tuple[int, ...]:
        """The child's pid, then its workers' (``workers > 1``)."""
        proc = self._proc
        if proc is None or not proc.alive:
            return ()
        return (proc.pid, *_worker_pids(proc.pid))

    @property
    def process(self) -> ManagedProcess | None:
        """The managed child (its ``tail()`` shows the server's recent output)."""
        return self._proc


def _log_line(stream: str, line: str) -> None:
    logger.info("%s", line)


def _absolute_sys_path() -> list[str]:
    cwd = os.getcwd()
    return [os.path.join(cwd, entry) if not os.path.isabs(entry) else entry for entry in sys.path]


def _worker_pids(pid: int) -> list[int]:
    """Children of ``pid`` except multiprocessing's resource tracker (Linux /proc)."""
    return [
        child.pid
        for child in proctable.children(pid)
        if not any(b"resource_tracker" in arg for arg in proctable.argv(child.pid) or [])
    ]


@hookimpl
def register_servers(register: RegisterServer) -> None:
    register(SubprocessServer)
