"""The fault matrix: every lifecycle fault x the ``thread`` and ``subprocess`` runners.

Each case starts a real task app (real uvicorn, real sockets, a real child process for the
subprocess runner) with one fault injected, expects the typed error that fault must raise
(or none, for faults that are only logged), and then asserts that nothing is left: no new
thread, file descriptor, listening socket or child process, and the port can be bound
again. Every case runs ``REPEAT`` times (3 thread, 2 subprocess), so a slow leak (one fd
per try) shows too.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import taskapp
from taskapp import InProcessTaskApp
from taskapp.core.backends import Tunnel, TunnelBackend, TunnelContext
from taskapp.core.errors import (
    ApiKeyRejectedError,
    AppLoadError,
    HealthCheckError,
    PortError,
    ServerStartError,
    StartInterruptedError,
    TunnelError,
)
from taskapp.core.plugins import get_registry
from tests.helpers import free_port, port_is_free
from tests.reliability._leaks import assert_no_leaks, snapshot

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="counts fds, listeners and children in /proc"
)

# Tries per case (a slow leak shows as growth over tries); TASKAPP_FAULT_REPEAT overrides.
_REPEAT = os.environ.get("TASKAPP_FAULT_REPEAT")
REPEAT = {"thread": int(_REPEAT or 3), "subprocess": int(_REPEAT or 2)}

APP = """
import asyncio
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse

FAULT = {fault!r}
PARENT = {parent}

if FAULT == "loader_raises":
    raise RuntimeError("fault: the app module raises at import")


@asynccontextmanager
async def lifespan(app):
    if FAULT == "lifespan_raises":
        raise RuntimeError("fault: lifespan startup raises")
    if FAULT == "lifespan_hangs":
        await asyncio.sleep(60)
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/health")
async def health():
    if FAULT == "wrong_key":
        return JSONResponse({{"detail": "invalid API key"}}, status_code=401)
    if FAULT in ("slow_health", "keyboard_interrupt"):
        await asyncio.sleep(0.2)
        return JSONResponse({{"healthy": False}}, status_code=503)
    if FAULT == "server_crash":
        if os.getpid() != PARENT:
            os._exit(7)  # the subprocess server's child dies mid health check
        # thread runner: the test crashes uvicorn's main loop; never healthy before that
        return JSONResponse({{"healthy": False}}, status_code=503)
    return {{"healthy": True}}
"""

# fault -> the error it must raise (None: logged only, the app runs and stops normally)
FAULTS: dict[str, Any] = {
    "loader_raises": AppLoadError,
    "lifespan_raises": ServerStartError,
    "lifespan_hangs": ServerStartError,
    "port_busy": PortError,
    "wrong_key": ApiKeyRejectedError,
    "slow_health": HealthCheckError,
    "server_crash": ServerStartError,
    "tunnel_open_fails": TunnelError,
    "plugin_open_raises": TunnelError,
    "on_start_raises": None,
    "on_stop_raises": None,
    "keyboard_interrupt": (KeyboardInterrupt, StartInterruptedError),
}

# Faults that wait out the health timeout get a short one (the case measures that it is
# honoured); every other case gets a long one, so a slow child start on a loaded machine
# is not mistaken for the fault.
WAITS_OUT_TIMEOUT = {"lifespan_hangs": {"thread": 1.5, "subprocess": 3.0},
                     "slow_health": {"thread": 1.5, "subprocess": 8.0}}  # fmt: skip
LONG_TIMEOUT = 30.0


class FailingTunnel(TunnelBackend):
    """A tunnel backend whose open() fails the way taskapp's own backends do."""

    name = "fault-tunnel-fails"

    def open(self, ctx: TunnelContext) -> Tunnel:
        raise TunnelError("fault: the tunnel service refused", backend=self.name)


class RaisingTunnel(TunnelBackend):
    """A tunnel plugin whose open() raises its own, non-taskapp error."""

    name = "fault-tunnel-raises"

    def open(self, ctx: TunnelContext) -> Tunnel:
        raise ConnectionResetError("fault: the plugin's connection was reset")


