"""The one reader of the process table (Linux ``/proc``).

Server runners use it to find the processes they started (the subprocess runner's
workers, the Ray runner's local instance) and to tell a process from a later one that
reuses its pid (the start time). Where there is no ``/proc`` (macOS), every function finds
nothing: callers treat that as "nothing to sweep", never as an error.

``/proc/<pid>/stat`` is parsed after the last ``)``, so a command name with spaces or
parentheses cannot shift the fields.

>>> import os
>>> me = process(os.getpid())
>>> me is not None and me.pid == os.getpid() and me.ppid == os.getppid()
True
>>> me is not None and me.alive
True
"""

from __future__ import annotations

import dataclasses
import os

__all__ = ["ProcessInfo", "argv", "children", "descendants", "process", "processes"]

PROC = "/proc"


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    """One row of the process table."""

    pid: int
    ppid: int
    state: str
    """``R``, ``S``, ``D``, ``Z`` (zombie: exited, waiting to be reaped), ``X`` ..."""
    start_time: int
    """Clock ticks after boot; with ``pid`` it names one process for its whole life."""

    @property
    def alive(self) -> bool:
        """Not a zombie or dead (a zombie has exited; it only waits to be reaped)."""
        return self.state not in ("Z", "X")


def process(pid: int) -> ProcessInfo | None:
    """The table row of ``pid``; None when it is gone (or there is no ``/proc``)."""
    try:
        with open(f"{PROC}/{pid}/stat", "rb") as handle:
            raw = handle.read().decode(errors="replace")
        fields = raw[raw.rindex(")") + 2 :].split()
        return ProcessInfo(pid, int(fields[1]), fields[0], int(fields[19]))
    except (OSError, ValueError, IndexError):
        return None


def processes(*, include_dead: bool = False) -> dict[int, ProcessInfo]:
    """Every visible process by pid (zombies left out unless ``include_dead``)."""
    try:
        entries = os.listdir(PROC)
    except OSError:
        return {}
    table: dict[int, ProcessInfo] = {}
    for entry in entries:
        if entry.isdigit():
            info = process(int(entry))
            if info is not None and (include_dead or info.alive):
                table[info.pid] = info
    return table


def children(pid: int) -> list[ProcessInfo]:
    """The live direct children of ``pid``, by pid."""
    return sorted((info for info in processes().values() if info.ppid == pid), key=lambda i: i.pid)


def descendants(pid: int) -> list[ProcessInfo]:
    """The live children of ``pid``, their children, and so on, by pid."""
    table = processes()
    by_parent: dict[int, list[ProcessInfo]] = {}
    for info in table.values():
        by_parent.setdefault(info.ppid, []).append(info)
    found: dict[int, ProcessInfo] = {}
    todo = [pid]
    while todo:
        for child in by_parent.get(todo.pop(), []):
            if child.pid not in found:
                found[child.pid] = child
                todo.append(child.pid)
    return sorted(found.values(), key=lambda i: i.pid)


def argv(pid: int) -> list[bytes] | None:
    """The command line of ``pid`` as raw arguments; None when it is gone.

    It may hold someone else's secrets: match on it, never log it whole.
    """
    try:
        with open(f"{PROC}/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    return raw.rstrip(b"\0").split(b"\0") if raw else []
