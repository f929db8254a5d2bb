"""Workers past one machine, as real processes: ``taskapp backend serve --workers 0`` (the
API only) and ``taskapp backend worker`` processes sharing one job database (both stores).

* three workers: every job runs once, none is lost;
* SIGKILL a worker mid-job: its lease runs out, another worker resumes the job from the
  checkpoint in the database (the baseline is not scored again) and it succeeds;
* two API processes behind one PostgreSQL database give the same answers;
* PostgreSQL stopped mid-run and started again: claims pause and resume with a log line,
  the job still succeeds (no job fails because the store blinked).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskapp import InProcessTaskApp
from tests.jobs._procs import Proc, toy_toml
from tests.jobs._stores import Cluster, fresh_postgres_db
from tests.optimize._optimize_helpers import SEED_PROMPT, ToyTask


@pytest.fixture
def toy() -> Iterator[tuple[ToyTask, InProcessTaskApp]]:
    task = ToyTask(latency=0.02)
    with InProcessTaskApp(config=task.config(), port=0, api_key="toy-key-123456") as app:
        yield task, app


def _submit(
    api: Proc, app: InProcessTaskApp, budget: int, val: int = 30, patience: int = 50
) -> str:
    body = {"config_toml": toy_toml(budget, val, patience), "task_app_url": app.url,
            "task_app_api_key": app.api_key}  # fmt: skip
    return str(api.api("POST", "/api/jobs", json=body, expect=201)["id"])


def _events(api: Proc, job_id: str) -> list[dict[str, Any]]:
    return list(api.api("GET", f"/api/jobs/{job_id}/events?limit=5000")["events"])


class Fleet:
    """An API process and worker processes on one database; stopped at the end."""

    def __init__(self, db: str, cwd: Path) -> None:
        self.db, self.cwd = db, cwd
        self.procs: list[Proc] = []

    def api(self) -> Proc:
        proc = Proc("serve", self.db, "--workers", "0", cwd=self.cwd)
        self.procs.append(proc)
        return proc

    def worker(self, *extra: str) -> Proc:
        proc = Proc("worker", self.db, *extra, cwd=self.cwd)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture
def fleet(db: str, tmp_path: Path) -> Iterator[Fleet]:
    group = Fleet(db, tmp_path)
    try:
        yield group
    finally:
        group.stop()


def test_three_workers_run_every_job_once(
    fleet: Fleet, toy: tuple[ToyTask, InProcessTaskApp]
) -> None:
    _, app = toy
    api = fleet.api()
    workers = [fleet.worker("--workers", "2", "--worker-id", f"w{i}") for i in range(3)]
    ids = [_submit(api, app, budget=40, val=6) for _ in range(9)]
    for job_id in ids:
        job = api.wait_for(job_id, lambda j: j["status"] not in ("queued", "running"))
        assert job["status"] == "succeeded", job
        assert job["attempts"] == 1
        kinds = [e["kind"] for e in _events(api, job_id)]
        assert kinds.count("baseline") == 1 and kinds.count("submitted") == 1
    owners = {
        e["data"].get("worker")
        for job_id in ids
        for e in _events(api, job_id)
        if e["kind"] == "status" and e["data"]["status"] == "running"
    }
    assert len(owners) >= 2, owners  # the work was shared
    assert api.api("GET", "/health")["workers"] == 0  # the API process ran none
    for proc in workers:
        assert proc.stop() == 0
        assert "stopped" in proc.output


def test_a_killed_worker_loses_its_lease_and_another_resumes_the_job(
    fleet: Fleet, toy: tuple[ToyTask, InProcessTaskApp]
) -> None:
    task, app = toy
    api = fleet.api()
    workers = {f"w{i}": fleet.worker("--workers", "1", "--worker-id", f"w{i}",
                                     "--lease-seconds", "2") for i in range(2)}  # fmt: skip
    job_id = _submit(api, app, budget=300)
    job = api.wait_for(job_id, lambda j: j["status"] == "running" and j["metric_calls"] > 40)
    victim = job["lease_owner"]
    assert workers[victim].stop(signal.SIGKILL) == -signal.SIGKILL
    killed_at = time.monotonic()
    done = api.wait_for(job_id, lambda j: j["status"] not in ("queued", "running"), timeout=120)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2 and done["metric_calls"] <= 300
    events = _events(api, job_id)
    assert [e["kind"] for e in events].count("baseline") == 1
    takeover = [e for e in events if e["kind"] == "status" and e["data"].get("worker")]
    assert takeover[-1]["data"]["worker"] != victim
    assert takeover[-1]["data"]["reason"] == f"the lease of {victim} ran out; taken over"
    # not before the lease ran out: renewed at most lease/3 before the kill, then 2 s
    assert takeover[-1]["ts"] >= time.time() - (time.monotonic() - killed_at) + 2 - 2 / 3 - 0.1
    seed_val = [r for r in task.requests if r["policy"]["config"].get("prompt") == SEED_PROMPT
                and 100 <= r["env"]["seed"] <= 129]  # fmt: skip
    assert len(seed_val) == 30  # the seed prompt's validation rollouts ran once


def test_two_api_processes_behind_one_database_give_the_same_answers(
    toy: tuple[ToyTask, InProcessTaskApp], tmp_path: Path
) -> None:
    _, app = toy
    with fresh_postgres_db() as url:
        group = Fleet(url, tmp_path)
        try:
            first, second = group.api(), group.api()
            group.worker("--workers", "2")
            # Runs until paused: on a quiet machine a 3000-call job ended by patience before
            # the pause arrived (a race, not a finding).
            job_id = _submit(first, app, budget=1_000_000, patience=1_000_000)
            body = {"config_toml": toy_toml(40, 6), "task_app_url": app.url,
                    "task_app_api_key": app.api_key}  # fmt: skip
            key = {"Idempotency-Key": "same-on-both"}
            a = first.api("POST", "/api/jobs", json=body, headers=key, expect=201)
            b = second.api("POST", "/api/jobs", json=body, headers=key, expect=200)
            assert a["id"] == b["id"]
            second.wait_for(job_id, lambda j: j["status"] == "running" and j["metric_calls"] > 0)
            second.api("POST", f"/api/jobs/{job_id}/pause")  # steered through the other one
            first.wait_for(job_id, lambda j: j["status"] == "paused", timeout=30)
            first.wait_for(a["id"], lambda j: j["status"] == "succeeded")
            for path in ("/api/jobs", f"/api/jobs/{job_id}", f"/api/jobs/{job_id}/events",
                         f"/api/jobs/{a['id']}/result"):  # fmt: skip
                assert first.api("GET", path) == second.api("GET", path), path
        finally:
            group.stop()


def test_postgres_going_away_pauses_claims_and_fails_no_job(
    toy: tuple[ToyTask, InProcessTaskApp], tmp_path: Path
) -> None:
    _, app = toy
    cluster = Cluster()
    group = Fleet(cluster.url, tmp_path)
    try:
        api = group.api()
        worker = group.worker("--workers", "1", "--lease-seconds", "3")
        job_id = _submit(api, app, budget=260)
        api.wait_for(job_id, lambda j: j["status"] == "running" and j["metric_calls"] > 40)
        cluster.stop()
        time.sleep(1.0)
        assert api.api("GET", f"/api/jobs/{job_id}", expect=503)["error"]["type"] == "store_error"
        time.sleep(3.0)  # longer than the lease
        cluster.start()
        done = api.wait_for(job_id, lambda j: j["status"] not in ("queued", "running"), timeout=120)
        assert done["status"] == "succeeded", done
        assert [e["kind"] for e in _events(api, job_id)].count("baseline") == 1
        assert "job database unreachable" in worker.output
        assert "job database reachable again" in worker.output
        assert cluster.url.split("@")[0] in worker.output  # where, without a password
    finally:
        group.stop()
        cluster.destroy()
