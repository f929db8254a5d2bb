"""Helpers for tests that check real processes through /proc (Linux)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import start_child


@dataclasses.dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    pgrp: int
    session: int
    state: str
    start: int


def read_stat(pid: int) -> ProcInfo | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return ProcInfo(
        pid=pid,
        ppid=int(fields[1]),
        pgrp=int(fields[2]),
        session=int(fields[3]),
        state=fields[0],
        start=int(fields[19]),
    )


def all_processes() -> list[ProcInfo]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = read_stat(int(entry))
            if info is not None:
                found.append(info)
    return found


def is_alive(info: ProcInfo) -> bool:
    """Alive = exists, is the same process (start time), and is not a zombie."""
    now = read_stat(info.pid)
    return now is not None and now.start == info.start and now.state not in ("Z", "X")


def pid_alive(pid: int) -> bool:
    info = read_stat(pid)
    return info is not None and info.state not in ("Z", "X")


def descendants(root: int) -> list[ProcInfo]:
    procs = all_processes()
    children: dict[int, list[ProcInfo]] = {}
    for info in procs:
        children.setdefault(info.ppid, []).append(info)
    result: list[ProcInfo] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            result.append(child)
            stack.append(child.pid)
    return result


def family(root: int) -> list[ProcInfo]:
    """Descendants of ``root`` plus every process sharing a session with one of them."""
    found = {info.pid: info for info in descendants(root)}
    sessions = {info.session for info in found.values() if info.session not in (0, root)}
    for info in all_processes():
        if info.session in sessions and info.pid != root:
            found.setdefault(info.pid, info)
    return list(found.values())


def still_running(snapshot: list[ProcInfo], sessions: set[int] | None = None) -> list[ProcInfo]:
    """Members of the snapshot still alive, plus live processes in the given sessions."""
    alive = [info for info in snapshot if is_alive(info)]
    if sessions:
        seen = {info.pid for info in alive}
        for info in all_processes():
            if info.session in sessions and info.state not in ("Z", "X") and info.pid not in seen:
                alive.append(info)
    return alive


def start_script(
    path: Path, code: str, *, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Run ``code`` as a script in a fresh interpreter (stdout piped, stderr to a file)."""
    path.write_text(code)
    err = path.with_suffix(".stderr")
    return start_child(
        [sys.executable, str(path)],
        stdout=subprocess.PIPE,
        stderr=err.open("w"),
        text=True,
        env={**os.environ, **(env or {})},
        cwd=str(path.parent),
    )


def read_json_line(proc: subprocess.Popen[str], timeout: float, path: Path) -> dict[str, object]:
    """The first JSON line the script prints; fails with its stderr if it dies first."""
    import selectors

    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not selector.select(timeout):
            raise AssertionError(
                f"script printed nothing in {timeout}s; stderr:\n{stderr_of(path)}"
            )
        line = proc.stdout.readline()
    finally:
        selector.close()
    if not line:
        proc.wait(5)
        raise AssertionError(f"script exited ({proc.returncode}); stderr:\n{stderr_of(path)}")
    result = json.loads(line)
    assert isinstance(result, dict)
    return result


def stderr_of(path: Path) -> str:
    err = path.with_suffix(".stderr")
    return err.read_text() if err.exists() else ""
