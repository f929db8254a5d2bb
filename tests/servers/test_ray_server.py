"""The ``ray`` server runner on a real, private, loopback-only Ray instance.

Ray is optional (``pip install 'taskapp[ray]'``): the tests that need it skip when it is
not installed; the others (options, the missing-extra error, import cost) always run.

To stay within about a minute on 2 cores the in-process tests share one local Ray
instance: they run with ``stop_policy="delete_app"`` (taskapp keeps the instance for the
next task app in this process), in file order, and ``test_default_stop_leaves_no_process``
then stops it the default way and checks that nothing is left. The module fixture shuts
down whatever is still kept if a test fails first. ``taskapp serve --server ray`` in a
fresh process (a fresh instance) is tested in tests/servers/test_cli_ray.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from taskapp import InProcessTaskApp
from taskapp.core.errors import ConfigurationError, ServerStartError
from tests.helpers import free_port, port_is_free, run_child, wait_until
from tests.servers._ray_helpers import (
    APP_SOURCE,
    CONFIG,
    alive,
    command,
    is_loopback,
    listening_sockets,
    session_dir,
    write_app,
)

# Ray Serve 2.60 declares pydantic fields the deprecated way (warned at import).
pytestmark = pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20")

START_TIMEOUT = 120.0
#: Keep the local instance between tests (the last in-process test stops it for real).
SHARED = {"stop_policy": "delete_app"}
KEY = "ray-test-key-0123456789abcdef"

#: What the first Ray test saw, for the tests that reuse its instance.
state: dict[str, Any] = {}


@pytest.fixture(scope="module")
def ray_runner() -> Iterator[ModuleType]:
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'taskapp[ray]')")
    # the runner's process-wide state (_session) and constants live in _connection
    from taskapp.plugins.servers.ray import _connection as ray_runner

    yield ray_runner
    ray_runner.stop_local_ray()


def headers(key: str = KEY) -> dict[str, str]:
    return {"X-API-Key": key}


def rollout_details(url: str, count: int, *, workers: int = 4) -> list[dict[str, Any]]:
    """``count`` rollouts from ``workers`` threads (each with its own connection)."""
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(offset: int) -> None:
        try:
            with httpx.Client(timeout=30, trust_env=False) as client:
                for i in range(offset, count, workers):
                    response = client.post(
                        f"{url}/rollout",
                        headers=headers(),
                        json={"run_id": f"r{i}", "env": {"seed": i}},
                    )
                    assert response.status_code == 200, response.text
                    with lock:
                        results.append(response.json()["metrics"]["details"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return results


# -- without Ray running ------------------------------------------------------------------


def test_missing_extra_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what an uninstalled package looks like
    with pytest.raises(ConfigurationError) as info:
        InProcessTaskApp(app="tests.servers._ray_helpers:CONFIG", server="ray")
    assert "pip install 'taskapp[ray]'" in str(info.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_replicas": 2, "autoscaling_config": {"max_replicas": 2}}, "not both"),
        ({"num_replicas": 0}, "num_replicas must be at least 1"),
        ({"num_replicas": "many"}, "num_replicas must be at least 1 or 'auto'"),
        ({"max_ongoing_requests": 0}, "max_ongoing_requests"),
        ({"stop_policy": "keep_app"}, "needs an existing cluster"),
        ({"stop_policy": "forever"}, "stop_policy"),
        ({"init_kwargs": {"address": "auto"}}, "own option"),
        ({"log_level": "LOUD"}, "log_level"),
        ({"replicas": 2}, "unknown option"),
    ],
)
def test_bad_options_fail_in_the_constructor(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        InProcessTaskApp(
            app="tests.servers._ray_helpers:CONFIG", server="ray", server_options=options
        )


def test_taskapp_never_imports_ray_until_start() -> None:
    code = """
import sys
import taskapp
from taskapp.core.plugins import get_registry
assert get_registry().server("ray").name == "ray"
try:
    taskapp.InProcessTaskApp(app="tests.servers._ray_helpers:CONFIG", server="ray",
                             server_options={"num_replicas": 2})
except taskapp.ConfigurationError:
    pass  # the extra is not installed: still no import
