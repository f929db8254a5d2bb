"""GEPA for an Inspect task, offline: the stand-in policy model (an Inspect provider
registered through Inspect's entry point) and the stand-in reflection model improve the
shipped example's prompt, from the CLI and as a job on the backend (issue 23)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from tests.helpers import run_child
from tests.inspect._helpers import EXAMPLE, REPO
from tests.jobs.test_jobs import KEY, Backend

TOML = REPO / "examples" / "inspect_intents_gepa.toml"


def test_taskapp_optimize_improves_the_example_task(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "taskapp"
    proc = run_child(
        [
            str(exe),
            "optimize",
            f"{EXAMPLE}@intents",
            "--stand-in",
            "--train-seeds",
            "0-99",
            "--val-seeds",
            "100-119",
            "--budget",
            "200",
            "--minibatch",
            "8",
            "--out",
            str(tmp_path / "run"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["best_score"] > result["baseline_score"], result
    # the seed prompt is the task's own system_message(...), advertised in /info
    assert result["seed_candidate"]["prompt"].startswith("You are a customer-support assistant")


def test_prompt_learning_job_on_the_backend_improves_it(tmp_path: Path) -> None:
    from taskapp import run_in_process_job

    server = Backend(tmp_path / "jobs.sqlite3").start()
    try:
        result = asyncio.run(
            run_in_process_job(
                TOML,
                backend_url=server.url,
                api_key=KEY,
                task_app_path=f"{EXAMPLE}@intents",
                timeout=300,
                poll_interval=0.5,
            )
        )
    finally:
        server.stop()
    assert result.succeeded, result.error
    assert result.best_score is not None and result.baseline_score is not None
    assert result.best_score > result.baseline_score
