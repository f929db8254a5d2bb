"""``taskapp serve --server ray --replicas 2`` then ``taskapp eval --url``, as a user runs them.

A fresh ``taskapp`` process starts its own private local Ray instance (about 10 s on 2
cores), so this lives apart from tests/servers/test_ray_server.py, whose in-process tests share
one instance. Skipped when the ray extra is not installed.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.cli._cli_helpers import Served, port_is_free, taskapp
from tests.helpers import wait_until
from tests.servers._ray_helpers import alive, command, write_app

pytestmark = pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20")

START_TIMEOUT = 120.0
KEY = "ray-cli-test-key-0123456789abcdef"


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    stat = handle.read()
                parents[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])
            except (OSError, ValueError):
                continue
    found: set[int] = set()
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                frontier.append(pid)
    return found


def test_cli_serve_with_replicas_then_eval_then_sigterm(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'taskapp[ray]')")
    path = write_app(tmp_path)
    with Served(
        str(path),
        "--server",
        "ray",
        "--replicas",
        "2",
        "--health-timeout",
        str(START_TIMEOUT),
        ENVIRONMENT_API_KEY=KEY,
    ) as server:
        server.wait_url(timeout=START_TIMEOUT + 10)
        assert "server:  ray" in server.stdout
        family = _descendants(server.proc.pid)
        replicas = {pid for pid in family if command(pid).startswith("ray::ServeReplica")}
        assert len(replicas) == 2, [(pid, command(pid)) for pid in family]
        result = taskapp(
            "eval",
            "--url",
            server.url,
            "--seeds",
            "0-7",
            "--concurrency",
            "4",
            "--json",
            str(tmp_path / "eval.json"),
            timeout=60,
            ENVIRONMENT_API_KEY=KEY,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "8 of 8" in result.stdout
        code, _, stderr = server.stop(signal.SIGTERM, timeout=30)
    assert code == 0, stderr
    assert "SIGTERM received, stopped cleanly" in stderr
    assert KEY not in server.stdout + stderr
    # Nothing of the instance is left 5 s after exit (no process, the port free).
    assert wait_until(lambda: not [p for p in family if alive(p)], 5), [
        (p, command(p)) for p in family if alive(p)
    ]
    assert port_is_free(server.port)
