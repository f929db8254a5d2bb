"""InProcessTaskApp end to end: every input method, ports, failures, callbacks, async/sync."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from fastapi import Request

from taskapp import (
    ApiKeyRejectedError,
    AppLoadError,
    HealthCheckError,
    InProcessTaskApp,
    LifecycleError,
    PortError,
    ServerStartError,
    TaskAppConfig,
    Tunnel,
    TunnelBackend,
    TunnelContext,
    TunnelVerificationError,
    create_task_app,
    hookimpl,
)
from taskapp.core.plugins import get_registry
from taskapp.plugins.servers.thread import ThreadServer
from tests.helpers import (
    assert_released,
    demo_config,
    free_port,
    minimal_app,
    port_is_free,
    start_child,
    taskapp_threads,
)

KEY = "test-key-0123456789"


def get(url: str, key: str = KEY) -> httpx.Response:
    return httpx.get(url, headers={"X-API-Key": key}, timeout=10)


# -- every input method, end to end through task_app.url ------------------------------


def test_app_object(port: int) -> None:
    with InProcessTaskApp(app=minimal_app(key=KEY), port=port, api_key=KEY) as task_app:
        assert task_app.url == f"http://127.0.0.1:{port}"
        assert get(task_app.url + "/health").json() == {"healthy": True}
    assert_released(port)


def test_config_object_gets_instance_key_without_environment(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ENVIRONMENT_API_KEY", raising=False)
    with InProcessTaskApp(config=demo_config(), port=port) as task_app:
        assert "ENVIRONMENT_API_KEY" not in os.environ
        assert task_app.url is not None
        assert get(task_app.url + "/health", task_app.api_key).status_code == 200
        assert get(task_app.url + "/health", "wrong-key-000000").status_code == 401
        response = httpx.post(
            task_app.url + "/rollout",
            headers={"Authorization": f"Bearer {task_app.api_key}"},
            json={"run_id": "r1", "env": {"seed": 2}},
        )
        assert response.json()["metrics"]["outcome_score"] == 1.0
    assert_released(port)


def test_config_factory_returning_config(port: int) -> None:
    with InProcessTaskApp(config_factory=demo_config, port=port, api_key=KEY) as task_app:
        assert get(f"{task_app.url}/task_info").json() == {
            "taskset": {"splits": {"train": 4, "test": 2}}
        }


def test_config_factory_returning_app(port: int) -> None:
    with InProcessTaskApp(
        config_factory=lambda: minimal_app(key=KEY), port=port, api_key=KEY
    ) as task_app:
        assert get(f"{task_app.url}/health").status_code == 200


def test_prebuilt_task_app_receives_instance_key(port: int) -> None:
    app = create_task_app(demo_config(), api_keys=["other-key-abcdef"])
    with InProcessTaskApp(app=app, port=port, api_key=KEY) as task_app:
        assert get(f"{task_app.url}/health", KEY).status_code == 200
        assert get(f"{task_app.url}/health", "other-key-abcdef").status_code == 200


APP_FILE = """
from taskapp import TaskAppConfig
import helper_module  # a sibling file: the path loader makes siblings importable

def build_config():
    return TaskAppConfig(
        app_id="from-path", name="From path", description=helper_module.DESCRIPTION,
        describe_taskset=lambda: {"splits": {"all": 1}},
        provide_task_instances=lambda seeds: [],
        rollout=lambda request, http_request: {
            "run_id": request.run_id, "metrics": {"outcome_score": 0.5}},
    )
