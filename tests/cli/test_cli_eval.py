"""``taskapp eval``, run as a user runs it: the installed console script in a subprocess."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict

from tests.cli._cli_helpers import (
    BETTER_PROMPT_FILE,
    EXAMPLES_DIR,
    KEY,
    TASKAPP,
    ChatStandIn,
    NotATaskApp,
    Served,
    env,
    free_port,
    served,
    taskapp,
)
from tests.helpers import start_child

TEST_SEEDS = list(range(3, 400, 4))


class ResultModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int
    run_id: str
    status: str
    score: float | None
    latency_s: float
    http_status: int | None
    error: str | None
    details: dict[str, Any]


class SummaryModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requested: int
    completed: int
    mean_score: float | None
    success: int
    failed: int
    statuses: dict[str, int]
    latency_p50_s: float | None
    latency_p95_s: float | None
    rollout_s: float
    rollouts_per_s: float | None
    rollout_cpu_s: float


class ReportModel(BaseModel):
    """The documented --json format (docs/cli.md)."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["taskapp.eval/1"]
    target: str
    url: str
    split: str | None
    seeds: list[int]
    concurrency: int
    policy_config: dict[str, Any]
    started_at: str
    interrupted: str | None
    stopped_early: str | None
    summary: SummaryModel
    results: list[ResultModel]


def read_report(path: Path) -> ReportModel:
    return ReportModel.model_validate_json(path.read_text())


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# -- the happy path ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[Served]:
    """One ``taskapp serve support-intents`` for the tests that use ``--url``."""
    with served("support-intents", ENVIRONMENT_API_KEY=KEY) as running:
        yield running


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, ReportModel]:
    """The README's first command, with --json."""
    out = tmp_path_factory.mktemp("eval") / "results.json"
    result = taskapp("eval", "support-intents", "--json", str(out))
    assert result.returncode == 0, result.stderr
    return result, read_report(out)


def test_eval_bundled_example_default_split(default_run: tuple[Any, ReportModel]) -> None:
    result, report = default_run
    assert "100 of 100" in result.stdout
    assert "0.420" in result.stdout  # the baseline's mean score on the test split
    assert "worst 5" in result.stdout
    assert "latency p50" in result.stdout
    # progress goes to stderr, as plain lines when stderr is not a terminal
    assert "eval: 100/100 done, 0 failed" in result.stderr
    assert "eval:" not in result.stdout
    assert "WARNING" not in result.stderr
    assert report.split == "test"
    assert report.seeds == TEST_SEEDS
    assert report.concurrency == 8
    assert report.summary.completed == 100
    assert report.summary.mean_score == pytest.approx(0.42)
    assert report.summary.success == 100 and report.summary.failed == 0
    assert [r.seed for r in report.results] == TEST_SEEDS
    assert sum(r.score or 0 for r in report.results) == 42
    for item in report.results:
        assert item.status == "success"
        assert item.details["expected"] and "feedback" in item.details


def test_same_results_at_any_concurrency_remote_url(
    server: Served, default_run: tuple[Any, ReportModel], tmp_path: Path
) -> None:
    out = tmp_path / "c1.json"
    result = taskapp("eval", "--url", server.url, "--split", "test", "--concurrency", "1",
                     "--json", str(out), ENVIRONMENT_API_KEY=KEY)  # fmt: skip
    assert result.returncode == 0, result.stderr
    serial = read_report(out)
    assert serial.url == server.url and serial.concurrency == 1
    assert [(r.seed, r.score, r.details["predicted"]) for r in serial.results] == [
        (r.seed, r.score, r.details["predicted"]) for r in default_run[1].results
    ]


def test_a_better_prompt_scores_higher(server: Served, tmp_path: Path) -> None:
    out = tmp_path / "better.json"
    result = taskapp("eval", "--url", server.url, "--policy-config", f"@{BETTER_PROMPT_FILE}",
                     "--json", str(out), ENVIRONMENT_API_KEY=KEY)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "0.860" in result.stdout
    report = read_report(out)
    assert report.summary.mean_score == pytest.approx(0.86)
    assert report.policy_config["prompt"].startswith("You are a customer-support")


