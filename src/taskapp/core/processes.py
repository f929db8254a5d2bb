"""The process manager: the only way taskapp (and its plugins) start a child process.

::

    from taskapp.core.processes import spawn

    proc = spawn(["cloudflared", "tunnel", "run"], extra_env={"TUNNEL_TOKEN": token},
                 secrets=[token], name="cloudflared")
    try:
        match = proc.wait_for_line(r"https://\\S+\\.trycloudflare\\.com", timeout=20)
        ...
    finally:
        proc.close()          # SIGTERM the group, grace, SIGKILL the group, reap

Guarantees:

* **Own process group.** Each child starts a new session (``start_new_session``);
  :meth:`ManagedProcess.close` signals the whole group: SIGTERM, ``grace`` seconds, SIGKILL,
  reap, then a final SIGKILL sweep of the group. Idempotent, safe from ``atexit``.
* **No orphans, even after SIGKILL of this process.** On Linux the child is started through
  a tiny exec wrapper (:mod:`taskapp.core._exec_guard`, run with ``python -I -S``, about
  10 ms) that sets ``prctl(PR_SET_PDEATHSIG)``, checks that its parent is still this
  process, then execs the program. ``preexec_fn`` is never used (unsafe with threads).
  The death signal fires when the *thread* that forked the child exits, so every child is
  forked by one long-lived daemon thread (``taskapp-spawner``), whichever thread calls
  :func:`spawn`. On macOS (no death signal) the wrapper starts a watchdog instead: a tiny
  detached process that waits for EOF on a pipe only this process holds open, then
  SIGKILLs the child's group. Windows is not supported (:func:`spawn` raises).
  Grandchildren in the child's process group are killed by :meth:`close` and by the
  watchdog; after a SIGKILL of this process on Linux only the direct child gets the
  death signal, so a program that starts its own children should arm their death signal
  too (the subprocess server runner does this for uvicorn's workers).
* **Pipes always drained.** Reader threads read stdout and stderr as they come into one
  bounded ring buffer (``buffer_lines``), so a chatty child never blocks on a full pipe.
  :meth:`ManagedProcess.wait_for_line` waits for a matching line with a timeout.
* **Secrets never in argv.** Pass them in the environment (``extra_env``) or a file, and
  name them in ``secrets=`` so they are redacted from every line this module hands out;
  an argv containing one (or any registered secret) is refused.
* **Errors carry the redacted tail** of the child's output in ``log_tail``.
* **A plain Popen, guarded:** :func:`guarded_popen` gives callers that need their own pipes
  (test harnesses) a :class:`subprocess.Popen` with the same orphan guard.
* **Last resort:** an ``atexit`` hook closes every child still registered (see
  :func:`live_processes`). A default SIGTERM of this process skips ``atexit``; the death
  signal still applies.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import errno
import itertools
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any, Literal

from taskapp.core.errors import ProcessError, ProcessTimeoutError
from taskapp.core.jobthread import JobThread
from taskapp.core.logs import get_logger
from taskapp.core.secrets import contains_secret, redact, register_secret

__all__ = [
    "GuardMode",
    "ManagedProcess",
    "Stream",
    "close_all",
    "describe_returncode",
    "guarded_popen",
    "live_processes",
    "spawn",
]

logger = get_logger("taskapp.process")

Stream = Literal["stdout", "stderr", "any"]
GuardMode = Literal["auto", "pdeathsig", "pipe", "none"]

#: Longest line kept (characters); the rest of a longer line is dropped and counted.
MAX_LINE = 8192
_READ_CHUNK = 65536
_EXEC_TIMEOUT = 30.0
_GUARD_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_exec_guard.py")


def describe_returncode(code: int | None) -> str:
    """``"exit code 3"``, ``"killed by SIGKILL"`` or ``"still running"``."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# -- the spawner thread -----------------------------------------------------------------


def _Spawner() -> JobThread:
    """One long-lived daemon thread that forks every child of this process.

    A Linux death signal fires when the *thread* that forked the child exits; forking from
    short-lived worker threads would kill children while this process still runs.
    """
    return JobThread("taskapp-spawner")


