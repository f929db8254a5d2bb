"""What a test process holds: threads, file descriptors, listening sockets, child processes.

``snapshot()`` before, ``assert_no_leaks(before)`` after: the after-state must come back to
the before-state (within a short grace period, since threads and children take a moment to
be reaped). Linux only (/proc).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

from tests.core._process_helpers import ProcInfo, descendants, is_alive

__all__ = ["Snapshot", "assert_no_leaks", "diff", "snapshot"]


@dataclasses.dataclass(frozen=True)
class Snapshot:
    threads: frozenset[str]  # "name#ident"
    fds: frozenset[str]  # "fd -> target"
    listeners: frozenset[tuple[str, int]]  # (address, port) of our LISTEN sockets
    children: frozenset[ProcInfo]


def _fds() -> dict[int, str]:
    found = {}
    for entry in os.listdir("/proc/self/fd"):
        try:
            found[int(entry)] = os.readlink(f"/proc/self/fd/{entry}")
        except OSError:
            continue  # the fd listdir itself used, closed by now
    return found


def _listeners(socket_inodes: set[str]) -> set[tuple[str, int]]:
    """LISTEN TCP sockets (v4 and v6) whose inode is one of ours."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A = LISTEN
                continue
            if fields[9] in socket_inodes:
                address, port = fields[1].rsplit(":", 1)
                found.add((address, int(port, 16)))
    return found


def snapshot() -> Snapshot:
    fds = _fds()
    inodes = {target[8:-1] for target in fds.values() if target.startswith("socket:[")}
    return Snapshot(
        threads=frozenset(f"{t.name}#{t.ident}" for t in threading.enumerate() if t.is_alive()),
        fds=frozenset(f"{fd} -> {target}" for fd, target in fds.items()),
        listeners=frozenset(_listeners(inodes)),
        children=frozenset(p for p in descendants(os.getpid()) if p.state not in ("Z", "X")),
    )


def diff(before: Snapshot, after: Snapshot) -> dict[str, list[str]]:
    """What ``after`` holds that ``before`` did not (empty lists when nothing leaked)."""
    return {
        "threads": sorted(after.threads - before.threads),
        "fds": sorted(after.fds - before.fds),
        "listeners": sorted(f"{a}:{p}" for a, p in after.listeners - before.listeners),
        "children": sorted(
            f"pid {p.pid} ({p.state})" for p in after.children - before.children if is_alive(p)
        ),
    }


def assert_no_leaks(before: Snapshot, *, grace: float = 5.0) -> None:
    """Fail naming what is left, unless everything is back to ``before`` within ``grace`` s."""
    deadline = time.monotonic() + grace
    while True:
        left = diff(before, snapshot())
        if not any(left.values()) or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    assert not any(left.values()), f"left behind: { {k: v for k, v in left.items() if v} }"
