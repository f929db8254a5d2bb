"""One test per defect of issue 17 (items 1-5 and 8), each failing before its fix.

Real uvicorn, real sockets and HTTP; the model server is the ChatStandIn stand-in (no model
can run here).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import taskapp
from taskapp import InProcessTaskApp
from taskapp.core.backends import Tunnel, TunnelBackend, TunnelContext
from taskapp.core.errors import HealthCheckError, ServerStartError
from taskapp.core.plugins import get_registry
from taskapp.examples.support_intents import build_config
from taskapp.examples.support_intents import policy as policy_module
from tests.cli._cli_helpers import EXAMPLES_DIR, ChatStandIn
from tests.helpers import minimal_app
from tests.reliability._leaks import assert_no_leaks, snapshot

# -- 17.1: a request never chooses which environment variable leaves the machine ---------

HOST_SECRET = "host-secret-value-that-must-stay-home-1234"


@pytest.fixture
def example_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[httpx.Client]:
    monkeypatch.setenv("RELIABILITY_HOST_SECRET", HOST_SECRET)
    monkeypatch.setenv("RELIABILITY_MODEL_KEY", "model-key-the-owner-allowed-5678")
    monkeypatch.delenv("SUPPORT_INTENTS_API_KEY_ENVS", raising=False)
    with InProcessTaskApp(config=build_config(api_key_envs=["RELIABILITY_MODEL_KEY"])) as app:
        assert app.url is not None
        with httpx.Client(
            base_url=app.url, headers={"X-API-Key": app.api_key}, trust_env=False, timeout=30
        ) as client:
            yield client


def rollout(client: httpx.Client, config: dict[str, Any], seed: int = 0) -> httpx.Response:
    body = {"run_id": "r", "env": {"seed": seed}, "policy": {"config": config}}
    return client.post("/rollout", json=body)


def test_17_1_a_request_cannot_send_an_unlisted_env_var_to_its_url(
    example_app: httpx.Client,
) -> None:
    with ChatStandIn() as model:
        stolen = rollout(
            example_app,
            {"inference_url": model.url + "/v1", "model": "m",
             "api_key_env": "RELIABILITY_HOST_SECRET"},
        )  # fmt: skip
        allowed = rollout(
            example_app,
            {"inference_url": model.url + "/v1", "model": "m",
             "api_key_env": "RELIABILITY_MODEL_KEY"},
        )  # fmt: skip
    assert stolen.status_code == 422
    error = stolen.json()["detail"]["error"]
    assert error["code"] == "api_key_env_not_allowed"
    assert error["field"] == "policy.config.api_key_env"
    assert "RELIABILITY_MODEL_KEY" in error["message"]  # names what is allowed
    assert HOST_SECRET not in stolen.text
    assert allowed.status_code == 200
    # Only the allowed rollout reached the model, with the allowed key.
    assert [r["authorization"] for r in model.requests] == [
        "Bearer model-key-the-owner-allowed-5678"
    ]


def test_17_1_the_default_allow_list_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SUPPORT_INTENTS_API_KEY_ENVS", "A_KEY, B_KEY")
    settings = policy_module.ChatSettings
    assert policy_module.allowed_key_envs_from_environment() == {"A_KEY", "B_KEY"}
    monkeypatch.delenv("SUPPORT_INTENTS_API_KEY_ENVS")
    with pytest.raises(policy_module.PolicyConfigError) as caught:
        settings.from_config(
            {"inference_url": "http://127.0.0.1:1/v1", "model": "m", "api_key_env": "HOME"},
            policy_module.allowed_key_envs_from_environment(),
        )
    assert caught.value.code == "api_key_env_not_allowed"
    assert "allowed: none" in str(caught.value)


def test_17_1_the_standalone_copy_refuses_unlisted_env_vars_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RELIABILITY_HOST_SECRET", HOST_SECRET)
    monkeypatch.delenv("SUPPORT_INTENTS_API_KEY_ENVS", raising=False)
    path = EXAMPLES_DIR / "support_intents_app.py"
    with ChatStandIn() as model, InProcessTaskApp(task_app_path=path) as app:
        assert app.url is not None
        with httpx.Client(base_url=app.url, headers={"X-API-Key": app.api_key}) as client:
            config = {"inference_url": model.url + "/v1", "model": "m"}
            stolen = rollout(client, {**config, "api_key_env": "RELIABILITY_HOST_SECRET"})
            bad_port = rollout(client, {**config, "inference_url": "http://127.0.0.1:99999"})
            nan = client.post(
                "/rollout",
                content='{"run_id": "r", "env": {"seed": 0}, "policy": {"config": '
                '{"inference_url": "http://x/v1", "model": "m", "timeout": NaN}}}',
                headers={"content-type": "application/json"},
            )
    assert stolen.status_code == 422
    assert stolen.json()["detail"]["error"]["code"] == "api_key_env_not_allowed"
    assert HOST_SECRET not in stolen.text
    assert model.requests == []
    assert bad_port.status_code == 422
    assert bad_port.json()["detail"]["error"]["field"] == "policy.config.inference_url"
    assert nan.status_code == 422
    assert nan.json()["detail"]["error"]["field"] == "policy.config.timeout"


# -- 17.5: bad policy.config is the caller's mistake: 4xx naming the field ---------------


@pytest.mark.parametrize(
    ("raw_config", "field"),
    [
        ('{"inference_url": "http://[::1", "model": "m"}', "inference_url"),
        ('{"inference_url": "http://127.0.0.1:99999/v1", "model": "m"}', "inference_url"),
        ('{"inference_url": "http://127.0.0.1:port/v1", "model": "m"}', "inference_url"),
        ('{"inference_url": "http://a b/v1", "model": "m"}', "inference_url"),
        ('{"inference_url": "http:///v1", "model": "m"}', "inference_url"),
        ('{"inference_url": "http://x/v1", "model": "m", "temperature": NaN}', "temperature"),
        ('{"inference_url": "http://x/v1", "model": "m", "temperature": Infinity}', "temperature"),
        ('{"inference_url": "http://x/v1", "model": "m", "temperature": "hot"}', "temperature"),
        ('{"inference_url": "http://x/v1", "model": "m", "max_tokens": 1e999}', "max_tokens"),
        ('{"inference_url": "http://x/v1", "model": "m", "max_tokens": 2.5}', "max_tokens"),
        ('{"inference_url": "http://x/v1", "model": "m", "max_tokens": true}', "max_tokens"),
        ('{"inference_url": "http://x/v1", "model": "m", "timeout": NaN}', "timeout"),
        ('{"inference_url": "http://x/v1", "model": "m", "timeout": -1}', "timeout"),
        ('{"inference_url": "http://x/v1", "model": ""}', "model"),
    ],
)
def test_17_5_bad_policy_config_is_422_naming_the_field(
    example_app: httpx.Client, raw_config: str, field: str
) -> None:
    # Python's json accepts NaN/Infinity/1e999 (inf) like many clients send them.
    body = '{"run_id": "r", "env": {"seed": 0}, "policy": {"config": ' + raw_config + "}}"
    response = example_app.post(
        "/rollout", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    error = response.json()["detail"]["error"]
    assert error["code"] == "invalid_policy"
    assert error["field"] == f"policy.config.{field}"
    assert f"policy.config.{field}" in error["message"]


def test_17_5_a_long_prompt_does_not_block_health(example_app: httpx.Client) -> None:
    # ~10 MB of intent lines: seconds of CPU work, which used to run on the event loop.
    prompt = "".join(f"- refund: money back word{i} please return it\n" for i in range(220_000))
    assert len(prompt) > 9_000_000
    result: dict[str, Any] = {}

    def long_rollout() -> None:
        result["response"] = rollout(example_app, {"prompt": prompt})

    worker = threading.Thread(target=long_rollout)
    worker.start()
    latencies = []
    while worker.is_alive():
        started = time.perf_counter()
        assert example_app.get("/health").status_code == 200
        latencies.append(time.perf_counter() - started)
        time.sleep(0.05)
    worker.join()
    assert result["response"].status_code == 200
    assert len(latencies) >= 3, "the long rollout finished too fast to measure anything"
    assert max(latencies) < 1.0, f"/health waited {max(latencies):.2f}s behind a long prompt"


def test_17_5_the_prompt_cache_is_bounded_by_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy_module, "CACHE_BUDGET_CHARS", 20_000)
    labels = ("refund",)
    for i in range(40):
        policy_module.parse_intents(f"- refund: money back {i}\n" + "x" * 2_000, labels)
        assert policy_module.cache_chars() <= 20_000
    assert policy_module.cache_chars() > 10_000  # it does cache
    before = policy_module.cache_chars()
    policy_module.parse_intents("- refund: huge\n" + "y" * 10_000, labels)  # > budget / 4
    assert policy_module.cache_chars() == before
    # A cached prompt gives the same answer as a fresh parse.
    prompt = "- refund: money back 39\n" + "x" * 2_000
    assert policy_module.parse_intents(prompt, labels) == policy_module._parse_intents(
        prompt, labels
    )


def test_17_5_config_errors_answer_fast_and_never_reach_the_model(
    example_app: httpx.Client,
) -> None:
    with ChatStandIn() as model:
        response = rollout(
            example_app, {"inference_url": model.url + "/v1", "model": "m", "timeout": 0}
        )
    assert response.status_code == 422
    assert model.requests == []
    assert json.loads(response.text)["detail"]["error"]["field"] == "policy.config.timeout"


# -- 17.2: a stopped instance's key is refused -------------------------------------------

APP_FILE = """
from taskapp import TaskAppConfig, create_task_app

