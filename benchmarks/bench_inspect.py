"""Per-rollout overhead of taskapp's Inspect task apps over Inspect's own ``eval_async``.

The same task (``examples/inspect_intents.py@intents``), model (``taskapp/standin``, the
offline stand-in: the model's own time is ~0) and samples on both sides, one process:

* **direct**: ``eval_async`` called by hand for the sample(s), with the options taskapp
  uses (log to an in-memory filesystem, no display). At concurrency 1 one call per sample;
  at concurrency C one call per C samples (Inspect allows one ``eval_async`` at a time in a
  process, so a batch per call is the fastest a direct caller can go);
* **taskapp**: the task app started with ``InProcessTaskApp`` (thread server) and C client
  workers posting ``POST /rollout`` over loopback HTTP (one httpx client each).

Reported: p50 latency per rollout at concurrency 1 and the overhead (taskapp p50 − direct
p50; goal <= 5 ms), and rollouts/s at concurrency C with the ratio taskapp / direct (goal
>= 0.95). Rounds alternate direct and taskapp so load from elsewhere hits both. Usage::

    python benchmarks/bench_inspect.py                      # 3 rounds, 40 rollouts, C = 8
    python benchmarks/bench_inspect.py --rounds 1 --n 8     # the smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

TARGET = (
    str(Path(__file__).resolve().parent.parent / "examples" / "inspect_intents.py") + "@intents"
)
MODEL = "taskapp/standin"


def direct_setup() -> tuple[Any, list[Any], Any]:
    from inspect_ai.model import get_model

    from taskapp.plugins.inspect_tasks.runner import with_ids
    from taskapp.plugins.inspect_tasks.tasks import load_task

    loaded = load_task(TARGET)
    return loaded.task, with_ids(loaded.task.dataset), get_model(MODEL)


async def direct_call(task: Any, samples: list[Any], model: Any) -> None:
    from inspect_ai import eval_async, task_with

    t = task_with(copy.copy(task), dataset=samples, model=model, epochs=1)
    logs = await eval_async(
        t,
        log_dir=f"memory://bench-inspect/{uuid.uuid4().hex}",
        log_format="json",  # as taskapp: the samples come back in memory
        log_samples=True,
        log_realtime=False,
        score_display=False,
        fail_on_error=False,
        max_samples=len(samples),
    )
    assert logs[0].samples, logs[0].error
    assert len(logs[0].samples) == len(samples), logs[0].error


async def direct(setup: tuple[Any, list[Any], Any], n: int, c: int) -> tuple[float, float]:
    """(p50 latency s at this concurrency, rollouts/s)."""
    task, samples, model = setup
    latencies = []
    start = time.perf_counter()
    for first in range(0, n, c):
        t0 = time.perf_counter()
        await direct_call(task, samples[first : first + c], model)
        latencies.append(time.perf_counter() - t0)
    return statistics.median(latencies), n / (time.perf_counter() - start)


async def through_taskapp(url: str, key: str, n: int, c: int) -> tuple[float, float]:
    import httpx

    latencies: list[float] = []
    seeds = iter(range(n))

    async def worker() -> None:
        async with httpx.AsyncClient(
            base_url=url, headers={"X-API-Key": key}, timeout=120
        ) as client:
            for seed in seeds:
                t0 = time.perf_counter()
                answer = await client.post(
                    "/rollout",
                    json={
                        "run_id": f"b{seed}",
                        "env": {"seed": seed},
                        "policy": {"config": {"model": MODEL}},
                    },
                )
                body = answer.json()
                assert answer.status_code == 200, body
                assert body["success_status"] == "success", body
                latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(c)))
    return statistics.median(latencies), n / (time.perf_counter() - start)


def eval_calls(app: Any) -> int:
    """eval_async calls the task app made so far (-1 when it runs in another process)."""
    config = getattr(app.loaded, "config", None)
    state = getattr(config, "app_state", {}).get("inspect_task_app") if config else None
    return int(state.runner.calls) if state is not None else -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=40, help="rollouts per measurement")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--server",
        default="thread",
        choices=("thread", "subprocess"),
        help="thread: the app shares this process (and its GIL) with the client, as "
        "`taskapp eval`/`optimize` run it; subprocess: the app in a child process, as "
        "behind `taskapp serve`",
    )
    args = parser.parse_args()
    os.environ.setdefault("INSPECT_DISPLAY", "none")

    from taskapp import InProcessTaskApp

    setup = direct_setup()
    rows: dict[str, list[float]] = {k: [] for k in ("d1", "t1", "dC", "tC")}
    calls: list[int] = []
    with InProcessTaskApp(task_app_path=TARGET, port=0, server=args.server) as app:
        asyncio.run(through_taskapp(app.url, app.api_key, 2, 1))  # warm both paths
        asyncio.run(direct(setup, 2, 1))
        for _ in range(args.rounds):
            rows["d1"].append(asyncio.run(direct(setup, args.n, 1))[0])
            rows["t1"].append(asyncio.run(through_taskapp(app.url, app.api_key, args.n, 1))[0])
            rows["dC"].append(asyncio.run(direct(setup, args.n, args.concurrency))[1])
            before = eval_calls(app)
            rows["tC"].append(
                asyncio.run(through_taskapp(app.url, app.api_key, args.n, args.concurrency))[1]
            )
            calls.append(eval_calls(app) - before)
    d1, t1 = statistics.median(rows["d1"]), statistics.median(rows["t1"])
    dc, tc = statistics.median(rows["dC"]), statistics.median(rows["tC"])
    print(
        f"inspect task {TARGET.rsplit('/', 1)[1]}, model {MODEL}, "
        f"{args.rounds} round(s) of {args.n}, server {args.server}"
    )
    print(
        f"c=1  p50 direct eval_async {d1 * 1000:7.1f} ms   taskapp {t1 * 1000:7.1f} ms   "
        f"overhead {(t1 - d1) * 1000:+.1f} ms (goal <= 5 ms)"
    )
    print(
        f"c={args.concurrency}  direct {dc:7.1f} rollouts/s   taskapp {tc:7.1f} rollouts/s   "
        f"ratio {tc / dc:.2f} (goal >= 0.95); taskapp made {calls} eval_async calls"
    )


if __name__ == "__main__":
    main()
