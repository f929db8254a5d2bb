"""The ``subprocess`` server runner: real uvicorn children, real sockets, real signals."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from taskapp import InProcessTaskApp
from taskapp.core import processes
from taskapp.core.errors import ConfigurationError, ServerStartError
from taskapp.core.plugins import get_registry
from taskapp.plugins.servers.subprocess import SubprocessServer
from tests.core._process_helpers import (
    descendants,
    family,
    pid_alive,
    read_json_line,
    stderr_of,
    still_running,
)
from tests.helpers import free_port, port_is_free, start_child, wait_until

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="checks children through Linux /proc"
)

APP = """
import asyncio
import os
import pathlib
from contextlib import asynccontextmanager

from fastapi import FastAPI

if os.environ.get("FAIL_IN_CHILD"):
    raise RuntimeError("boom from the child import")


@asynccontextmanager
async def lifespan(app):
    if os.environ.get("FAIL_LIFESPAN"):
        raise RuntimeError("lifespan exploded in the child")
    yield
    markers = os.environ.get("MARKER_DIR")
    if markers:
        pathlib.Path(markers, f"{os.getpid()}.down").write_text("graceful")


app = FastAPI(lifespan=lifespan)


@app.get("/health")
def health():
    return {"healthy": True}


@app.get("/pid")
def pid():
    return {"pid": os.getpid(), "env_key": bool(os.environ.get("TASKAPP_API_KEY"))}


@app.get("/slow")
async def slow():
    print("slow request arrived", flush=True)
    await asyncio.sleep(30)
    return {"slow": True}
"""

CONFIG_APP = """
from taskapp import TaskAppConfig


def build_config():
    return TaskAppConfig(
        app_id="sub",
        name="Subprocess demo",
        description="served from a child process",
        describe_taskset=lambda: {"splits": {"train": 3}},
        provide_task_instances=lambda seeds: [{"seed": s} for s in seeds],
        rollout=lambda request, http_request: {"metrics": {"outcome_score": 1.0}},
    )
