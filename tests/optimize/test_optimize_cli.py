"""``taskapp optimize`` run as a user runs it: a subprocess of the installed console script.

Offline: the reflection model is the ``--stand-in`` (deterministic, no network) or the
OpenAI-compatible **stand-in** server of ``tests/optimize/_optimize_helpers.py``.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from taskapp import InProcessTaskApp
from tests.helpers import run_child, start_child
from tests.optimize._optimize_helpers import REPO, TASKAPP, child_env, fake_openai_app, taskapp

TOY = "tests.optimize._optimize_helpers:toy_app_config"
SEEDS = ["--train-seeds", "0-39", "--val-seeds", "100-129"]
OUTSIDE_SEEDS = ["--train-seeds", "390-420", "--val-seeds", "0-9", "--test-seeds", "100-109"]
NAN_TEMPERATURE = ["--reflection-temperature", "nan"]


def test_optimize_the_bundled_example(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = taskapp(
        "optimize",
        "support-intents",
        "--stand-in",
        "--train-seeds",
        "0-99",
        "--val-seeds",
        "100-139",
        "--test-seeds",
        "300-339",
        "--budget",
        "150",
        "--out",
        str(out),
        "--json",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # stdout is the JSON and nothing else
    assert result["status"] == "succeeded"
    assert result["best_score"] > result["baseline_score"]
    assert result["metric_calls"] <= 150
    assert set(result["test_scores"]) >= {"baseline", "best"}
    assert "baseline" in done.stderr and "iter" in done.stderr  # progress on stderr
    saved = json.loads((out / "result.json").read_text())
    assert saved["best_prompt"] == result["best_prompt"]
    assert (out / "best_prompt.txt").read_text().strip() == result["best_prompt"].strip()
    assert (out / "score_curve.svg").is_file()
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert history[0]["event"] == "baseline" and history[-1]["event"] == "stopped"


def test_log_json_makes_progress_and_errors_json(tmp_path: Path) -> None:
    done = taskapp("--log-json", "optimize", TOY, "--stand-in", *SEEDS, "--budget", "100",
                   "--out", str(tmp_path / "run"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stderr.strip().splitlines()]
    kinds = [r["progress"]["event"] for r in records if "progress" in r]
    # "started" (the task's name, for the jobs page) comes first since issue 26
    assert kinds[:2] == ["started", "baseline"] and kinds[-1] == "stopped", kinds
    down = taskapp("--log-json", "optimize", f"http://127.0.0.1:{closed_port()}", "--stand-in",
                   *SEEDS, "--budget", "100", "--health-timeout", "0.5")  # fmt: skip
    assert down.returncode == 3
    (error,) = [json.loads(line) for line in down.stderr.strip().splitlines()]
    assert error["level"] == "ERROR" and "did not answer 200" in error["message"]


def test_resume_continues_the_run(tmp_path: Path) -> None:
    out = str(tmp_path / "run")
    first = taskapp(
        "optimize", TOY, "--stand-in", *SEEDS, "--budget", "100", "--out", out, "--json", "-q"
    )
    assert first.returncode == 0, first.stderr
    second = taskapp(
        "optimize",
        TOY,
        "--stand-in",
        *SEEDS,
        "--budget",
        "200",
        "--out",
        out,
        "--resume",
        "--json",
        "-q",
    )
    assert second.returncode == 0, second.stderr
    before, after = json.loads(first.stdout), json.loads(second.stdout)
    assert after["metric_calls"] > before["metric_calls"]
    assert after["best_score"] >= before["best_score"]
    assert [e["event"] for e in after["history"]].count("baseline") == 1


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_task_app_down_exits_3() -> None:
    done = taskapp(
        "optimize",
        f"http://127.0.0.1:{closed_port()}",
        "--stand-in",
        *SEEDS,
        "--budget",
        "100",
        "--health-timeout",
        "1",
        "--out",
        "/nonexistent/never-created",
    )
    assert done.returncode == 3, done.stderr
    assert "did not answer 200" in done.stderr
    assert "Traceback" not in done.stderr


def test_reflection_model_failing_every_time_exits_4(tmp_path: Path) -> None:
    with InProcessTaskApp(app=fake_openai_app(always_fail=400, retry_after=None)) as model:
        done = taskapp(
            "optimize",
            TOY,
            *SEEDS,
            "--budget",
            "300",
            "--reflection-model",
            "some-model",
            "--reflection-base-url",
            model.local_url + "/v1",
            "--out",
            str(tmp_path / "run"),
        )
    assert done.returncode == 4, done.stderr
    assert "reflection model failed" in done.stderr and "HTTP 400" in done.stderr
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "failed"


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_saves_the_partial_result(tmp_path: Path, signum: int, status: int) -> None:
    out = tmp_path / "run"
    proc = start_child(
        [
            TASKAPP,
            "optimize",
            TOY,
            "--stand-in",
            *SEEDS,
            "--budget",
            "5000",
            "--patience",
            "0",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=child_env(TOY_LATENCY="0.01"),
        stdin=subprocess.DEVNULL,
    )
    lines: list[str] = []
    seen_iteration = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("iter"):
                seen_iteration.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen_iteration.wait(30), "".join(lines)
        proc.send_signal(signum)
        started = time.monotonic()
        code = proc.wait(20)
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    reader.join(5)
    stdout = proc.stdout.read() if proc.stdout else ""
    assert code == status, "".join(lines)
    assert "interrupted" in stdout
    assert f"{signal.Signals(signum).name}: stopping after the current step" in "".join(lines)
    assert "Traceback" not in "".join(lines)
    saved = json.loads((out / "result.json").read_text())
    assert saved["status"] == "interrupted" and saved["stopped_by"] == "interrupted"
    assert saved["metric_calls"] < 5000
    assert (out / "best_prompt.txt").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([TOY, *SEEDS, "--budget", "100"], "--stand-in"),
        (
            [TOY, "--stand-in", "--train-seeds", "0-x", "--val-seeds", "1-5", "--budget", "100"],
            "not a seed",
        ),
        ([TOY, "--stand-in", *SEEDS, "--budget", "10"], "too small"),
        (
            [TOY, "--stand-in", *SEEDS, "--budget", "100", "--policy-config", "{nope"],
            "not valid JSON",
        ),
        ([TOY, "--stand-in", *SEEDS, "--budget", "100", "--policy-config", "[1]"], "JSON object"),
        ([TOY, "--stand-in", *SEEDS, "--budget", "100", "--resume"], "--out"),
        (["no/such/app.py", "--stand-in", *SEEDS, "--budget", "100"], "no such file"),
        ([TOY, "--stand-in", *SEEDS, "--budget", "100", "--timeout", "nan"], "positive number"),
        (
            [TOY, *SEEDS, "--budget", "100", "--reflection-model", "m", *NAN_TEMPERATURE],
            "temperature must be a number",
        ),
        (
            ["support-intents", "--stand-in", *OUTSIDE_SEEDS, "--budget", "100"],
            "train_seeds 400-420 outside the task set",
        ),
        (
            [TOY, "--stand-in", *SEEDS, "--budget", "100", "--prompt-file", "/no/such/file"],
            "cannot read",
        ),
    ],
)
def test_bad_input_exits_2(args: list[str], message: str) -> None:
    done = taskapp("optimize", *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_gepa_is_explained() -> None:
    code = (
        "import sys; sys.modules['gepa'] = None\n"
        "from taskapp.cli import main\n"
        f"sys.exit(main(['optimize', {TOY!r}, '--stand-in', '--train-seeds', '0-9',"
        " '--val-seeds', '10-19', '--budget', '100']))\n"
    )
    done = run_child(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env=child_env(),
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "pip install 'taskapp[optimize]'" in done.stderr


def test_help_lists_the_flags() -> None:
    done = taskapp("optimize", "--help")
    assert done.returncode == 0
    for flag in ("--train-seeds", "--budget", "--stand-in", "--reflection-base-url", "--resume"):
        assert flag in done.stdout
