"""The job backend past one machine: workers on a shared PostgreSQL store.

Usage (from the repository root)::

    python benchmarks/bench_jobs_scale.py                       # the issue-25 figures
    python benchmarks/bench_jobs_scale.py --jobs 12 --kills 1 --throughput-jobs 4 \\
        --overhead-jobs 20                                      # the smoke run's settings
    python benchmarks/bench_jobs_scale.py --postgres-url postgresql://taskapp@127.0.0.1:5432/taskapp

PostgreSQL: ``--postgres-url``, else ``$TASKAPP_TEST_POSTGRES_URL``, else a throwaway
cluster started here with ``scripts/pg-throwaway`` (Debian's ``postgresql``); without
any of them the PostgreSQL parts are skipped with the reason printed. Every part uses a
fresh database. The task is the toy keyword task of ``tests/optimize/_optimize_helpers.py``
(each rollout awaits ``--latency`` seconds), served by an InProcessTaskApp in this
process; the reflection model is the offline stand-in. The API is ``taskapp backend
serve --workers 0``; workers are ``taskapp backend worker`` processes.

Parts:

``many``        ``--jobs`` small jobs across 3 worker processes: every job must end
                ``succeeded`` (0 lost) with its baseline scored once and one attempt
                (0 run twice); also the submit-to-claim latency
``kills``       ``--kills`` times, SIGKILL a worker that holds a running job (lease 2 s)
                and start a replacement: every job must end ``succeeded`` with its
                baseline scored once
``throughput``  ``--throughput-jobs`` jobs with 1, then 3 worker processes (one job at a
                time each); jobs per minute and the ratio (goal >= 2.5x when rollouts
                dominate)
``overhead``    the queue's own cost per job, in-process, PostgreSQL beside SQLite:
                create, claim, 10 progress events, 2 checkpoints, finish (ms per job)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from taskapp import InProcessTaskApp
from tests.jobs._procs import Proc, toy_toml
from tests.optimize._optimize_helpers import ToyTask

REPO = Path(__file__).resolve().parent.parent
PG_THROWAWAY = REPO / "scripts" / "pg-throwaway"
TERMINAL = ("succeeded", "failed", "cancelled")


# -- PostgreSQL --------------------------------------------------------------------------


@contextmanager
def postgres(url: str | None) -> Iterator[str | None]:
    """A PostgreSQL server's URL (given, from the environment, or a throwaway cluster);
    None (with the reason printed) when there is none."""
    url = url or os.environ.get("TASKAPP_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        print(
            "PostgreSQL parts SKIPPED: no --postgres-url, no $TASKAPP_TEST_POSTGRES_URL, "
            "and Debian's postgresql package is not installed",
            flush=True,
        )
        yield None
        return
    folder = tempfile.mkdtemp(prefix="taskapp-bench-pg-")
    try:
        started = subprocess.run(
            ["bash", str(PG_THROWAWAY), "start", folder],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if started.returncode != 0:
            print(
                f"PostgreSQL parts SKIPPED: the throwaway cluster did not start: "
                f"{started.stderr.strip()[-300:]}",
                flush=True,
            )
            yield None
            return
        yield started.stdout.strip()
    finally:
        subprocess.run(
            ["bash", str(PG_THROWAWAY), "stop", folder],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def fresh_db(base: str) -> Iterator[str]:
    import uuid

    import psycopg

    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    try:
        yield urlunsplit(urlsplit(base)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]


# -- the fleet ---------------------------------------------------------------------------


class Fleet:
    def __init__(self, db: str, cwd: Path, stack: ExitStack) -> None:
        self.db, self.cwd = db, cwd
        self.api = Proc("serve", db, "--workers", "0", cwd=cwd)
        stack.callback(self.api.stop)
        self.stack = stack
        self.workers: list[Proc] = []

    def worker(self, *extra: str) -> Proc:
        proc = Proc("worker", self.db, *extra, cwd=self.cwd)
        self.stack.callback(proc.stop)
        self.workers.append(proc)
        return proc

    def submit(self, app: InProcessTaskApp, budget: int, val: int) -> str:
        body = {
            "config_toml": toy_toml(budget, val),
            "task_app_url": app.url,
            "task_app_api_key": app.api_key,
        }
        return str(self.api.api("POST", "/api/jobs", json=body, expect=201)["id"])

    def wait_all(self, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        done: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline and len(done) < len(ids):
            page = self.api.api(
                "GET", "/api/jobs", params={"limit": 500, "status": ",".join(TERMINAL)}
            )
            for job in page["jobs"]:
                if job["id"] in ids:
                    done[job["id"]] = job
            time.sleep(0.5)
        return done

    def audit(self, ids: list[str], done: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Lost (not succeeded), baseline scored more than once, attempts, claim latency."""
        twice, lost, retaken, latency = 0, 0, 0, []
        for job_id in ids:
            job = done.get(job_id)
            if job is None or job["status"] != "succeeded":
                lost += 1
                continue
            events = self.api.api("GET", f"/api/jobs/{job_id}/events?limit=5000")["events"]
            if [e["kind"] for e in events].count("baseline") != 1:
                twice += 1
            retaken += job["attempts"] > 1
            submitted = next(e["ts"] for e in events if e["kind"] == "submitted")
            claimed = next(
                e["ts"]
                for e in events
                if e["kind"] == "status" and e["data"]["status"] == "running"
            )
            latency.append(claimed - submitted)
        return {
            "jobs": len(ids),
            "lost": lost,
            "baseline_scored_twice": twice,
            "taken_over": retaken,
            "submit_to_claim_s_median": round(statistics.median(latency), 2) if latency else None,
        }


