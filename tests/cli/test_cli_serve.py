"""``taskapp serve``, run as a user runs it: the installed console script in a subprocess."""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path

import httpx
import pytest

from taskapp.core.secrets import fingerprint
from tests.cli._cli_helpers import (
    EXAMPLES_DIR,
    KEY,
    Served,
    children_of,
    port_is_free,
    served,
    taskapp,
)
from tests.helpers import start_child


def health(url: str, key: str | None) -> int:
    headers = {"X-API-Key": key} if key else {}
    return httpx.get(f"{url}/health", headers=headers, timeout=5, trust_env=False).status_code


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_answers_health_then_stops_within_2s(signum: int) -> None:
    with served("support-intents", ENVIRONMENT_API_KEY=KEY) as server:
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert health(server.url, KEY) == 200
        assert health(server.url, None) == 401
        assert health(server.url, "wrong-key-0000") == 401
        # a rollout works through the served URL
        body = httpx.post(
            f"{server.url}/rollout",
            headers={"X-API-Key": KEY},
            json={"run_id": "r", "env": {"seed": 3}, "policy": {"config": {}}},
            trust_env=False,
        ).json()
        assert body["metrics"]["details"]["split"] == "test"
        assert children_of(server.proc.pid) == []
        code, elapsed, stderr = server.stop(signum)
    assert code == 0, stderr
    assert elapsed < 2.0, f"took {elapsed:.2f}s to stop"
    assert f"{signal.Signals(signum).name} received, stopped cleanly" in stderr
    assert "Traceback" not in stderr
    assert port_is_free(server.port)


def test_banner_shows_the_fingerprint_not_the_key() -> None:
    with served("support-intents", ENVIRONMENT_API_KEY=KEY) as server:
        server.stop()
    assert f"api key: {fingerprint(KEY)} (from $ENVIRONMENT_API_KEY)" in server.stdout
    assert KEY not in server.stdout + server.stderr
    assert "serving support-intents (Customer-support intents)" in server.stdout


def test_show_key_and_a_generated_key() -> None:
    with served("support-intents", "--show-key") as server:
        key_line = next(line for line in server.stdout.splitlines() if "key:     " in line)
        key = key_line.split()[-1]
        assert "generated for this run" in server.stdout
        assert health(server.url, key) == 200
        server.stop()


def test_api_key_env_option() -> None:
    with served("support-intents", "--api-key-env", "MY_TASK_KEY", MY_TASK_KEY=KEY) as server:
        assert health(server.url, KEY) == 200
        server.stop()
    assert "(from $MY_TASK_KEY)" in server.stdout


def test_serve_a_py_file_and_a_module_attr(tmp_path: Path) -> None:
    with served(str(EXAMPLES_DIR / "support_intents_app.py"), ENVIRONMENT_API_KEY=KEY) as server:
        assert health(server.url, KEY) == 200
        server.stop()
    (tmp_path / "tiny.py").write_text(
        textwrap.dedent(
            """\
            from taskapp import TaskAppConfig, create_task_app

            async def rollout(request, http_request):
                return {"run_id": request.run_id, "metrics": {"outcome_score": 1.0}}

            config = TaskAppConfig(app_id="tiny", name="Tiny", description="",
                                   describe_taskset=lambda: {"size": 1},
                                   provide_task_instances=lambda seeds: [], rollout=rollout)
            app = create_task_app(config)
            """
        )
    )
    with Served("tiny:app", ENVIRONMENT_API_KEY=KEY, cwd=tmp_path) as server:
        server.wait_url()
        assert health(server.url, KEY) == 200
        code, _, _ = server.stop(signal.SIGTERM)
    assert code == 0


def test_busy_port_moves_to_the_next_one_and_says_so() -> None:
    with served("support-intents", ENVIRONMENT_API_KEY=KEY) as first:
        with served("support-intents", port=first.port, ENVIRONMENT_API_KEY=KEY) as second:
            assert second.url != first.url
            assert f"(port {first.port} is in use; listening on" in second.stdout
            assert health(first.url, KEY) == 200  # the first one was left alone
            assert health(second.url, KEY) == 200
            assert second.stop()[0] == 0
        assert first.stop()[0] == 0


def test_subprocess_server_with_workers() -> None:
    with served(
        "support-intents", "--server", "subprocess", "--workers", "2", ENVIRONMENT_API_KEY=KEY
    ) as server:
        assert "server:  subprocess" in server.stdout
        assert health(server.url, KEY) == 200
        assert children_of(server.proc.pid)  # the uvicorn child
        code, elapsed, stderr = server.stop(signal.SIGTERM)
    assert code == 0, stderr
    # Usually < 2 s; one fresh-clone CI run of session 4 measured 5.2 s once (not reproduced
    # in 3 reruns): an intermittent stall on SIGTERM with 2 workers, named in the issue notes.
    assert elapsed < 8.0
    assert children_of(server.proc.pid) == []
    assert port_is_free(server.port)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "unknown target 'nope'"),
        (["missing.py"], "no such file: missing.py"),
        (["support-intents", "--workers", "2"], "--workers needs --server subprocess"),
        (["support-intents", "--tunnel", "warp-drive"], "unknown tunnel 'warp-drive'"),
        (["support-intents", "--server", "rocket"], "unknown server 'rocket'"),
        (["support-intents", "--host", "10.1.2.3"], "host must be one of"),
        (["support-intents", "--tunnel-option", "novalue"], "expected KEY=VALUE"),
        (["support-intents", "--api-key-env", "UNSET_VAR_XYZ"], "UNSET_VAR_XYZ is not set"),
        (["support-intents", "--tunnel-option", "colour=blue"], "unknown option(s) 'colour'"),
        (["support-intents", "--health-timeout", "nan"], "--health-timeout must be positive"),
        (["support-intents", "--replicas", "2"], "--replicas needs --server ray"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = taskapp("serve", *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_module_raising_on_import_shows_its_traceback(tmp_path: Path) -> None:
    path = tmp_path / "raises.py"
    path.write_text("import os\nraise RuntimeError('config file missing')\n")
    result = taskapp("serve", str(path))
    assert result.returncode == 1
    assert f'File "{path}", line 2' in result.stderr
    assert "RuntimeError: config file missing" in result.stderr
    assert "taskapp/core" not in result.stderr


def test_lifespan_failure_shows_the_users_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad_startup.py"
    path.write_text(
        textwrap.dedent(
            """\
            from taskapp import TaskAppConfig

            def connect():
                raise ConnectionError("database unreachable")

            def build_config():
                return TaskAppConfig(app_id="x", name="x", description="",
                                     describe_taskset=dict, provide_task_instances=list,
                                     rollout=dict, startup_hooks=[connect])
            """
        )
    )
    result = taskapp("serve", str(path))
    assert result.returncode == 1
    assert "database unreachable" in result.stderr
    assert f'File "{path}", line 4, in connect' in result.stderr
    assert "lifespan startup raised ConnectionError" in result.stderr


def test_port_zero_means_any_free_port() -> None:
    import subprocess

    from tests.cli._cli_helpers import TASKAPP, env

    proc = start_child(
        [TASKAPP, "serve", "support-intents", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        banner = ""
        for line in proc.stdout:
            banner += line
            if line.startswith("press Ctrl-C"):
                break
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert "url:     http://127.0.0.1:" in banner and ":0\n" not in banner, banner
    assert "is in use" not in banner