config = TaskAppConfig(
    app_id="keys", name="keys", description="keys",
    describe_taskset=lambda: {}, provide_task_instances=lambda seeds: [],
    rollout=lambda request, http_request: {"run_id": request.run_id},
)
app = create_task_app(config, api_keys=["owner-configured-key-000"])
"""


def _status(url: str, key: str) -> int:
    return httpx.get(url + "/info", headers={"X-API-Key": key}, trust_env=False).status_code


@pytest.mark.parametrize("how", ["task_app_path", "app"])
def test_17_2_serving_the_same_app_again_refuses_earlier_keys(tmp_path: Path, how: str) -> None:
    path = tmp_path / "keys_app.py"
    path.write_text(APP_FILE)
    namespace: dict[str, Any] = {}
    exec(compile(APP_FILE, str(path), "exec"), namespace)
    target: dict[str, Any] = (
        {"task_app_path": path} if how == "task_app_path" else {"app": namespace["app"]}
    )
    keys: list[str] = []
    for _ in range(3):
        with InProcessTaskApp(**target) as app:
            assert app.url is not None
            keys.append(app.api_key)
            statuses = [_status(app.url, key) for key in keys]
            assert statuses == [401] * (len(keys) - 1) + [200], statuses
            assert _status(app.url, "owner-configured-key-000") == 200


def test_17_2_an_instance_key_equal_to_the_apps_own_key_survives_stop() -> None:
    from taskapp.core.contract import TaskAppAuth

    auth = TaskAppAuth(["own-key-123456"], required=True)
    auth.grant("own-key-123456")
    auth.grant("instance-key-1234")
    auth.grant("instance-key-1234")  # two instances serving one app object
    auth.revoke("own-key-123456")
    auth.revoke("instance-key-1234")
    assert auth.check({"x-api-key": "own-key-123456"}) is None
    assert auth.check({"x-api-key": "instance-key-1234"}) is None  # one grant left
    auth.revoke("instance-key-1234")
    assert auth.check({"x-api-key": "instance-key-1234"}) == (
        401,
        {"detail": {"error": {"code": "unauthorized", "message": "invalid API key"}}},
    )


# -- 17.4: short keys do not stop the subprocess runner; real keys never go in argv -------


def test_17_4_a_one_letter_key_serves_with_the_subprocess_runner(tmp_path: Path) -> None:
    path = tmp_path / "keys_app.py"
    path.write_text(APP_FILE)
    # "k" occurs in the child's module path (taskapp.plugins...), and "keys" in the app path.
    for key in ("k", "keys"):
        with InProcessTaskApp(task_app_path=path, server="subprocess", api_key=key) as app:
            assert app.url is not None
            assert _status(app.url, key) == 200
            assert _status(app.url, "wrong") == 401


def test_17_4_the_argv_guard_still_catches_real_keys() -> None:
    from taskapp.core.processes import ProcessError, spawn
    from taskapp.core.secrets import contains_secret

    long_key = "ta_" + "x1y2z3" * 5
    for argv, key in [
        ([sys.executable, "-c", "pass", f"--token={long_key}"], long_key),
        ([sys.executable, "-c", "pass", f"prefix{long_key}suffix"], long_key),
        ([sys.executable, "-c", "pass", "hunter22"], "hunter22"),
        ([sys.executable, "-c", "pass", "--password=hunter22"], "hunter22"),
    ]:
        with pytest.raises(ProcessError, match="contains a secret") as caught:
            spawn(argv, secrets=[key])
        assert key not in str(caught.value)
    # Medium keys inside a longer word and short keys are not matches (no false positives).
    assert not contains_secret("/opt/hunter22x/app.py", ["hunter22"])
    assert not contains_secret("taskapp.plugins.servers._subprocess_child", ["k"])
    with spawn([sys.executable, "-c", "pass", "/opt/hunter22x/app.py"], secrets=["hunter22"]) as p:
        assert p.wait(timeout=10) == 0


# -- 17.3: stopping ends a startup in progress, on time, leaving nothing ------------------

SLOW_LIFESPAN_APP = """
import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI


@asynccontextmanager
async def lifespan(app):
    await asyncio.sleep(60)
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/health")
def health():
    return {"healthy": True}
"""


def test_17_3_a_slow_lifespan_fails_on_time_and_leaks_nothing(tmp_path: Path) -> None:
    path = tmp_path / "slow_lifespan.py"
    path.write_text(SLOW_LIFESPAN_APP)

    def attempt() -> tuple[float, str]:
        started = time.monotonic()
        with pytest.raises(ServerStartError) as caught:
            with InProcessTaskApp(task_app_path=path, health_check_timeout=1.0):
                pass
        return time.monotonic() - started, str(caught.value)

    attempt()  # warm-up: first-use imports and lazily created process-wide objects
    before = snapshot()
    for _ in range(3):
        elapsed, message = attempt()
        assert elapsed < 2.0, f"took {elapsed:.1f}s for a 1 s health_check_timeout"
        assert "the 1 s health check timeout" in message  # 17.8: the timeout the user set
    assert_no_leaks(before)


# -- 17.8: messages say what happened --------------------------------------------------


def test_17_8_a_server_crash_after_startup_is_not_called_a_lifespan_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from taskapp.core.serving import fast_exit_server_class

    async def exploding_main_loop(self: Any) -> None:
        raise RuntimeError("main loop exploded")

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.get("/health")
    def health() -> JSONResponse:  # never healthy: only the crash can end the start early
        return JSONResponse({"healthy": False}, status_code=503)

    monkeypatch.setattr(fast_exit_server_class(), "main_loop", exploding_main_loop)
    before = snapshot()
    started = time.monotonic()
    with pytest.raises(ServerStartError) as caught:
        InProcessTaskApp(app=app, health_check_timeout=10.0).start()
    assert time.monotonic() - started < 5.0, "a dead server must not wait out the timeout"
    message = str(caught.value)
    assert "ended after the server had started" in message
    assert "RuntimeError: main loop exploded" in message
    assert "CancelledError" not in message and "lifespan" not in message
    monkeypatch.undo()
    assert_no_leaks(before)


def test_17_8_the_health_timeout_message_names_the_timeout_set() -> None:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.get("/health")
    def health() -> JSONResponse:
        return JSONResponse({"healthy": False}, status_code=503)

    with pytest.raises(HealthCheckError) as caught:
        with InProcessTaskApp(app=app, health_check_timeout=1.5):
            pass
    assert "within the 1.5 s health check timeout" in str(caught.value)
    assert "HTTP 503" in str(caught.value)


class ExplodingTunnel(TunnelBackend):
    """A tunnel plugin whose open() fails with its own (non-taskapp) error."""

    name = "exploding-test-tunnel"

    def open(self, ctx: TunnelContext) -> Tunnel:
        raise ConnectionError("the tunnel service hung up")


@taskapp.hookimpl
def register_tunnels(register: Any) -> None:
    register(ExplodingTunnel)


def test_17_8_a_tunnel_plugins_error_names_the_backend() -> None:
    registry = get_registry()
    registry.register(sys.modules[__name__], name="test-exploding-tunnel")
    try:
        before = snapshot()
        with pytest.raises(taskapp.TunnelError) as caught:
            with InProcessTaskApp(app=minimal_app(), tunnel_backend="exploding-test-tunnel"):
                pass
    finally:
        registry.unregister("test-exploding-tunnel")
    assert caught.value.backend == "exploding-test-tunnel"
    assert "tunnel 'exploding-test-tunnel' failed to open" in str(caught.value)
    assert "ConnectionError: the tunnel service hung up" in str(caught.value)
    assert isinstance(caught.value.__cause__, ConnectionError)
    assert_no_leaks(before)