"""


@pytest.fixture
def app_file(tmp_path: Path) -> Path:
    path = tmp_path / "sub_app.py"
    path.write_text(APP)
    return path


def server_children() -> list[int]:
    """Live descendants of this test process that are subprocess-server processes."""
    found = []
    for info in descendants(os.getpid()):
        if info.state in ("Z", "X"):
            continue
        try:
            cmdline = Path(f"/proc/{info.pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"_subprocess_child" in cmdline or b"multiprocessing" in cmdline:
            found.append(info.pid)
    return found


def assert_nothing_left(port: int) -> None:
    assert wait_until(lambda: not server_children(), 3), f"left running: {server_children()}"
    assert not processes.live_processes()
    assert wait_until(lambda: port_is_free(port), 3), f"port {port} still in use"


def test_registered_as_a_builtin() -> None:
    assert get_registry().server("subprocess").name == "subprocess"


def test_options_are_validated() -> None:
    with pytest.raises(ConfigurationError, match="workers must be at least 1"):
        InProcessTaskApp(app="x:y", server="subprocess", server_options={"workers": 0})
    with pytest.raises(ConfigurationError, match="unknown option"):
        InProcessTaskApp(app="x:y", server="subprocess", server_options={"wrokers": 2})
    with pytest.raises(ConfigurationError, match="log_level"):
        InProcessTaskApp(app="x:y", server="subprocess", server_options={"log_level": "loud"})


def test_two_workers_serve_from_two_pids(app_file: Path) -> None:
    port = free_port()
    with InProcessTaskApp(
        task_app_path=app_file, port=port, server="subprocess", server_options={"workers": 2}
    ) as task_app:
        assert task_app.server is not None
        supervisor, *workers = task_app.server.pids
        assert len(workers) == 2
        assert supervisor not in workers
        seen: set[int] = set()
        for _ in range(300):
            # A fresh connection each time: the kernel hands it to either worker.
            with httpx.Client() as client:
                answer = client.get(f"{task_app.local_url}/pid")
            assert answer.status_code == 200
            assert answer.json()["env_key"] is True
            seen.add(answer.json()["pid"])
            if len(seen) == 2:
                break
        assert seen == set(workers)
        assert os.getpid() not in seen
    assert all(not pid_alive(p) for p in (supervisor, *workers))
    assert_nothing_left(port)


def test_one_worker_serves_a_config_app_that_requires_the_key(tmp_path: Path) -> None:
    path = tmp_path / "config_app.py"
    path.write_text(CONFIG_APP)
    port = free_port()
    key = "sk-subprocess-key-7777"
    with InProcessTaskApp(
        task_app_path=path, port=port, api_key=key, server="subprocess"
    ) as task_app:
        assert task_app.server is not None
        (pid,) = task_app.server.pids
        # The key reached the child: the contract app accepts it...
        good = httpx.get(f"{task_app.local_url}/health", headers={"X-API-Key": key})
        assert good.status_code == 200
        bad = httpx.get(f"{task_app.local_url}/task_info", headers={"X-API-Key": "wrong-key"})
        assert bad.status_code in (401, 403)
        # ...through the environment only, never the command line.
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert key.encode() not in cmdline
        assert f"TASKAPP_API_KEY={key}".encode() in Path(f"/proc/{pid}/environ").read_bytes()
    assert not pid_alive(pid)
    assert_nothing_left(port)


def test_import_string_found_through_the_parents_sys_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "only_on_runtime_path"
    package.mkdir()
    (package / "sub_mod_app.py").write_text(APP)
    monkeypatch.syspath_prepend(str(package))  # not on PYTHONPATH: the child must adopt it
    port = free_port()
    with InProcessTaskApp(app="sub_mod_app:app", port=port, server="subprocess") as task_app:
        assert task_app.loaded is not None
        assert task_app.loaded.target == "sub_mod_app:app"
        assert httpx.get(f"{task_app.local_url}/pid").json()["pid"] != os.getpid()
    assert_nothing_left(port)


def test_config_object_from_an_importable_module_is_reimported_by_the_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    (tmp_path / "sub_config_mod.py").write_text(CONFIG_APP + "\nconfig = build_config()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("sub_config_mod")
    port = free_port()
    try:
        with InProcessTaskApp(config=module.config, port=port, server="subprocess") as task_app:
            assert task_app.server is not None
            (pid,) = task_app.server.pids
            assert pid != os.getpid()
            answer = httpx.get(
                f"{task_app.local_url}/health", headers={"X-API-Key": task_app.api_key}
            )
            assert answer.status_code == 200
            assert isinstance(task_app.server, SubprocessServer)
            assert task_app.server.process is not None
            assert "sub_config_mod:config" in task_app.server.process.argv
    finally:
        sys.modules.pop("sub_config_mod", None)
    assert_nothing_left(port)


def test_app_object_without_import_path_gets_a_clear_error() -> None:
    from fastapi import FastAPI

    local_app = FastAPI()  # exists only inside this function
    port = free_port()
    with pytest.raises(ConfigurationError) as info:
        InProcessTaskApp(app=local_app, port=port, server="subprocess").start()
    message = str(info.value)
    for hint in ("task_app_path", "module:app", "server='thread'"):
        assert hint in message
    assert_nothing_left(port)


@pytest.mark.parametrize(
    ("workers", "env", "expected"),
    [
        (1, {"FAIL_IN_CHILD": "1"}, "RuntimeError: boom from the child import"),
        (2, {"FAIL_IN_CHILD": "1"}, "RuntimeError: boom from the child import"),
        (1, {"FAIL_LIFESPAN": "1"}, "RuntimeError: lifespan exploded in the child"),
    ],
)
def test_startup_failure_in_the_child_shows_its_traceback(
    app_file: Path, workers: int, env: dict[str, str], expected: str
) -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(ServerStartError) as info:
        InProcessTaskApp(
            task_app_path=app_file,
            port=port,
            server="subprocess",
            server_options={"workers": workers, "env": env},
            health_check_timeout=30,
        ).start()
    elapsed = time.monotonic() - started
    assert elapsed < 15, "the failure was not detected at once"
    tail = info.value.log_tail or ""
    assert "Traceback (most recent call last)" in tail
    assert expected in tail
    assert "exit code 3" in str(info.value)
    assert_nothing_left(port)


def test_stop_is_bounded_with_a_hanging_request_and_frees_the_port(app_file: Path) -> None:
    port = free_port()
    task_app = InProcessTaskApp(
        task_app_path=app_file,
        port=port,
        server="subprocess",
        server_options={"graceful_timeout": 0.5},
    ).start()
    try:
        assert task_app.server is not None
        (pid,) = task_app.server.pids
        client = start_child(
            [sys.executable, "-c", f"import httpx; httpx.get('{task_app.local_url}/slow')"],
            stderr=subprocess.DEVNULL,
        )
        # The request is in flight (the child's output, drained by the process manager).
        assert isinstance(task_app.server, SubprocessServer)
        assert task_app.server.process is not None
        task_app.server.process.wait_for_line("slow request arrived", timeout=20)
        started = time.monotonic()
        task_app.stop()
        assert time.monotonic() - started < 4
        task_app.stop()  # idempotent
        assert not pid_alive(pid)
        assert_nothing_left(port)
    finally:
        task_app.stop()
        if "client" in locals():
            client.kill()
            client.wait(10)


def test_check_alive_reports_a_child_that_died_with_its_output(app_file: Path) -> None:
    port = free_port()
    task_app = InProcessTaskApp(task_app_path=app_file, port=port, server="subprocess").start()
    try:
        server = task_app.server
        assert server is not None
        server.check_alive()  # running: no error
        (pid,) = server.pids
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not server.pids, 5)
        with pytest.raises(ServerStartError, match="killed by SIGKILL") as info:
            server.check_alive()
        assert "Application startup complete" in (info.value.log_tail or "")
    finally:
        task_app.stop()
    assert_nothing_left(port)


# -- the parent process dies or is signalled ---------------------------------------------

PARENT = """
import json, os, signal, sys, time
from taskapp import InProcessTaskApp

