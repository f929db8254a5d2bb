"""``ProcessTunnel``: the skeleton of a tunnel backend that runs one child program.

The Cloudflare backends (``cloudflared``) and the SSH family (the OpenSSH client) are
built on it; a third-party backend wrapping another program (``ngrok``, ``bore``, ...)
should be too. Import it as ``taskapp.ProcessTunnel``. What it gives a subclass:

* :meth:`ProcessTunnel.spawn_child` starts the program through
  :func:`taskapp.core.processes.spawn` (own process group, death signal, drained pipes,
  secrets redacted from its output) and turns a failure to start into a typed error
  naming the backend: :class:`~taskapp.core.errors.TunnelBinaryMissingError` when the
  program is not there, :class:`~taskapp.core.errors.TunnelError` with the program's last
  output otherwise;
* :meth:`ProcessTunnel.wait_for_output` waits (bounded) for the line carrying the URL and
  hands a timeout or an early exit to :meth:`ProcessTunnel.start_failure`;
* supervision (:meth:`ProcessTunnel.wait_dropped`: the program exiting is a drop, with
  its exit status and last meaningful line as the reason), :meth:`ProcessTunnel.close`
  (idempotent, bounded by :meth:`ProcessTunnel.close_grace`, then :meth:`release` for the
  subclass's files), ``pid`` and :meth:`ProcessTunnel.log_tail`.

A minimal backend::

    class BoreTunnel(ProcessTunnel):
        name = "bore"
        program = "bore"

        def open(self, ctx: TunnelContext) -> Tunnel:
            proc = self.spawn_child(["bore", "local", str(ctx.port), "--to", "bore.pub"])
            match = self.wait_for_output(r"listening at (\\S+)", ctx.start_timeout)
            return Tunnel(url=f"http://{match.group(1)}", stable=False, pids=(proc.pid,))
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from taskapp.core.backends import Tunnel, TunnelBackend
from taskapp.core.errors import (
    ProcessError,
    ProcessTimeoutError,
    TunnelBinaryMissingError,
    TunnelError,
    TunnelTimeoutError,
)
from taskapp.core.secrets import redact

if TYPE_CHECKING:
    from taskapp.core.processes import ManagedProcess

__all__ = ["ProcessTunnel"]


class ProcessTunnel(TunnelBackend):
    """A tunnel backend whose tunnel is one child process (see the module docstring)."""

    #: The program, as errors name it ("cloudflared", "ssh").
    program: ClassVar[str] = "the tunnel program"
    supervised: ClassVar[bool] = True

    def __init__(self, options: Any) -> None:
        super().__init__(options)
        self._lock = threading.RLock()
        self._proc: ManagedProcess | None = None

    # -- for subclasses ------------------------------------------------------------------

    def missing_program(self, argv: Sequence[str], error: ProcessError) -> str:
        """The message when ``argv[0]`` does not exist (say how to install it)."""
        return f"tunnel {self.name!r} needs {self.program}, but {argv[0]!r} was not found"

    def broken_program(self, argv: Sequence[str], error: ProcessError) -> str:
        """The message when ``argv[0]`` exists but could not be started."""
        return f"could not start {argv[0]} for tunnel {self.name!r}: {error.message}"

    def start_failure(self, proc: ManagedProcess, *, timed_out: bool, timeout: float) -> Exception:
        """The error when :meth:`wait_for_output` times out or the program exits first."""
        if timed_out:
            return TunnelTimeoutError(
                f"{self.program} printed no public URL within {timeout:g}s",
                backend=self.name,
                log_tail=self.log_tail(),
            )
        from taskapp.core.processes import describe_returncode

        return TunnelError(
            f"{self.program} exited before printing a public URL "
            f"({describe_returncode(proc.returncode)})",
            backend=self.name,
            log_tail=self.log_tail(),
        )

    def describe_drop(self, proc: ManagedProcess, code: int) -> str:
        """Why the tunnel dropped, given the program's exit status."""
        last = proc.tail(1).strip()
        return f"{self.program} (pid {proc.pid}) exited with status {code}" + (
            f"; last line: {last}" if last else ""
        )

    def close_grace(self) -> float:
        """Seconds between SIGTERM and SIGKILL on :meth:`close`."""
        return 5.0

    def release(self) -> None:
        """Remove what the subclass made for the program (config files); after close."""

    # -- the skeleton --------------------------------------------------------------------

    def spawn_child(
        self,
        argv: Sequence[str],
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
        secrets: Sequence[str] = (),
        on_line: Callable[[str, str], None] | None = None,
    ) -> ManagedProcess:
        """Start the program; it becomes :attr:`process`. Typed errors name the backend."""
        from taskapp.core.processes import spawn

        try:
            proc = spawn(
                list(argv),
                env=dict(env) if env is not None else None,
                extra_env=dict(extra_env or {}),
                secrets=list(secrets),
                name=name or self.program,
                on_line=on_line,
            )
        except ProcessError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                raise TunnelBinaryMissingError(
                    self.missing_program(argv, exc), backend=self.name
                ) from exc
            raise TunnelError(
                self.broken_program(argv, exc), backend=self.name, log_tail=exc.log_tail
            ) from exc
        with self._lock:
            self._proc = proc
        return proc

    def wait_for_output(self, pattern: str | re.Pattern[str], timeout: float) -> re.Match[str]:
        """The first output line matching ``pattern``, within ``timeout`` seconds."""
        proc = self.process
        if proc is None:
            raise TunnelError(f"{self.program} is not running", backend=self.name)
        try:
            return proc.wait_for_line(pattern, timeout)
        except ProcessTimeoutError:
            raise self.start_failure(proc, timed_out=True, timeout=timeout) from None
        except ProcessError:
            proc.output_drained(1.0)
            raise self.start_failure(proc, timed_out=False, timeout=timeout) from None

    def open_or_cleanup(self, opener: Callable[[], Tunnel]) -> Tunnel:
        """``opener()``; on any failure (Ctrl-C included) close first, then re-raise."""
        try:
            return opener()
        except BaseException:
            self.close()
            raise

    @property
    def process(self) -> ManagedProcess | None:
        """The running program, if any."""
        with self._lock:
            return self._proc

    @property
    def pid(self) -> int | None:
        """The running program's pid, if any."""
        proc = self.process
        return proc.pid if proc is not None else None

    def log_tail(self, n: int = 40) -> str:
        """The program's last ``n`` output lines, secrets redacted."""
        proc = self.process
        return redact(proc.tail(n)) if proc is not None else ""

    def wait_dropped(self, stop: threading.Event) -> str | None:
        proc = self.process
        if proc is None:
            return None if stop.is_set() else f"{self.program} is not running"
        code = proc.wait_exit(stop)
        if code is None:
            return None
        proc.output_drained(1.0)
        return self.describe_drop(proc, code)

    def close(self) -> None:
        """Stop the program (SIGTERM its group, SIGKILL after :meth:`close_grace`), then
        :meth:`release`. Idempotent."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None:
            proc.close(grace=self.close_grace())
        self.release()