def test_seed_lists_and_json_to_stdout(server: Served) -> None:
    result = taskapp("eval", "--url", server.url, "--seeds", "0-19,390-399", "--json", "-",
                     ENVIRONMENT_API_KEY=KEY)  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = ReportModel.model_validate_json(result.stdout)  # stdout is only the JSON
    assert [r.seed for r in report.results] == [*range(20), *range(390, 400)]
    assert report.split is None
    assert "mean score" in result.stderr  # the table moved to stderr


def test_wrong_key_and_out_of_range_seeds_against_a_url(server: Served) -> None:
    wrong = taskapp("eval", "--url", server.url, ENVIRONMENT_API_KEY="wrong-key-000000")
    assert wrong.returncode == 1
    assert "rejected the API key (HTTP 401" in wrong.stderr
    assert "wrong-key-000000" not in wrong.stderr + wrong.stdout
    missing = taskapp("eval", "--url", server.url)
    assert missing.returncode == 1
    assert "it needs an API key" in missing.stderr
    outside = taskapp("eval", "--url", server.url, "--seeds", "395-405", ENVIRONMENT_API_KEY=KEY)
    assert outside.returncode == 2
    assert "--seeds: 400-405 outside the task set (its seeds are 0-399)" in outside.stderr
    split = taskapp("eval", "--url", server.url, "--split", "dev", ENVIRONMENT_API_KEY=KEY)
    assert split.returncode == 2
    assert "--split 'dev' is not in the task set (splits: train, test)" in split.stderr


def test_eval_through_a_tunnel_backend(server: Served, tmp_path: Path) -> None:
    # The preconfigured tunnel hands out a URL the user already has: here the served app,
    # which accepts the same key, so the rollouts provably go through the tunnel's URL.
    out = tmp_path / "tunnel.json"
    result = taskapp("eval", "support-intents", "--seeds", "0-9", "--tunnel", "preconfigured",
                     "--tunnel-option", f"url={server.url}", "--json", str(out),
                     ENVIRONMENT_API_KEY=KEY)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert read_report(out).url == server.url
    assert read_report(out).summary.completed == 10


def test_log_json_makes_every_stderr_line_json() -> None:
    result = taskapp("--log-json", "-v", "eval", "support-intents", "--seeds", "0-9")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    records = [json.loads(line) for line in lines]
    assert any(r["message"] == "eval: 10/10 done, 0 failed" or "10/10 done" in r["message"]
               for r in records)  # fmt: skip
    assert any(r["logger"] == "taskapp" and "task app ready" in r["message"] for r in records)


def test_log_json_errors_are_json_too(tmp_path: Path) -> None:
    usage = taskapp("--log-json", "eval", "no-such-thing")
    assert usage.returncode == 2
    (record,) = [json.loads(line) for line in usage.stderr.strip().splitlines()]
    assert record["level"] == "ERROR"
    assert record["message"].startswith("taskapp eval: error: unknown target 'no-such-thing'")
    path = write(tmp_path, "broken.py", "raise KeyError('settings')\n")
    failed = taskapp("--log-json", "eval", str(path))
    assert failed.returncode == 1
    records = [json.loads(line) for line in failed.stderr.strip().splitlines()]
    error = records[-1]
    assert error["level"] == "ERROR" and "executing" in error["message"]
    assert f'File "{path}", line 1' in error["exception"]
    assert "KeyError: 'settings'" in error["exception"]


def test_eval_the_standalone_example_file_scores_like_the_bundled_one() -> None:
    result = taskapp("eval", str(EXAMPLES_DIR / "support_intents_app.py"), "--split", "train")
    assert result.returncode == 0, result.stderr
    assert "300 of 300" in result.stdout
    assert "0.417" in result.stdout


