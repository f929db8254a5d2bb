"""The same synth-containers ``Container`` served by taskapp vs by its own ``Container.serve()``.

One ``Container`` (synth-containers 0.4.6; its rollout does no work: it answers a
``RolloutResult`` at once, or sleeps when asked, for terminate) is served two ways in
this process, each on uvicorn in a thread:

* **own**: ``container.serve()`` (synth-containers' ``ContainerRunner``);
* **taskapp**: ``InProcessTaskApp(app=container)`` (taskapp's thread runner, its key check
  in front, the ``synth_containers`` loader);

and, for reference, a **taskapp app** (a ``TaskAppConfig`` with the same do-nothing rollout)
answering the same ``/rollouts`` requests through taskapp's own container routes.

Measured against each, one ``httpx.AsyncClient`` at ``--concurrency`` in this process
(client and server share the interpreter alike for every variant):

* sync: ``POST /rollouts`` with ``submission_mode: sync`` for ``--seconds``: rollouts/s and
  p50 latency;
* async: ``POST /rollouts`` (``async``) then ``GET /rollouts/{id}`` until it is done:
  rollouts/s and p50 from submit to the finished answer;
* terminate: ``--terminates`` rollouts that sleep 30 s, each terminated: p50 of ``POST
  /rollouts/{id}/terminate`` (taskapp waits until the rollout's task has let go, at most
  1 s; the vendor's server answers once it has asked for the cancel).

Rounds alternate the variants; medians over rounds, with the ratio taskapp / own (goal >=
1.0x for rollouts/s). synth-containers is not a taskapp dependency: without it importable
this script re-runs itself with the interop venv's python (``containers-0.4.6``, built by
``tests/interop/_venvs.py`` when missing; needs the package index once). Usage::

    python benchmarks/bench_containers.py                    # 5 rounds of 3 s at concurrency 8
    python benchmarks/bench_containers.py --rounds 1 --seconds 1 --concurrency 4 --terminates 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-containers-key-0123456789"


def _reexec(argv: list[str]) -> int:
    """Run this script again with the synth-containers interop venv's python."""
    sys.path[:0] = [str(ROOT)]
    from tests.interop._venvs import CONTAINERS, build, child_env

    python = build(CONTAINERS)
    env = child_env()
    env["TASKAPP_BENCH_REEXEC"] = "1"
    return subprocess.call([str(python), __file__, *argv], env=env, cwd=ROOT)


def make_container() -> Any:
    from synth_containers.sdk import Container, RolloutResult

    container = Container("bench-echo", description="answers at once")

    @container.rollout
    async def rollout(payload: dict[str, Any]) -> dict[str, Any]:
        sleep = float((payload.get("metadata") or {}).get("sleep", 0))
        if sleep:
            await asyncio.sleep(sleep)
        return RolloutResult(rollout_id=payload["rollout_id"], reward=1.0).to_dict()

    return container


