"""Wall time of ``taskapp.optimize.run`` over HTTP vs the same rollouts called in-process.

Usage (from the repository root)::

    python benchmarks/bench_optimize.py                    # 3 runs per variant
    python benchmarks/bench_optimize.py --runs 5 --latency 0.05 --budget 150 --json opt.json

The task is the toy keyword task of ``tests/optimize/_optimize_helpers.py``: its rollout awaits a
simulated model latency (``--latency``, default 50 ms) and then scores the prompt. The
reflection model is the deterministic offline stand-in, so every variant does exactly the
same work (same candidates, same number of rollouts: checked).

Variants, at concurrency 1 and 8:

``http``      ``taskapp.optimize.run`` against an InProcessTaskApp (uvicorn in a thread):
              every rollout is a ``POST /rollout`` over loopback HTTP
``direct``    the same ``run`` (same gepa loop, same thread pool, same bookkeeping), but the
              adapter calls the task app's ``rollout`` function in the worker thread
              instead of sending HTTP: the in-process floor

Runs are interleaved (http, direct, http, direct, ...) so machine noise spreads over both.
Targets: http within 1.3x of direct at concurrency 8; concurrency 8 at least 4x faster
than concurrency 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from taskapp import InProcessTaskApp
from taskapp.core.contract import RolloutRequest
from taskapp.optimize import StandInReflectionLM, run
from taskapp.optimize import runner as runner_module
from taskapp.optimize.adapter import Rollout, TaskAppAdapter
from tests.optimize._optimize_helpers import ToyTask


def direct_adapter(task: ToyTask) -> type[TaskAppAdapter]:
    """An adapter that calls ``task.rollout`` in the worker thread: no HTTP at all."""

    class DirectAdapter(TaskAppAdapter):
        def rollout(self, candidate: Any, seed: int) -> Rollout:
            with self._lock:
                self._counter += 1
                number = self._counter
            request = RolloutRequest.model_validate(
                {
                    "run_id": f"direct-{number}",
                    "env": {"seed": seed, "config": dict(self.env_config)},
                    "policy": {"config": {**self.policy_config, **candidate}},
                }
            )
            started = time.perf_counter()
            payload = asyncio.run(task.rollout(request, None))
            metrics = payload["metrics"]
            with self._lock:
                self.rollouts_sent += 1
            return Rollout(
                seed,
                float(metrics["outcome_score"]),
                details=dict(metrics.get("details") or {}),
                status=200,
                latency_s=time.perf_counter() - started,
            )

    return DirectAdapter


def one_run(
    app: InProcessTaskApp, task: ToyTask, variant: str, concurrency: int, budget: int
) -> dict[str, Any]:
    original = runner_module.TaskAppAdapter
    if variant == "direct":
        runner_module.TaskAppAdapter = direct_adapter(task)  # type: ignore[misc]
    try:
        started = time.perf_counter()
        result = run(
            app,
            None,
            "0-39",
            "100-129",
            reflection_lm=StandInReflectionLM(),
            budget=budget,
            max_concurrency=concurrency,
            patience=None,
        )
        elapsed = time.perf_counter() - started
    finally:
        runner_module.TaskAppAdapter = original  # type: ignore[misc]
    return {
        "seconds": elapsed,
        "metric_calls": result.metric_calls,
        "best_score": result.best_score,
        "rollouts_sent": result.rollouts["sent"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--budget", type=int, default=150)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    task = ToyTask(latency=args.latency)
    rows: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with InProcessTaskApp(config=task.config()) as app:
        one_run(app, task, "http", 8, args.budget)  # warm-up, discarded
        for concurrency in args.concurrency:
            for _ in range(args.runs):
                for variant in ("http", "direct"):
                    rows.setdefault((variant, concurrency), []).append(
                        one_run(app, task, variant, concurrency, args.budget)
                    )
    work = {(r["metric_calls"], r["best_score"]) for runs in rows.values() for r in runs}
    assert len(work) == 1, f"variants did different work: {work}"
    calls, best = work.pop()

    def median(variant: str, concurrency: int) -> float:
        return statistics.median(r["seconds"] for r in rows[(variant, concurrency)])

    print(
        f"optimize benchmark: {calls} rollouts per run (budget {args.budget}, val 30, "
        f"minibatch 3), simulated latency {args.latency * 1000:.0f} ms, "
        f"median of {args.runs}; {platform.python_version()}, {platform.machine()}"
    )
    print(f"{'concurrency':>11} {'http s':>8} {'direct s':>9} {'http/direct':>12}")
    report: dict[str, Any] = {"rollouts": calls, "best_score": best, "rows": []}
    for concurrency in args.concurrency:
        http, direct = median("http", concurrency), median("direct", concurrency)
        print(f"{concurrency:>11} {http:>8.2f} {direct:>9.2f} {http / direct:>11.2f}x")
        report["rows"].append(
            {"concurrency": concurrency, "http_s": http, "direct_s": direct, "ratio": http / direct}
        )
    if 1 in args.concurrency and 8 in args.concurrency:
        for variant in ("http", "direct"):
            speedup = median(variant, 1) / median(variant, 8)
            print(f"{variant}: concurrency 8 is {speedup:.1f}x faster than concurrency 1")
            report[f"speedup_{variant}"] = speedup
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"json": str(args.json)},
                    **report,
                    "raw": {f"{v}-{c}": r for (v, c), r in rows.items()},
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
