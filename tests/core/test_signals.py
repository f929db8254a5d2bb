"""Signals are chained, not swallowed; nothing is installed at import."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx

import taskapp
from taskapp import InProcessTaskApp
from tests.helpers import (
    demo_config,
    minimal_app,
    port_is_free,
    read_line_with,
    run_child,
    run_script,
    start_script,
    wait_until,
)

CHILD = """
import signal, sys, time
sys.path.insert(0, {repo!r})
from taskapp import InProcessTaskApp
from tests.helpers import demo_config

{prelude}

def on_stop(task_app):
    print("on_stop ran", flush=True)

task_app = InProcessTaskApp(config=demo_config(), port={port}, on_stop=on_stop)
with task_app:
    print("URL", task_app.url, flush=True)
    while True:
        time.sleep(0.05)
"""

REPO = str(Path(__file__).resolve().parents[2])


def _child(tmp_path: Path, port: int, prelude: str = "") -> tuple[subprocess.Popen[str], str]:
    proc = start_script(CHILD.format(repo=REPO, port=port, prelude=prelude), tmp_path)
    url = read_line_with(proc, "URL ")
    return proc, url


def _assert_health(url: str) -> None:
    assert httpx.get(f"{url}/", timeout=5).status_code == 200


def test_sigterm_cleans_up_then_dies_by_sigterm(tmp_path: Path, port: int) -> None:
    proc, url = _child(tmp_path, port)
    _assert_health(url)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGTERM
    assert "on_stop ran" in out
    assert port_is_free(port)


def test_sigint_cleans_up_then_raises_keyboardinterrupt(tmp_path: Path, port: int) -> None:
    proc, url = _child(tmp_path, port)
    _assert_health(url)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert "on_stop ran" in out
    assert "KeyboardInterrupt" in err
    assert proc.returncode in (-signal.SIGINT, 1, 130)
    assert out.count("on_stop ran") == 1, "cleanup must run once, not again on exit"
    assert port_is_free(port)


def test_host_handler_is_still_called(tmp_path: Path, port: int) -> None:
    prelude = """
def host_handler(signum, frame):
    print("host handler called", flush=True)
    sys.exit(7)
signal.signal(signal.SIGTERM, host_handler)
"""
    proc, url = _child(tmp_path, port, prelude)
    _assert_health(url)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert out.index("on_stop ran") < out.index("host handler called")
    assert proc.returncode == 7
    assert port_is_free(port)


def test_ignored_signal_stays_ignored(tmp_path: Path, port: int) -> None:
    prelude = "signal.signal(signal.SIGTERM, signal.SIG_IGN)"
    proc, _ = _child(tmp_path, port, prelude)
    proc.send_signal(signal.SIGTERM)
    # The task app is cleaned up but the process lives on, as the host asked.
    assert wait_until(lambda: port_is_free(port), timeout=10)
    assert proc.poll() is None
    proc.kill()
    proc.communicate(timeout=10)


def test_handlers_installed_while_active_and_restored_after(port: int) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with InProcessTaskApp(app=minimal_app(), port=port):
        during = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        assert during != before
    after = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    assert after == before


def test_nested_instances_restore_only_when_last_exits(port: int) -> None:
    from tests.helpers import free_port

    before = signal.getsignal(signal.SIGTERM)
    with InProcessTaskApp(app=minimal_app(), port=port):
        inner = InProcessTaskApp(app=minimal_app(), port=free_port())
        with inner:
            pass
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


def test_off_main_thread_installs_nothing_and_works(port: int) -> None:
    before = signal.getsignal(signal.SIGTERM)
    seen: list[object] = []

    def worker() -> None:
        with InProcessTaskApp(config=demo_config(), port=port) as task_app:
            seen.append(signal.getsignal(signal.SIGTERM))
            seen.append(
                httpx.get(
                    f"{task_app.url}/health", headers={"X-API-Key": task_app.api_key}
                ).status_code
            )

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(30)
    assert seen == [before, 200]


def test_import_changes_nothing_global() -> None:
    result = run_script(
        """
        import os, signal, sys, threading, logging
        before = ({s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)},
                  dict(os.environ), list(sys.path), threading.active_count(),
                  list(logging.getLogger().handlers))
        import taskapp
        from taskapp import InProcessTaskApp, TaskAppConfig, hookimpl
        after = ({s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)},
                 dict(os.environ), list(sys.path), threading.active_count(),
                 list(logging.getLogger().handlers))
        assert before == after, (before, after)
        heavy = sorted(m for m in ("fastapi", "uvicorn", "starlette", "httpx", "pydantic")
                       if m in sys.modules)
        assert not heavy, heavy
        import taskapp.core.plugins as plugins
        assert plugins._registry is None, "plugins must load lazily"
        print("clean")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"


