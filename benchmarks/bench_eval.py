"""Rollouts per second of ``taskapp eval`` against the floor: a bare httpx client.

Two setups, each comparing the real command with the floor on the same app, the same
seeds (0-399 of the bundled support-intents task) and the same concurrency; only the
rollout phase is timed (first POST /rollout to last answer):

**remote** (the client alone): one ``taskapp serve support-intents`` process serves the
app; against it run, alternately,

* eval: ``taskapp eval --url URL --seeds 0-399 --concurrency C --json FILE``, rate =
  ``completed / summary.rollout_s`` from its report (progress output, result parsing and
  bookkeeping included);
* floor: a fresh process with one ``httpx.AsyncClient``: one ``GET /task_info`` (as eval
  does first), then C workers posting the same requests, reading each answer, nothing else.

**in-process** (what ``taskapp eval support-intents`` does: the app runs on the thread
server inside the evaluating process, so client and server share one interpreter):

* eval: ``taskapp eval support-intents --seeds 0-399 --concurrency C --json FILE``; its
  end-to-end wall time (interpreter start, app start, rollouts, report, shutdown) is shown
  too;
* floor: a fresh process starting the same app with InProcessTaskApp, then the same bare
  client loop.

Each round runs every concurrency once, eval and floor back to back (which goes first
alternates between rounds), so load from elsewhere hits both sides and all concurrencies
alike. The primary figure is CPU time per rollout (``time.process_time`` of the
evaluating process over the rollout phase): unlike rollouts/s it barely moves with other
load on the machine, so its ratio (floor CPU / eval CPU, above 1 when eval is cheaper) is
the steady measure of eval's own overhead. Both ratios are taken per round and reported as
median [min-max] over the rounds, so the table shows its own spread. Usage::

    python benchmarks/bench_eval.py                     # 7 rounds at concurrency 1, 8, 32
    python benchmarks/bench_eval.py --rounds 9 --concurrency 1 8 32 --setup remote
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KEY = "bench-eval-key-0123456789"
N = 400


async def bare_client(url: str, key: str, concurrency: int, n: int) -> tuple[float, float]:
    """(rollouts/s, CPU seconds of this process per rollout)."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, headers={"X-API-Key": key}, limits=limits, trust_env=False, timeout=60
    ) as client:
        (await client.get("/task_info")).raise_for_status()
        seeds = iter(range(n))

        async def worker() -> None:
            for seed in seeds:
                body = {  # the very request eval sends
                    "run_id": f"eval-floor000-{seed}",
                    "env": {"seed": seed, "config": {}},
                    "policy": {"config": {}},
                    "mode": "eval",
                    "safety": {"max_time_s": 300.0},
                }
                response = await client.post("/rollout", json=body)
                response.read()

        started, cpu_started = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        return n / elapsed, cpu / n


def floor_child(url: str | None, concurrency: int, n: int) -> tuple[float, float]:
    """Runs in a fresh process: against ``url``, or against the app started here."""
    if url is not None:
        return asyncio.run(bare_client(url, KEY, concurrency, n))
    from taskapp import InProcessTaskApp
    from taskapp.examples.support_intents import build_config

    with InProcessTaskApp(config=build_config(), port=18900) as task_app:
        assert task_app.url is not None
        return asyncio.run(bare_client(task_app.url, task_app.api_key, concurrency, n))


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["ENVIRONMENT_API_KEY"] = KEY
    return env