print("ray imported:", "ray" in sys.modules)
"""
    result = run_child(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "ray imported: False" in result.stdout


def test_app_without_import_string_is_refused_before_ray_starts(ray_runner: ModuleType) -> None:
    from fastapi import FastAPI

    app = FastAPI()  # lives only in this function: no import string reaches it

    @app.get("/health")
    def health() -> dict[str, bool]:
        return {"healthy": True}

    task_app = InProcessTaskApp(app=app, server="ray", api_key=KEY, port=free_port())
    with pytest.raises(ConfigurationError, match="has none") as info:
        task_app.start()
    assert "task_app_path=" in str(info.value)
    assert not task_app.running
    assert ray_runner._session is None  # nothing was started
    assert not [t for t in threading.enumerate() if t.name == ray_runner.DRIVER_THREAD]


# -- one shared local Ray instance -------------------------------------------------------


def test_py_path_config_is_served_by_two_replicas(
    ray_runner: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cluster address in the environment must not be joined unless asked for.
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    path = write_app(tmp_path)
    port = free_port()
    task_app = InProcessTaskApp(
        task_app_path=path,
        server="ray",
        server_options={**SHARED, "num_replicas": 2},
        api_key=KEY,
        port=port,
        health_check_timeout=START_TIMEOUT,
    )
    # Started from a thread that ends at once: Ray kills a local instance when the thread
    # that called ray.init() exits, so the runner must make that call on its own thread.
    starter = threading.Thread(target=task_app.start, name="short-lived-starter")
    started = time.monotonic()
    starter.start()
    starter.join(START_TIMEOUT + 30)
    state["start_s"] = time.monotonic() - started
    try:
        assert task_app.running, "the task app did not start"
        runner = task_app.server
        assert runner is not None
        assert task_app.port == port == runner.port  # Serve's proxy took the bound port
        time.sleep(1.0)  # a parent-death signal would have fired by now
        pids = runner.pids
        assert pids and all(alive(pid) for pid in pids)

        url = task_app.local_url
        assert httpx.get(f"{url}/health", headers=headers(), trust_env=False).status_code == 200
        assert httpx.get(f"{url}/health", trust_env=False).status_code == 401

        seen = {details["pid"] for details in rollout_details(url, 40)}
        assert len(seen) == 2, f"rollouts answered by {seen}"
        assert seen <= set(runner.pids), "answered by processes outside this Ray instance"
        assert all(command(pid).startswith("ray::ServeReplica") for pid in seen)

        # Loopback only. Exception: Ray Serve 2.60 hard-codes each replica's
        # inter-deployment gRPC server to [::]:0 (token-authenticated).
        sockets = listening_sockets(pids)
        assert any(addr.endswith(f":{port}") for _, _, addr in sockets)
        exposed = [item for item in sockets if not is_loopback(item[2])]
        assert all(name.startswith("ray::ServeReplica") for _, name, _ in exposed), exposed

        # The key is in no process's argv or environment and in no log of the instance.
        for pid in pids:
            for part in ("cmdline", "environ"):
                with open(f"/proc/{pid}/{part}", "rb") as handle:
                    assert KEY.encode() not in handle.read(), (pid, part)
        # Ray's usage statistics are off (unless the user opted in): the instance's core
        # processes inherit the setting. (Python workers rename themselves with
        # setproctitle, which overwrites their /proc/PID/environ: not checkable there.)
        if "RAY_USAGE_STATS_ENABLED" not in os.environ:
            core = [pid for pid in pids if command(pid).endswith(("/raylet", "/gcs_server"))]
            assert core, [command(pid) for pid in pids]
            for pid in core:
                with open(f"/proc/{pid}/environ", "rb") as handle:
                    assert b"RAY_USAGE_STATS_ENABLED=0\0" in handle.read(), command(pid)
        logs = session_dir(pids)
        assert logs is not None and logs.is_dir()
        for file in logs.rglob("*"):
            if file.is_file() and file.stat().st_size < 50_000_000:
                assert KEY.encode() not in file.read_bytes(), file
        state.update(port=port, core=set(ray_runner._session.pids), replicas=seen)
    finally:
        task_app.stop()
    # stop_policy="delete_app": the application is gone, the instance stays for reuse.
    assert wait_until(lambda: not any(alive(pid) for pid in seen), 10)
    assert all(alive(pid) for pid in state["core"])


def test_import_string_with_autoscaling_reuses_the_instance(ray_runner: ModuleType) -> None:
    if "port" not in state:
        pytest.skip("needs the instance of the previous test")
    from ray import serve

    lifecycle_port = free_port()
    autoscaling = {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 2}
    task_app = InProcessTaskApp(
        config=CONFIG,
        server="ray",
        server_options={**SHARED, "autoscaling_config": autoscaling},
        api_key=KEY,
        port=lifecycle_port,
        health_check_timeout=START_TIMEOUT,
    )
    started = time.monotonic()
    with task_app:
        reuse_s = time.monotonic() - started
        assert task_app.loaded is not None
        assert task_app.loaded.reimport_target() == "tests.servers._ray_helpers:CONFIG"
        assert set(ray_runner._session.pids) == state["core"]  # same instance
        # Serve's proxy port is fixed once Serve runs: the runner reports it, the
        # lifecycle uses it, and the socket it had bound is released.
        assert task_app.port == state["port"] != lifecycle_port
        assert port_is_free(lifecycle_port)
        details = rollout_details(task_app.local_url, 8, workers=2)
        assert {d["replica"] for d in details} and all(d["replica"] for d in details)
        deployment = serve.status().applications["taskapp"].deployments["TaskApp"]
        assert str(deployment.status.value) in ("HEALTHY", "UPSCALING", "DOWNSCALING")
    state["reuse_s"] = reuse_s


def test_replica_builder_error_fails_fast_with_its_message(
    ray_runner: ModuleType, tmp_path: Path
) -> None:
    # Loads in this process (the lifecycle loads the app first) but raises on replicas.
    broken = (
        f"import os\nif os.getpid() != {os.getpid()}:\n"
        '    raise RuntimeError("boom-from-the-replica-builder")\n' + APP_SOURCE
    )
    path = write_app(tmp_path, "broken_on_replicas.py", broken)
    task_app = InProcessTaskApp(
        task_app_path=path,
        server="ray",
        server_options=SHARED,
        api_key=KEY,
        port=free_port(),
        health_check_timeout=START_TIMEOUT,
    )
    started = time.monotonic()
    with pytest.raises(ServerStartError) as info:
        task_app.start()
    elapsed = time.monotonic() - started
    assert "boom-from-the-replica-builder" in str(info.value)
    assert "DEPLOY_FAILED" in str(info.value)
    assert elapsed < START_TIMEOUT / 3, f"took {elapsed:.1f}s to fail"
    assert not task_app.running
    from ray import serve

    assert "taskapp" not in serve.status().applications  # the failed app was deleted
    state["fail_s"] = elapsed


def test_default_stop_leaves_no_process(ray_runner: ModuleType, tmp_path: Path) -> None:
    path = write_app(tmp_path)
    with InProcessTaskApp(
        task_app_path=path,
        server="ray",
        api_key=KEY,
        port=free_port(),
        health_check_timeout=START_TIMEOUT,
    ) as task_app:
        assert task_app.server is not None
        pids = task_app.server.pids
        port = task_app.port
        assert rollout_details(task_app.local_url, 2, workers=1)
        stopping = time.monotonic()
    stop_s = time.monotonic() - stopping
    assert wait_until(lambda: not [p for p in pids if alive(p)], 5), [
        (p, command(p)) for p in pids if alive(p)
    ]
    assert port_is_free(port)
    assert ray_runner._session is None
    assert not [t for t in threading.enumerate() if t.name == ray_runner.DRIVER_THREAD]
    import ray

    assert not ray.is_initialized()
    state["stop_s"] = stop_s


# -- a Ray connection taskapp did not make: only its own application is deleted ---------


def test_existing_ray_connection_keeps_other_applications(
    ray_runner: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray
    from ray import serve
    from ray._private import ray_constants

    # The test plays the user: its own ray.init() (loopback only, as taskapp's own) with
    # Serve on a port of its choosing and an application of its own.
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    monkeypatch.setattr(ray_constants, "RAY_DISABLE_FAILURE_SIGNAL_HANDLER", True)
    previous_sigterm = signal.getsignal(signal.SIGTERM)
    serve_port = free_port()
    ray.init(address="local", include_dashboard=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": serve_port})

        @serve.deployment(ray_actor_options={"num_cpus": 0.1})
        class Other:
            def __call__(self, request: Any) -> str:
                return "other"

        serve.run(Other.bind(), name="other", route_prefix="/other")  # type: ignore[attr-defined]
        lifecycle_port = free_port()
        with InProcessTaskApp(
            task_app_path=write_app(tmp_path),
            server="ray",
            api_key=KEY,
            port=lifecycle_port,
            health_check_timeout=START_TIMEOUT,
        ) as task_app:
            assert task_app.server is not None and task_app.server.pids == ()  # not taskapp's
            assert task_app.port == serve_port != lifecycle_port  # read back from Serve
            assert rollout_details(task_app.local_url, 2, workers=1)
            assert sorted(serve.status().applications) == ["other", "taskapp"]
        assert sorted(serve.status().applications) == ["other"]
        other = httpx.get(f"http://127.0.0.1:{serve_port}/other", trust_env=False)
        assert other.status_code == 200 and other.text == "other"
        assert ray.is_initialized()  # the user's connection is left alone
        assert ray_runner._session is None
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
        signal.signal(signal.SIGTERM, previous_sigterm)
