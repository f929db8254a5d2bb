"""The server-runner example in docs/writing_plugins.md runs as printed, and ``ctx.sock``
ownership: a runner may close the pre-bound socket (even behind the object's back) and
taskapp neither logs "Bad file descriptor" nor closes a descriptor number reused meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from taskapp import InProcessTaskApp
from taskapp.core.plugins import get_registry
from taskapp.core.ports import listener_closer
from taskapp.plugins.servers.thread import ThreadServer
from tests.helpers import free_port, minimal_app, port_is_free, run_child

DOC = Path(__file__).resolve().parents[2] / "docs" / "writing_plugins.md"


def example_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    found = [block for block in blocks if "class PlainUvicornRunner(ServerRunner)" in block]
    assert len(found) == 1, "docs/writing_plugins.md must hold the server-runner example once"
    return found[0]


@pytest.fixture
def example_module(tmp_path: Path) -> Iterator[types.ModuleType]:
    module = types.ModuleType("plain_uvicorn_runner_doc")
    module.__file__ = str(tmp_path / "plain_uvicorn_runner_doc.py")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    registry = get_registry()
    try:
        exec(compile(example_source(), module.__file__, "exec"), module.__dict__)
        registry.register(module, name="plain-uvicorn-doc")
        yield module
    finally:
        registry.unregister("plain-uvicorn-doc")
        sys.modules.pop(module.__name__, None)


def test_documented_server_runner_serves_and_releases_everything(
    example_module: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="taskapp")
    port = free_port()
    with InProcessTaskApp(
        app=minimal_app(), port=port, server="plain-uvicorn", server_options={"log_level": "info"}
    ) as task_app:
        assert task_app.server is not None and task_app.server.name == "plain-uvicorn"
        assert httpx.get(f"{task_app.url}/health").json() == {"healthy": True}
    assert port_is_free(port)
    assert "Bad file descriptor" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_documented_server_runner_runs_as_a_script(tmp_path: Path) -> None:
    script = tmp_path / "plain_uvicorn_runner.py"
    script.write_text(example_source())
    result = run_child(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "'healthy': True" in result.stdout, result.stdout


class _ClosesBehindTheBack(ThreadServer):
    """A runner whose server library closes the listening descriptor itself on stop."""

    name = "closes-fd-test"
    reuse: ClassVar[list[int]] = []

    def start(self, ctx: Any) -> None:
        self._fd = ctx.sock.fileno()
        super().start(ctx)

    def stop(self) -> None:
        super().stop()
        with contextlib.suppress(OSError):  # asyncio may have closed it through the object
            os.close(self._fd)
        # Something else in the process now gets the same descriptor number.
        handle = os.open(os.devnull, os.O_RDONLY)
        type(self).reuse.append(handle)


class _Plugin:
    import taskapp as _taskapp

    @_taskapp.hookimpl
    def register_servers(self, register: Any) -> None:
        register(_ClosesBehindTheBack)


def test_a_runner_closing_the_socket_behind_the_back_is_handled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="taskapp")
    registry = get_registry()
    registry.register(_Plugin(), name="closes-fd-test-plugin")
    try:
        port = free_port()
        with InProcessTaskApp(app=minimal_app(), port=port, server="closes-fd-test") as ta:
            assert httpx.get(f"{ta.url}/health").status_code == 200
        assert port_is_free(port)
    finally:
        registry.unregister("closes-fd-test-plugin")
    assert "Bad file descriptor" not in caplog.text
    assert "stopping socket failed" not in caplog.text
    for handle in _ClosesBehindTheBack.reuse:
        os.fstat(handle)  # still open: taskapp did not close a stranger's descriptor
        os.close(handle)


def test_listener_closer_cases() -> None:
    # 1. The runner closed it through the object: nothing to do.
    sock = socket.create_server(("127.0.0.1", 0))
    close = listener_closer(sock)
    sock.close()
    close()
    # 2. Closed behind the object's back, number not reused: no EBADF raised.
    sock = socket.create_server(("127.0.0.1", 0))
    close = listener_closer(sock)
    os.close(sock.fileno())
    close()
    assert sock.fileno() == -1
    # 3. Closed behind the back and the number reused by another file: left open.
    sock = socket.create_server(("127.0.0.1", 0))
    close = listener_closer(sock)
    number = sock.fileno()
    os.close(number)
    other = os.open(os.devnull, os.O_RDONLY)
    try:
        assert other == number  # the lowest free number is handed out again
        close()
        os.fstat(other)
    finally:
        os.close(other)
    # 4. Nobody closed it: closed here, the port is free again.
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    listener_closer(sock)()
    assert sock.fileno() == -1 and port_is_free(port)