_state_lock = threading.Lock()
_spawner: JobThread | None = None
_live: dict[int, ManagedProcess] = {}
_atexit_pid: int | None = None
_watch_pipe: tuple[int, int, int] | None = None  # (pid, read end, write end)


def _get_spawner() -> JobThread:
    global _spawner, _atexit_pid
    with _state_lock:
        pid = os.getpid()
        if _spawner is None or _spawner.pid != pid or not _spawner.thread.is_alive():
            _spawner = _Spawner()
        if _atexit_pid != pid:
            atexit.register(_close_all_at_exit)
            _atexit_pid = pid
        return _spawner


def _watch_read_end() -> int:
    """Read end of this process's watchdog pipe (the write end is never closed)."""
    global _watch_pipe
    with _state_lock:
        if _watch_pipe is None or _watch_pipe[0] != os.getpid():
            read_end, write_end = os.pipe()  # both non-inheritable
            _watch_pipe = (os.getpid(), read_end, write_end)
        return _watch_pipe[1]


def _resolve_guard(guard: GuardMode) -> Literal["pdeathsig", "pipe", "none"]:
    if guard != "auto":
        return guard
    return "pdeathsig" if sys.platform.startswith("linux") else "pipe"


# -- registry ---------------------------------------------------------------------------


def live_processes() -> list[ManagedProcess]:
    """Children spawned by this process that have not been closed yet."""
    with _state_lock:
        return [p for p in _live.values() if p.owner_pid == os.getpid()]


def close_all(grace: float = 3.0) -> None:
    """Close every live child (in parallel, each with ``grace`` seconds of SIGTERM)."""
    processes = live_processes()
    if not processes:
        return
    for proc in processes:
        proc.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in processes:
        # One shared grace period; a zero remainder means SIGKILL at once.
        proc.close(grace=max(0.0, deadline - time.monotonic()))


def _close_all_at_exit() -> None:
    with contextlib.suppress(Exception):
        remaining = live_processes()
        if remaining:
            logger.warning(
                "closing %d child process(es) left running at exit: %s",
                len(remaining),
                ", ".join(f"{p.name} (pid {p.pid})" for p in remaining),
            )
            close_all(grace=2.0)


# -- the managed process ----------------------------------------------------------------