"""


def test_path_with_build_config_and_sibling_import(tmp_path: Path, port: int) -> None:
    (tmp_path / "my_task_app.py").write_text(APP_FILE)
    (tmp_path / "helper_module.py").write_text("DESCRIPTION = 'loaded from a sibling'\n")
    before = list(sys.path)
    with InProcessTaskApp(task_app_path=tmp_path / "my_task_app.py", port=port) as task_app:
        info = get(f"{task_app.url}/info", task_app.api_key).json()
        assert info["service"]["description"] == "loaded from a sibling"
        assert task_app.loaded is not None
        assert task_app.loaded.target == str((tmp_path / "my_task_app.py").resolve())
    assert sys.path == before, "the path loader must not change sys.path permanently"
    sys.modules.pop("helper_module", None)


def test_path_with_app_attribute(tmp_path: Path, port: int) -> None:
    path = tmp_path / "plain.py"
    path.write_text(
        "from fastapi import FastAPI\napp = FastAPI()\n"
        "@app.get('/health')\ndef health():\n    return {'ok': True}\n"
    )
    with InProcessTaskApp(task_app_path=path, port=port) as task_app:
        assert httpx.get(f"{task_app.url}/health").json() == {"ok": True}


def test_path_with_factory(tmp_path: Path, port: int) -> None:
    path = tmp_path / "factory_app.py"
    path.write_text(
        "from fastapi import FastAPI\n"
        "def create_app():\n    app = FastAPI()\n"
        "    app.get('/health')(lambda: {'factory': True})\n    return app\n"
    )
    with InProcessTaskApp(task_app_path=path, port=port) as task_app:
        assert httpx.get(f"{task_app.url}/health").json() == {"factory": True}


def test_import_string(tmp_path: Path, port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "importable_app_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "main.py").write_text(
        textwrap.dedent(
            """
            from tests.helpers import demo_config
            config = demo_config(app_id="imported")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with InProcessTaskApp(app="importable_app_pkg.main:config", port=port) as task_app:
        assert httpx.get(f"{task_app.url}/").json() == {"status": "ok", "service": "imported"}
        assert task_app.loaded is not None
        assert task_app.loaded.target == "importable_app_pkg.main:config"


# -- loader errors ----------------------------------------------------------------------


def test_user_import_error_is_chained_with_traceback(tmp_path: Path, port: int) -> None:
    path = tmp_path / "broken.py"
    path.write_text("import definitely_not_a_module_xyz\n")
    with pytest.raises(
        AppLoadError, match="executing .*broken.py failed: ModuleNotFoundError"
    ) as info:
        InProcessTaskApp(task_app_path=path, port=port).start()
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    assert_released(port)


def test_user_syntax_error_is_chained(tmp_path: Path, port: int) -> None:
    path = tmp_path / "syntax.py"
    path.write_text("def broken(:\n")
    with pytest.raises(AppLoadError, match="SyntaxError") as info:
        InProcessTaskApp(task_app_path=path, port=port).start()
    assert isinstance(info.value.__cause__, SyntaxError)
    assert_released(port)


def test_file_without_app_says_what_was_looked_for(tmp_path: Path, port: int) -> None:
    path = tmp_path / "empty.py"
    path.write_text("x = 1\n")
    with pytest.raises(AppLoadError, match=r"found no task app .*build_config"):
        InProcessTaskApp(task_app_path=path, port=port).start()
    assert_released(port)


def test_import_string_missing_module(port: int) -> None:
    with pytest.raises(AppLoadError, match="no such module"):
        InProcessTaskApp(app="no_such_pkg_abc.mod:app", port=port).start()


def test_import_string_missing_attribute(port: int) -> None:
    with pytest.raises(AppLoadError, match="has no attribute 'nope'"):
        InProcessTaskApp(app="tests.helpers:nope", port=port).start()


def test_import_string_shape(port: int) -> None:
    with pytest.raises(ValueError, match="must look like"):
        InProcessTaskApp(app="just_a_module", port=port).start()


def test_factory_raising(port: int) -> None:
    def factory() -> Any:
        raise RuntimeError("factory exploded")

    with pytest.raises(AppLoadError, match="factory exploded") as info:
        InProcessTaskApp(config_factory=factory, port=port).start()
    assert isinstance(info.value.__cause__, RuntimeError)


def test_app_that_is_not_an_app(port: int) -> None:
    with pytest.raises(AppLoadError, match="neither an ASGI app"):
        InProcessTaskApp(app=object(), port=port).start()


