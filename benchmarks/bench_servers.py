"""Server runners side by side: requests/s on a CPU-bound route, start and stop times.

Usage (from the repository root)::

    python benchmarks/bench_servers.py                       # 5 rounds x 4 s per server
    python benchmarks/bench_servers.py --rounds 3 --duration 3 --json servers.json

Servers, all serving the same FastAPI app (``GET /cpu`` burns ``--work`` iterations of
pure-Python arithmetic, about a millisecond, holding the GIL; ``GET /health``):

``thread``          ``InProcessTaskApp(server="thread")`` in this process
``subprocess-1``    ``InProcessTaskApp(server="subprocess")``
``subprocess-2``    ``InProcessTaskApp(server="subprocess", server_options={"workers": 2})``
``uvicorn-2``       standalone ``python -m uvicorn bench_app:app --workers 2`` (reference)

Load: ``wrk -t1 -c{connections} -d{duration}s`` on 127.0.0.1 (bounded in time). All four
servers run at once (idle between turns); every round runs each once, in rotating order,
so that noise from other work on the machine spreads over all of them; the table gives
medians over rounds and the ratio to ``uvicorn-2``. One warm-up turn per server first.

Start/stop: ``InProcessTaskApp.start()`` until it returns (the server answers
``/health``) and ``stop()`` until it returns (port free), ``--starts`` times per runner,
interleaved. Plus the process manager's own cost: ``spawn(["true"])`` until the program
has been exec'd, against a bare ``subprocess.Popen`` and a ``setpriv --pdeathsig``
wrapper (no parent check).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskapp import InProcessTaskApp
from taskapp.core.health import wait_healthy
from taskapp.core.ports import bind_listener
from taskapp.core.processes import spawn
from taskapp.core.serving import describe_stack

APP = """
import os

from fastapi import FastAPI

WORK = int(os.environ.get("BENCH_WORK", "20000"))
app = FastAPI()


@app.get("/health")
async def health():
    return {"healthy": True}


@app.get("/cpu")
async def cpu():
    total = 0
    for i in range(WORK):
        total += i * i
    return {"total": total, "pid": os.getpid()}
"""

WRK_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")


def free_port() -> int:
    sock = bind_listener("127.0.0.1", 0, auto_find_port=False)
    port = int(sock.getsockname()[1])
    sock.close()
    return port


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """user + system CPU time of ``pids`` (Linux /proc), in seconds."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry))
    return found


def wrk(url: str, *, duration: float, connections: int) -> float:
    result = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", url],
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=True,
    )
    match = WRK_RPS.search(result.stdout)
    if match is None:
        raise RuntimeError(f"unexpected wrk output:\n{result.stdout}\n{result.stderr}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", result.stdout)
    if errors:
        raise RuntimeError(f"wrk saw errors: {errors.group(0)}")
    return float(match.group(1))