class ManagedProcess:
    """A child started by :func:`spawn`. Create with :func:`spawn`, not directly.

    Lines the child prints are kept in a bounded buffer; everything this object hands out
    (``lines``, ``tail``, matches) is redacted. ``exited`` is a :class:`threading.Event`
    set once the child has exited and been reaped.
    """

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        *,
        name: str,
        argv: list[str],
        secrets: Sequence[str],
        buffer_lines: int,
        on_line: Callable[[str, str], None] | None,
    ) -> None:
        self._popen = popen
        self.pid: int = popen.pid
        self.pgid: int = popen.pid  # start_new_session: the child leads its own group
        self.owner_pid = os.getpid()
        self.name = name
        self.argv = argv
        self.started_at = time.monotonic()
        self._secrets = tuple(s for s in secrets if s)
        self._on_line = on_line
        self._line_logger = get_logger(f"taskapp.process.{name}")
        self._cond = threading.Condition(threading.Lock())
        self._buffer: collections.deque[tuple[int, str, str]] = collections.deque(
            maxlen=max(1, buffer_lines)
        )
        self._seq = 0
        self._eof: dict[str, bool] = {"stdout": False, "stderr": False}
        self.exited = threading.Event()
        self.exited_at: float | None = None
        self._returncode: int | None = None
        self._close_lock = threading.RLock()
        self._closed = False
        self._threads: list[threading.Thread] = []

    # -- start (internal) ----------------------------------------------------------------

    def _start_threads(self) -> None:
        assert self._popen.stdout is not None
        assert self._popen.stderr is not None
        for stream, pipe in (("stdout", self._popen.stdout), ("stderr", self._popen.stderr)):
            thread = threading.Thread(
                target=self._read,
                args=(stream, pipe),
                name=f"taskapp-{self.name}-{self.pid}-{stream}",
                daemon=True,
            )
            self._threads.append(thread)
        reaper = threading.Thread(
            target=self._reap, name=f"taskapp-{self.name}-{self.pid}-reaper", daemon=True
        )
        self._threads.append(reaper)
        for thread in self._threads:
            thread.start()

    def _read(self, stream: str, pipe: IO[bytes]) -> None:
        partial: list[bytes] = []
        kept = 0
        dropped = 0
        try:
            while True:
                chunk = pipe.readline(_READ_CHUNK)
                if not chunk:
                    break
                complete = chunk.endswith(b"\n")
                if kept < MAX_LINE:
                    piece = chunk[: MAX_LINE - kept]
                    partial.append(piece)
                    kept += len(piece)
                    dropped += len(chunk) - len(piece)
                else:
                    dropped += len(chunk)
                if complete:
                    self._add_line(stream, b"".join(partial), dropped)
                    partial, kept, dropped = [], 0, 0
            if partial:
                self._add_line(stream, b"".join(partial), dropped)
        except (OSError, ValueError):  # pipe closed under us
            pass
        finally:
            with contextlib.suppress(OSError):
                pipe.close()
            with self._cond:
                self._eof[stream] = True
                self._cond.notify_all()

    def _add_line(self, stream: str, raw: bytes, dropped: int) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        if dropped:
            text += f" [... {dropped} more bytes]"
        with self._cond:
            self._buffer.append((self._seq, stream, text))
            self._seq += 1
            self._cond.notify_all()
        if self._line_logger.isEnabledFor(10):  # DEBUG; the logger redacts
            self._line_logger.debug("%s: %s", stream, text)
        if self._on_line is not None:
            try:
                self._on_line(stream, self._redact(text))
            except Exception:
                logger.warning("on_line callback of %s raised", self.name, exc_info=True)

    def _reap(self) -> None:
        code = self._popen.wait()
        with self._cond:
            self._returncode = code
            self.exited_at = time.monotonic()
            self._cond.notify_all()
        self.exited.set()
        logger.debug("%s (pid %d) exited: %s", self.name, self.pid, describe_returncode(code))

    # -- state ---------------------------------------------------------------------------

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (negative: killed by that signal), else None."""
        return self._returncode

    def poll(self) -> int | None:
        return self._returncode

    @property
    def alive(self) -> bool:
        return not self.exited.is_set()

    @property
    def closed(self) -> bool:
        return self._closed

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the child to exit; return its status, or None on timeout."""
        self.exited.wait(timeout)
        return self._returncode

    def wait_exit(self, stop: threading.Event, *, poll_interval: float = 0.05) -> int | None:
        """Block until the child exits (return its status) or ``stop`` is set (return None).

        Made for ``TunnelBackend.wait_dropped``.
        """
        while not stop.is_set():
            if self.exited.wait(poll_interval):
                return self._returncode
        return None

    def output_drained(self, timeout: float = 1.0) -> bool:
        """Wait until both pipes reached EOF (all output read); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not all(self._eof.values()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    # -- output --------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def lines(self, stream: Stream = "any") -> list[str]:
        """A redacted snapshot of the buffered lines of ``stream``, oldest first."""
        with self._cond:
            items = list(self._buffer)
        return [self._redact(text) for _, s, text in items if stream == "any" or s == stream]

    def tail(self, n: int = 40) -> str:
        """The last ``n`` lines of stdout and stderr, interleaved, secrets redacted."""
        with self._cond:
            items = list(self._buffer)[-n:] if n > 0 else []
        return "\n".join(self._redact(text) for _, _, text in items)

    def wait_for_line(
        self,
        pattern: str | re.Pattern[str],
        timeout: float,
        *,
        stream: Stream = "any",
        since_start: bool = True,
    ) -> re.Match[str]:
        """Wait until the child prints a line matching ``pattern`` (``re.search``).

        Lines already in the buffer are searched first when ``since_start`` (else only
        lines printed after the call). Lines are redacted before matching. Raises
        :class:`ProcessTimeoutError` after ``timeout`` seconds, :class:`ProcessError` as
        soon as the child has exited and its remaining output was searched; both carry
        the redacted tail of its output.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        failure: str | None = None
        with self._cond:
            oldest = self._buffer[0][0] if self._buffer else self._seq
            next_seq = oldest if since_start else self._seq
            while True:
                first = self._buffer[0][0] if self._buffer else self._seq
                start = max(0, next_seq - first)
                new = list(itertools.islice(self._buffer, start, None))
                next_seq = self._seq
                for _, s, text in new:
                    if stream != "any" and s != stream:
                        continue
                    match = regex.search(self._redact(text))
                    if match is not None:
                        return match
                now = time.monotonic()
                if self.exited_at is not None and (
                    all(self._eof.values()) or now - self.exited_at > 1.0
                ):
                    failure = "exited"
                    break
                if now >= deadline:
                    failure = "timeout"
                    break
                wait = deadline - now
                if self.exited_at is not None:
                    wait = min(wait, 0.05)  # output still draining after the exit
                self._cond.wait(wait)
        what = f"{self.name} (pid {self.pid})"
        if failure == "timeout":
            raise ProcessTimeoutError(
                f"{what} did not print a line matching {regex.pattern!r} within {timeout:g}s",
                log_tail=self.tail(),
            )
        raise ProcessError(
            f"{what} ended ({describe_returncode(self._returncode)}) before printing a line "
            f"matching {regex.pattern!r}",
            log_tail=self.tail(),
        )

    def error(self, message: str, *, n: int = 40) -> ProcessError:
        """A :class:`ProcessError` with ``message`` and this child's redacted tail."""
        return ProcessError(message, log_tail=self.tail(n))

    # -- signals and close ---------------------------------------------------------------

    def send_signal(self, sig: int) -> None:
        """Signal the child itself (not its group), if it has not been reaped."""
        if self.exited.is_set():
            return
        with contextlib.suppress(ProcessLookupError):
            self._popen.send_signal(sig)

    def signal_group(self, sig: int) -> bool:
        """Signal the child's whole process group; False when the group is gone."""
        if self.owner_pid != os.getpid():
            return False
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            return False
        except PermissionError:
            logger.warning("not allowed to signal process group %d of %s", self.pgid, self.name)
            return False
        return True

    def close(self, grace: float = 3.0) -> None:
        """Stop the child: SIGTERM its group, wait ``grace`` s, SIGKILL the group, reap.

        Idempotent and safe to call from any thread, ``atexit`` or a signal handler. A
        final SIGKILL sweeps group members that outlived the child.
        """
        with self._close_lock:
            if self._closed:
                return
            if self.owner_pid != os.getpid():
                # A forked copy of the owner: the child is not ours to stop (and there is
                # no reaper thread here).
                self._closed = True
                return
            if not self.exited.is_set() and grace > 0:
                self.signal_group(signal.SIGTERM)
                if not self.exited.wait(grace):
                    logger.warning(
                        "%s (pid %d) still running %.1fs after SIGTERM; sending SIGKILL",
                        self.name,
                        self.pid,
                        grace,
                    )
            if not self.exited.is_set():
                self.signal_group(signal.SIGKILL)
                if not self.exited.wait(10.0):  # pragma: no cover - kernel trouble
                    logger.error("%s (pid %d) survived SIGKILL", self.name, self.pid)
            # Members of the group that outlived the child (the group id cannot be reused
            # while any of them lives).
            self.signal_group(signal.SIGKILL)
            current = threading.current_thread()
            for thread in self._threads:
                if thread is not current:
                    thread.join(timeout=1.0)
            self._closed = True
            with _state_lock:
                _live.pop(self.pid, None)

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<ManagedProcess {self.name} pid={self.pid} "
            f"{describe_returncode(self._returncode)}{' closed' if self._closed else ''}>"
        )