# -- parts -------------------------------------------------------------------------------


def part_many(base: str, app: InProcessTaskApp, args: argparse.Namespace) -> dict[str, Any]:
    with fresh_db(base) as db, ExitStack() as stack, tempfile.TemporaryDirectory() as cwd:
        fleet = Fleet(db, Path(cwd), stack)
        for i in range(3):
            fleet.worker("--workers", str(args.slots), "--worker-id", f"w{i}")
        started = time.monotonic()
        ids = [fleet.submit(app, args.budget, args.val) for _ in range(args.jobs)]
        done = fleet.wait_all(ids, timeout=60 + 10 * args.jobs)
        elapsed = time.monotonic() - started
        figures = fleet.audit(ids, done)
        figures["run_twice"] = sum(1 for j in done.values() if j["attempts"] != 1)
        figures["seconds"] = round(elapsed, 1)
        return figures


def part_kills(base: str, app: InProcessTaskApp, args: argparse.Namespace) -> dict[str, Any]:
    with fresh_db(base) as db, ExitStack() as stack, tempfile.TemporaryDirectory() as cwd:
        fleet = Fleet(db, Path(cwd), stack)
        live: dict[str, Proc] = {}
        serial = 0

        def add() -> None:
            nonlocal serial
            name = f"k{serial}"
            serial += 1
            live[name] = fleet.worker("--workers", "1", "--worker-id", name, "--lease-seconds", "2")

        for _ in range(3):
            add()
        jobs = max(args.kills * 2, 6)
        ids = [fleet.submit(app, args.kill_budget, 30) for _ in range(jobs)]
        kills = 0
        deadline = time.monotonic() + 60 + 30 * args.kills
        while kills < args.kills and time.monotonic() < deadline:
            running = fleet.api.api("GET", "/api/jobs", params={"status": "running", "limit": 500})
            held = [
                j
                for j in running["jobs"]
                if j["lease_owner"] in live and (j["metric_calls"] or 0) > 30
            ]
            if not held:
                time.sleep(0.3)
                continue
            victim = held[0]["lease_owner"]
            live.pop(victim).stop(signal.SIGKILL)
            kills += 1
            add()
            time.sleep(1.0)
        done = fleet.wait_all(ids, timeout=120 + 20 * jobs)
        figures = fleet.audit(ids, done)
        figures["kills"] = kills
        return figures


def part_throughput(base: str, app: InProcessTaskApp, args: argparse.Namespace) -> dict[str, Any]:
    rates = {}
    for workers in (1, 3):
        with fresh_db(base) as db, ExitStack() as stack, tempfile.TemporaryDirectory() as cwd:
            fleet = Fleet(db, Path(cwd), stack)
            for i in range(workers):
                fleet.worker("--workers", "1", "--worker-id", f"t{i}")
            time.sleep(1.0)  # the workers are up and polling
            started = time.monotonic()
            ids = [
                fleet.submit(app, args.throughput_budget, 30) for _ in range(args.throughput_jobs)
            ]
            done = fleet.wait_all(ids, timeout=120 + 60 * args.throughput_jobs)
            elapsed = time.monotonic() - started
            ok = sum(1 for j in done.values() if j["status"] == "succeeded")
            rates[workers] = 60 * ok / elapsed
    return {
        "jobs_per_min_1_worker": round(rates[1], 2),
        "jobs_per_min_3_workers": round(rates[3], 2),
        "speedup": round(rates[3] / rates[1], 2) if rates[1] else None,
    }


