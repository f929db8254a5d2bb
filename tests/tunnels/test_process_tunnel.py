"""``taskapp.ProcessTunnel`` as a third-party author uses it: a tunnel around a program.

The "program" here is a small Python script (a real child process through the process
manager) that prints a URL line like a tunnel client would, then either keeps running,
exits, or prints nothing. The backend is registered at run time and used through
``InProcessTaskApp`` like any installed plugin.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

import taskapp
from taskapp import InProcessTaskApp, ProcessTunnel, Tunnel, TunnelContext
from taskapp.core.plugins import get_registry
from tests.helpers import free_port, minimal_app, wait_until

PROGRAM = textwrap.dedent(
    """
    import sys, time
    mode, port = sys.argv[1], sys.argv[2]
    print("connecting...", flush=True)
    if mode == "silent":
        time.sleep(60)
    if mode == "crash":
        print("fatal: the relay refused us", flush=True)
        sys.exit(3)
    print(f"forwarding ready at http://127.0.0.1:{port}", flush=True)
    if mode == "drop":
        time.sleep(0.5)
        print("connection lost", flush=True)
        sys.exit(1)
    time.sleep(60)
    """
)


class ScriptTunnel(ProcessTunnel):
    """A third-party style backend: runs ``program`` and reads the URL from its output."""

    name = "script-test-tunnel"
    program = "script-tunnel"
    script: ClassVar[Path | None] = None

    @dataclasses.dataclass(frozen=True)
    class Options:
        mode: str = "ok"
        executable: str = sys.executable

    def open(self, ctx: TunnelContext) -> Tunnel:
        assert self.script is not None
        argv = [self.options.executable, str(self.script), self.options.mode, str(ctx.port)]
        proc = self.spawn_child(argv)
        match = self.wait_for_output(r"forwarding ready at (\S+)", min(ctx.start_timeout, 3))
        return Tunnel(url=match.group(1), stable=False, pids=(proc.pid,))

    def close_grace(self) -> float:
        return 1.0


@pytest.fixture
def script_tunnel(tmp_path: Path) -> Iterator[type[ScriptTunnel]]:
    script = tmp_path / "tunnel_program.py"
    script.write_text(PROGRAM)
    ScriptTunnel.script = script

    class Plugin:
        @taskapp.hookimpl
        def register_tunnels(self, register: Any) -> None:
            register(ScriptTunnel)

    registry = get_registry()
    registry.register(Plugin(), name="test-script-tunnel")
    try:
        yield ScriptTunnel
    finally:
        registry.unregister("test-script-tunnel")


def test_a_process_tunnel_serves_and_leaves_nothing_behind(
    script_tunnel: type[ScriptTunnel],
) -> None:
    with InProcessTaskApp(
        app=minimal_app(), port=free_port(), tunnel_backend=script_tunnel.name
    ) as task_app:
        assert task_app.tunnel is not None
        (pid,) = task_app.tunnel.pids
        response = httpx.get(f"{task_app.url}/health", headers={"X-API-Key": task_app.api_key})
        assert response.status_code == 200
    assert wait_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 5)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        (
            {"executable": "/nonexistent/tunnel-client"},
            taskapp.TunnelBinaryMissingError,
            ["script-test-tunnel", "needs script-tunnel", "/nonexistent/tunnel-client"],
        ),
        (
            {"mode": "crash"},
            taskapp.TunnelError,
            ["script-tunnel exited before printing a public URL", "exit code 3"],
        ),
        (
            {"mode": "silent"},
            taskapp.TunnelTimeoutError,
            ["script-tunnel printed no public URL within 3s"],
        ),
    ],
)
def test_start_failures_are_typed_and_name_the_backend(
    script_tunnel: type[ScriptTunnel],
    options: dict[str, str],
    error: type[Exception],
    words: list[str],
) -> None:
    port = free_port()
    with pytest.raises(error) as info:
        with InProcessTaskApp(
            app=minimal_app(),
            port=port,
            tunnel_backend=script_tunnel.name,
            tunnel_options=options,
            health_check_timeout=10,
        ):
            pytest.fail("the start should have failed")
    message = str(info.value)
    for word in words:
        assert word in message
    assert getattr(info.value, "backend", None) == script_tunnel.name
    if options.get("mode") == "crash":
        # The program's last output is quoted.
        assert "the relay refused us" in (getattr(info.value, "log_tail", "") or "")


def test_the_program_exiting_is_a_drop_with_its_last_line(tmp_path: Path) -> None:
    script = tmp_path / "tunnel_program.py"
    script.write_text(PROGRAM)
    ScriptTunnel.script = script
    backend = ScriptTunnel(ScriptTunnel.Options(mode="drop"))
    ctx = TunnelContext(
        local_url="http://127.0.0.1:1",
        host="127.0.0.1",
        port=1,
        api_key="k" * 16,
        force_new=False,
        start_timeout=5,
        logger=logging.getLogger("test"),
        url_changed=lambda tunnel: None,
    )
    try:
        tunnel = backend.open(ctx)
        assert tunnel.url == "http://127.0.0.1:1"
        assert backend.pid is not None
        reason = backend.wait_dropped(threading.Event())
        assert reason is not None
        assert "status 1" in reason
        assert "connection lost" in reason
    finally:
        backend.close()
        backend.close()  # idempotent
    assert backend.pid is None
    stop = threading.Event()
    stop.set()
    assert backend.wait_dropped(stop) is None  # closed and asked to stop: no drop