# -- spawn ------------------------------------------------------------------------------


def _resolve_program(program: str, env: Mapping[str, str], cwd: str | None) -> str:
    if os.sep in program or (os.altsep and os.altsep in program):
        path = program if os.path.isabs(program) else os.path.join(cwd or os.getcwd(), program)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return os.path.abspath(path)
        found = None
    else:
        found = shutil.which(program, path=env.get("PATH", os.defpath))
    if found is None:
        raise ProcessError(
            f"program {program!r} not found"
            + ("" if os.sep in program else " on PATH")
            + "; install it or pass its full path"
        ) from FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    return found


def spawn(  # noqa: C901, PLR0915 -- complexity 14 and 59 statements at most (issue 21 ratchet); split when next changed
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    secrets: Sequence[str] = (),
    cwd: str | None = None,
    pass_fds: Sequence[int] = (),
    name: str | None = None,
    buffer_lines: int = 2000,
    death_signal: int | None = None,
    on_line: Callable[[str, str], None] | None = None,
    guard: GuardMode = "auto",
) -> ManagedProcess:
    """Start ``argv`` as a managed child; return once the program has been exec'd.

    ``env`` is the child's complete environment (None: this process's ``os.environ``);
    ``extra_env`` is merged on top. Put secrets there (or in a file), never in ``argv``, and
    list them in ``secrets`` so they are redacted. ``pass_fds`` are inherited (e.g. a
    listening socket). ``death_signal`` is what the child gets when this process dies
    (default SIGKILL; Linux only, the macOS watchdog always SIGKILLs). ``on_line(stream,
    line)`` is called from a reader thread for every line (redacted). ``guard`` selects
    the orphan guard (``auto``: death signal on Linux, watchdog pipe elsewhere; ``none``
    only for tests).

    Raises :class:`ProcessError`: the program is missing (``FileNotFoundError`` chained),
    cannot be executed (the ``OSError`` chained), ``argv`` holds a secret, or the platform
    is Windows.
    """
    if os.name == "nt":
        raise ProcessError(
            "taskapp's process manager supports Linux and macOS only (no process groups or "
            "death signals on Windows); use server='thread' and a tunnel that needs no "
            "child process, or run under WSL"
        )
    args = [str(a) for a in argv]
    if not args or not args[0]:
        raise ProcessError("spawn() needs a non-empty argv")
    if buffer_lines < 1:
        raise ProcessError(f"buffer_lines must be at least 1, got {buffer_lines}")
    secret_list = [s for s in secrets if s]
    for secret in secret_list:
        register_secret(secret)
    for index, arg in enumerate(args):
        if contains_secret(arg, secret_list):
            raise ProcessError(
                f"argv[{index}] of {args[0]!r} contains a secret "
                f"({redact(arg, secret_list)!r}); pass secrets through the environment "
                "(extra_env=) or a file, never on the command line, where any local user "
                "can read them"
            )
    child_env = dict(os.environ if env is None else env)
    if extra_env:
        child_env.update(extra_env)
    executable = _resolve_program(args[0], child_env, cwd)
    display = name or os.path.basename(args[0])
    mode = _resolve_guard(guard)

    err_read, err_write = os.pipe()
    wrapper, fds = _wrap(mode, death_signal, err_write, executable, args, pass_fds)

    def start() -> ManagedProcess:
        # Runs on the spawner thread: fork, then register at once, so that a caller
        # interrupted while waiting still leaves a child that close_all()/atexit can find.
        try:
            popen = subprocess.Popen(
                wrapper,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=child_env,
                cwd=cwd,
                pass_fds=fds,
                close_fds=True,
                start_new_session=True,
            )
        finally:
            os.close(err_write)
        proc = ManagedProcess(
            popen,
            name=display,
            argv=[redact(a, secret_list) for a in args],
            secrets=secret_list,
            buffer_lines=buffer_lines,
            on_line=on_line,
        )
        with _state_lock:
            _live[proc.pid] = proc
        proc._start_threads()
        return proc

    future = _get_spawner().submit(start)
    try:
        proc: ManagedProcess = future.result()
    except OSError as exc:
        os.close(err_read)
        raise ProcessError(f"could not start {display}: {exc}") from exc
    except BaseException:
        # Interrupted while waiting for the spawner thread (KeyboardInterrupt): do not
        # leave behind the child it is starting, or is about to start, for nobody to close.
        if future.cancel():
            os.close(err_write)  # the job that would have closed it never runs
        else:
            with contextlib.suppress(BaseException):
                future.result(timeout=_EXEC_TIMEOUT).close(grace=0)
        os.close(err_read)
        raise
    try:
        failure = _read_exec_status(err_read)
    except BaseException:
        proc.close(grace=0)
        raise
    finally:
        os.close(err_read)
    if failure is not None:
        proc.close(grace=0)
        kind, code, message = failure
        cause: OSError = (
            FileNotFoundError(code, message, args[0])
            if code == errno.ENOENT
            else OSError(code, message)
        )
        raise ProcessError(
            f"could not execute {display} ({executable}): {kind}: {message}",
            log_tail=proc.tail(),
        ) from cause
    logger.debug(
        "started %s (pid %d, guard %s): %s",
        display,
        proc.pid,
        mode,
        " ".join(proc.argv),
    )
    return proc