# -- ports ------------------------------------------------------------------------------


def test_busy_port_auto_found(port: int, caplog: pytest.LogCaptureFixture) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    try:
        with caplog.at_level(logging.WARNING, logger="taskapp"):
            with InProcessTaskApp(app=minimal_app(), port=port) as task_app:
                assert task_app.port != port
                assert task_app.port > port
                assert task_app.url == f"http://127.0.0.1:{task_app.port}"
                assert httpx.get(f"{task_app.url}/health").status_code == 200
                found = task_app.port
        assert f"port {port} is in use; using port {found}" in caplog.text
    finally:
        blocker.close()
    assert_released(found)


LISTENER_CHILD = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
print("listening", flush=True)
while True:
    time.sleep(1)
"""


def test_listener_in_child_is_asked_to_stop(port: int, caplog: pytest.LogCaptureFixture) -> None:
    child = start_child(
        [sys.executable, "-c", LISTENER_CHILD, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "listening"
        # A client connected to the port must not be touched.
        client = socket.create_connection(("127.0.0.1", port))
        with caplog.at_level(logging.WARNING, logger="taskapp"):
            with InProcessTaskApp(app=minimal_app(), port=port, auto_find_port=False) as ta:
                assert ta.port == port
                assert httpx.get(f"{ta.url}/health").status_code == 200
        assert child.wait(timeout=5) == -signal.SIGTERM
        assert "asking it to stop (SIGTERM)" in caplog.text
        assert f"pid {child.pid}" in caplog.text
        client.close()
    finally:
        child.kill()
        child.wait()
    assert_released(port)


def test_port_held_by_this_process_is_an_error_not_a_suicide(port: int) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen()
    try:
        with pytest.raises(PortError, match=f"in use by this very process \\(pid {os.getpid()}\\)"):
            InProcessTaskApp(app=minimal_app(), port=port, auto_find_port=False).start()
        assert isinstance(PortError("x"), RuntimeError)
    finally:
        holder.close()


# -- startup failures leave nothing behind ---------------------------------------------


def lifespan_crash_app() -> Any:
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        raise RuntimeError("database unreachable")
        yield

    return FastAPI(lifespan=lifespan)


def test_lifespan_crash_fails_at_once_with_original_exception(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        with pytest.raises(ServerStartError, match="database unreachable") as info:
            InProcessTaskApp(app=lifespan_crash_app(), port=port, health_check_timeout=30).start()
    assert time.monotonic() - started < 5, "must not wait for the health timeout"
    assert isinstance(info.value.__cause__, RuntimeError)
    # The server thread ends cleanly: no second exception while asyncio winds it down.
    asyncio_errors = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert asyncio_errors == [], asyncio_errors
    assert_released(port)


def test_wrong_key_reported_as_wrong_key(port: int) -> None:
    started = time.monotonic()
    with pytest.raises(ApiKeyRejectedError, match=r"rejected the API key .*HTTP 401"):
        InProcessTaskApp(app=minimal_app(key="the-right-key-1"), port=port, api_key=KEY).start()
    assert time.monotonic() - started < 5
    assert_released(port)


def test_health_only_200_counts(port: int) -> None:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()
    app.get("/health")(lambda: JSONResponse({"healthy": False}, status_code=400))
    started = time.monotonic()
    with pytest.raises(HealthCheckError, match=r"did not answer 200 .*last result: HTTP 400"):
        InProcessTaskApp(app=app, port=port, health_check_timeout=1.0).start()
    assert 0.9 < time.monotonic() - started < 5
    assert_released(port)


def test_health_timeout_reports_the_last_answer_before_a_late_timeout(port: int) -> None:
    # The last try's timeout shrinks to what is left of the budget; when it runs out, the
    # message still names the answer the app gave (here 400), not only "timeout".
    import asyncio

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    calls = {"n": 0}
    app = FastAPI()

    @app.get("/health")
    async def health() -> JSONResponse:
        calls["n"] += 1
        if calls["n"] > 1:
            await asyncio.sleep(3)
        return JSONResponse({"healthy": False}, status_code=400)

    with pytest.raises(HealthCheckError, match=r"last result: HTTP 400, then .*timeout"):
        InProcessTaskApp(app=app, port=port, health_check_timeout=1.0).start()
    assert_released(port)


def test_health_timeout_names_url(port: int) -> None:
    from fastapi import FastAPI

    with pytest.raises(HealthCheckError, match=f"http://127.0.0.1:{port}/health.*HTTP 404"):
        InProcessTaskApp(app=FastAPI(), port=port, health_check_timeout=0.5).start()
    assert_released(port)


def test_tunnel_failure_releases_server(port: int) -> None:
    with pytest.raises(TunnelVerificationError, match="public URL of tunnel 'preconfigured'"):
        InProcessTaskApp(
            app=minimal_app(),
            port=port,
            tunnel_mode="preconfigured",
            preconfigured_url=f"http://127.0.0.1:{free_port()}",
            skip_tunnel_verification=False,
            health_check_timeout=0.5,
        ).start()
    assert_released(port)


def test_port_can_be_rebound_immediately_after_exit(port: int) -> None:
    for _ in range(3):
        with InProcessTaskApp(app=minimal_app(), port=port, auto_find_port=False) as task_app:
            assert task_app.port == port
            httpx.get(f"{task_app.url}/health")  # leaves a connection in TIME_WAIT
        assert port_is_free(port)


# -- preconfigured ---------------------------------------------------------------------


def test_preconfigured_verification_with_auth_header(port: int) -> None:
    from fastapi import FastAPI

    seen: list[dict[str, str]] = []
    proxy_port = free_port()
    proxy = FastAPI()

    @proxy.get("/health")
    def health(request: Request) -> dict[str, bool]:
        seen.append(dict(request.headers))
        return {"healthy": True}

    with (
        InProcessTaskApp(app=proxy, port=proxy_port, api_key=KEY),
        InProcessTaskApp(
            app=minimal_app(),
            port=port,
            api_key=KEY,
            tunnel_mode="preconfigured",
            preconfigured_url=f"http://127.0.0.1:{proxy_port}/",
            preconfigured_auth_header="X-Proxy-Token",
            preconfigured_auth_token="proxy-token-123456",
            skip_tunnel_verification=False,
        ) as task_app,
    ):
        assert task_app.url == f"http://127.0.0.1:{proxy_port}"
        assert task_app.tunnel is not None
        assert task_app.tunnel.headers == {"X-Proxy-Token": "proxy-token-123456"}
    assert any(h.get("x-proxy-token") == "proxy-token-123456" for h in seen)
    assert any(h.get("x-api-key") == KEY for h in seen)


def test_host_all_interfaces_url_uses_loopback(port: int) -> None:
    with InProcessTaskApp(app=minimal_app(), port=port, host="0.0.0.0") as task_app:
        assert task_app.url == f"http://127.0.0.1:{port}"
        assert httpx.get(f"{task_app.url}/health").status_code == 200


def test_ipv6_loopback(port: int) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("::1 not configured")
    with InProcessTaskApp(app=minimal_app(), port=port, host="::1") as task_app:
        assert task_app.url == f"http://[::1]:{port}"
        assert httpx.get(f"{task_app.url}/health").status_code == 200


# -- callbacks, body exceptions, async -------------------------------------------------


def test_callbacks_receive_the_instance(port: int) -> None:
    events: list[tuple[str, str | None]] = []
    with InProcessTaskApp(
        app=minimal_app(),
        port=port,
        on_start=lambda ta: events.append(("start", ta.url)),
        on_stop=lambda ta: events.append(("stop", ta.url)),
    ):
        assert events == [("start", f"http://127.0.0.1:{port}")]
    assert events[-1] == ("stop", f"http://127.0.0.1:{port}")


def test_callback_exceptions_are_logged_not_raised(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(_: Any) -> None:
        raise ValueError("callback failure")

    with caplog.at_level(logging.WARNING, logger="taskapp"):
        with InProcessTaskApp(app=minimal_app(), port=port, on_start=boom, on_stop=boom):
            pass
    assert caplog.text.count("callback raised; continuing") == 2
    assert_released(port)


def test_body_exception_cleans_up_and_propagates(port: int) -> None:
    stopped: list[bool] = []
    with pytest.raises(ZeroDivisionError):
        with InProcessTaskApp(app=minimal_app(), port=port, on_stop=lambda _: stopped.append(True)):
            1 / 0  # noqa: B018
    assert stopped == [True]
    assert_released(port)


def test_async_context_and_async_callbacks(port: int) -> None:
    events: list[str] = []

    async def on_start(task_app: InProcessTaskApp) -> None:
        await asyncio.sleep(0)
        events.append("start")

    async def main() -> None:
        async with InProcessTaskApp(config=demo_config(), port=port, on_start=on_start) as ta:
            async with httpx.AsyncClient() as client:
                response = await client.get(f"{ta.url}/health", headers={"X-API-Key": ta.api_key})
            assert response.status_code == 200
            events.append("body")

    asyncio.run(main())
    assert events == ["start", "body"]
    assert_released(port)


def test_sync_with_inside_event_loop_works_like_outside(port: int) -> None:
    # A Jupyter cell runs in the kernel's loop: the start runs on a helper thread.
    async def main() -> None:
        with InProcessTaskApp(app=minimal_app(), port=port) as task_app:
            assert task_app.running
            assert httpx.get(f"{task_app.url}/health").status_code == 200

    asyncio.run(main())
    assert port_is_free(port)


def test_async_failure_releases(port: int) -> None:
    async def main() -> None:
        with pytest.raises(ServerStartError):
            async with InProcessTaskApp(app=lifespan_crash_app(), port=port):
                pass

    asyncio.run(main())
    assert_released(port)


def test_reentering_after_exit_works(port: int) -> None:
    task_app = InProcessTaskApp(config=demo_config(), port=port)
    for _ in range(2):
        with task_app:
            assert get(f"{task_app.url}/health", task_app.api_key).status_code == 200
    assert_released(port)


def test_two_instances_side_by_side() -> None:
    with InProcessTaskApp(config=demo_config(), port=free_port()) as a:
        with InProcessTaskApp(config=demo_config(app_id="b"), port=free_port()) as b:
            assert a.url != b.url
            assert httpx.get(f"{b.url}/").json()["service"] == "b"


def test_stop_is_bounded_with_a_hanging_request(port: int) -> None:
    import threading

    from fastapi import FastAPI

    app = FastAPI()
    app.get("/health")(lambda: {"ok": True})
    arrived = threading.Event()

    @app.get("/hang")
    async def hang() -> None:
        arrived.set()
        await asyncio.sleep(3600)

    task_app = InProcessTaskApp(
        app=app, port=port, server_options={"graceful_timeout": 0.5}
    ).start()
    outcome: list[str] = []

    def call() -> None:
        try:
            httpx.get(f"{task_app.url}/hang", timeout=30)
            outcome.append("answered")
        except httpx.HTTPError as exc:
            outcome.append(type(exc).__name__)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    # The request is in the handler (a fixed sleep here was flaky on a busy machine).
    assert arrived.wait(10)
    started = time.monotonic()
    task_app.stop()
    assert time.monotonic() - started < 3
    thread.join(5)
    assert outcome == ["RemoteProtocolError"], "the hanging request is cut, not answered"
    assert_released(port)


def test_idle_exit_is_fast(port: int) -> None:
    task_app = InProcessTaskApp(app=minimal_app(), port=port).start()
    httpx.get(f"{task_app.url}/health")
    started = time.perf_counter()
    task_app.stop()
    assert time.perf_counter() - started < 0.1
    assert_released(port)


def test_logging_shows_fingerprint_not_key(port: int, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="taskapp"):
        with InProcessTaskApp(app=minimal_app(), port=port, api_key="visible-if-leaked-42"):
            pass
    assert "visible-if-leaked-42" not in caplog.text
    assert "task app ready at" in caplog.text
    assert "sha256:" in caplog.text


def test_taskappconfig_validates() -> None:
    with pytest.raises(ValueError, match="app_id"):
        TaskAppConfig(
            app_id="",
            name="x",
            description="x",
            describe_taskset=dict,
            provide_task_instances=list,
            rollout=print,
        )


# -- cancellation and interruption of start and stop -----------------------------------


def never_healthy_app() -> Any:
    """Serves, but /health answers 503 forever: the start waits in its health check."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()
    app.get("/health")(lambda: JSONResponse({"healthy": False}, status_code=503))
    return app


