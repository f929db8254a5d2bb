"""The synth-ai loader plugin and the keys lent to synth-ai apps (taskapp.core.env_keys).

The real synth-ai releases are hosted in tests/interop/. Here a **stand-in** module named
``synth_ai.standin_server`` (registered in ``sys.modules`` for the test only) plays
synth-ai 0.7's server: a ``TaskAppConfig`` class and a ``create_task_app`` whose app reads
``ENVIRONMENT_API_KEY``/``ENVIRONMENT_API_KEY_ALIASES`` from ``os.environ`` on every
request, mints a key into ``os.environ`` at startup when none is set, and answers a wrong
key with 400 ``unauthorised`` - what the real one does (design/COMPAT.md).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import sys
import types
from collections.abc import Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from taskapp import InProcessTaskApp
from taskapp.core import env_keys
from taskapp.core.errors import AppLoadError, ConfigurationError, TaskAppError
from tests.helpers import REPO, demo_config, run_child

STANDIN = "synth_ai.standin_server"
KEY_VARIABLES = ("ENVIRONMENT_API_KEY", "ENVIRONMENT_API_KEY_ALIASES", "DEV_ENVIRONMENT_API_KEY")


@dataclasses.dataclass
class TaskAppConfig:
    app_id: str
    name: str


TaskAppConfig.__module__ = STANDIN


def create_task_app(config: TaskAppConfig) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        if not os.environ.get("ENVIRONMENT_API_KEY"):
            os.environ["ENVIRONMENT_API_KEY"] = secrets.token_hex(32)  # synth-ai mints
        yield

    app = FastAPI(lifespan=lifespan)

    async def info(request: Request) -> Any:
        allowed = {os.environ.get("ENVIRONMENT_API_KEY", "")} | {
            part.strip()
            for part in os.environ.get("ENVIRONMENT_API_KEY_ALIASES", "").split(",")
            if part.strip()
        }
        if request.headers.get("x-api-key") not in allowed - {""}:
            error = {"code": "unauthorised", "message": "API key missing or invalid"}
            return JSONResponse({"detail": {"error": error}}, status_code=400)
        # like synth-ai 0.7: key prefixes in answers (the host must not let them out)
        return {"service": config.app_id, "expected_prefix": allowed.pop()[:6]}

    async def health(request: Request) -> Any:
        return {"healthy": True, "auth": {"expected_prefix": "leaked"}}

    for route in (info, health):
        route.__module__ = STANDIN  # synth-ai's routes are synth-ai's functions
    app.add_api_route("/info", info, methods=["GET"])
    app.add_api_route("/health", health, methods=["GET"])
    return app


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    for name in KEY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    module = types.ModuleType(STANDIN)
    module.TaskAppConfig = TaskAppConfig  # type: ignore[attr-defined]
    module.create_task_app = create_task_app  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, STANDIN, module)
    yield module
    assert not env_keys.lent_keys(), "every lent key is given back"


def health(url: str, key: str) -> httpx.Response:
    return httpx.get(f"{url}/info", headers={"X-API-Key": key}, timeout=5)


def test_synth_ai_config_is_hosted_with_the_instance_key(standin: types.ModuleType) -> None:
    config = TaskAppConfig(app_id="standin", name="Stand-in")
    with InProcessTaskApp(config=config, port=0, health_check_timeout=10) as task_app:
        assert task_app.url is not None
        assert health(task_app.url, task_app.api_key).json()["service"] == "standin"
        real_health = httpx.get(
            f"{task_app.url}/health", headers={"X-API-Key": task_app.api_key}, timeout=5
        )
        assert real_health.json() == {"healthy": True}  # no key prefix
        wrong = httpx.get(f"{task_app.url}/info", headers={"X-API-Key": "nope"}, timeout=5)
        assert wrong.status_code == 400
        assert wrong.json() == {
            "detail": {"error": {"code": "unauthorised", "message": "API key missing or invalid"}}
        }
        assert os.environ["ENVIRONMENT_API_KEY"] == task_app.api_key  # lent, not minted
        assert env_keys.environment_api_key() is None  # ... and not the user's
        assert httpx.get(f"{task_app.url}/debug/env", timeout=5).status_code == 404
    for name in KEY_VARIABLES:
        assert name not in os.environ, f"{name} left in os.environ after stop"


def test_two_synth_ai_apps_and_a_taskapp_app_keep_their_own_keys(
    standin: types.ModuleType,
) -> None:
    first = InProcessTaskApp(config=TaskAppConfig("one", "One"), port=0, health_check_timeout=10)
    second = InProcessTaskApp(config=TaskAppConfig("two", "Two"), port=0, health_check_timeout=10)
    with first, second:
        assert first.url is not None and second.url is not None
        assert first.api_key != second.api_key
        assert health(first.url, first.api_key).status_code == 200
        assert health(second.url, second.api_key).status_code == 200
        # each refuses the key lent to the other, with synth-ai's envelope
        refused = health(first.url, second.api_key)
        assert refused.status_code == 400
        assert refused.json()["detail"]["error"]["code"] == "unauthorised"
        assert health(second.url, first.api_key).status_code == 400
        assert os.environ["ENVIRONMENT_API_KEY_ALIASES"] == second.api_key
        # a taskapp app started meanwhile does not take a lent key for its own
        with InProcessTaskApp(config=demo_config(), port=0) as plain:
            assert plain.api_key not in (first.api_key, second.api_key)
    for name in KEY_VARIABLES:
        assert name not in os.environ


def test_the_users_key_is_kept_and_used(
    standin: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENVIRONMENT_API_KEY", "users-own-key-0123456789")
    with InProcessTaskApp(
        config=TaskAppConfig("own", "Own"), port=0, health_check_timeout=10
    ) as app:
        assert app.api_key == "users-own-key-0123456789"
        assert app.url is not None and health(app.url, app.api_key).status_code == 200
        assert not env_keys.lent_keys()
    assert os.environ["ENVIRONMENT_API_KEY"] == "users-own-key-0123456789"


def test_an_explicit_key_beside_the_users_is_lent_as_an_alias(
    standin: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENVIRONMENT_API_KEY", "users-own-key-0123456789")
    config = TaskAppConfig("alias", "Alias")
    with InProcessTaskApp(config=config, port=0, api_key="explicit-key-9876543210") as app:
        assert app.url is not None and health(app.url, "explicit-key-9876543210").status_code == 200
        assert os.environ["ENVIRONMENT_API_KEY_ALIASES"] == "explicit-key-9876543210"
    assert "ENVIRONMENT_API_KEY_ALIASES" not in os.environ
    assert os.environ["ENVIRONMENT_API_KEY"] == "users-own-key-0123456789"


def test_lend_and_give_back(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in KEY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    one = env_keys.lend("lent-one-0123456789")
    two = env_keys.lend("lent-two-0123456789")
    again = env_keys.lend("lent-one-0123456789")  # a second app with the same key
    assert os.environ["ENVIRONMENT_API_KEY"] == "lent-one-0123456789"
    assert os.environ["ENVIRONMENT_API_KEY_ALIASES"] == "lent-two-0123456789"
    child = env_keys.without_lent_keys(
        {**os.environ, "ENVIRONMENT_API_KEY_ALIASES": "u,lent-two-0123456789"}
    )
    assert "ENVIRONMENT_API_KEY" not in child and child["ENVIRONMENT_API_KEY_ALIASES"] == "u"
    env_keys.give_back(one)
    env_keys.give_back(one)  # idempotent
    assert os.environ["ENVIRONMENT_API_KEY"] == "lent-one-0123456789"  # still lent to `again`
    env_keys.give_back(again)
    env_keys.give_back(two)
    for name in KEY_VARIABLES:
        assert name not in os.environ
    assert not env_keys.lent_keys()


def test_foreign_synth_ai_object_names_its_module_path(standin: types.ModuleType) -> None:
    thing = type("RolloutTracer", (), {"__module__": "synth_ai.sdk.tracing.tracer"})()
    with pytest.raises(AppLoadError) as caught:
        InProcessTaskApp(config_factory=lambda: thing, port=0).start()
    message = str(caught.value)
    assert "synth_ai.sdk.tracing.tracer.RolloutTracer" in message
    assert "cannot host" in message and "create_task_app(config)" in message


def test_foreign_config_names_its_module_path() -> None:
    with pytest.raises((ConfigurationError, TaskAppError)) as caught:
        InProcessTaskApp(config=types.SimpleNamespace(app_id="x"), port=0).start()  # type: ignore[arg-type]
    assert "types.SimpleNamespace" in str(caught.value)


def test_taskapp_never_imports_synth_ai() -> None:
    code = (
        "import sys\n"
        "from taskapp import InProcessTaskApp\n"
        "from tests.helpers import demo_config\n"
        "with InProcessTaskApp(config=demo_config(), port=0) as app:\n"
        "    pass\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'synth_ai'], 'imported'\n"
        "print('clean')\n"
    )
    result = run_child(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"


def test_a_module_installing_signal_handlers_loads_off_the_main_thread(tmp_path: Any) -> None:
    """synth-ai 0.7 calls signal.signal at import; taskapp loads apps on worker threads
    (async with, taskapp eval). The import succeeds and installs nothing there."""
    import signal
    import threading

    from taskapp.core.importing import exec_path

    path = tmp_path / "installs_handlers.py"
    path.write_text("import signal\nsignal.signal(signal.SIGTERM, lambda *a: None)\napp = None\n")
    before = signal.getsignal(signal.SIGTERM)
    original = signal.signal
    loaded: list[Any] = []
    failed: list[BaseException] = []

    def load() -> None:
        try:
            loaded.append(exec_path(path))
        except BaseException as exc:
            failed.append(exc)

    worker = threading.Thread(target=load)
    worker.start()
    worker.join(timeout=30)
    assert not failed, failed
    assert loaded and loaded[0].app is None
    assert signal.getsignal(signal.SIGTERM) is before  # nothing installed from the worker
    assert signal.signal is original  # the guard is gone


def test_a_module_loaded_on_the_main_thread_keeps_sigint_and_sigterm_alone(
    tmp_path: Any,
) -> None:
    """On the main thread an import-time SIGTERM/SIGINT handler would replace taskapp's
    (``taskapp serve`` could no longer be stopped); other signals are installed."""
    import signal

    from taskapp.core.importing import exec_path

    path = tmp_path / "installs_on_main.py"
    path.write_text(
        "import signal\n"
        "signal.signal(signal.SIGTERM, lambda *a: None)\n"
        "signal.signal(signal.SIGINT, lambda *a: None)\n"
        "signal.signal(signal.SIGUSR2, lambda *a: None)\n"
    )
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    usr2 = signal.getsignal(signal.SIGUSR2)
    try:
        exec_path(path)
        assert {sig: signal.getsignal(sig) for sig in before} == before
        assert signal.getsignal(signal.SIGUSR2) is not usr2  # not ours to refuse
    finally:
        signal.signal(signal.SIGUSR2, usr2)
