"""Binding the listening socket in the caller, so there is no probe-then-bind race.

:func:`bind_listener` returns a bound, listening socket that the server runner serves on.
When the port is busy:

* ``auto_find_port=True``: the next free port upward (at most ``search`` ports), else
  :class:`~taskapp.core.errors.PortError`;
* ``auto_find_port=False``: only the processes *listening* on that port (found through
  ``/proc/net/tcp*``, or ``lsof`` where there is no ``/proc``) are asked to stop: SIGTERM,
  a grace period, then SIGKILL. Never the calling process, never clients of the port. If
  the port is still busy, PortError names the holder.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from taskapp.core.errors import PortError
from taskapp.core.health import Backoff
from taskapp.core.logs import get_logger

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "Listener",
    "bind_listener",
    "find_listeners",
    "free_loopback_port",
    "listen_tcp",
    "listener_closer",
    "url_host",
]

logger = get_logger("taskapp.ports")

_TCP_LISTEN = "0A"


@dataclasses.dataclass(frozen=True)
class Listener:
    """A process listening on a TCP port."""

    pid: int
    command: str

    def describe(self) -> str:
        return f"pid {self.pid} ({self.command})"


def url_host(host: str) -> str:
    """The host to put in a URL for a server bound to ``host``."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    if ":" in host:
        return f"[{host}]"
    return host