def test_python_dash_m_taskapp_works() -> None:
    result = run_child(
        [sys.executable, "-m", "taskapp", "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"taskapp {taskapp.__version__}"


ASYNC_CHILD = """
import asyncio, sys
sys.path.insert(0, {repo!r})
from taskapp import InProcessTaskApp
from tests.helpers import demo_config

async def main():
    async with InProcessTaskApp(config=demo_config(), port={port},
                                on_stop=lambda ta: print("on_stop ran", flush=True)) as ta:
        print("URL", ta.url, flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_sigint_under_asyncio_run(tmp_path: Path, port: int) -> None:
    proc = start_script(ASYNC_CHILD.format(repo=REPO, port=port), tmp_path)
    url = read_line_with(proc, "URL ")
    _assert_health(url)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert out.count("on_stop ran") == 1
    assert "KeyboardInterrupt" in err
    assert port_is_free(port)


START_CHILD = """
import asyncio, signal, sys, time
sys.path.insert(0, {repo!r})
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from taskapp import InProcessTaskApp

{prelude}

app = FastAPI()
polled = []

@app.get("/health")
def health():
    if not polled:
        polled.append(True)
        print("health polled", flush=True)
    return JSONResponse({{"healthy": False}}, status_code=503)  # the start keeps waiting

task_app = InProcessTaskApp(app=app, port={port}, health_check_timeout=60)

async def enter_async():
    async with task_app:
        print("body ran", flush=True)

try:
    if {use_async!r}:
        asyncio.run(enter_async())
    else:
        with task_app:
            print("body ran", flush=True)
except Exception as exc:
    print("raised", type(exc).__name__, exc, flush=True)
"""


def _start_child(tmp_path: Path, port: int, prelude: str, use_async: bool) -> subprocess.Popen[str]:
    code = START_CHILD.format(repo=REPO, port=port, prelude=prelude, use_async=use_async)
    proc = start_script(code, tmp_path)
    read_line_with(proc, "health polled")  # the start is now waiting in its health check
    return proc


def _signal_and_collect(proc: subprocess.Popen[str], signum: int) -> tuple[str, str]:
    """Send ``signum``; the child must end within 15 s (its health timeout is 60 s)."""
    proc.send_signal(signum)
    try:
        return proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:  # only when the test failed
            proc.kill()
            proc.communicate(timeout=10)


def test_sigterm_ignored_by_the_host_interrupts_a_start(tmp_path: Path, port: int) -> None:
    # The host ignores SIGTERM, so the process lives on; the start must not run on half
    # torn down until its 60 s health timeout, but give up at once with a typed error.
    proc = _start_child(tmp_path, port, "signal.signal(signal.SIGTERM, signal.SIG_IGN)", False)
    out, err = _signal_and_collect(proc, signal.SIGTERM)
    assert "raised StartInterruptedError" in out, err
    assert "interrupted by SIGTERM" in out
    assert "body ran" not in out
    assert proc.returncode == 0
    assert port_is_free(port)


def test_sigint_during_an_async_start_stops_it_at_once(tmp_path: Path, port: int) -> None:
    proc = _start_child(tmp_path, port, "", True)
    out, err = _signal_and_collect(proc, signal.SIGINT)
    assert "KeyboardInterrupt" in err
    assert "body ran" not in out
    assert port_is_free(port)


def test_sigterm_ignored_during_an_async_start_raises_in_async_with(
    tmp_path: Path, port: int
) -> None:
    proc = _start_child(tmp_path, port, "signal.signal(signal.SIGTERM, signal.SIG_IGN)", True)
    out, err = _signal_and_collect(proc, signal.SIGTERM)
    assert "raised StartInterruptedError" in out, err
    assert "body ran" not in out
    assert port_is_free(port)