path, workers, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
try:
    with InProcessTaskApp(
        task_app_path=path, port=port, server="subprocess",
        server_options={"workers": workers, "graceful_timeout": 3.0},
    ) as task_app:
        print(json.dumps({"pids": list(task_app.server.pids), "port": task_app.port}), flush=True)
        time.sleep(120)
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr, flush=True)
    sys.exit(0)
"""


def _start_parent(
    tmp_path: Path, app_file: Path, workers: int, *, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], list[int], int, Path]:
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(PARENT))
    port = free_port()
    parent = start_child(
        [sys.executable, str(script), str(app_file), str(workers), str(port)],
        stdout=subprocess.PIPE,
        stderr=script.with_suffix(".stderr").open("w"),
        text=True,
        env={**os.environ, **(env or {})},
    )
    info = read_json_line(parent, 60, script)
    pids = info["pids"]
    assert isinstance(pids, list)
    return parent, [int(p) for p in pids], port, script


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkilled_parent_leaves_no_descendant(
    tmp_path: Path, app_file: Path, workers: int
) -> None:
    parent, pids, port, script = _start_parent(tmp_path, app_file, workers)
    snapshot = family(parent.pid)
    try:
        sessions = {info.session for info in snapshot}
        assert {p for p in pids} <= {info.pid for info in snapshot}
        assert len(snapshot) >= 1 + (workers if workers > 1 else 0)
        parent.kill()
        parent.wait(10)
        assert wait_until(lambda: not still_running(snapshot, sessions), 2.0), (
            f"alive 2 s after the parent's SIGKILL: {still_running(snapshot, sessions)}; "
            f"stderr:\n{stderr_of(script)}"
        )
        assert wait_until(lambda: port_is_free(port), 2)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        for info in still_running(snapshot):  # only reached when the test failed
            with contextlib.suppress(ProcessLookupError):
                os.kill(info.pid, signal.SIGKILL)


@pytest.mark.parametrize(
    ("signum", "exit_code"),
    [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, 0)],
)
def test_parent_signal_stops_the_server_gracefully(
    tmp_path: Path, app_file: Path, signum: int, exit_code: int
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    parent, pids, port, script = _start_parent(
        tmp_path, app_file, 2, env={"MARKER_DIR": str(markers)}
    )
    snapshot = family(parent.pid)
    try:
        workers = pids[1:]
        assert len(workers) == 2
        parent.send_signal(signum)
        assert parent.wait(15) == exit_code, stderr_of(script)
        # Clean: the workers ran their lifespan shutdown (no SIGKILL), nothing is left,
        # and the port is free as soon as the parent has exited.
        assert sorted(p.name for p in markers.iterdir()) == sorted(f"{w}.down" for w in workers)
        assert not still_running(snapshot)
        assert port_is_free(port)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        for info in still_running(snapshot):  # only reached when the test failed
            with contextlib.suppress(ProcessLookupError):
                os.kill(info.pid, signal.SIGKILL)
