"""The job backend's cost: backend path vs ``taskapp.optimize`` directly, on one config.

Usage (from the repository root)::

    python benchmarks/bench_jobs.py                      # 3 runs per variant
    python benchmarks/bench_jobs.py --runs 5 --budget 200 --latency 0.05 --json jobs.json

The task is the toy keyword task of ``tests/optimize/_optimize_helpers.py`` (its rollout awaits a
simulated model latency, ``--latency``), served by an InProcessTaskApp in this process; the
reflection model is the offline stand-in, so both variants do the same work (same
candidates, same rollouts: checked). One ``[prompt_learning]`` TOML describes the run.

Variants (interleaved: direct, backend, direct, ...):

``direct``   ``taskapp.optimize.runner.run_config(url, load_prompt_learning(toml).config)``
             with an output directory, as ``taskapp optimize --config`` runs it (the
             backend writes the same run directory: GEPA's checkpoint, result, plots)
``backend``  ``PromptLearningJob.submit_sync`` to ``taskapp backend serve`` (a child
             process, SQLite in a temporary folder) + ``poll_until_complete_sync``
             (interval 50 ms): submit until the result is in the client's hands

Also measured: submit-to-first-rollout latency (the task app's clock: the first
``POST /rollout`` of the job) and the web page's time to first render (headless Chromium
via Playwright, from navigation to the job list's first row; skipped without
/usr/bin/chromium). Target: backend within 1.1x of direct.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from taskapp import InProcessTaskApp, PromptLearningJob
from taskapp.optimize.prompt_learning import load_prompt_learning
from taskapp.optimize.runner import run_config
from tests.helpers import BackendChild
from tests.optimize._optimize_helpers import ToyTask, toy_toml

KEY = "bench-backend-key-0123456789"


class TimedTask(ToyTask):
    """The toy task, noting when each rollout arrives."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.arrivals: list[float] = []

    async def rollout(self, request: Any, http_request: Any) -> dict[str, Any]:
        self.arrivals.append(time.perf_counter())
        return await super().rollout(request, http_request)


def start_backend(folder: Path) -> BackendChild:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["TASKAPP_BACKEND_API_KEY"] = KEY
    return BackendChild("serve", folder / "jobs.sqlite3", env=env, cwd=folder).start()


def page_first_render(url: str, job_id: str, loads: int) -> list[float] | None:
    if not Path("/usr/bin/chromium").exists():
        return None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--no-first-run",
            ],
        )
        try:
            for _ in range(loads):
                page = browser.new_page()
                started = time.perf_counter()
                page.goto(f"{url}/#key={KEY}")
                page.locator(f'tr.job[data-id="{job_id}"]').wait_for(timeout=20_000)
                times.append(time.perf_counter() - started)
                page.close()
        finally:
            browser.close()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--budget", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per rollout")
    parser.add_argument("--page-loads", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    walls: dict[str, list[float]] = {"direct": [], "backend": []}
    first_rollout: list[float] = []
    inside: list[float] = []  # the job's own run time, started to finished, in the backend
    calls: dict[str, set[int]] = {"direct": set(), "backend": set()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config_path = folder / "bench.toml"
        config_path.write_text(toy_toml(args.budget, patience=1000))
        config = load_prompt_learning(config_path).config
        task = TimedTask(latency=args.latency)
        backend = start_backend(folder)
        url = backend.url
        try:
            with InProcessTaskApp(config=task.config(), port=0, api_key="bench-app-key") as app:
                client = PromptLearningJob(url, KEY)
                started = time.perf_counter()
                warm = client.submit_sync(
                    config_path, task_app_url=app.url, task_app_api_key=app.api_key
                )
                client.poll_until_complete_sync(warm)
                cold = time.perf_counter() - started
                run_config(app.url, config.replace(output_dir=folder / "warm"), api_key=app.api_key)
                job_id = ""
                for run in range(args.runs):
                    started = time.perf_counter()
                    out = config.replace(output_dir=folder / f"direct-{run}")
                    result = run_config(app.url, out, api_key=app.api_key)
                    walls["direct"].append(time.perf_counter() - started)
                    calls["direct"].add(result.metric_calls)

                    before = len(task.arrivals)
                    started = time.perf_counter()
                    job_id = client.submit_sync(
                        config_path, task_app_url=app.url, task_app_api_key=app.api_key
                    )
                    outcome = client.poll_until_complete_sync(job_id)
                    walls["backend"].append(time.perf_counter() - started)
                    assert outcome.succeeded, outcome.error
                    first_rollout.append(task.arrivals[before] - started)
                    job = client.get_status_sync(job_id)
                    calls["backend"].add(int(job["metric_calls"]))
                    inside.append(job["finished_at"] - job["started_at"])
                    print(
                        f"run {run + 1}: direct {walls['direct'][-1]:.2f}s, backend "
                        f"{walls['backend'][-1]:.2f}s, first rollout "
                        f"{first_rollout[-1] * 1000:.0f} ms after submit",
                        file=sys.stderr,
                    )
                page = page_first_render(url, job_id, args.page_loads)
        finally:
            backend.stop()
    assert calls["direct"] == calls["backend"], f"different work: {calls}"
    direct, backend = statistics.median(walls["direct"]), statistics.median(walls["backend"])
    figures: dict[str, Any] = {
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}"
        ),
        "cold_first_job_s": round(cold, 3),
        "budget": args.budget,
        "latency_s": args.latency,
        "runs": args.runs,
        "metric_calls": sorted(calls["direct"]),
        "direct_median_s": round(direct, 3),
        "backend_median_s": round(backend, 3),
        "ratio": round(backend / direct, 3),
        "backend_job_run_median_s": round(statistics.median(inside), 3),
        "submit_to_first_rollout_median_ms": round(statistics.median(first_rollout) * 1000, 1),
        "page_first_render_median_ms": round(statistics.median(page) * 1000, 1) if page else None,
    }
    print(f"{'variant':<10} {'median wall':>12}")
    print(f"{'direct':<10} {direct:>11.2f}s")
    print(f"{'backend':<10} {backend:>11.2f}s   ratio {backend / direct:.3f} (target <= 1.1)")
    print(f"submit -> first rollout: {figures['submit_to_first_rollout_median_ms']} ms (median)")
    if page:
        print(f"page time to first render: {figures['page_first_render_median_ms']} ms (median)")
    else:
        print("page time to first render: skipped (no /usr/bin/chromium or playwright)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