def test_progress_bar_on_a_terminal(server: Served) -> None:
    main, secondary = pty.openpty()
    try:
        proc = start_child(
            [TASKAPP, "eval", "--url", server.url, "--seeds", "0-49"],
            stdout=subprocess.PIPE,
            stderr=secondary,
            stdin=subprocess.DEVNULL,
            env=env(ENVIRONMENT_API_KEY=KEY),
        )
        os.close(secondary)
        seen = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(main, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        stdout = proc.stdout.read().decode() if proc.stdout else ""
        assert proc.wait(10) == 0
    finally:
        os.close(main)
    assert b"eval: 50/50 done" not in seen  # not the plain lines
    assert b"\x1b[" in seen  # rich drew (and redrew) the bar
    assert b"50/50" in seen
    assert "50 of 50" in stdout


# -- the inference_url path, end to end --------------------------------------------------


def test_inference_url_end_to_end_with_a_stand_in_model(tmp_path: Path) -> None:
    model_key = "sk-standin-model-key-9876"
    out = tmp_path / "model.json"
    with ChatStandIn(answer="refund") as model:
        policy = {
            "inference_url": f"{model.url}/v1",
            "model": "standin-model",
            "api_key_env": "STANDIN_MODEL_KEY",
        }
        result = taskapp(
            "eval", "support-intents", "--seeds", "0-19", "--policy-config", json.dumps(policy),
            "--json", str(out), STANDIN_MODEL_KEY=model_key,
            SUPPORT_INTENTS_API_KEY_ENVS="STANDIN_MODEL_KEY",
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(model.requests) == 20
    assert {r["authorization"] for r in model.requests} == {f"Bearer {model_key}"}
    assert {r["body"]["model"] for r in model.requests} == {"standin-model"}
    report = read_report(out)
    refunds = [r.seed for r in report.results if r.details["expected"] == "refund"]
    assert refunds  # the stand-in always answers refund: right exactly on those seeds
    assert [r.seed for r in report.results if r.score == 1.0] == refunds
    assert report.summary.mean_score == pytest.approx(len(refunds) / 20)
    assert "chat model" in result.stdout
    assert model_key not in result.stdout + result.stderr + out.read_text()


def test_unreachable_inference_url_fails_fast_with_one_clear_cause(server: Served) -> None:
    policy = json.dumps({"inference_url": "http://127.0.0.1:9/v1", "model": "m"})
    result = taskapp("eval", "--url", server.url, "--seeds", "0-99", "--concurrency", "2",
                     "--policy-config", policy, ENVIRONMENT_API_KEY=KEY)  # fmt: skip
    assert result.returncode == 1
    assert "could not reach the inference URL http://127.0.0.1:9/v1/chat/completions" in (
        result.stdout
    )
    assert "stopped the rest" in result.stderr
    assert "Traceback" not in result.stderr


# -- bad input: one clear message, the right exit status, no traceback -------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no-such-thing"], "unknown target 'no-such-thing'"),
        (["missing_file.py"], "no such file: missing_file.py"),
        (["nosuchmodule_xyz:app"], "no module named 'nosuchmodule_xyz'"),
        (["support-intents", "--policy-config", "{not json"], "is not valid JSON"),
        (["support-intents", "--policy-config", "@/nonexistent/p.json"], "cannot read"),
        (["support-intents", "--policy-config", "[1, 2]"], "must be a JSON object"),
        (["support-intents", "--seeds", "0-10x"], "--seeds: '0-10x' is not a seed or an"),
        (["support-intents", "--url", "http://127.0.0.1:9"], "either TARGET or --url"),
        ([], "pass TARGET"),
        (["support-intents", "--concurrency", "0"], "--concurrency must be at least 1"),
        (["support-intents", "--timeout", "inf"], "--rollout-timeout must be positive"),
        (["support-intents", "--health-timeout", "0"], "--health-timeout must be positive"),
        (["support-intents", "--port", "70000"], "--port must be from 0 to 65535"),
        (["support-intents", "--server-option", "x"], "--server-option 'x': expected KEY=VALUE"),
        (["--url", "http://127.0.0.1:9", "--server", "subprocess"], "--server start TARGET"),
        (["--url", "ftp://x"], "expected http://host"),
        (["support-intents", "--tunnel", "warp-drive"], "unknown tunnel 'warp-drive'"),
        (["--url", "http://127.0.0.1:9", "--tunnel", "local2"], "not with --url"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = taskapp("eval", *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2


def test_file_without_an_app(tmp_path: Path) -> None:
    path = write(tmp_path, "empty_app.py", "X = 1\n")
    result = taskapp("eval", str(path))
    assert result.returncode == 1
    assert "found no task app in" in result.stderr
    assert "build_config" in result.stderr
    assert "Traceback" not in result.stderr


def test_module_raising_on_import_shows_its_own_traceback(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "broken_app.py",
        """\
        import json

        def helper():
            return 1 / 0

        VALUE = helper()
        """,
    )
    result = taskapp("eval", str(path))
    assert result.returncode == 1
    err = result.stderr
    assert "Traceback (most recent call last)" in err
    assert f'File "{path}", line 6' in err and f'File "{path}", line 4' in err
    assert "ZeroDivisionError: division by zero" in err
    assert "taskapp/core" not in err and "taskapp/plugins" not in err  # only the user's frames
    assert "executing" in err and "failed" in err


def test_import_string_target_from_the_current_directory(tmp_path: Path) -> None:
    write(
        tmp_path,
        "mytask.py",
        """\
        from taskapp.examples.support_intents import build_config as make

        def build():
            return make()
        """,
    )
    result = taskapp("eval", "mytask:build", "--seeds", "0-3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "4 of 4" in result.stdout


def test_url_that_is_not_a_task_app() -> None:
    with NotATaskApp() as web:
        result = taskapp("eval", "--url", web.url, ENVIRONMENT_API_KEY=KEY)
    assert result.returncode == 1
    assert "does not look like a task app" in result.stderr
    assert "Traceback" not in result.stderr


def test_url_with_nothing_listening() -> None:
    port = free_port()
    result = taskapp("eval", "--url", f"http://127.0.0.1:{port}")
    assert result.returncode == 1
    assert f"connection refused: nothing is listening at 127.0.0.1:{port}" in result.stderr


def test_failing_rollouts_exit_1_and_are_listed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "flaky_app.py",
        """\
        from taskapp import TaskAppConfig

        async def rollout(request, http_request):
            seed = request.env.seed
            if seed % 3 == 0:
                raise RuntimeError("boom")
            if seed % 3 == 1:
                return {"run_id": request.run_id, "metrics": {"outcome_score": 0.0,
                        "details": {"error": "policy exploded"}},
                        "success_status": "runtime_error"}
            return {"run_id": request.run_id, "metrics": {"outcome_score": 1.0}}

        def build_config():
            return TaskAppConfig(
                app_id="flaky", name="flaky", description="",
                describe_taskset=lambda: {"size": 12},
                provide_task_instances=lambda seeds: [], rollout=rollout)
        """,
    )
    out = tmp_path / "flaky.json"
    result = taskapp("eval", str(path), "--keep-going", "--json", str(out))
    assert result.returncode == 1
    report = read_report(out)
    assert report.summary.completed == 12
    assert report.summary.statuses == {"http_error": 4, "runtime_error": 4, "success": 4}
    assert "4 x runtime_error: policy exploded" in result.stdout
    assert "4 x http_error: HTTP 500: the task app raised RuntimeError" in result.stdout
    assert "HTTP 500" in result.stdout
    assert "8 rollout(s) failed" in result.stderr


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_stops_cleanly_and_prints_what_finished(
    tmp_path: Path, signum: int, status: int
) -> None:
    path = write(
        tmp_path,
        "slow_app.py",
        """\
        import asyncio
        from taskapp import TaskAppConfig

        async def rollout(request, http_request):
            await asyncio.sleep(0.1)
            return {"run_id": request.run_id, "metrics": {"outcome_score": 1.0}}

        def build_config():
            return TaskAppConfig(
                app_id="slow", name="slow", description="",
                describe_taskset=lambda: {"size": 400},
                provide_task_instances=lambda seeds: [], rollout=rollout)
        """,
    )
    out = tmp_path / "partial.json"
    proc = start_child(
        [TASKAPP, "eval", str(path), "--concurrency", "2", "--json", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
        stdin=subprocess.DEVNULL,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "40/400 done" in line or not line:
            break
    proc.send_signal(signum)
    sent = time.monotonic()
    stdout, stderr = proc.communicate(timeout=20)
    assert time.monotonic() - sent < 3
    name = signal.Signals(signum).name
    assert proc.returncode == status, stderr
    assert f"interrupted by {name}" in stderr
    assert "Traceback" not in stderr
    assert "WARNING" not in stderr
    report = read_report(out)
    assert report.interrupted == name
    assert 40 <= report.summary.completed < 400
    assert f"{report.summary.completed} of 400" in stdout


SLOW_START_APP = """\
import time
from taskapp import TaskAppConfig

async def rollout(request, http_request):
    return {"run_id": request.run_id, "metrics": {"outcome_score": 1.0}}

def build_config():
    return TaskAppConfig(
        app_id="slow-start", name="slow start", description="",
        describe_taskset=lambda: {"size": 4},
        provide_task_instances=lambda seeds: [], rollout=rollout,
        startup_hooks=[lambda: time.sleep(2.5)])
"""


def test_eval_starts_an_app_the_way_serve_does(tmp_path: Path) -> None:
    # Issue 14 item 2: the start options of serve, with serve's names; errors name the
    # flags and durations in seconds, not Python keywords.
    path = write(tmp_path, "slow_start_app.py", SLOW_START_APP)
    port = free_port()
    too_short = taskapp("eval", str(path), "--health-timeout", "1")
    assert too_short.returncode == 1
    assert "--health-timeout" in too_short.stderr, too_short.stderr
    assert "health_check_timeout" not in too_short.stderr
    assert re.search(r"within (the )?\d+(\.\d{1,3})? s\b", too_short.stderr), too_short.stderr
    enough = taskapp("eval", str(path), "--health-timeout", "20", "--port", str(port),
                     "--server", "subprocess", "--server-option", "workers=1",
                     "--rollout-timeout", "30", "--json", "-")  # fmt: skip
    assert enough.returncode == 0, enough.stderr
    report = ReportModel.model_validate_json(enough.stdout)
    assert report.url == f"http://127.0.0.1:{port}"
    assert report.summary.completed == 4


def test_malformed_rollout_responses_say_which_fields_once(tmp_path: Path) -> None:
    # Issue 14 item 6: the user's rollout returned something without a score; nothing
    # raised, so the message names the fields, once per distinct error, no traceback.
    path = write(
        tmp_path,
        "malformed_app.py",
        """\
        from taskapp import TaskAppConfig

        async def rollout(request, http_request):
            if request.env.seed % 2:
                return {"run_id": request.run_id, "metrics": {"score": 1.0}}
            return {"run_id": request.run_id, "metrics": {"outcome_score": "high"}}

        def build_config():
            return TaskAppConfig(
                app_id="malformed", name="malformed", description="",
                describe_taskset=lambda: {"size": 6},
                provide_task_instances=lambda seeds: [], rollout=rollout)
        """,
    )
    result = taskapp("eval", str(path), "--keep-going")
    assert result.returncode == 1
    out = result.stdout + result.stderr
    assert "raised ValidationError" not in out
    assert "Traceback" not in result.stderr
    assert "metrics.outcome_score" in result.stdout
    failures = [line for line in result.stdout.splitlines() if line.startswith("  3 x ")]
    assert len(failures) == 2, result.stdout
    assert result.stderr.count("metrics.outcome_score") <= 2, result.stderr


def test_eval_url_of_a_synth_ai_style_app(tmp_path: Path) -> None:
    # Issue 16 item 2, reading side: trace_correlation_id sent, reward_info read.
    from tests.cli._cli_helpers import _ThreadedUvicorn
    from tests.core._synth_style import synth_style_app

    out = tmp_path / "synth.json"
    with _ThreadedUvicorn(synth_style_app(KEY)) as running:
        result = taskapp("eval", "--url", running.url, "--json", str(out), "--keep-going",
                         ENVIRONMENT_API_KEY=KEY)  # fmt: skip
        wrong = taskapp("eval", "--url", running.url, ENVIRONMENT_API_KEY="wrong-key-000000")
    assert result.returncode == 1, result.stderr  # the odd seeds score 0 ("failure")
    report = read_report(out)
    assert report.split == "train"
    assert [(r.seed, r.score, r.status) for r in report.results] == [
        (seed, float(seed % 2 == 0), "success" if seed % 2 == 0 else "failure") for seed in range(6)
    ]
    assert report.summary.statuses == {"failure": 3, "success": 3}
    assert wrong.returncode == 1
    assert "rejected the API key (HTTP 400" in wrong.stderr
