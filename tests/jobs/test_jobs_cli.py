"""``taskapp jobs`` steering jobs (both stores): submit, pause, resume, stop, retry, delete,
list with filters and every page, through the backend's API and with ``--db`` straight
from the database."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskapp import InProcessTaskApp
from tests.helpers import TASKAPP, run_child
from tests.jobs._procs import Proc, child_env, toy_toml
from tests.optimize._optimize_helpers import ToyTask


@pytest.fixture
def toy_app() -> Iterator[InProcessTaskApp]:
    task = ToyTask(latency=0.05)
    with InProcessTaskApp(config=task.config(), port=0, api_key="toy-key-123456") as app:
        yield app


def jobs(*args: str, app: InProcessTaskApp) -> subprocess.CompletedProcess[str]:
    return run_child([TASKAPP, "jobs", *args], capture_output=True, text=True, timeout=60,
                          env=child_env(ENVIRONMENT_API_KEY=app.api_key or ""),
                          stdin=subprocess.DEVNULL, check=False)  # fmt: skip


def test_jobs_cli_steers_a_job_over_http_and_with_db(
    db: str, tmp_path: Path, toy_app: InProcessTaskApp
) -> None:
    config = tmp_path / "job.toml"
    config.write_text(toy_toml(3000))
    serve = Proc("serve", db, "--workers", "1", cwd=tmp_path)
    try:
        http = ("--backend-url", serve.url)
        direct = ("--db", db)
        submitted = jobs(
            "submit", str(config), "--task-app-url", str(toy_app.url), *http, app=toy_app
        )
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip()
        serve.wait_for(job_id, lambda j: j["status"] == "running" and j["metric_calls"] > 0)
        paused = jobs("pause", job_id, *direct, app=toy_app)
        assert paused.returncode == 0 and "pausing" in paused.stdout, paused.stderr
        serve.wait_for(job_id, lambda j: j["status"] == "paused", timeout=30)
        listed = jobs("list", "--status", "paused", "--json", *direct, app=toy_app)
        assert [j["id"] for j in json.loads(listed.stdout)["jobs"]] == [job_id]
        assert jobs("resume", job_id, *http, app=toy_app).returncode == 0
        serve.wait_for(job_id, lambda j: j["status"] == "running")
        refused = jobs("delete", job_id, *http, app=toy_app)
        assert refused.returncode != 0 and "409" in refused.stderr
        stopped = jobs("stop", job_id, *http, app=toy_app)
        assert stopped.returncode == 0 and "stopping" in stopped.stdout
        serve.wait_for(job_id, lambda j: j["status"] == "succeeded", timeout=30)
        logs = jobs("logs", job_id, "--follow", *direct, app=toy_app)
        assert logs.returncode == 0 and f"job {job_id}: succeeded" in logs.stderr
        assert "baseline" in logs.stdout
        # a second job submitted with --db (no backend key involved), then cancelled
        other = jobs(
            "submit", str(config), "--task-app-url", str(toy_app.url), *direct, app=toy_app
        )
        assert other.returncode == 0, other.stderr
        other_id = other.stdout.strip()
        assert jobs("cancel", other_id, *direct, app=toy_app).returncode == 0
        serve.wait_for(other_id, lambda j: j["status"] == "cancelled", timeout=30)
        retried = jobs("retry", other_id, *http, app=toy_app)
        assert retried.returncode == 0 and other_id in retried.stdout
        jobs("cancel", other_id, *http, app=toy_app)
        serve.wait_for(other_id, lambda j: j["status"] == "cancelled", timeout=30)
        everything = jobs("list", "--all", "--limit", "1", "--json", *http, app=toy_app)
        assert {j["id"] for j in json.loads(everything.stdout)["jobs"]} == {job_id, other_id}
        deleted = jobs("delete", job_id, *direct, app=toy_app)
        assert deleted.returncode == 0 and "deleted" in deleted.stdout
        assert serve.api("GET", "/api/jobs")["total"] == 1
    finally:
        serve.stop()
