"""``taskapp.core.endpoint``: which task app, with which key -- for every kind of target.

Real apps throughout (InProcessTaskApp on a free port, real uvicorn, real requests); the
key precedence is checked by what the app accepts, not by reading attributes only.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import taskapp
from taskapp import ApiKeyRejectedError, ConfigurationError, InProcessTaskApp, TaskAppConfig
from taskapp.core import env_keys
from taskapp.core.endpoint import (
    Endpoint,
    aopen_endpoint,
    endpoint_of,
    free_app_port,
    is_url,
    open_endpoint,
)
from taskapp.testing.helpers import assert_released, free_port

KEY = "endpoint-key-0123456789"
OTHER = "other-key-0123456789ab"


def build_config() -> TaskAppConfig:
    """A four-seed task app; the score is 1.0 for even seeds."""

    def describe() -> dict[str, Any]:
        return {"splits": {"train": 4}}

    def instances(seeds: list[int]) -> list[dict[str, Any]]:
        return [{"task": {"id": "ep", "name": "Ep"}, "task_metadata": {"seed": s}} for s in seeds]

    async def rollout(request: Any, http_request: Any) -> dict[str, Any]:
        seed = request.env.seed or 0
        return {"run_id": request.run_id, "metrics": {"outcome_score": float(seed % 2 == 0)}}

    return TaskAppConfig(
        app_id="ep",
        name="Ep",
        description="endpoint test app",
        describe_taskset=describe,
        provide_task_instances=instances,
        rollout=rollout,
    )


@pytest.fixture
def no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(env_keys.KEY_VARIABLE, raising=False)
    monkeypatch.delenv(env_keys.ALIASES_VARIABLE, raising=False)


@pytest.fixture(scope="module")
def running() -> Iterator[InProcessTaskApp]:
    with InProcessTaskApp(config=build_config(), port=free_port(), api_key=KEY) as app:
        yield app


def health_ok(endpoint: Endpoint) -> bool:
    with endpoint.client(timeout=5.0) as client:
        return bool(client.task_info())


# -- URLs ----------------------------------------------------------------------------------


def test_a_url_is_used_as_it_runs(running: InProcessTaskApp, no_env_key: None) -> None:
    assert running.url is not None
    bare = running.url.removeprefix("http://")  # host:port means http://
    with open_endpoint(bare + "/", api_key=KEY) as endpoint:
        assert endpoint.url == running.url and not endpoint.started_here
        assert endpoint.api_key == KEY and endpoint.task_app is None
        assert health_ok(endpoint)
    assert running.running  # nothing was started, so nothing is stopped
    assert KEY not in repr(endpoint)


def test_url_key_precedence_explicit_then_env_then_none(
    running: InProcessTaskApp, monkeypatch: pytest.MonkeyPatch, no_env_key: None
) -> None:
    url = running.url
    assert url is not None
    assert endpoint_of(url).api_key is None
    monkeypatch.setenv(env_keys.KEY_VARIABLE, KEY)
    from_env = endpoint_of(url)
    assert from_env.api_key == KEY and health_ok(from_env)
    explicit = endpoint_of(url, api_key=OTHER)
    assert explicit.api_key == OTHER
    with pytest.raises(ApiKeyRejectedError):
        health_ok(explicit)


def test_a_lent_key_is_never_taken_for_the_users(
    running: InProcessTaskApp, no_env_key: None
) -> None:
    """A key lent to a running synth-ai app sits in $ENVIRONMENT_API_KEY, but is not the
    user's: a URL gets no key from it, and an app started here gets a fresh one."""
    url = running.url
    assert url is not None
    loan = env_keys.lend(KEY)
    try:
        assert os.environ[env_keys.KEY_VARIABLE] == KEY
        assert endpoint_of(url).api_key is None
        with open_endpoint(build_config()) as started:
            assert started.api_key not in (None, KEY)
            assert health_ok(started)
    finally:
        env_keys.give_back(loan)


def test_start_options_are_refused_for_a_url(running: InProcessTaskApp) -> None:
    assert running.url is not None
    with pytest.raises(ConfigurationError, match=r"start options \(port\) start a target"):
        with open_endpoint(running.url, start={"port": 9}):
            pass
    with pytest.raises(ConfigurationError, match="unknown start option"):
        with open_endpoint(build_config(), start={"prot": 9}):
            pass
    with pytest.raises(ConfigurationError, match="expected http://host"):
        endpoint_of("ftp://example.com")


# -- InProcessTaskApp ------------------------------------------------------------------------


def test_a_running_app_is_used_as_is(running: InProcessTaskApp) -> None:
    with open_endpoint(running) as endpoint:
        assert endpoint.url == running.url and endpoint.api_key == KEY
        assert endpoint.task_app is running and not endpoint.started_here
        assert health_ok(endpoint)
    assert running.running
    # explicit beats the app's own key (for a request the caller wants to make as someone else)
    assert endpoint_of(running, api_key=OTHER).api_key == OTHER
    with pytest.raises(ConfigurationError, match="the InProcessTaskApp is built"):
        with open_endpoint(running, start={"server": "thread"}):
            pass