def test_timeout_around_async_with_interrupts_the_start(port: int) -> None:
    before = signal.getsignal(signal.SIGINT)

    async def main() -> float:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(_enter_and_wait(port), timeout=0.5)
        return time.monotonic() - started

    elapsed = asyncio.run(main())
    assert elapsed < 5, f"the cancelled start ran on for {elapsed:.1f}s"
    assert_released(port)
    assert signal.getsignal(signal.SIGINT) is before


def test_repeated_cancellation_still_undoes_the_start(port: int) -> None:
    async def main() -> None:
        task = asyncio.ensure_future(_enter_and_wait(port))
        await asyncio.sleep(0.3)
        for _ in range(3):  # a second and third cancel while the undo is running
            task.cancel()
            await asyncio.sleep(0.01)
        with pytest.raises(asyncio.CancelledError):
            await task
        # Nothing is left at the moment the cancelled task is done.
        assert port_is_free(port)

    asyncio.run(main())
    assert_released(port)


async def _enter_and_wait(port: int) -> None:
    async with InProcessTaskApp(app=never_healthy_app(), port=port, health_check_timeout=30):
        pytest.fail("the body must not run")


def test_cancelled_exit_still_stops_completely(port: int) -> None:
    def slow_on_stop(_: InProcessTaskApp) -> None:
        time.sleep(0.5)

    async def run() -> None:
        async with asyncio.timeout(None) as timeout:
            async with InProcessTaskApp(app=minimal_app(), port=port, on_stop=slow_on_stop):
                # Expires while leaving the block, inside the 0.5 s on_stop.
                timeout.reschedule(asyncio.get_running_loop().time() + 0.2)

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await run()
        # The timeout fired during the stop, yet leaving the block waited for it to end.
        assert port_is_free(port)
        assert not [t for t in taskapp_threads() if "uvicorn" in t.name]

    asyncio.run(main())


