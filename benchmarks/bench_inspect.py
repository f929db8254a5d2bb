"""Per-rollout overhead of taskapp's Inspect task apps over Inspect's own ``eval_async``.

The same task (``examples/inspect_intents.py@intents``), model (``taskapp/standin``, the
offline stand-in: the model's own time is ~0) and samples on both sides, one process:

* **direct**: ``eval_async`` called by hand for the sample(s), with the options taskapp
  uses (json log to an in-memory filesystem, no display). At concurrency 1 one call per
  sample; at concurrency C one call per C samples (Inspect allows one ``eval_async`` at a
  time in a process, so a batch per call is the fastest a direct caller can go);
* **direct, revision cached**: the same, with the git revision Inspect records in each log
  computed once per process, as taskapp's runner does (``runner._hoist_revision``: Inspect
  runs ``git`` three times per ``eval_async`` call outside pytest). Against this row the
  difference is what taskapp's HTTP layer and batching add;
* **direct, one call** (informational, at concurrency C only): all the samples in one
  ``eval_async`` call with ``max_samples`` C, revision cached: what a caller who knows
  every sample up front gets (a server's rollouts arrive one request at a time);
* **taskapp**: the task app started with ``InProcessTaskApp`` (thread server) and C
  concurrent ``POST /rollout`` over loopback HTTP through one shared client, created
  before the clock starts: httpx's, or with ``--client taskapp`` taskapp's own
  ``AsyncTaskAppClient`` (what ``taskapp eval`` and ``optimize`` send rollouts with).
  Its live eval run lingers a moment after the last rollout; the direct rows wait for
  it to end, outside the clock.

Reported: p50 latency per rollout at concurrency 1 and the overhead (taskapp p50 − direct
p50; goal <= 5 ms), and rollouts/s at concurrency C with the ratio taskapp / direct (goal
>= 0.95), each against both direct rows. Every row is warmed; each round runs the rows in
a rotated order so load from elsewhere (and any order effect) hits all. Usage::

    python benchmarks/bench_inspect.py                      # 3 rounds, 40 rollouts, C = 8
    python benchmarks/bench_inspect.py --rounds 1 --n 8     # the smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import copy
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


async def direct_call(task: Any, samples: list[Any], model: Any, max_samples: int) -> None:
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
        max_samples=max_samples,
        log_level="critical",  # as taskapp
    )
    assert logs[0].samples, logs[0].error
    assert len(logs[0].samples) == len(samples), logs[0].error


async def direct(
    setup: tuple[Any, list[Any], Any],
    n: int,
    c: int,
    *,
    cached_revision: bool = False,
    one_call: bool = False,
) -> tuple[float, float]:
    """(p50 latency s per call, rollouts/s); ``one_call``: all n samples in one call."""
    from taskapp.plugins.inspect_tasks import runner

    task, samples, model = setup
    latencies = []
    runner._hoist_revision()
    token = runner._CACHED_REVISION.set(cached_revision)
    try:
        start = time.perf_counter()
        step = n if one_call else c
        for first in range(0, n, step):
            t0 = time.perf_counter()
            await direct_call(task, samples[first : first + step], model, c)
            latencies.append(time.perf_counter() - t0)
        return statistics.median(latencies), n / (time.perf_counter() - start)
    finally:
        runner._CACHED_REVISION.reset(token)


async def through_taskapp(
    url: str, key: str, n: int, c: int, client: str = "httpx"
) -> tuple[float, float]:
    """(p50 latency s, rollouts/s) of n rollouts from c workers sharing one client:
    ``httpx`` (an httpx.AsyncClient) or ``taskapp`` (taskapp's AsyncTaskAppClient over its
    loopback transport, as ``taskapp eval`` and ``optimize`` send rollouts)."""
    import httpx

    from taskapp.core.client import AsyncTaskAppClient

    latencies: list[float] = []
    seeds = iter(range(n))

    async def worker(post: Any) -> None:
        for seed in seeds:
            t0 = time.perf_counter()
            status, body = await post(
                {
                    "run_id": f"b{seed}",
                    "env": {"seed": seed},
                    "policy": {"config": {"model": MODEL}},
                }
            )
            assert status == 200, body
            assert body["success_status"] == "success", body
            latencies.append(time.perf_counter() - t0)

    async def timed(post: Any) -> tuple[float, float]:
        start = time.perf_counter()
        await asyncio.gather(*(worker(post) for _ in range(c)))
        return statistics.median(latencies), n / (time.perf_counter() - start)

    if client == "taskapp":
        async with AsyncTaskAppClient(url, key, timeout=120, limit=c) as ours:

            async def post_ours(body: Any) -> tuple[int, Any]:
                answer = await ours.request("POST", "/rollout", json_body=body)
                return answer.status, answer.json()

            return await timed(post_ours)
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    async with httpx.AsyncClient(
        base_url=url, headers={"X-API-Key": key}, timeout=120, limits=limits
    ) as theirs:

        async def post_httpx(body: Any) -> tuple[int, Any]:
            answer = await theirs.post("/rollout", json=body)
            return answer.status_code, answer.json()

        return await timed(post_httpx)


def measured(run: Any, n: int) -> tuple[float, float, float]:
    """(p50 s, rollouts/s, CPU ms of this process per rollout) of ``asyncio.run(run)``;
    with the thread server the CPU covers client, server and Inspect alike."""
    cpu = time.process_time()
    p50, rate = asyncio.run(run)
    return p50, rate, (time.process_time() - cpu) / n * 1000


def app_state(app: Any) -> Any:
    """The task app's InspectTaskApp (None when it runs in another process)."""
    config = getattr(app.loaded, "config", None)
    return getattr(config, "app_state", {}).get("inspect_task_app") if config else None