def test_an_app_not_running_is_started_and_stopped() -> None:
    port = free_port()
    app = InProcessTaskApp(config=build_config(), port=port, api_key=KEY)
    with pytest.raises(ConfigurationError, match="not running"):
        endpoint_of(app)
    with open_endpoint(app) as endpoint:
        assert endpoint.started_here and app.running
        assert endpoint.url == f"http://127.0.0.1:{port}" and endpoint.api_key == KEY
        assert health_ok(endpoint)
    assert not app.running
    assert_released(port)


# -- anything target_kwargs takes ------------------------------------------------------------


def _target_kinds(tmp_path: Path) -> list[tuple[Any, dict[str, str], str]]:
    app_file = tmp_path / "ep_app.py"
    app_file.write_text(
        "from tests.core.test_endpoint import build_config\nconfig = build_config()\n",
        encoding="utf-8",
    )
    return [
        (build_config(), {}, "config"),
        (build_config, {}, "factory"),
        ("tests.core.test_endpoint:build_config", {}, "tests.core.test_endpoint:build_config"),
        (str(app_file), {}, str(app_file)),
        ("ep-example", {"ep-example": "tests.core.test_endpoint:build_config"}, "ep-example"),
    ]


def test_every_target_kind_starts_checks_and_stops(tmp_path: Path, no_env_key: None) -> None:
    for target, aliases, label in _target_kinds(tmp_path):
        port = free_app_port()
        with open_endpoint(target, aliases=aliases, start={"port": port}) as endpoint:
            assert endpoint.started_here and endpoint.url == f"http://127.0.0.1:{port}"
            assert label in endpoint.label, (target, endpoint.label)
            assert endpoint.api_key and health_ok(endpoint)  # a fresh key, accepted
            assert endpoint.task_app is not None and endpoint.task_app.running
        assert not endpoint.task_app.running
        assert_released(port)


def test_an_alias_needs_the_callers_table() -> None:
    with pytest.raises(ConfigurationError, match="aliases=taskapp.examples.BUNDLED"):
        with open_endpoint("support-intents"):
            pass


def test_started_app_key_precedence_explicit_then_env_then_generated(
    monkeypatch: pytest.MonkeyPatch, no_env_key: None
) -> None:
    with open_endpoint(build_config) as generated:
        assert generated.api_key and generated.api_key not in (KEY, OTHER)
    monkeypatch.setenv(env_keys.KEY_VARIABLE, KEY)
    with open_endpoint(build_config) as from_env:
        assert from_env.api_key == KEY and health_ok(from_env)
    with open_endpoint(build_config, api_key=OTHER) as explicit:
        assert explicit.api_key == OTHER and health_ok(explicit)


def test_aopen_endpoint_starts_and_stops_off_the_loop(no_env_key: None) -> None:
    port = free_app_port()

    async def main() -> tuple[str, bool]:
        async with aopen_endpoint(build_config, start={"port": port}) as endpoint:
            async with endpoint.async_client(timeout=5.0) as client:
                info = await client.task_info()
            assert endpoint.task_app is not None
            return str(info), endpoint.task_app.running

    info, was_running = asyncio.run(main())
    assert was_running and info
    assert_released(port)


def test_is_url_spellings() -> None:
    assert is_url("https://a.example") and is_url("[::1]:8000") and is_url("localhost:1")
    assert not is_url("app.py") and not is_url("pkg.mod:attr") and not is_url(3)


# -- the verbs share it ------------------------------------------------------------------------


def test_evaluate_and_optimize_pick_the_same_key(
    running: InProcessTaskApp, monkeypatch: pytest.MonkeyPatch, no_env_key: None
) -> None:
    """The same URL, the same environment: both verbs send the same key (the user's
    $ENVIRONMENT_API_KEY), and both refuse to use a lent one."""
    pytest.importorskip("gepa")
    from taskapp.optimize import StandInReflectionLM, TaskAppUnavailableError, run

    url = running.url
    assert url is not None

    def optimize() -> Any:
        return run(
            url,
            "say it",
            train_seeds="0-3",
            val_seeds="0-3",
            reflection_lm=StandInReflectionLM(),
            minibatch_size=2,
            budget=12,
            health_timeout=5.0,
        )

    monkeypatch.setenv(env_keys.KEY_VARIABLE, KEY)
    assert taskapp.evaluate(url, seeds="0-1").ok
    assert optimize().baseline_score == pytest.approx(0.5)
    monkeypatch.delenv(env_keys.KEY_VARIABLE)
    loan = env_keys.lend(KEY)  # now only lent: neither verb may send it
    try:
        with pytest.raises(ApiKeyRejectedError):
            taskapp.evaluate(url, seeds="0-1")
        with pytest.raises(TaskAppUnavailableError, match="ENVIRONMENT_API_KEY"):
            optimize()
    finally:
        env_keys.give_back(loan)


def test_evaluate_and_optimize_take_the_same_start_options() -> None:
    import inspect

    from taskapp.evaluation import aevaluate, evaluate
    from taskapp.optimize.runner import run, run_config

    for verb in (evaluate, aevaluate, run, run_config):
        parameters = inspect.signature(verb).parameters
        assert {"start", "aliases", "api_key"} <= set(parameters), verb
        assert not {"tunnel", "server", "host", "port"} & set(parameters), verb
