"""``taskapp check URL`` against a served app, a wrong key and URLs that are not task apps."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from taskapp.core.contract import create_task_app
from taskapp.core.secrets import fingerprint
from taskapp.examples.support_intents import build_config
from tests.cli._cli_helpers import (
    KEY,
    NotATaskApp,
    Served,
    _ThreadedUvicorn,
    free_port,
    served,
    taskapp,
)


@pytest.fixture(scope="module")
def server() -> Iterator[Served]:
    with served("support-intents", ENVIRONMENT_API_KEY=KEY) as running:
        yield running


def test_check_a_served_app(server: Served) -> None:
    result = taskapp("check", server.url, ENVIRONMENT_API_KEY=KEY)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"checking {server.url} (key {fingerprint(KEY)} from $ENVIRONMENT_API_KEY)"
    assert "ok   GET /          task app 'support-intents' is up" in result.stdout
    assert "ok   GET /health    healthy, key accepted" in result.stdout
    assert "ok   GET /health without key refused with HTTP 401" in result.stdout
    assert "ok   GET /info      service 'Customer-support intents'" in result.stdout
    assert "ok   GET /task_info splits train=300, test=100" in result.stdout
    assert "ok   error envelope a malformed rollout is answered HTTP 422" in result.stdout
    assert "ok   key not echoed the key appears in none of" in result.stdout
    assert lines[-1] == "task app OK"
    assert KEY not in result.stdout + result.stderr


def test_check_json_output(server: Served) -> None:
    result = taskapp("check", server.url, "--api-key-env", "K", "--json", K=KEY)
    assert result.returncode == 0
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["key"] == fingerprint(KEY)
    assert [c["name"] for c in report["checks"]] == [
        "GET /",
        "GET /health",
        "GET /health without key",
        "GET /info",
        "GET /task_info",
        "GET /metadata",
        "error envelope",
        "key not echoed",
    ]
    assert all(c["ok"] for c in report["checks"])
    assert [c["status"] for c in report["checks"][:5]] == [200, 200, 401, 200, 200]


def test_check_without_scheme_with_rollouts(server: Served) -> None:
    bare = server.url.removeprefix("http://")
    result = taskapp("check", bare, "--seeds", "0-1", ENVIRONMENT_API_KEY=KEY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"checking {server.url} (" in result.stdout
    assert "ok   POST /rollout seed 0 score " in result.stdout
    assert "ok   POST /rollout seed 1 score " in result.stdout


def test_wrong_key(server: Served) -> None:
    result = taskapp("check", server.url, ENVIRONMENT_API_KEY="not-the-key-123")
    assert result.returncode == 1
    assert "ok   GET /          task app 'support-intents' is up" in result.stdout
    assert (
        "FAIL GET /health    auth rejected (HTTP 401): the app does not accept key "
        f"{fingerprint('not-the-key-123')}"
    ) in result.stdout
    assert "/info" not in result.stdout  # the same rejection would only repeat
    assert result.stdout.splitlines()[-1] == "1 of 2 checks failed"
    assert "not-the-key-123" not in result.stdout + result.stderr


def test_no_key(server: Served) -> None:
    result = taskapp("check", server.url)
    assert result.returncode == 1
    assert "checking" in result.stdout and "(no API key)" in result.stdout
    assert "no API key was sent" in result.stdout


def test_not_a_task_app() -> None:
    with NotATaskApp() as web:
        result = taskapp("check", web.url, ENVIRONMENT_API_KEY=KEY)
    assert result.returncode == 1
    assert "FAIL GET /          not a task app root: answered HTTP 200 with HTML" in result.stdout
    assert "FAIL GET /health    not a task app: GET /health answered 404" in result.stdout
    assert "Traceback" not in result.stderr


def test_app_without_a_configured_key() -> None:
    app = create_task_app(build_config(), api_keys=[])
    with _ThreadedUvicorn(app) as running:
        result = taskapp("check", running.url, ENVIRONMENT_API_KEY=KEY)
    assert result.returncode == 1
    assert "the app has no API key configured (HTTP 503 missing_api_key)" in result.stdout


def test_connection_refused() -> None:
    port = free_port()
    result = taskapp("check", f"http://127.0.0.1:{port}")
    assert result.returncode == 1
    assert f"connection refused: nothing is listening at 127.0.0.1:{port}" in result.stdout
    assert result.stdout.splitlines()[-1] == "1 of 1 checks failed"


def test_tls_to_a_plain_http_server(server: Served) -> None:
    https = server.url.replace("http://", "https://")
    result = taskapp("check", https, ENVIRONMENT_API_KEY=KEY)
    assert result.returncode == 1
    assert "TLS handshake with 127.0.0.1" in result.stdout
    assert "use http:// instead of https://" in result.stdout


def test_timeout_when_nothing_answers() -> None:
    # A listening socket that never accepts: the connection is queued, no answer comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        result = taskapp("check", f"http://127.0.0.1:{port}", "--timeout", "0.5")
    assert result.returncode == 1
    assert f"timeout: no answer from 127.0.0.1:{port} within 0.5 s" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ftp://example.com"], "expected http://host"),
        (["http://127.0.0.1:99999"], "the port is not a number"),
        (["http://127.0.0.1:1", "--timeout", "0"], "--timeout must be a positive number"),
        (["http://127.0.0.1:1", "--timeout", "nan"], "--timeout must be a positive number"),
        (["http://127.0.0.1:1", "--seeds", "3-1"], "--seeds: range '3-1' runs backwards"),
        (["http://127.0.0.1:1", "--api-key-env", "UNSET_VAR_XYZ"], "UNSET_VAR_XYZ is not set"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = taskapp("check", *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_api_key_on_the_command_line_works_but_warns(server: Served) -> None:
    result = taskapp("check", server.url, "--api-key", KEY)
    assert result.returncode == 0
    assert "visible to other users in the process list" in result.stderr
    assert KEY not in result.stdout + result.stderr


def test_check_a_synth_ai_style_app() -> None:
    from tests.core._synth_style import synth_style_app

    with _ThreadedUvicorn(synth_style_app(KEY)) as running:
        good = taskapp("check", running.url, "--seeds", "0-1", ENVIRONMENT_API_KEY=KEY)
        wrong = taskapp("check", running.url, ENVIRONMENT_API_KEY="not-the-key-123")
    assert good.returncode == 0, good.stdout
    assert "from reward_info.outcome_reward" in good.stdout
    assert wrong.returncode == 1
    assert "FAIL GET /health    auth rejected (HTTP 400)" in wrong.stdout