class _InterruptedCloseTunnel(TunnelBackend):
    """Stand-in for a second Ctrl-C arriving while the tunnel closes."""

    name = "interrupted-close-test"

    def open(self, ctx: TunnelContext) -> Tunnel:
        return Tunnel(url=ctx.local_url)

    def close(self) -> None:
        raise KeyboardInterrupt


class _InterruptedClosePlugin:
    @hookimpl
    def register_tunnels(self, register: Any) -> None:
        register(_InterruptedCloseTunnel)


def test_keyboard_interrupt_during_stop_still_releases_everything(port: int) -> None:
    registry = get_registry()
    registry.register(_InterruptedClosePlugin(), name="test-interrupted-close")
    try:
        task_app = InProcessTaskApp(
            app=minimal_app(), port=port, tunnel_backend="interrupted-close-test"
        ).start()
        with pytest.raises(KeyboardInterrupt):
            task_app.stop()
        # The server and the socket were still stopped before the interrupt went on.
        assert_released(port)
        assert not task_app.running
    finally:
        registry.unregister("test-interrupted-close")


def test_starting_a_running_instance_is_a_lifecycle_error(port: int) -> None:
    with InProcessTaskApp(app=minimal_app(), port=port) as task_app:
        with pytest.raises(LifecycleError, match="already running; leave its `with` block"):
            task_app.start()
        assert httpx.get(f"{task_app.url}/health").status_code == 200
    assert_released(port)