def make_taskapp_config() -> Any:
    from taskapp import TaskAppConfig

    async def rollout(request: Any, _http: Any) -> dict[str, Any]:
        sleep = float((request.model_extra or {}).get("metadata", {}).get("sleep", 0))
        if sleep:
            await asyncio.sleep(sleep)
        return {"run_id": request.run_id, "metrics": {"outcome_score": 1.0}}

    return TaskAppConfig(
        app_id="bench-echo",
        name="bench-echo",
        description="answers at once",
        describe_taskset=lambda: {"size": 1000},
        provide_task_instances=lambda seeds: [],
        rollout=rollout,
        prompts={"prompt": "Answer."},
        max_async_rollouts=1024,
    )


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def closed_loop(
    one: Callable[[], Awaitable[None]], seconds: float, concurrency: int
) -> tuple[float, float]:
    """``concurrency`` workers each calling ``one`` back to back for ``seconds``: (calls per
    second, p50 latency in ms)."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await one()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies) / (time.perf_counter() - started), p50(latencies) * 1000


async def sync_load(
    client: Any, headers: dict[str, str], seconds: float, concurrency: int
) -> tuple[float, float]:
    async def one() -> None:
        body = {"seed": 1, "submission_mode": "sync", "rollout_id": f"s-{uuid.uuid4().hex}"}
        answer = await client.post("/rollouts", json=body, headers=headers)
        assert answer.status_code == 200, answer.text[:200]

    return await closed_loop(one, seconds, concurrency)


async def async_load(
    client: Any, headers: dict[str, str], seconds: float, concurrency: int
) -> tuple[float, float]:
    async def one() -> None:
        rollout_id = f"a-{uuid.uuid4().hex}"
        body = {"seed": 1, "submission_mode": "async", "rollout_id": rollout_id}
        answer = await client.post("/rollouts", json=body, headers=headers)
        assert answer.status_code == 200, answer.text[:200]
        while True:
            polled = await client.get(f"/rollouts/{rollout_id}", headers=headers)
            if polled.json().get("status") != "running":
                break
            await asyncio.sleep(0.002)

    return await closed_loop(one, seconds, concurrency)


async def terminate_latency(client: Any, headers: dict[str, str], count: int) -> float:
    latencies = []
    for _ in range(count):
        rollout_id = f"t-{uuid.uuid4().hex}"
        body = {
            "seed": 1,
            "submission_mode": "async",
            "rollout_id": rollout_id,
            "metadata": {"sleep": 30},
        }
        assert (await client.post("/rollouts", json=body, headers=headers)).status_code == 200
        await asyncio.sleep(0.02)
        started = time.perf_counter()
        answer = await client.post(f"/rollouts/{rollout_id}/terminate", json={}, headers=headers)
        latencies.append(time.perf_counter() - started)
        assert answer.json()["status"] == "terminated", answer.text[:200]
    return p50(latencies) * 1000


async def measure(url: str, key: str | None, args: argparse.Namespace) -> dict[str, float]:
    import httpx

    headers = {"X-API-Key": key} if key else {}
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    async with httpx.AsyncClient(
        base_url=url, limits=limits, trust_env=False, timeout=60
    ) as client:
        sync_rate, sync_p50 = await sync_load(client, headers, args.seconds, args.concurrency)
        async_rate, async_p50 = await async_load(client, headers, args.seconds, args.concurrency)
        terminate = await terminate_latency(client, headers, args.terminates)
    return {
        "sync_per_s": sync_rate,
        "sync_p50_ms": sync_p50,
        "async_per_s": async_rate,
        "async_p50_ms": async_p50,
        "terminate_p50_ms": terminate,
    }


def one_round(args: argparse.Namespace, number: int) -> dict[str, dict[str, float]]:
    from taskapp import InProcessTaskApp

    def own() -> dict[str, float]:
        with make_container().serve() as handle:
            return asyncio.run(measure(handle.url, None, args))

    def hosted() -> dict[str, float]:
        with InProcessTaskApp(app=make_container(), port=0, api_key=KEY) as app:
            return asyncio.run(measure(str(app.url), KEY, args))

    def native() -> dict[str, float]:
        with InProcessTaskApp(config=make_taskapp_config(), port=0, api_key=KEY) as app:
            return asyncio.run(measure(str(app.url), KEY, args))

    order = [("own", own), ("taskapp", hosted), ("taskapp app", native)]
    if number % 2:  # alternate who goes first
        order.reverse()
    return {name: run() for name, run in order}


def report(rounds: list[dict[str, dict[str, float]]]) -> str:
    metrics = ["sync_per_s", "sync_p50_ms", "async_per_s", "async_p50_ms", "terminate_p50_ms"]
    variants = ["own", "taskapp", "taskapp app"]
    med = {v: {m: p50([r[v][m] for r in rounds]) for m in metrics} for v in variants}
    lines = [
        "| measure | Container.serve() | taskapp (Container) | ratio | taskapp app |",
        "|---|---|---|---|---|",
    ]
    for metric in metrics:
        own, ours, app = med["own"][metric], med["taskapp"][metric], med["taskapp app"][metric]
        # rates: taskapp / own (higher is better); latencies: own / taskapp (the same sense)
        ratio = ours / own if metric.endswith("per_s") else own / ours if ours else float("nan")
        lines.append(f"| {metric} | {own:.1f} | {ours:.1f} | {ratio:.2f}x | {app:.1f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--terminates", type=int, default=10)
    parser.add_argument("--json", help="write every round's figures to this file")
    args = parser.parse_args(argv)
    try:
        import synth_containers
    except ImportError:
        if os.environ.get("TASKAPP_BENCH_REEXEC"):
            print("synth-containers is not importable even in the interop venv", file=sys.stderr)
            return 2
        return _reexec(argv)

    rounds = []
    for number in range(args.rounds):
        rounds.append(one_round(args, number))
        print(f"round {number + 1}/{args.rounds} done", file=sys.stderr)
    version = getattr(synth_containers, "__version__", "0.4.6")
    print(
        f"synth-containers {version}, concurrency {args.concurrency}, {args.seconds:g} s per "
        f"measure, {args.rounds} round(s), medians (loadavg {os.getloadavg()[0]:.2f})\n"
    )
    print(report(rounds))
    if args.json:
        Path(args.json).write_text(json.dumps(rounds, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