def part_overhead(db: str, jobs: int) -> float:
    """ms per job of the queue path alone (no GEPA): create, claim, 10 events, 2
    checkpoints, finish."""
    from taskapp.jobs.store import open_store

    store = open_store(db, owner=True)
    try:
        started = time.perf_counter()
        for _ in range(jobs):
            job_id, _ = store.create(
                {"budget": 10},
                task_app_url="http://127.0.0.1:9",
                task_app_key="k" * 12,
                worker_token=None,
                warnings=[],
            )
            job = store.claim("bench:1:x", 30)
            assert job is not None
            assert job["id"] == job_id
            for step in range(10):
                store.add_event(
                    job_id,
                    "iteration",
                    {"iteration": step, "score": 0.5},
                    owner="bench:1:x",
                    metric_calls=step,
                    best_score=0.5,
                )
                if step in (0, 9):
                    store.save_files(
                        job_id,
                        {"run.json": b"{}" * 200, "state.bin": os.urandom(4096)},
                        owner="bench:1:x",
                    )
            store.set_status(job_id, "succeeded", owner="bench:1:x", finished_at=time.time())
        return 1000 * (time.perf_counter() - started) / jobs
    finally:
        store.close()


# -- main --------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--postgres-url", help="a PostgreSQL server (a database is made per part)")
    parser.add_argument("--jobs", type=int, default=200, help="jobs of the 'many' part (200)")
    parser.add_argument(
        "--slots", type=int, default=2, help="jobs at once per worker in 'many' (2)"
    )
    parser.add_argument("--budget", type=int, default=40, help="rollouts per small job (40)")
    parser.add_argument("--val", type=int, default=6, help="val seeds per small job (6)")
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs in the 'kills' part (5)")
    parser.add_argument("--kill-budget", type=int, default=200, help="rollouts per job there")
    parser.add_argument("--throughput-jobs", type=int, default=6)
    parser.add_argument("--throughput-budget", type=int, default=120)
    parser.add_argument("--overhead-jobs", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per rollout")
    parser.add_argument(
        "--throughput-latency",
        type=float,
        default=0.25,
        help="seconds per rollout in 'throughput' (rollouts dominate: 0.25)",
    )
    parser.add_argument(
        "--parts", default="overhead,many,kills,throughput", help="which parts (comma-separated)"
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    figures: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "postgres_url")},
    }
    failed = False
    parts = set(args.parts.split(","))
    with postgres(args.postgres_url) as base, tempfile.TemporaryDirectory() as scratch:
        if "overhead" in parts:
            overhead = {
                "sqlite_ms_per_job": round(
                    part_overhead(str(Path(scratch) / "o.sqlite3"), args.overhead_jobs), 2
                )
            }
            if base is not None:
                with fresh_db(base) as db:
                    overhead["postgresql_ms_per_job"] = round(
                        part_overhead(db, args.overhead_jobs), 2
                    )
            figures["overhead"] = overhead
            print(f"queue overhead per job: {overhead}", flush=True)
        if base is not None:
            for name, part, latency in (
                ("many", part_many, args.latency),
                ("kills", part_kills, args.latency),
                ("throughput", part_throughput, args.throughput_latency),
            ):
                if name not in parts:
                    continue
                task = ToyTask(latency=latency)
                with InProcessTaskApp(
                    config=task.config(), port=0, api_key="toy-key-123456"
                ) as app:
                    result = part(base, app, args)
                figures[name] = result
                print(f"{name}: {json.dumps(result)}", flush=True)
            for name in ("many", "kills"):
                if name not in figures:
                    continue
                part_figures = figures[name]
                if (
                    part_figures["lost"]
                    or part_figures["baseline_scored_twice"]
                    or part_figures.get("run_twice")
                ):
                    print(f"FAILED: {name}: a job was lost or run twice", flush=True)
                    failed = True
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