def _wrap(
    mode: Literal["pdeathsig", "pipe", "none"],
    death_signal: int | None,
    err_write: int,
    executable: str,
    args: Sequence[str],
    pass_fds: Sequence[int],
) -> tuple[list[str], list[int]]:
    """The exec guard's command line around ``args``, and the descriptors it inherits."""
    watch_fd = _watch_read_end() if mode == "pipe" else -1
    fds = [err_write, *pass_fds] + ([watch_fd] if watch_fd >= 0 else [])
    wrapper = [
        sys.executable,
        "-I",
        "-S",
        _GUARD_SCRIPT,
        mode,
        str(os.getpid()),
        str(int(signal.SIGKILL if death_signal is None else death_signal)),
        str(err_write),
        str(watch_fd),
        executable,
        "--",
        *args,
    ]
    return wrapper, fds


def guarded_popen(
    args: Sequence[str],
    *,
    death_signal: int | None = None,
    guard: GuardMode = "auto",
    **popen_kwargs: Any,
) -> subprocess.Popen[Any]:
    """``subprocess.Popen(args, **popen_kwargs)`` whose child dies with this process.

    The same orphan guard as :func:`spawn` (the exec wrapper's death signal on Linux, the
    watchdog pipe elsewhere; forked by the ``taskapp-spawner`` thread), for callers that
    need a plain :class:`subprocess.Popen` (their own pipes, ``communicate``): test
    harnesses above all, whose children must not outlive a killed test run. The pid is the
    program's (the wrapper execs it). A program that cannot be executed raises the
    ``OSError`` :class:`subprocess.Popen` would (``FileNotFoundError`` for a missing one).
    Unlike :func:`spawn`, nothing is registered, redacted or closed at exit: the caller
    owns the child.
    """
    if os.name == "nt":
        raise ProcessError("guarded_popen() supports Linux and macOS only")
    if isinstance(args, (str, bytes)) or popen_kwargs.get("shell") or "executable" in popen_kwargs:
        raise ProcessError("guarded_popen() takes an argv list (no shell=, no executable=)")
    argv = [os.fspath(a) for a in args]
    env = popen_kwargs.get("env")
    try:
        executable = _resolve_program(
            argv[0], os.environ if env is None else env, popen_kwargs.get("cwd")
        )
    except ProcessError as exc:  # what subprocess.Popen raises for a missing program
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv[0]) from exc
    mode = _resolve_guard(guard)
    if mode == "pipe":
        popen_kwargs["start_new_session"] = True  # the watchdog kills the child's group
    err_read, err_write = os.pipe()
    wrapper, fds = _wrap(
        mode, death_signal, err_write, executable, argv, popen_kwargs.pop("pass_fds", ())
    )

    def start() -> subprocess.Popen[Any]:
        try:
            return subprocess.Popen(wrapper, pass_fds=fds, close_fds=True, **popen_kwargs)
        finally:
            os.close(err_write)

    try:
        popen = _get_spawner().submit(start).result()
        failure = _read_exec_status(err_read)
    finally:
        os.close(err_read)
    if failure is not None:
        with contextlib.suppress(OSError):
            popen.kill()
        popen.wait()
        for stream in (popen.stdin, popen.stdout, popen.stderr):
            if stream is not None:
                stream.close()
        kind, code, message = failure
        if code == errno.ENOENT:
            raise FileNotFoundError(code, message, argv[0])
        raise OSError(code, f"{kind}: {message}")
    return popen


def _read_exec_status(fd: int) -> tuple[str, int, str] | None:
    """None once the wrapper exec'd (EOF); else (error type, errno, message)."""
    data = b""
    deadline = time.monotonic() + _EXEC_TIMEOUT
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return ("TimeoutError", 0, f"the exec wrapper did not finish in {_EXEC_TIMEOUT:g}s")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    if not data:
        return None
    kind, _, rest = data.decode("utf-8", "replace").partition(":")
    code_s, _, message = rest.partition(":")
    try:
        code = int(code_s)
    except ValueError:
        code = 0
    return kind, code, message
