"""Other clients' latency and the backend's memory with 500 SSE streams and 300 slow clients.

Usage (from the repository root)::

    python benchmarks/bench_backend_load.py                      # 500 streams, 300 slow, 300 calls
    python benchmarks/bench_backend_load.py --streams 20 --slow 10 --calls 30   # seconds
    python benchmarks/bench_backend_load.py --json /tmp/backend-load.json

Setup: ``taskapp backend serve`` as a child process on 127.0.0.1 (port 0, SQLite in a
temporary folder, ``--workers 0``: the API alone) with 20 queued jobs. The open-file limit
is raised to its hard limit here first (the child inherits it).

Phases, one after the other in one run (after a warm-up crowd of ``--warm`` streams and
slow clients, so that "before" is a process that has run every code path once):

``idle``      a client calls ``GET /api/jobs/ID`` (or ``--call list``: ``GET /api/jobs``)
              ``--calls`` times on one keep-alive connection, one call at a time
``loaded``    the same while ``--streams`` clients hold ``GET /api/jobs/ID/events/stream``
              open (a job's pause/resume every 0.5 s sends each of them events) and
              ``--slow`` clients hold connections whose request headers arrive one byte
              every ``--drip`` seconds (the backend's ``--header-timeout`` closes them
              after 10 s with a 408; they connect again at once, so that many are open
              throughout the phase)
``after``     the same once every stream and slow client has gone (``--rounds N``: the
              crowd comes N times; the rows say whether memory grows with each)

For each phase: p50, p95 and the worst call (ms), failed calls, and the backend's RSS at
its end (after ``--settle`` seconds for ``after``). The goals (issue 24): loaded p95 at
most 2x idle; RSS after within 10 MB of before. Nothing here asserts a number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.optimize._optimize_helpers import toy_toml

KEY = "bench-backend-load-" + secrets.token_hex(8)


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def drain(stream: Any, lines: list[str]) -> None:
    for line in stream:
        lines.append(line)


def start_backend(db: Path) -> tuple[subprocess.Popen[str], str, list[str]]:
    taskapp = shutil.which("taskapp")
    assert taskapp, "the taskapp console script is not installed (pip install -e .)"
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["TASKAPP_BACKEND_API_KEY"] = KEY
    args = [taskapp, "backend", "serve", "--port", "0", "--db", str(db), "--workers", "0"]
    proc = subprocess.Popen(
        args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        text=True, env=env,
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        match = re.search(r"serving on (http://\S+)", line)
        if match:
            # the child must never block on a full pipe
            threading.Thread(target=drain, args=(proc.stderr, lines), daemon=True).start()
            return proc, match.group(1), lines
        if not line:
            break
    proc.kill()
    raise SystemExit("the backend did not start:\n" + "".join(lines))


class Crowd:
    """SSE streams and slow clients on an asyncio loop in a thread of this process."""

    def __init__(self, host: str, port: int, job_id: str, drip: float) -> None:
        self.host, self.port, self.job_id, self.drip = host, port, job_id, drip
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.tasks: list[asyncio.Future[Any]] = []
        self.streams_open = 0
        self.stream_refused: dict[str, int] = {}
        self.slow_open = 0
        self.slow_closed_by_server = 0
        self.events_read = 0

    async def _stream(self) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(
                f"GET /api/jobs/{self.job_id}/events/stream HTTP/1.1\r\nHost: {self.host}\r\n"
                f"Authorization: Bearer {KEY}\r\nAccept: text/event-stream\r\n\r\n".encode()
            )
            await writer.drain()
            status = (await reader.readline()).decode("latin-1").split(" ")[1:2]
            if status != ["200"]:
                code = status[0] if status else "closed"
                self.stream_refused[code] = self.stream_refused.get(code, 0) + 1
                return
            self.streams_open += 1
            try:
                while chunk := await reader.read(65536):
                    self.events_read += chunk.count(b"\ndata:") + chunk.startswith(b"data:")
            finally:
                self.streams_open -= 1
        finally:
            writer.close()

    async def _slow(self) -> None:
        request = f"GET /api/jobs HTTP/1.1\r\nHost: {self.host}\r\nX-Slow: ".encode()
        while True:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self.slow_open += 1
            try:
                for i in range(10**6):
                    writer.write(request[i : i + 1] if i < len(request) else b"a")
                    await writer.drain()
                    read = asyncio.ensure_future(reader.read(1))
                    done, _ = await asyncio.wait({read}, timeout=self.drip)
                    if done:  # the server answered (408) or closed: connect again
                        self.slow_closed_by_server += 1
                        break
                    read.cancel()
            except (ConnectionError, OSError):
                self.slow_closed_by_server += 1
            finally:
                self.slow_open -= 1
                writer.close()

    def start(self, streams: int, slow: int) -> None:
        async def launch() -> list[asyncio.Future[Any]]:
            made = [asyncio.ensure_future(self._stream()) for _ in range(streams)]
            made += [asyncio.ensure_future(self._slow()) for _ in range(slow)]
            return made

        self.tasks = asyncio.run_coroutine_threadsafe(launch(), self.loop).result()

    def stop(self) -> None:
        async def cancel() -> None:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def measure(client: httpx.Client, path: str, calls: int) -> dict[str, Any]:
    took: list[float] = []
    failed = 0
    for _ in range(calls):
        start = time.perf_counter()
        try:
            ok = client.get(path).status_code == 200
        except httpx.HTTPError:
            ok = False
        took.append((time.perf_counter() - start) * 1000)
        failed += not ok
        time.sleep(0.01)  # a client that calls now and then, not a flood
    took.sort()
    return {
        "p50_ms": statistics.median(took),
        "p95_ms": took[max(0, int(len(took) * 0.95) - 1)],
        "max_ms": took[-1],
        "calls": calls,
        "failed": failed,
    }


def churn(url: str, job_id: str, stop: threading.Event) -> None:
    """Pause and resume the job every 0.5 s: events for every stream on it."""
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=url, headers=headers, trust_env=False, timeout=30) as client:
        action = "pause"
        while not stop.wait(0.5):
            client.post(f"/api/jobs/{job_id}/{action}")
            action = "resume" if action == "pause" else "pause"


def wait_open(crowd: Crowd, streams: int, slow: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        refused = sum(crowd.stream_refused.values())
        if crowd.streams_open + refused >= streams and crowd.slow_open >= slow:
            return
        time.sleep(0.2)
    print(
        f"warning: only {crowd.streams_open}/{streams} streams and {crowd.slow_open}/{slow} "
        "slow clients opened in time",
        file=sys.stderr,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    limit = raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="bench-backend-load-") as folder:
        proc, url, log = start_backend(Path(folder) / "jobs.sqlite3")
        try:
            return phases(args, proc, url, limit)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if args.verbose:
                print("".join(log), file=sys.stderr)


def phases(args: argparse.Namespace, proc: subprocess.Popen[str], url: str, limit: int) -> Any:
    headers = {"Authorization": f"Bearer {KEY}"}
    client = httpx.Client(base_url=url, headers=headers, trust_env=False, timeout=60)
    ids = [
        client.post(
            "/api/jobs", json={"config_toml": toy_toml(), "task_app_url": "http://127.0.0.1:9"}
        )
        .raise_for_status()
        .json()["id"]
        for _ in range(20)
    ]
    path = f"/api/jobs/{ids[0]}" if args.call == "job" else "/api/jobs"
    measure(client, path, 20)  # warm-up
    out: dict[str, Any] = {"fd_limit": limit, "call": f"GET {path.replace(ids[0], 'ID')}"}
    stop = threading.Event()
    churner = threading.Thread(target=churn, args=(url, ids[0], stop), daemon=True)
    churner.start()
    try:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        if args.warm:  # every code path once, so "before" is not the cold process
            crowd = Crowd(host, int(port), ids[0], args.drip)
            crowd.start(args.warm, args.warm)
            wait_open(crowd, args.warm, args.warm)
            time.sleep(1.0)
            crowd.stop()
            time.sleep(args.settle)
        out["rss_before_mib"] = rss_mib(proc.pid)
        out["idle"] = measure(client, path, args.calls) | {"rss_mib": rss_mib(proc.pid)}
        for round_ in range(1, args.rounds + 1):
            crowd = Crowd(host, int(port), ids[0], args.drip)
            crowd.start(args.streams, args.slow)
            wait_open(crowd, args.streams, args.slow)
            loaded = measure(client, path, args.calls)
            loaded |= {
                "rss_mib": rss_mib(proc.pid),
                "backend_fds": open_fds(proc.pid),
                "streams_open": crowd.streams_open,
                "streams_refused": dict(crowd.stream_refused),
                "slow_open": crowd.slow_open,
                "slow_closed_by_server": crowd.slow_closed_by_server,
                "events_read": crowd.events_read,
            }
            crowd.stop()
            time.sleep(args.settle)
            after = measure(client, path, args.calls) | {
                "rss_mib": rss_mib(proc.pid),
                "backend_fds": open_fds(proc.pid),
            }
            suffix = "" if round_ == 1 else f" {round_}"
            out["loaded" + suffix], out["after" + suffix] = loaded, after
            out["rounds"] = round_
    finally:
        stop.set()
        churner.join(10)
        client.close()
    return out


def report(args: argparse.Namespace, out: dict[str, Any]) -> None:
    load = os.getloadavg()
    print(f"$ python benchmarks/bench_backend_load.py {' '.join(sys.argv[1:])}")
    print(
        f"backend: taskapp backend serve --workers 0 (SQLite), {args.streams} SSE streams, "
        f"{args.slow} slow clients (1 byte / {args.drip} s), {args.calls} x {out['call']}; "
        f"fd limit {out['fd_limit']}; load average {load[0]:.1f}"
    )
    print()
    print("| phase | p50 ms | p95 ms | worst ms | failed / calls | backend RSS MiB |")
    print("|---|---|---|---|---|---|")
    phases = ["idle"]
    for round_ in range(1, out["rounds"] + 1):
        suffix = "" if round_ == 1 else f" {round_}"
        phases += ["loaded" + suffix, "after" + suffix]
    for phase in phases:
        row = out[phase]
        print(
            f"| {phase} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {row['max_ms']:.1f} | "
            f"{row['failed']} / {row['calls']} | {row['rss_mib']:.1f} |"
        )
    loaded, idle = out["loaded"], out["idle"]
    print()
    print(
        f"loaded: {loaded['streams_open']} streams open (refused: {loaded['streams_refused']}), "
        f"{loaded['slow_open']} slow clients open ({loaded['slow_closed_by_server']} closed by "
        f"the backend so far), {loaded['events_read']} events read, backend fds "
        f"{loaded['backend_fds']} (after: {out['after']['backend_fds']})"
    )
    print(
        f"p95 loaded / idle: {loaded['p95_ms'] / idle['p95_ms']:.2f}x (goal <= 2x); "
        f"RSS after - before: {out['after']['rss_mib'] - out['rss_before_mib']:+.1f} MiB "
        f"(goal within 10 MB; peak {loaded['rss_mib'] - out['rss_before_mib']:+.1f} MiB)"
    )
    if out["rounds"] > 1:
        last = out[f"after {out['rounds']}"]["rss_mib"]
        print(
            f"RSS after round {out['rounds']} - after round 1: "
            f"{last - out['after']['rss_mib']:+.1f} MiB (the table's rows per round: a leak grows "
            "each round, a high-water mark stays)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=500, help="SSE streams held open (500)")
    parser.add_argument("--slow", type=int, default=300, help="slow clients held open (300)")
    parser.add_argument("--calls", type=int, default=300, help="light calls per phase (300)")
    parser.add_argument("--call", choices=("job", "list"), default="job",
                        help="GET /api/jobs/ID (job) or GET /api/jobs (list)")  # fmt: skip
    parser.add_argument("--drip", type=float, default=1.0,
                        help="seconds between a slow client's bytes (1.0)")  # fmt: skip
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds after the crowd leaves before 'after' (3)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1,
                        help="crowds one after another (1): memory kept or leaked?")  # fmt: skip
    parser.add_argument("--warm", type=int, default=10,
                        help="a warm-up crowd's streams and slow clients (10)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--verbose", action="store_true", help="print the backend's log")
    args = parser.parse_args()
    out = run(args)
    report(args, out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