def test_config_app_accepts_instance_key_and_environment_aliases(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENVIRONMENT_API_KEY", "env-key-not-used-123")
    monkeypatch.setenv("ENVIRONMENT_API_KEY_ALIASES", "alias-key-one-111, alias-key-two-222")
    with InProcessTaskApp(config=demo_config(), port=port, api_key=KEY) as task_app:
        for key in (KEY, "alias-key-one-111", "alias-key-two-222"):
            assert get(f"{task_app.url}/health", key).status_code == 200, key
        # The explicit key replaced ENVIRONMENT_API_KEY; the aliases only add keys.
        assert get(f"{task_app.url}/health", "env-key-not-used-123").status_code == 401


STUBBORN_LISTENER = """
import signal, socket, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
print("listening", flush=True)
while True:
    time.sleep(1)
"""


def test_listener_ignoring_sigterm_gets_sigkill_after_the_grace(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    from taskapp.core.ports import bind_listener

    child = start_child(
        [sys.executable, "-c", STUBBORN_LISTENER, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "listening"
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="taskapp"):
            sock = bind_listener("127.0.0.1", port, auto_find_port=False, grace=0.3)
        elapsed = time.monotonic() - started
        sock.close()
        assert child.wait(timeout=5) == -signal.SIGKILL
        assert 0.3 <= elapsed < 5
        messages = caplog.text
        assert messages.index("asking it to stop (SIGTERM)") < messages.index("sending SIGKILL")
    finally:
        child.kill()
        child.wait()


def test_auto_find_port_is_bounded() -> None:
    from taskapp.core.ports import bind_listener

    # Three consecutive busy ports, searched with a window of two: a PortError, not a hang.
    for _ in range(20):
        base = free_port()
        held: list[socket.socket] = []
        try:
            for offset in range(3):
                blocker = socket.socket()
                held.append(blocker)
                blocker.bind(("127.0.0.1", base + offset))
                blocker.listen()
        except OSError:
            for blocker in held:
                blocker.close()
            continue
        try:
            with pytest.raises(PortError, match=rf"ports {base}-{base + 2} .* all in use"):
                bind_listener("127.0.0.1", base, auto_find_port=True, search=2)
            assert isinstance(PortError("x"), RuntimeError)
        finally:
            for blocker in held:
                blocker.close()
        return
    pytest.fail("found no three consecutive free ports")


def test_health_check_sends_the_key_as_bearer_too(port: int) -> None:
    from fastapi import FastAPI, Header, HTTPException

    app = FastAPI()

    @app.get("/health")
    def health(authorization: str | None = Header(default=None)) -> dict[str, bool]:
        if authorization != f"Bearer {KEY}":  # this app reads only Authorization
            raise HTTPException(status_code=401)
        return {"healthy": True}

    with InProcessTaskApp(app=app, port=port, api_key=KEY) as task_app:
        assert task_app.url is not None


def test_access_log_is_off_by_default_without_touching_global_logging(
    port: int,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    access = logging.getLogger("uvicorn.access")
    # As a host would have it, whatever other code in this test process did before (a
    # uvicorn.Config(log_level=...) elsewhere sets this logger's level process-wide).
    monkeypatch.setattr(access, "propagate", True)
    old_level = access.level
    access.setLevel(logging.NOTSET)
    request.addfinalizer(lambda: access.setLevel(old_level))
    before = (list(access.handlers), access.propagate, access.level)
    with caplog.at_level(logging.DEBUG):
        with InProcessTaskApp(app=minimal_app(), port=port) as task_app:
            for _ in range(3):
                assert httpx.get(f"{task_app.url}/health").status_code == 200
        assert not [r for r in caplog.records if r.name == "uvicorn.access"]
        # uvicorn's own switch empties the process-wide logger; the host's logging
        # configuration (and its own uvicorn servers) must not be changed by taskapp.
        assert (list(access.handlers), access.propagate, access.level) == before
        caplog.clear()
        with InProcessTaskApp(
            app=minimal_app(), port=port, server_options={"access_log": True}
        ) as task_app:
            assert httpx.get(f"{task_app.url}/health").status_code == 200
        # The switch works, so the check above could have failed.
        assert [r for r in caplog.records if r.name == "uvicorn.access"]


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt()])
def test_on_start_raising_base_exception_stops_everything(port: int, exc: BaseException) -> None:
    def on_start(_: InProcessTaskApp) -> None:
        raise exc

    stopped: list[bool] = []
    with pytest.raises(type(exc)):
        with InProcessTaskApp(
            app=minimal_app(), port=port, on_start=on_start, on_stop=lambda _: stopped.append(True)
        ):
            pytest.fail("the body must not run")
    assert stopped == [True]
    assert_released(port)


class _SocketCheckingRunner(ThreadServer):
    """A runner that records what it was handed: the lifecycle's pre-bound listener."""

    name = "socket-checking-test"
    seen: ClassVar[list[tuple[int, int]]] = []

    def start(self, ctx: Any) -> None:
        accepting = ctx.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        type(self).seen.append((ctx.sock.getsockname()[1], accepting))
        super().start(ctx)


class _SocketCheckingPlugin:
    @hookimpl
    def register_servers(self, register: Any) -> None:
        register(_SocketCheckingRunner)


def test_server_gets_a_socket_already_bound_and_listening(port: int) -> None:
    registry = get_registry()
    registry.register(_SocketCheckingPlugin(), name="test-socket-checking")
    try:
        with InProcessTaskApp(app=minimal_app(), port=port, server="socket-checking-test") as ta:
            assert task_app_port(ta) == port
        # Bound and listening before the server started: no probe-then-bind window.
        assert _SocketCheckingRunner.seen == [(port, 1)]
    finally:
        registry.unregister("test-socket-checking")
    assert_released(port)


def task_app_port(task_app: InProcessTaskApp) -> int:
    assert task_app.task_app_worker_token is None  # only a tunnel backend sets one
    return task_app.port


def test_server_dying_during_the_health_check_fails_at_once(port: int) -> None:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()
    holder: dict[str, InProcessTaskApp] = {}

    @app.get("/health")
    def health() -> Any:
        # Stand-in for a server that dies after startup: end the uvicorn thread.
        server = holder["task_app"].server
        assert isinstance(server, ThreadServer)
        assert server._serving is not None
        server._serving.server.request_exit()
        return JSONResponse({"healthy": False}, status_code=503)

    holder["task_app"] = InProcessTaskApp(app=app, port=port, health_check_timeout=30)
    started = time.monotonic()
    with pytest.raises(ServerStartError, match="the task app failed to start"):
        holder["task_app"].start()
    assert time.monotonic() - started < 5, "a dead server must not wait for the health timeout"
    assert_released(port)


def test_listener_is_tcp_so_asyncio_disables_nagle(port: int) -> None:
    """Accepted sockets inherit the listener's proto; asyncio sets TCP_NODELAY only for
    IPPROTO_TCP. Without it every keep-alive response waits ~40 ms (delayed ACK)."""
    from taskapp.core.ports import bind_listener

    sock = bind_listener("127.0.0.1", port, auto_find_port=False)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
    with InProcessTaskApp(
        app=minimal_app(), port=port, server_options={"loop": "asyncio", "http": "h11"}
    ) as task_app:
        with httpx.Client() as client:
            client.get(f"{task_app.url}/health")
            started = time.perf_counter()
            for _ in range(20):
                assert client.get(f"{task_app.url}/health").status_code == 200
            elapsed = time.perf_counter() - started
    # 20 requests with Nagle's delay take >= 0.8 s; without it, a few ms each.
    assert elapsed < 0.6, f"20 keep-alive requests took {elapsed:.2f}s"