class Standalone:
    """``python -m uvicorn bench_app:app --workers 2`` on its own port."""

    def __init__(self, app_dir: Path, workers: int) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench_app:app",
                "--app-dir",
                str(app_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_healthy(self.url, api_key=None, timeout=60)

    def close(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def start_taskapp(path: Path, server: str, workers: int) -> InProcessTaskApp:
    options: dict[str, Any] = {"access_log": False}
    if server == "subprocess":
        options.update(workers=workers, log_level="warning")
    return InProcessTaskApp(
        task_app_path=path, port=free_port(), server=server, server_options=options
    ).start()


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


Samples = dict[str, dict[str, list[float]]]


def bench_throughput(args: argparse.Namespace, app_path: Path) -> Samples:
    servers: dict[str, str] = {}
    server_pids: dict[str, list[int]] = {}
    stops: list[Callable[[], None]] = []
    try:
        for name, server, workers in (
            ("thread", "thread", 1),
            ("subprocess-1", "subprocess", 1),
            ("subprocess-2", "subprocess", 2),
        ):
            task_app = start_taskapp(app_path, server, workers)
            stops.append(task_app.stop)
            servers[name] = task_app.local_url
            assert task_app.server is not None
            server_pids[name] = list(task_app.server.pids) or [os.getpid()]
        standalone = Standalone(app_path.parent, 2)
        stops.append(standalone.close)
        servers["uvicorn-2"] = standalone.url
        server_pids["uvicorn-2"] = [standalone.proc.pid, *children_of(standalone.proc.pid)]
        names = list(servers)
        for name in names:  # warm-up, discarded
            wrk(servers[name] + "/cpu", duration=1, connections=args.connections)
        results: Samples = {name: {"rps": [], "cpu_ms": [], "ratio": []} for name in names}
        for round_no in range(args.rounds):
            order = names[round_no % len(names) :] + names[: round_no % len(names)]
            this_round: dict[str, float] = {}
            for name in order:
                cpu_before = cpu_seconds(server_pids[name])
                url = servers[name] + "/cpu"
                rps = wrk(url, duration=args.duration, connections=args.connections)
                cpu_ms = (cpu_seconds(server_pids[name]) - cpu_before) * 1000
                per_request = cpu_ms / (rps * args.duration)
                results[name]["rps"].append(rps)
                results[name]["cpu_ms"].append(per_request)
                this_round[name] = rps
                print(
                    f"  round {round_no + 1} {name:<13} {rps:8.0f} req/s "
                    f"{per_request:6.2f} ms CPU/request",
                    flush=True,
                )
            for name in names:
                results[name]["ratio"].append(this_round[name] / this_round["uvicorn-2"])
        return results
    finally:
        for stop in reversed(stops):
            stop()


def bench_start(args: argparse.Namespace, app_path: Path) -> dict[str, dict[str, list[float]]]:
    variants = (
        ("thread", "thread", 1),
        ("subprocess-1", "subprocess", 1),
        ("subprocess-2", "subprocess", 2),
    )
    times: dict[str, dict[str, list[float]]] = {v[0]: {"start": [], "stop": []} for v in variants}
    for _ in range(args.starts):
        for name, server, workers in variants:
            options: dict[str, Any] = {"access_log": False}
            if server == "subprocess":
                options.update(workers=workers, log_level="warning")
            task_app = InProcessTaskApp(
                task_app_path=app_path, port=free_port(), server=server, server_options=options
            )
            began = time.perf_counter()
            task_app.start()
            started = time.perf_counter()
            task_app.stop()
            stopped = time.perf_counter()
            times[name]["start"].append(started - began)
            times[name]["stop"].append(stopped - started)
    return times


def bench_spawn(runs: int) -> dict[str, list[float]]:
    true = shutil.which("true") or "/bin/true"
    samples: dict[str, list[float]] = {"Popen": [], "setpriv --pdeathsig": [], "spawn": []}
    for _ in range(runs):
        began = time.perf_counter()
        proc = subprocess.Popen([true])
        samples["Popen"].append(time.perf_counter() - began)
        proc.wait()
        setpriv = shutil.which("setpriv")
        if setpriv:
            began = time.perf_counter()
            proc = subprocess.Popen([setpriv, "--pdeathsig", "KILL", true])
            proc.wait()  # setpriv execs "true" at once; its exit bounds the exec
            samples["setpriv --pdeathsig"].append(time.perf_counter() - began)
        began = time.perf_counter()
        managed = spawn([true])  # returns once "true" has been exec'd
        samples["spawn"].append(time.perf_counter() - began)
        managed.close()
    return {k: v for k, v in samples.items() if v}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per wrk turn")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--work", type=int, default=20000, help="loop iterations per request")
    parser.add_argument("--starts", type=int, default=7, help="start/stop cycles per runner")
    parser.add_argument("--spawns", type=int, default=30)
    parser.add_argument("--json", type=Path, help="also write the raw samples here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    os.environ["BENCH_WORK"] = str(args.work)
    print(f"stack: {describe_stack()}")
    with tempfile.TemporaryDirectory(prefix="taskapp-bench-") as tmp:
        app_path = Path(tmp) / "bench_app.py"
        app_path.write_text(APP)
        print(
            f"throughput: {args.rounds} rounds x {args.duration:g}s, wrk -t1 -c{args.connections}"
        )
        rps = bench_throughput(args, app_path)
        print(f"start/stop: {args.starts} cycles per runner")
        starts = bench_start(args, app_path)
    print(f"spawn: {args.spawns} runs")
    spawns = bench_spawn(args.spawns)

    print()
    load = os.getloadavg()
    print(
        f"CPU-bound route ({args.work} iterations/request), {os.cpu_count()} cores, "
        f"load average {load[0]:.1f} at the end"
    )
    print()
    print(
        "| server | req/s (median) | min-max | vs uvicorn --workers 2 (median of per-round "
        "ratios) | server CPU ms/request (median) |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, data in rps.items():
        samples = data["rps"]
        ratio = statistics.median(data["ratio"])
        cpu = statistics.median(data["cpu_ms"])
        print(
            f"| {name} | {statistics.median(samples):.0f} | "
            f"{min(samples):.0f}-{max(samples):.0f} | {ratio:.2f}x | {cpu:.2f} |"
        )
    print()
    print("| runner | start (median ms) | stop (median ms) |")
    print("|---|---:|---:|")
    for name, data in starts.items():
        print(f"| {name} | {median_ms(data['start']):.0f} | {median_ms(data['stop']):.0f} |")
    print()
    print("| start a child (`true`) | median ms |")
    print("|---|---:|")
    for name, samples in spawns.items():
        print(f"| {name} | {median_ms(samples):.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"rps": rps, "start": starts, "spawn": spawns}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
