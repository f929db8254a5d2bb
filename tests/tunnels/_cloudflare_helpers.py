"""Helpers for the Cloudflare tests: the cloudflared STAND-IN on PATH, process checks.

The real cloudflared cannot run here (no internet, not installable offline), so the tests
put ``tests/standins/cloudflared`` -- a stand-in that prints the real log lines, serves
``/ready`` and ``/quicktunnel`` and really proxies a loopback "edge" port to the app --
first on PATH. Each test gets a unique ``STANDIN_TEST_TAG`` in the stand-in's environment
so leftovers can be found in ``/proc`` without confusing them with anyone else's.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskapp.testing.helpers import pid_alive
from tests.helpers import free_port, wait_until

STANDINS = Path(__file__).resolve().parents[1] / "standins"
STANDIN = STANDINS / "cloudflared"


def fake_token(secret: str | None = None) -> str:
    """A well-formed tunnel token (base64 JSON with account, tunnel id and secret)."""
    payload = {
        "a": "0123456789abcdef0123456789abcdef",
        "t": str(uuid.uuid4()),
        "s": base64.b64encode((secret or uuid.uuid4().hex).encode()).decode(),
    }
    return base64.b64encode(json.dumps(payload).encode()).decode()


def read_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def read_environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    result: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep:
            result[key] = value
    return result


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def tagged_pids(tag: str) -> list[int]:
    """Live processes whose environment carries ``STANDIN_TEST_TAG=tag``."""
    return [
        pid
        for pid in all_pids()
        if pid_alive(pid) and read_environ(pid).get("STANDIN_TEST_TAG") == tag
    ]


def via_edge(
    edge_port: int, url: str, path: str, *, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """GET ``url + path`` the way DNS would route it: to the stand-in edge, Host = url's host."""
    host = url.split("://", 1)[1].rstrip("/")
    conn = http.client.HTTPConnection("127.0.0.1", edge_port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host, **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@dataclasses.dataclass
class Standin:
    """The stand-in's knobs for one test."""

    monkeypatch: pytest.MonkeyPatch
    tag: str
    edge_port: int

    @property
    def resolve(self) -> dict[str, str]:
        return {"*.trycloudflare.com": f"127.0.0.1:{self.edge_port}"}

    def mode(self, *modes: str) -> None:
        self.monkeypatch.setenv("STANDIN_CLOUDFLARED_MODE", ",".join(modes))

    def env(self, name: str, value: str) -> None:
        self.monkeypatch.setenv(name, value)

    def leftovers(self) -> list[int]:
        return tagged_pids(self.tag)

    def assert_nothing_left(self, timeout: float = 2.0) -> None:
        assert wait_until(lambda: not self.leftovers(), timeout), (
            f"stand-in cloudflared still running: {self.leftovers()}"
        )


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[Standin]:
    """The stand-in first on PATH, a fixed edge port, no stray configuration."""
    for name in list(os.environ):
        if name.startswith("STANDIN_") or name in (
            "TASKAPP_CLOUDFLARED",
            "TUNNEL_TOKEN",
            "TUNNEL_TOKEN_FILE",
        ):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PATH", f"{STANDINS}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("STANDIN_PYTHON", sys.executable)  # skip version-manager shims
    tag = uuid.uuid4().hex
    monkeypatch.setenv("STANDIN_TEST_TAG", tag)
    edge = free_port()
    monkeypatch.setenv("STANDIN_EDGE_PORT", str(edge))
    helper = Standin(monkeypatch=monkeypatch, tag=tag, edge_port=edge)
    yield helper
    leftover = helper.leftovers()
    for pid in leftover:  # do not let one failing test poison the next
        os.kill(pid, 9)
    assert not leftover, f"stand-in cloudflared left running: {leftover}"