def eval_once(
    taskapp: str, url: str | None, concurrency: int, workdir: Path
) -> tuple[float, float, float]:
    """(rollouts/s, CPU s per rollout, end-to-end s) of one ``taskapp eval``."""
    out = workdir / f"eval-{concurrency}.json"
    target = ["--url", url] if url else ["support-intents"]
    started = time.perf_counter()
    subprocess.run(
        [taskapp, "eval", *target, "--seeds", f"0-{N - 1}", "--concurrency", str(concurrency),
         "--json", str(out), "--keep-going"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env(),
    )  # fmt: skip
    wall = time.perf_counter() - started
    summary = json.loads(out.read_text())["summary"]
    if summary["completed"] != N or summary["failed"]:
        raise RuntimeError(f"the eval run did not complete cleanly: {summary}")
    done = summary["completed"]
    return done / summary["rollout_s"], summary["rollout_cpu_s"] / done, wall


def floor_once(url: str | None, concurrency: int) -> tuple[float, float]:
    command = [sys.executable, __file__, "--floor-child", "--concurrency", str(concurrency)]
    if url:
        command += ["--url", url]
    result = subprocess.run(command, check=True, capture_output=True, text=True, env=child_env())
    rate, cpu = result.stdout.strip().splitlines()[-1].split()
    return float(rate), float(cpu)


class Served:
    """``taskapp serve support-intents`` in the background."""

    def __init__(self, taskapp: str) -> None:
        self.proc = subprocess.Popen(
            [taskapp, "serve", "support-intents", "--port", "18950"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=child_env(),
        )
        assert self.proc.stdout is not None
        self.url = ""
        for line in self.proc.stdout:
            match = re.search(r"url:\s+(\S+)", line)
            if match:
                self.url = match.group(1)
            if line.startswith("press Ctrl-C"):
                break
        if not self.url:
            self.proc.kill()
            raise RuntimeError("taskapp serve printed no URL")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


Row = tuple[int, list[tuple[float, float, float, float, float]]]


def measure(
    taskapp: str, url: str | None, concurrencies: list[int], rounds: int, workdir: Path
) -> list[Row]:
    """Each round runs every concurrency once, eval and floor back to back, so bursts of
    load from elsewhere hit both sides and all concurrencies alike; which side goes first
    alternates between rounds (no order bias). Rows: (C, per-round samples of (eval/s,
    floor/s, eval CPU/rollout, floor CPU/rollout, eval end-to-end s))."""
    samples: dict[int, list[tuple[float, float, float, float, float]]] = {
        c: [] for c in concurrencies
    }
    for round_number in range(rounds):
        for concurrency in concurrencies:
            if round_number % 2 == 0:
                rate, cpu, wall = eval_once(taskapp, url, concurrency, workdir)
                floor_rate, floor_cpu = floor_once(url, concurrency)
            else:
                floor_rate, floor_cpu = floor_once(url, concurrency)
                rate, cpu, wall = eval_once(taskapp, url, concurrency, workdir)
            samples[concurrency].append((rate, floor_rate, cpu, floor_cpu, wall))
        print(f"{'remote' if url else 'in-process'}: round {round_number + 1}/{rounds}",
              file=sys.stderr, flush=True)  # fmt: skip
    return list(samples.items())


def _spread(values: list[float]) -> str:
    """median [min-max] of per-round ratios."""
    return f"{statistics.median(values):.2f}x [{min(values):.2f}-{max(values):.2f}]"


def table(title: str, rows: list[Row], wall: bool) -> None:
    """CPU per rollout first (the steady figure on a loaded machine), then rollouts/s.
    Ratios are taken per round (eval and floor ran back to back) and summarised as
    median [min-max] over the rounds: the spread shows how steady each figure is."""
    print(f"\n{title}\n")
    extra = " eval end to end (s) |" if wall else ""
    print(
        "| concurrency | CPU per rollout, eval / bare (µs) | CPU ratio bare / eval | "
        f"taskapp eval (rollouts/s) | bare httpx (rollouts/s) | rate ratio eval / bare |{extra}"
    )
    print("|---:|---:|---:|---:|---:|---:|" + ("---:|" if wall else ""))
    for concurrency, values in rows:
        e, f, ecpu, fcpu, w = (statistics.median(column) for column in zip(*values, strict=True))
        cpu_ratios = [fc / ec for _, _, ec, fc, _ in values]
        rate_ratios = [er / fr for er, fr, _, _, _ in values]
        tail = f" {w:.2f} |" if wall else ""
        print(
            f"| {concurrency} | {ecpu * 1e6:.0f} / {fcpu * 1e6:.0f} | {_spread(cpu_ratios)} | "
            f"{e:.0f} | {f:.0f} | {_spread(rate_ratios)} |{tail}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--setup", choices=["both", "remote", "in-process"], default="both")
    parser.add_argument("--floor-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_child:
        print(*floor_child(args.url, args.concurrency[0], N))
        return
    taskapp = shutil.which("taskapp")
    if taskapp is None:
        sys.exit("the taskapp console script is not installed: pip install -e .")
    from taskapp.core.serving import describe_stack

    print(f"stack: {describe_stack()}")
    with tempfile.TemporaryDirectory() as tmp:
        remote = local = None
        if args.setup in ("both", "remote"):
            served = Served(taskapp)
            try:
                remote = measure(taskapp, served.url, args.concurrency, args.rounds, Path(tmp))
            finally:
                served.stop()
        if args.setup in ("both", "in-process"):
            local = measure(taskapp, None, args.concurrency, args.rounds, Path(tmp))
    print(
        f"{N} rollouts per run, {args.rounds} rounds (eval and floor back to back, order "
        "alternating); ratios per round, median [min-max]; "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    if remote:
        table("Remote app (`taskapp serve` in another process), client alone:", remote, False)
    if local:
        table("App in the evaluating process (`taskapp eval support-intents`):", local, True)


if __name__ == "__main__":
    main()