def eval_calls(app: Any) -> int:
    """eval_async calls the task app made so far (-1 when it runs in another process)."""
    state = app_state(app)
    return int(state.runner.calls) if state is not None else -1


def wait_idle(app: Any) -> None:
    """Until the task app's live eval run has ended (it lingers a moment after the last
    rollout; Inspect allows one eval_async per process, so the direct rows wait for it)."""
    state = app_state(app)
    while state is not None and state.runner.busy:
        time.sleep(0.005)


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
    parser.add_argument(
        "--client",
        default="httpx",
        choices=("httpx", "taskapp"),
        help="the taskapp rows' HTTP client: httpx (default), or taskapp's own "
        "AsyncTaskAppClient (what taskapp eval/optimize use)",
    )
    args = parser.parse_args()
    from taskapp.plugins.inspect_tasks.runner import _quiet_display

    _quiet_display()  # the display taskapp picks (INSPECT_DISPLAY wins), for both sides

    from taskapp import InProcessTaskApp
    from taskapp.core.serving import describe_stack

    setup = direct_setup()
    c = args.concurrency
    rows: dict[str, list[tuple[float, float, float]]] = {}
    calls: list[int] = []
    n = args.n
    with InProcessTaskApp(task_app_path=TARGET, port=0, server=args.server) as app:
        url = str(app.url)
        for k in (1, c):  # warm every path
            asyncio.run(through_taskapp(url, app.api_key, 2 * k, k, args.client))
            wait_idle(app)
            asyncio.run(direct(setup, 2 * k, k))
            asyncio.run(direct(setup, 2 * k, k, cached_revision=True, one_call=True))
        for r in range(args.rounds):
            for k in (1, c):
                keys = "dht" + ("w" if k == c else "")
                for key in keys[r % len(keys) :] + keys[: r % len(keys)]:  # rotated
                    before = eval_calls(app)
                    if key == "t":
                        run = through_taskapp(url, app.api_key, n, k, args.client)
                    else:
                        run = direct(setup, n, k, cached_revision=key != "d", one_call=key == "w")
                    rows.setdefault(f"{key}{k}", []).append(measured(run, n))
                    if key == "t":
                        wait_idle(app)  # outside the clock
                        if k == c:
                            calls.append(eval_calls(app) - before)
    # p50 latency at c=1, rollouts/s at c=C, CPU ms per rollout: medians over the rounds
    m = {
        f"{key}{k}": statistics.median(v[i] for v in values)
        for key, values in rows.items()
        for i, k in enumerate(("", "r", "cpu"))
    }
    print(
        f"inspect task {TARGET.rsplit('/', 1)[1]}, model {MODEL}, "
        f"{args.rounds} round(s) of {args.n}, server {args.server}, client {args.client}, "
        f"stack {describe_stack()}"
    )
    d1, h1, t1 = (m[f"{key}1"] * 1000 for key in "dht")
    print(
        f"c=1  p50 direct eval_async {d1:7.1f} ms (revision cached {h1:.1f} ms)   taskapp "
        f"{t1:7.1f} ms   overhead {t1 - d1:+.1f} ms ({t1 - h1:+.1f} ms over revision "
        "cached; goal <= 5 ms)"
    )
    dc, hc, tc = (m[f"{key}{c}r"] for key in "dht")
    print(
        f"c={c}  direct {dc:7.1f} rollouts/s (revision cached {hc:.1f})   taskapp {tc:7.1f} "
        f"rollouts/s   ratio {tc / dc:.2f} ({tc / hc:.2f} to revision cached; goal >= 0.95); "
        f"taskapp made {calls} eval_async calls"
    )
    wc = m[f"w{c}r"]
    print(
        f"c={c}  direct, all {n} samples in one eval_async call (max_samples={c}, revision "
        f"cached; needs every sample up front) {wc:.1f} rollouts/s   taskapp ratio {tc / wc:.2f}"
    )
    for k in (1, c):
        d, h, t = (m[f"{key}{k}cpu"] for key in "dht")
        print(
            f"c={k}  CPU of this process per rollout: direct {d:.1f} ms, revision cached "
            f"{h:.1f} ms, taskapp {t:.1f} ms (CPU ratio direct/taskapp {d / t:.2f}, "
            f"{h / t:.2f} to revision cached)"
        )


if __name__ == "__main__":
    main()