def free_loopback_port() -> int:
    """A 127.0.0.1 port the kernel just reported free (for a helper such as a tunnel's
    metrics server; a task app's own port is pre-bound with :func:`bind_listener`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def listen_tcp(host: str, port: int, *, backlog: int = 2048) -> socket.socket:
    """A bound, listening TCP socket on ``host:port`` (port 0: any free port), with no
    conflict handling: ``OSError`` when the port is taken.

    Every listener taskapp creates goes through here (or :func:`bind_listener`), because
    the socket's proto must say TCP: asyncio sets TCP_NODELAY on accepted connections only
    when the listener's proto is IPPROTO_TCP. With proto 0, Nagle's algorithm plus delayed
    ACKs stall keep-alive responses by ~40 ms each.
    """
    return _try_bind(host, port, backlog)


def _try_bind(host: str, port: int, backlog: int) -> socket.socket:
    bind_host = "127.0.0.1" if host == "localhost" else host
    # proto must say TCP: asyncio sets TCP_NODELAY on accepted connections only when the
    # socket's proto is IPPROTO_TCP, and accepted sockets inherit the listener's proto.
    # With proto 0, Nagle plus delayed ACKs add ~40 ms to every keep-alive response.
    sock = socket.socket(_family(bind_host), socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        # Like uvicorn: lets us rebind a port whose old connections sit in TIME_WAIT, but
        # still fails (EADDRINUSE) while anyone listens on it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if bind_host == "::1" or bind_host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((bind_host, port))
        sock.listen(backlog)
        sock.set_inheritable(False)
        return sock
    except BaseException:
        sock.close()
        raise


def bind_listener(
    host: str,
    port: int,
    *,
    auto_find_port: bool,
    search: int = 100,
    grace: float = 3.0,
    backlog: int = 2048,
) -> socket.socket:
    """Bind and listen on ``host:port`` following the conflict rules in the module doc."""
    try:
        return _try_bind(host, port, backlog)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise PortError(
                f"cannot bind {host}:{port}: {exc.strerror or exc}; pass another host= (is "
                "that address configured on this machine?) or another port="
            ) from exc
    if auto_find_port:
        for candidate in range(port + 1, min(port + search, 65535) + 1):
            try:
                sock = _try_bind(host, candidate, backlog)
            except OSError:
                continue
            logger.warning("port %d is in use; using port %d instead", port, candidate)
            return sock
        raise PortError(
            f"ports {port}-{min(port + search, 65535)} on {host} are all in use; "
            "pass another port= or free one"
        )
    return _reclaim(host, port, grace=grace, backlog=backlog)


def listener_closer(sock: socket.socket) -> Callable[[], None]:
    """The undo step for a pre-bound listener: close it unless its server runner did.

    The lifecycle owns ``ServerContext.sock`` and closes it after the runner stopped. A
    runner (or the server library it drives) may close it first, through the same object
    (``ctx.sock.close()``: fine) or behind its back (``os.close(ctx.sock.fileno())``, a
    ``socket.socket(fileno=...)`` wrapper it closes). Then the descriptor number is dead
    or, worse, already reused by another file: the returned function checks the number
    still names the very socket it was given (device and inode) before closing it, and
    otherwise forgets it without closing anything. No "Bad file descriptor", and never a
    stranger's file closed.
    """
    try:
        status = os.fstat(sock.fileno())
        identity: tuple[int, int] | None = (status.st_dev, status.st_ino)
    except OSError:
        identity = None

    def close() -> None:
        fd = sock.fileno()
        if fd == -1:
            return  # closed through this very object: nothing left to do
        try:
            status = os.fstat(fd)
        except OSError:
            sock.detach()  # closed behind our back: forget the dead number
            logger.debug("listening socket fd %d was already closed by its server", fd)
            return
        if identity is not None and (status.st_dev, status.st_ino) != identity:
            sock.detach()  # the number now names another file: not ours to close
            logger.debug("listening socket fd %d was closed and reused; left alone", fd)
            return
        try:
            sock.close()
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise

    return close


def _reclaim(host: str, port: int, *, grace: float, backlog: int) -> socket.socket:
    listeners = find_listeners(port)
    own = [item for item in listeners if item.pid == os.getpid()]
    others = [item for item in listeners if item.pid != os.getpid()]
    if own:
        raise PortError(
            f"port {port} is in use by this very process (pid {os.getpid()}); taskapp will "
            "not stop its own caller. Close that listener, pass another port=, or use "
            "auto_find_port=True"
        )
    if not others:
        raise PortError(
            f"port {port} on {host} is in use and its owner could not be found (another "
            "user's process, or a container); pass another port= or use auto_find_port=True"
        )
    names = ", ".join(item.describe() for item in others)
    logger.warning("port %d is held by %s; asking it to stop (SIGTERM)", port, names)
    for item in others:
        _signal(item.pid, signal.SIGTERM)
    sock = _wait_for_port(host, port, backlog, deadline=time.monotonic() + grace)
    if sock is not None:
        return sock
    still = [item for item in find_listeners(port) if item.pid != os.getpid()]
    if still:
        logger.warning(
            "port %d still held by %s after %.1fs; sending SIGKILL",
            port,
            ", ".join(item.describe() for item in still),
            grace,
        )
        for item in still:
            _signal(item.pid, signal.SIGKILL)
    sock = _wait_for_port(host, port, backlog, deadline=time.monotonic() + 1.0)
    if sock is not None:
        return sock
    holders = ", ".join(item.describe() for item in find_listeners(port)) or "unknown"
    raise PortError(
        f"port {port} on {host} is still in use (held by {holders}) after SIGTERM and "
        "SIGKILL; stop that process yourself, pass another port=, or use auto_find_port=True"
    )


def _wait_for_port(host: str, port: int, backlog: int, deadline: float) -> socket.socket | None:
    backoff = Backoff(first=0.005, maximum=0.1, deadline=deadline)
    while True:
        try:
            return _try_bind(host, port, backlog)
        except OSError:
            if backoff.expired():
                return None
            backoff.sleep()


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        logger.warning("not allowed to signal pid %d holding the port", pid)


def find_listeners(port: int) -> list[Listener]:
    """Processes with a TCP socket *listening* on ``port`` (any address)."""
    from pathlib import Path

    proc = Path("/proc")
    if (proc / "net" / "tcp").exists():
        return _find_listeners_proc(port, proc)
    return _find_listeners_lsof(port)


def _listening_inodes(port: int, proc: Path) -> set[str]:
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            local, state, inode = fields[1], fields[3], fields[9]
            if state == _TCP_LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def _find_listeners_proc(port: int, proc: Path) -> list[Listener]:
    inodes = _listening_inodes(port, proc)
    if not inodes:
        return []
    wanted = {f"socket:[{inode}]" for inode in inodes}
    found: list[Listener] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in wanted:
                    found.append(Listener(int(entry.name), _command(entry)))
                    break
            except OSError:
                continue
    return found


def _command(entry: Path) -> str:
    try:
        raw = (entry / "cmdline").read_bytes()
    except OSError:
        return "?"
    # Show the program only: the rest of argv may hold secrets of other programs.
    program = raw.split(b"\0", 1)[0].decode(errors="replace")
    return os.path.basename(program) or "?"


def _find_listeners_lsof(port: int) -> list[Listener]:
    import shutil

    lsof = shutil.which("lsof")
    if lsof is None:
        return []
    result = subprocess.run(
        [lsof, "-nP", f"-iTCP:{port}", "-sTCP:LISTEN", "-Fpc"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    found: list[Listener] = []
    pid: int | None = None
    for line in result.stdout.splitlines():
        if line.startswith("p"):
            pid = int(line[1:])
        elif line.startswith("c") and pid is not None:
            found.append(Listener(pid, line[1:]))
            pid = None
    return found
