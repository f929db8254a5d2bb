"""Exec wrapper that ties a child's life to its parent's (used by taskapp.core.processes).

Run as a *script* (``python -I -S _exec_guard.py MODE PPID SIG ERRFD WATCHFD EXE -- ARGV...``),
never imported: ``-I -S`` skips ``site`` (about 20 ms here), so the wrapper costs about
10 ms before it execs the real program. Standard library only, no taskapp import.

Modes:

``pdeathsig`` (Linux)
    ``prctl(PR_SET_PDEATHSIG, SIG)``, then check that the parent is still ``PPID`` (closes the
    race where the parent died before the prctl), then exec. The kernel sends ``SIG`` when
    the *thread* that forked us exits, which is why the process manager forks from one
    long-lived thread.
``pipe`` (macOS and other POSIX systems; selectable on Linux for tests)
    ``WATCHFD`` is the read end of a pipe whose write end only the parent holds. A small
    detached watcher process (double fork, same process group) waits for EOF on it, which
    happens when the parent dies however it dies, and then SIGKILLs the process group. It
    exits by itself once the program is gone.
``none``
    Just exec.

``ERRFD`` is a pipe the parent reads: it is close-on-exec, so a successful exec closes it
(EOF, the parent knows the program runs); a failure writes ``ErrorName:errno:message``.
"""

import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def _set_death_signal(sig: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(errno)}")


def _start_watcher(watch_fd: int, target: int) -> None:
    """Double-fork a watcher that kills our process group when the parent's pipe hits EOF."""
    first = os.fork()
    if first:
        os.waitpid(first, 0)
        return
    # Intermediate process: fork the watcher and leave at once, so the watcher is not a
    # child of the program (which would never reap it).
    try:
        if os.fork():
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        # Keep nothing else open: above all not the program's stdout/stderr pipes, or the
        # parent's readers would never see EOF.
        os.closerange(3, watch_fd)
        os.closerange(watch_fd + 1, 65536)
        import select

        while True:
            ready, _, _ = select.select([watch_fd], [], [], 0.5)
            if ready and not os.read(watch_fd, 1):
                os.killpg(os.getpgrp(), signal.SIGKILL)  # the parent is gone
                os._exit(0)
            try:
                os.kill(target, 0)
            except ProcessLookupError:
                os._exit(0)  # the program is gone
            except PermissionError:
                pass
    except BaseException:
        os._exit(1)
    os._exit(0)


def main() -> None:
    mode, ppid, sig, err_fd_s, watch_fd_s, exe, sep = sys.argv[1:8]
    argv = sys.argv[8:]
    err_fd, watch_fd = int(err_fd_s), int(watch_fd_s)
    try:
        if sep != "--" or not argv:
            raise ValueError("usage: _exec_guard.py MODE PPID SIG ERRFD WATCHFD EXE -- ARGV...")
        if mode == "pdeathsig":
            _set_death_signal(int(sig))
            if os.getppid() != int(ppid):
                # The parent died before the death signal was armed: do what it would do.
                os.kill(os.getpid(), int(sig))
                os._exit(1)
        elif mode == "pipe":
            if os.getppid() != int(ppid):
                os._exit(1)
            _start_watcher(watch_fd, os.getpid())
        if watch_fd >= 0:
            os.close(watch_fd)
        # Python ignores these at start-up; an exec would pass SIG_IGN on to the program.
        for name in ("SIGPIPE", "SIGXFSZ", "SIGXFZ"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_DFL)
        os.set_inheritable(err_fd, False)
        os.execv(exe, argv)  # noqa: S606 - the whole point of this wrapper
    except BaseException as exc:
        code = getattr(exc, "errno", 0) or 0
        message = f"{type(exc).__name__}:{code}:{exc}"
        try:
            os.write(err_fd, message.encode("utf-8", "replace"))
        finally:
            os._exit(127)


if __name__ == "__main__":
    main()
