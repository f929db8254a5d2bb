"""`taskapp check` and `taskapp eval --url` against a task app behind a real relay: the
relay's worker token travels from the environment (never argv) as the ingress header."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from taskapp import InProcessTaskApp
from taskapp.examples.support_intents import build_config
from tests.helpers import free_port, run_child
from tests.relay._relay_helpers import ADMIN, running_relay


@pytest.fixture(scope="module")
def relayed() -> Iterator[InProcessTaskApp]:
    with running_relay() as relay:
        app = InProcessTaskApp(
            config=build_config(),
            port=free_port(),
            tunnel_mode="synthtunnel",
            tunnel_options={"relay_url": relay.url, "admin_token": ADMIN},
        )
        with app:
            yield app


def taskapp_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "TASKAPP_WORKER_TOKEN"}
    return run_child(
        ["taskapp", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **env},
        check=False,
    )


def test_check_sends_worker_token_from_environment(relayed: InProcessTaskApp) -> None:
    assert relayed.url is not None
    assert relayed.task_app_worker_token is not None
    env = {"APP_KEY": relayed.api_key, "RELAY_TOKEN": relayed.task_app_worker_token}
    ok = taskapp_cli(
        "check",
        relayed.url,
        "--api-key-env",
        "APP_KEY",
        "--worker-token-env",
        "RELAY_TOKEN",
        env=env,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert relayed.task_app_worker_token not in ok.stdout + ok.stderr
    default_env = taskapp_cli(
        "check",
        relayed.url,
        "--api-key-env",
        "APP_KEY",
        env={**env, "TASKAPP_WORKER_TOKEN": relayed.task_app_worker_token},
    )
    assert default_env.returncode == 0, default_env.stdout + default_env.stderr
    refused = taskapp_cli("check", relayed.url, "--api-key-env", "APP_KEY", env=env)
    assert refused.returncode == 1


def test_eval_url_through_relay(relayed: InProcessTaskApp) -> None:
    assert relayed.url is not None
    assert relayed.task_app_worker_token is not None
    result = taskapp_cli(
        "eval",
        "--url",
        relayed.url,
        "--seeds",
        "0-9",
        "--api-key-env",
        "APP_KEY",
        "--worker-token-env",
        "RELAY_TOKEN",
        env={"APP_KEY": relayed.api_key, "RELAY_TOKEN": relayed.task_app_worker_token},
    )
    assert result.returncode == 0, result.stderr
    assert "10 of 10" in result.stdout


def test_missing_worker_token_variable_is_a_usage_error(relayed: InProcessTaskApp) -> None:
    assert relayed.url is not None
    result = taskapp_cli("check", relayed.url, "--worker-token-env", "NOT_SET_ANYWHERE", env={})
    assert result.returncode == 2
    assert "NOT_SET_ANYWHERE is not set" in result.stderr
