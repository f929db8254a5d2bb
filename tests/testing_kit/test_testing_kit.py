"""The testing kit (taskapp.testing): its fixtures, contract assertion, helpers and plugin
registration, used the way task-app and plugin authors use them."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskapp import InProcessTaskApp, TaskAppConfig
from taskapp.core.backends import Tunnel, TunnelBackend, TunnelContext
from taskapp.core.errors import LifecycleError, UnknownBackendError
from taskapp.core.plugins import get_registry
from taskapp.testing import (
    AsyncTaskAppFactory,
    LeakCheck,
    TaskAppFactory,
    assert_released,
    assert_task_app_contract,
    check_task_app_contract,
    free_port,
    port_is_free,
    registered_plugin,
    wait_until,
)
from tests.helpers import demo_config, run_child, start_child

REPO = Path(__file__).resolve().parents[2]
KEY = "kit-test-key-0123456789abcdef"


def health(app: InProcessTaskApp) -> int:
    response = httpx.get(
        f"{app.url}/health", headers={"X-API-Key": app.api_key}, timeout=10, trust_env=False
    )
    return response.status_code


# -- the plugin --------------------------------------------------------------------------


def test_registered_as_a_pytest11_entry_point() -> None:
    found = [
        ep
        for ep in importlib.metadata.entry_points(group="pytest11")
        if ep.name == "taskapp.testing"
    ]
    assert [ep.value for ep in found] == ["taskapp.testing"]
    assert found[0].dist is not None and found[0].dist.name == "taskapp"


def test_import_taskapp_imports_neither_the_kit_nor_pytest() -> None:
    code = (
        "import sys, taskapp\n"
        "print(sorted(m for m in sys.modules if m == 'pytest' or m.startswith('taskapp.testing')))\n"
    )
    out = run_child(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.strip() == "[]"


def test_loading_the_plugin_is_cheap() -> None:
    # Active in every pytest run where taskapp is installed: it must not import the web stack.
    code = (
        "import sys, taskapp.testing\n"
        "heavy = [m for m in ('fastapi', 'uvicorn', 'httpx', 'starlette') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = run_child(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.strip() == "[]"


# -- taskapp_factory ---------------------------------------------------------------------


def test_factory_starts_an_app_on_a_free_port(taskapp_factory: TaskAppFactory) -> None:
    app = taskapp_factory(config=demo_config(), api_key=KEY)
    assert app.running
    assert app.port != 8114
    assert health(app) == 200
    second = taskapp_factory(config=demo_config(), api_key=KEY)
    assert second.port != app.port
    assert health(second) == 200


def test_factory_teardown_stops_and_releases() -> None:
    factory = TaskAppFactory()
    app = factory(config=demo_config(), api_key=KEY)
    port = app.port
    factory.close()
    assert not app.running
    assert port_is_free(port)
    assert not [t for t in threading.enumerate() if t.name.startswith("taskapp-uvicorn")]


def test_factory_teardown_fails_on_leftovers() -> None:
    # An app whose stop() does nothing (a broken server) is reported by the teardown.
    factory = TaskAppFactory(leak_timeout=0.3)
    app = factory(config=demo_config(), api_key=KEY)
    real_stop = app.stop
    app.stop = lambda: None  # type: ignore[method-assign]
    try:
        with pytest.raises(AssertionError) as caught:
            factory.close()
        message = str(caught.value)
        assert f"port {app.port}" in message
        assert "still in use" in message
        assert "taskapp-" in message  # the server thread is named
    finally:
        real_stop()
    assert_released(app.port)


def test_factory_refuses_to_block_a_running_loop() -> None:
    import asyncio

    async def main() -> None:
        with pytest.raises(LifecycleError, match="taskapp_factory_async"):
            TaskAppFactory()(config=demo_config())

    asyncio.run(main())


def test_factory_create_returns_an_unstarted_app(taskapp_factory: TaskAppFactory) -> None:
    app = taskapp_factory.create(config=demo_config(), api_key=KEY)
    assert not app.running
    with app:
        assert health(app) == 200


@pytest.mark.asyncio
async def test_async_factory_with_pytest_asyncio(
    taskapp_factory_async: AsyncTaskAppFactory,
) -> None:
    app = await taskapp_factory_async(config=demo_config(), api_key=KEY)
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.get(f"{app.url}/health", headers={"X-API-Key": KEY})
    assert response.status_code == 200
    report = await __import__("taskapp").acheck(app.url, api_key=KEY, seeds=[0])
    assert report.ok, report.format()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_async_factory_with_anyio(taskapp_factory_async: AsyncTaskAppFactory) -> None:
    app = await taskapp_factory_async(config=demo_config(), api_key=KEY)
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.get(f"{app.url}/info", headers={"X-API-Key": KEY})
    assert response.status_code == 200
    await taskapp_factory_async.aclose()
    assert not app.running
    assert port_is_free(app.port)


@pytest.fixture(scope="module")
def shared_app(taskapp_factory_module: TaskAppFactory) -> InProcessTaskApp:
    """One app for the tests of this module (started once, stopped after the last)."""
    return taskapp_factory_module(config=demo_config(), api_key=KEY)


_seen: list[InProcessTaskApp] = []


def test_module_factory_shares_one_app(shared_app: InProcessTaskApp) -> None:
    _seen.append(shared_app)
    assert health(shared_app) == 200


def test_module_factory_shares_one_app_again(
    shared_app: InProcessTaskApp, taskapp_factory_module: TaskAppFactory
) -> None:
    assert _seen == [shared_app]
    assert taskapp_factory_module.apps == [shared_app]
    assert health(shared_app) == 200


# -- the contract assertion --------------------------------------------------------------


def test_contract_passes_for_a_good_app(taskapp_factory: TaskAppFactory) -> None:
    app = taskapp_factory(config=demo_config(), api_key=KEY)
    report = assert_task_app_contract(app, seeds=[0, 1])
    names = [check.name for check in report.checks]
    assert names == [
        "GET /",
        "GET /health",
        "GET /health without key",
        "GET /info",
        "GET /task_info",
        "GET /metadata",
        "POST /rollout seed 0",
        "POST /rollout seed 1",
        "error envelope",
        "key not echoed",
    ]
    # by URL, with the key given explicitly: the same engine, the same answer
    assert check_task_app_contract(app.url, api_key=KEY).ok


def _leaky_config() -> TaskAppConfig:
    async def rollout(request: Any, http_request: Any) -> dict[str, Any]:
        # echoes the caller's key back: a secret in a rollout answer
        return {
            "run_id": request.run_id,
            "metrics": {
                "outcome_score": 1.0,
                "details": {"auth": http_request.headers.get("x-api-key")},
            },
        }

    return demo_config(rollout=rollout)


def test_contract_inspects_rollout_answers_for_an_echoed_key(
    taskapp_factory: TaskAppFactory,
) -> None:
    app = taskapp_factory(config=_leaky_config(), api_key=KEY)
    report = check_task_app_contract(app, seeds=[0])
    failed = {check.name: check.detail for check in report.failures}
    assert list(failed) == ["key not echoed"], report.format()
    assert "/rollout" in failed["key not echoed"]
    assert KEY not in report.format()  # the report itself shows a fingerprint only
    # without a rollout nothing echoes it
    assert check_task_app_contract(app).ok


def _broken_app() -> Any:
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    app = FastAPI()

    @app.get("/")
    def root() -> dict[str, str]:
        return {"status": "ok", "service": "broken"}

    @app.get("/health")
    def health() -> dict[str, bool]:
        return {"healthy": True}  # no key required

    @app.get("/info")
    def info() -> dict[str, str]:
        return {"name": "no service object"}

    @app.get("/task_info")
    def task_info() -> PlainTextResponse:
        return PlainTextResponse("not json")

    @app.post("/rollout")
    def rollout() -> dict[str, Any]:
        return {"metrics": {}}

    return app


def test_contract_assertion_lists_every_violation(taskapp_factory: TaskAppFactory) -> None:
    app = taskapp_factory(app=_broken_app(), api_key=KEY)
    with pytest.raises(AssertionError) as caught:
        assert_task_app_contract(app, seeds=[3])
    message = str(caught.value)
    first, *rest = message.splitlines()
    assert first == f"the task app at {app.url} breaks the contract (5 of 8 checks failed):"
    listed = [line for line in rest if line.startswith("  - ")]
    assert [line.split(":")[0] for line in listed] == [
        "  - GET /health without key",
        "  - GET /info",
        "  - GET /task_info",
        "  - POST /rollout seed 3",
        "  - error envelope",
    ]
    assert "answered 200 without a key" in message
    assert "without a 'service' object" in message
    assert "no score" in message
    assert "full report:" in message and "FAIL" in message
    assert KEY not in message


def test_contract_against_nothing_listening() -> None:
    with pytest.raises(AssertionError) as caught:
        assert_task_app_contract(f"127.0.0.1:{free_port()}", api_key=KEY)
    assert "1 of 1 checks failed" in str(caught.value)
    assert "GET /" in str(caught.value)


def test_contract_refuses_a_stopped_app() -> None:
    app = InProcessTaskApp(config=demo_config(), port=free_port())
    with pytest.raises(ValueError, match="not running"):
        check_task_app_contract(app)


# -- helpers -----------------------------------------------------------------------------


class _EchoTunnel(TunnelBackend):
    name = "kit-echo"

    @dataclasses.dataclass(frozen=True)
    class Options:
        prefix: str = "http://"

    def open(self, ctx: TunnelContext) -> Tunnel:
        return Tunnel(url=f"{self.options.prefix}127.0.0.1:{ctx.port}")


def test_registered_plugin_is_there_only_inside_the_block() -> None:
    plugin = types.SimpleNamespace()

    def register_tunnels(register: Any) -> None:
        register(_EchoTunnel)

    plugin.register_tunnels = __import__("taskapp").hookimpl(register_tunnels)
    with registered_plugin(plugin, "kit-echo-plugin"):
        assert get_registry().tunnel("kit-echo") is _EchoTunnel
        with pytest.raises(ValueError, match="already registered"):
            with registered_plugin(plugin, "kit-echo-plugin"):
                pass
        with InProcessTaskApp(
            config=demo_config(), tunnel_mode="kit-echo", port=free_port()
        ) as app:
            assert health(app) == 200
    with pytest.raises(UnknownBackendError, match="kit-echo"):
        get_registry().tunnel("kit-echo")


def test_registered_plugin_unregisters_after_an_exception() -> None:
    plugin = types.SimpleNamespace()
    with pytest.raises(RuntimeError, match="boom"):
        with registered_plugin(plugin, "kit-boom"):
            raise RuntimeError("boom")
    assert not get_registry().pm.has_plugin("kit-boom")


def test_free_port_and_assert_released() -> None:
    port = free_port()
    assert port_is_free(port)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen(1)
        assert not port_is_free(port)
        started = time.monotonic()
        with pytest.raises(AssertionError, match=f"port {port} on 127.0.0.1 is still in use"):
            assert_released(port, timeout=0.3)
        assert time.monotonic() - started < 3
    assert_released(port)


def test_wait_until() -> None:
    hits: list[int] = []

    def third_call() -> bool:
        hits.append(1)
        return len(hits) >= 3

    assert wait_until(third_call, 5)
    started = time.monotonic()
    assert not wait_until(lambda: False, 0.2)
    assert 0.15 < time.monotonic() - started < 2


def test_leak_check_names_threads_and_children() -> None:
    leaks = LeakCheck.snapshot()
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="my-worker", daemon=True)
    thread.start()
    child = start_child([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        problems = leaks.problems()
        assert "thread 'my-worker' still running" in problems
        assert any(f"child process {child.pid} (" in p for p in problems), problems
        with pytest.raises(AssertionError, match="my-worker"):
            leaks.assert_clean(timeout=0.2)
    finally:
        stop.set()
        child.kill()
        child.wait()
        thread.join()
    leaks.assert_clean(timeout=2)


def test_leak_check_fixture_is_opt_in(tmp_path: Path) -> None:
    test = tmp_path / "test_leaky.py"
    test.write_text(
        "import threading\n"
        "stop = threading.Event()\n"
        "def test_without_check():\n"
        "    threading.Thread(target=stop.wait, name='left-a', daemon=True).start()\n"
        "def test_with_check(taskapp_leak_check):\n"
        "    taskapp_leak_check.timeout = 0.3\n"
        "    threading.Thread(target=stop.wait, name='left-b', daemon=True).start()\n"
    )
    result = run_child(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 1, result.stdout
    assert "2 passed, 1 error" in result.stdout, result.stdout
    assert "ERROR test_leaky.py::test_with_check" in result.stdout
    assert "left running after 0.3 s: thread 'left-b' still running" in result.stdout
    assert "thread 'left-a'" not in result.stdout


# -- the documentation's examples run ----------------------------------------------------


def test_docs_examples_pass(tmp_path: Path) -> None:
    examples = REPO / "docs" / "examples" / "testing"
    result = run_child(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(examples)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert "failed" not in summary and "error" not in summary, summary
    counts = json.dumps(summary)
    assert "passed" in counts