@taskapp.hookimpl
def register_tunnels(register: Any) -> None:
    register(FailingTunnel)
    register(RaisingTunnel)


@pytest.fixture(scope="module", autouse=True)
def fault_tunnels() -> Iterator[None]:
    registry = get_registry()
    registry.register(sys.modules[__name__], name="test-fault-tunnels")
    try:
        yield
    finally:
        registry.unregister("test-fault-tunnels")


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fault_apps")


def app_file(app_dir: Path, fault: str, attempt: int) -> Path:
    # A fresh file per attempt: each start loads (imports) its app anew.
    path = app_dir / f"fault_{fault}_{attempt}.py"
    path.write_text(APP.format(fault=fault, parent=os.getpid()))
    return path


def run_case(
    app_dir: Path, runner: str, fault: str, attempt: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = FAULTS[fault]
    port = free_port()
    kwargs: dict[str, Any] = {
        "task_app_path": app_file(app_dir, fault, attempt),
        "server": runner,
        "port": port,
        "auto_find_port": False,
        "health_check_timeout": WAITS_OUT_TIMEOUT.get(fault, {}).get(runner, LONG_TIMEOUT),
    }
    held: socket.socket | None = None
    timer: threading.Timer | None = None
    stopped: list[str] = []

    def bad_callback(task_app: Any) -> None:
        stopped.append("called")
        raise RuntimeError(f"fault: {fault}")

    if fault == "port_busy":
        held = socket.socket()
        held.bind(("127.0.0.1", port))
        held.listen()
    elif fault == "tunnel_open_fails":
        kwargs["tunnel_backend"] = FailingTunnel.name
    elif fault == "plugin_open_raises":
        kwargs["tunnel_backend"] = RaisingTunnel.name
    elif fault == "on_start_raises":
        kwargs["on_start"] = bad_callback
    elif fault == "on_stop_raises":
        kwargs["on_stop"] = bad_callback
    elif fault == "server_crash" and runner == "thread":

        async def exploding_main_loop(self: Any) -> None:
            raise RuntimeError("fault: the server's main loop crashed")

        from taskapp.core.serving import fast_exit_server_class

        monkeypatch.setattr(fast_exit_server_class(), "main_loop", exploding_main_loop)
    elif fault == "keyboard_interrupt":
        timer = threading.Timer(0.6, os.kill, (os.getpid(), signal.SIGINT))

    started = time.monotonic()
    try:
        if expected is None:
            with InProcessTaskApp(**kwargs) as app:
                assert app.url is not None
            assert stopped == ["called"]
        else:
            if timer is not None:
                timer.start()
            with pytest.raises(expected) as caught:
                InProcessTaskApp(**kwargs).start()
            # Typed, and says what happened (a chained KeyboardInterrupt has no words).
            if not isinstance(caught.value, KeyboardInterrupt):
                assert str(caught.value), f"{fault}: an error without a message"
    finally:
        if timer is not None:
            timer.join()
        if held is not None:
            held.close()
        monkeypatch.undo()
    elapsed = time.monotonic() - started
    limit = kwargs["health_check_timeout"] + 4.0 if fault in WAITS_OUT_TIMEOUT else 20.0
    assert elapsed < limit, f"{fault}/{runner} took {elapsed:.1f}s"
    assert port_is_free(port), f"{fault}/{runner}: port {port} still bound"


@pytest.fixture(scope="module", autouse=True)
def warm_up(app_dir: Path) -> None:
    """One good start per runner first: process-wide objects created on first use (import
    caches, the child-process reaper, loop policies) are not leaks."""
    for runner in ("thread", "subprocess"):
        path = app_file(app_dir, "none", 0)
        with InProcessTaskApp(task_app_path=path, server=runner, port=free_port()):
            pass


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("runner", ["thread", "subprocess"])
def test_fault_leaves_nothing_behind(
    app_dir: Path, runner: str, fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot()
    for attempt in range(REPEAT[runner]):
        run_case(app_dir, runner, fault, attempt, monkeypatch)
    assert_no_leaks(before)
