"""Task apps and process/socket inspection for tests/servers/test_ray_server.py.

Importable as ``tests.servers._ray_helpers``, so ``"tests.servers._ray_helpers:CONFIG"`` is an import
string Ray Serve replicas can load (the runner gives them the test process's sys.path).
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

from taskapp import TaskAppConfig


def _replica_id() -> str:
    """The Serve replica this runs in ("" outside Serve)."""
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:
        return ""


def _describe() -> dict[str, Any]:
    return {"splits": {"train": 8, "test": 2}}


def _instances(seeds: list[int]) -> list[dict[str, Any]]:
    return [
        {"task": {"id": "ray-demo", "name": "Ray demo"}, "task_metadata": {"seed": s}}
        for s in seeds
    ]


async def _rollout(request: Any, http_request: Any) -> dict[str, Any]:
    seed = request.env.seed or 0
    return {
        "run_id": request.run_id,
        "metrics": {
            "outcome_score": 1.0 if seed % 2 == 0 else 0.0,
            "details": {"pid": os.getpid(), "replica": _replica_id()},
        },
    }


#: A TaskAppConfig at module level: its import string is "tests.servers._ray_helpers:CONFIG".
CONFIG = TaskAppConfig(
    app_id="ray-demo",
    name="Ray demo",
    description="served by Ray Serve replicas",
    describe_taskset=_describe,
    provide_task_instances=_instances,
    rollout=_rollout,
)

#: A task app file defining ``build_config()`` (written to a temporary directory).
APP_SOURCE = textwrap.dedent(
    """
    import asyncio
    import os

    from taskapp import TaskAppConfig


    def describe():
        return {"splits": {"train": 8}}


    def instances(seeds):
        return [{"task": {"id": "py-demo", "name": "Py demo"}} for _ in seeds]


    async def rollout(request, http_request):
        delay = float(request.env.config.get("sleep_ms", 0)) / 1000
        if delay:
            await asyncio.sleep(delay)
        return {
            "run_id": request.run_id,
            "metrics": {"outcome_score": 1.0, "details": {"pid": os.getpid()}},
        }


    def build_config():
        return TaskAppConfig(
            app_id="py-demo",
            name="Py demo",
            description="a task app file",
            describe_taskset=describe,
            provide_task_instances=instances,
            rollout=rollout,
        )
    """
)

#: A task app file whose import fails on every replica.
BROKEN_SOURCE = 'raise RuntimeError("boom-from-the-replica-builder")\n'


def write_app(directory: Path, name: str = "ray_task_app.py", source: str = APP_SOURCE) -> Path:
    path = directory / name
    path.write_text(source)
    return path


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def session_dir(pids: tuple[int, ...] | list[int]) -> Path | None:
    """The Ray session directory, read from the command line of one of ``pids``."""
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for arg in argv:
            if arg.startswith(b"--session-dir="):
                return Path(arg.split(b"=", 1)[1].decode())
    return None


def _hex_address(raw: str) -> str:
    """Render an address from /proc/net/tcp{,6} ("0100007F:1F90") as host:port."""
    host_hex, port_hex = raw.split(":")
    port = int(port_hex, 16)
    data = bytes.fromhex(host_hex)
    if len(data) == 4:
        host = ".".join(str(b) for b in data[::-1])
    else:  # IPv6: four little-endian 32-bit words
        words = [data[i : i + 4][::-1] for i in range(0, 16, 4)]
        full = b"".join(words)
        if full == bytes(16):
            host = "::"
        elif full[:12] == bytes(10) + b"\xff\xff":
            host = "::ffff:" + ".".join(str(b) for b in full[12:])
        elif full == bytes(15) + b"\x01":
            host = "::1"
        else:
            host = full.hex()
    return f"{host}:{port}"


def listening_sockets(pids: tuple[int, ...] | list[int]) -> list[tuple[int, str, str]]:
    """(pid, program, host:port) of every TCP socket ``pids`` listen on."""
    listening: dict[str, str] = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A":
                listening[fields[9]] = _hex_address(fields[1])
    found: list[tuple[int, str, str]] = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inode = link[8:-1]
                if inode in listening:
                    found.append((pid, command(pid), listening[inode]))
    return found


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0]
    return (
        host.startswith("127.")
        or host in ("::1", "::ffff:127.0.0.1")
        or (host.startswith("::ffff:127."))
    )
