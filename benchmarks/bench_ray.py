"""Ray Serve runner vs the thread and subprocess runners: rollouts/s on a slow route,
start-up, stop, memory, and what a SIGKILL of the parent leaves behind.

Usage (from the repository root, with ``pip install -e .[ray]``)::

    python benchmarks/bench_ray.py                          # 3 rounds x 5 s, c64, 50 ms route
    python benchmarks/bench_ray.py --rounds 5 --duration 5 --json ray.json
    python benchmarks/bench_ray.py --sigkill                # + SIGKILL of a parent (~70 s)

Servers, all serving the same task app file (``POST /rollout`` awaits
``env.config.sleep_ms`` milliseconds, the simulated model latency, then answers):

``thread``         ``InProcessTaskApp(server="thread")`` in this process
``subprocess-2``   ``InProcessTaskApp(server="subprocess", server_options={"workers": 2})``
``ray-2``          ``InProcessTaskApp(server="ray", server_options={"num_replicas": 2})``
                   (taskapp's default ``max_ongoing_requests=256``)
``ray-2-mor5``     the same with Serve's own default ``max_ongoing_requests=5``
                   (measured in a second phase: Serve serves one task app at a time)

Load: a child process (``--load``) with ``--concurrency`` asyncio connections, each its own
keep-alive HTTP/1.1 connection (a shared client pool collapses at c64 and measures
itself), bounded by ``--duration`` seconds and ``--max-requests``; 2 warm-up requests per
connection are not counted. 127.0.0.1 only. The three servers of phase 1 run at once
(idle between turns), every round runs each once in rotating order, and the tables give
medians over rounds with the ratio to ``thread``; phase 2 alternates ``ray-2-mor5`` with
``thread``.

Start: ``InProcessTaskApp.start()`` until it returns (the app answers ``/health``);
``ray`` cold = a fresh local Ray instance, ``ray`` warm = redeploy on an instance kept by
``stop_policy="delete_app"``. Stop: ``stop()`` until it returns, then until every process
of the instance is gone. Memory: PSS (``/proc/PID/smaps_rollup``) of the server processes
at idle. ``--sigkill``: a child starts a ray task app and is SIGKILLed; when each process of
its instance disappeared and when the port was free again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-ray-key-0123456789abcdef"

APP = """
import asyncio
import os

from taskapp import TaskAppConfig


def describe():
    return {"splits": {"train": 1}}


def instances(seeds):
    return [{"task": {"id": "bench", "name": "bench"}} for _ in seeds]


async def rollout(request, http_request):
    delay = float(request.env.config.get("sleep_ms", 0)) / 1000
    if delay:
        await asyncio.sleep(delay)
    details = {"pid": os.getpid()}
    return {"run_id": request.run_id, "metrics": {"outcome_score": 1.0, "details": details}}


def build_config():
    return TaskAppConfig(
        app_id="bench", name="bench", description="bench", describe_taskset=describe,
        provide_task_instances=instances, rollout=rollout,
    )
"""


# -- load generator (child process) --------------------------------------------------------


async def _connection(
    host: str,
    port: int,
    request: bytes,
    stop_at: float,
    budget: list[int],
    latencies: list[float],
    errors: list[str],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        warm = 2
        while time.monotonic() < stop_at:
            if warm == 0:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            began = time.perf_counter()
            writer.write(request)
            await writer.drain()
            status = await reader.readline()
            length = 0
            chunked = False
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                elif name.lower() == "transfer-encoding" and "chunked" in value:
                    chunked = True
            if chunked:
                while True:
                    size = int((await reader.readline()).strip(), 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            else:
                await reader.readexactly(length)
            if warm:
                warm -= 1
                continue
            if not status.startswith(b"HTTP/1.1 200"):
                errors.append(status.decode(errors="replace").strip())
            latencies.append(time.perf_counter() - began)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _load(
    url: str, concurrency: int, duration: float, max_requests: int, sleep_ms: int
) -> dict[str, Any]:
    host, port = url.split("//", 1)[1].split(":")
    body = json.dumps({"run_id": "b", "env": {"config": {"sleep_ms": sleep_ms}}}).encode()
    request = (
        f"POST /rollout HTTP/1.1\r\nHost: {host}:{port}\r\nX-API-Key: {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    errors: list[str] = []
    budget = [max_requests]
    began = time.monotonic()
    stop_at = began + duration
    await asyncio.gather(
        *(
            _connection(host, int(port), request, stop_at, budget, latencies, errors)
            for _ in range(concurrency)
        )
    )
    elapsed = time.monotonic() - began
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else None,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def run_load(args: argparse.Namespace, url: str) -> dict[str, Any]:
    command = [
        sys.executable, __file__, "--load", url,
        "--concurrency", str(args.concurrency), "--duration", str(args.duration),
        "--max-requests", str(args.max_requests), "--sleep-ms", str(args.sleep_ms),
    ]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=args.duration + 60, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{result.stderr}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


# -- measurements ------------------------------------------------------------------------


def process_table() -> dict[int, int]:
    table: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                if fields[0] != "Z":
                    table[int(entry)] = int(fields[1])
    return table


def descendants(root: int) -> set[int]:
    table = process_table()
    found: set[int] = set()
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in table.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                frontier.append(pid)
    return found


def pss_mb(pids: set[int] | list[int] | tuple[int, ...]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total / 1024


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def make(app_path: Path, server: str, options: dict[str, Any] | None) -> Any:
    from taskapp import InProcessTaskApp

    return InProcessTaskApp(
        task_app_path=app_path,
        server=server,
        server_options=options,
        api_key=KEY,
        port=8114,
        health_check_timeout=180,
    )


def timed_start(task_app: Any) -> float:
    began = time.perf_counter()
    task_app.start()
    return time.perf_counter() - began


def med(values: list[float | None]) -> float:
    """Median of the measured values; a point with no successful request (None, as a
    one-second smoke run can give) is left out, and nothing measured is nan."""
    measured = [value for value in values if value is not None]
    return statistics.median(measured) if measured else float("nan")


# -- the benchmark -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load per turn")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--sleep-ms", type=int, default=50, help="simulated model latency")
    parser.add_argument("--max-requests", type=int, default=20000, help="cap per turn")
    parser.add_argument(
        "--starts", type=int, default=3, help="start/stop cycles (thread, subprocess, warm ray)"
    )
    parser.add_argument("--cold-starts", type=int, default=2, help="fresh Ray instances started")
    parser.add_argument("--sigkill", action="store_true", help="also SIGKILL a parent (~70 s)")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--load", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--child-sigkill", metavar="APP", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load:
        result = asyncio.run(
            _load(args.load, args.concurrency, args.duration, args.max_requests, args.sleep_ms)
        )
        print(json.dumps(result))
        return 0
    if args.child_sigkill:
        return child_sigkill(Path(args.child_sigkill))

    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        app_path = Path(tmp) / "bench_ray_app.py"
        app_path.write_text(APP)
        results: dict[str, Any] = {"args": vars(args)}
        results["start"] = bench_start(args, app_path)
        results["throughput"] = bench_throughput(args, app_path)
        if args.sigkill:
            results["sigkill"] = bench_sigkill(app_path)
    report(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def bench_start(args: argparse.Namespace, app_path: Path) -> dict[str, Any]:
    from taskapp.plugins.servers.ray import stop_local_ray

    out: dict[str, Any] = {"start_s": {}, "stop_s": {}, "gone_s": {}}

    def record(name: str, key: str, value: float) -> None:
        out[key].setdefault(name, []).append(value)

    for _ in range(args.cold_starts):  # a fresh local Ray instance each time
        task_app = make(app_path, "ray", {"num_replicas": 2})
        record("ray cold", "start_s", timed_start(task_app))
        pids = task_app.server.pids
        began = time.perf_counter()
        task_app.stop()
        record("ray cold", "stop_s", time.perf_counter() - began)
        while any(alive(pid) for pid in pids) and time.perf_counter() - began < 30:
            time.sleep(0.02)
        record("ray cold", "gone_s", time.perf_counter() - began)
    prime = make(app_path, "ray", {"num_replicas": 2, "stop_policy": "delete_app"})
    prime.start()  # a kept instance for the warm starts below (not recorded)
    prime.stop()
    for _ in range(args.starts):
        for name, server, options in (
            ("thread", "thread", None),
            ("subprocess-2", "subprocess", {"workers": 2}),
            ("ray warm", "ray", {"num_replicas": 2, "stop_policy": "delete_app"}),
        ):
            task_app = make(app_path, server, options)
            record(name, "start_s", timed_start(task_app))
            began = time.perf_counter()
            task_app.stop()
            record(name, "stop_s", time.perf_counter() - began)
    stop_local_ray()
    return out


def bench_throughput(args: argparse.Namespace, app_path: Path) -> dict[str, Any]:
    from taskapp.plugins.servers.ray import stop_local_ray

    servers = {
        "thread": make(app_path, "thread", None),
        "subprocess-2": make(app_path, "subprocess", {"workers": 2}),
        "ray-2": make(app_path, "ray", {"num_replicas": 2, "stop_policy": "delete_app"}),
    }
    turns: dict[str, list[dict[str, Any]]] = {name: [] for name in [*servers, "ray-2-mor5"]}
    memory: dict[str, float] = {}
    try:
        for task_app in servers.values():
            task_app.start()
        time.sleep(2.0)
        memory["thread (whole process)"] = pss_mb([os.getpid()])
        memory["subprocess-2"] = pss_mb(
            descendants(os.getpid()) - set(servers["ray-2"].server.pids)
        )
        memory["ray-2 (instance)"] = pss_mb(servers["ray-2"].server.pids)
        names = list(servers)
        for _ in range(1):  # warm-up turn each, discarded
            for name in names:
                run_load(args, servers[name].local_url)
        for round_no in range(args.rounds):
            order = names[round_no % len(names) :] + names[: round_no % len(names)]
            for name in order:
                turns[name].append(run_load(args, servers[name].local_url))
                print(
                    f"  round {round_no} {name}: {turns[name][-1]['rps']:.0f} req/s",
                    file=sys.stderr,
                )
        # Phase 2: Serve's default max_ongoing_requests=5 (redeploy on the kept instance).
        servers.pop("ray-2").stop()
        slow = make(
            app_path,
            "ray",
            {"num_replicas": 2, "max_ongoing_requests": 5, "stop_policy": "delete_app"},
        )
        servers["ray-2-mor5"] = slow
        slow.start()
        run_load(args, slow.local_url)
        phase2_thread: list[dict[str, Any]] = []
        for _ in range(args.rounds):
            turns["ray-2-mor5"].append(run_load(args, slow.local_url))
            phase2_thread.append(run_load(args, servers["thread"].local_url))
            print(
                f"  phase 2 ray-2-mor5: {turns['ray-2-mor5'][-1]['rps']:.0f} req/s", file=sys.stderr
            )
        turns["thread (phase 2)"] = phase2_thread
    finally:
        for task_app in servers.values():
            with contextlib.suppress(Exception):
                task_app.stop()
        stop_local_ray()
    return {"turns": turns, "memory_pss_mb": memory}


def child_sigkill(app_path: Path) -> int:
    task_app = make(app_path, "ray", {"num_replicas": 2})
    task_app.start()
    print(
        "READY " + json.dumps({"port": task_app.port, "pids": list(task_app.server.pids)}),
        flush=True,
    )
    time.sleep(600)
    return 0


def bench_sigkill(app_path: Path) -> dict[str, Any]:
    child = subprocess.Popen(
        [sys.executable, __file__, "--child-sigkill", str(app_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert child.stdout is not None
    info: dict[str, Any] = {}
    for line in child.stdout:
        if line.startswith("READY "):
            info = json.loads(line[6:])
            break
    names = {}
    for pid in info["pids"]:
        with contextlib.suppress(OSError):
            raw = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            names[pid] = os.path.basename(raw)[:40]
    began = time.monotonic()
    child.kill()
    child.wait()
    gone: dict[int, float] = {}
    port_at = None
    while time.monotonic() - began < 90:
        now = time.monotonic() - began
        for pid in names:
            if pid not in gone and not alive(pid):
                gone[pid] = now
        if port_at is None and port_free(info["port"]):
            port_at = now
        if len(gone) == len(names) and port_at is not None:
            break
        time.sleep(0.1)
    return {
        "port_free_s": port_at,
        "processes": [
            {"name": names[pid], "gone_s": gone.get(pid)}
            for pid in sorted(names, key=lambda p: gone.get(p, 1e9))
        ],
    }


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    start = results["start"]
    print(
        f"\n### Start-up and stop (medians; {args.starts} warm / {args.cold_starts} cold cycles)\n"
    )
    print("| runner | start s | stop s | all processes gone s |")
    print("|---|---|---|---|")
    for name in ("thread", "subprocess-2", "ray warm", "ray cold"):
        gone = start["gone_s"].get(name)
        gone_text = f"{med(gone):.2f}" if gone else "-"
        print(
            f"| {name} | {med(start['start_s'][name]):.2f} | "
            f"{med(start['stop_s'][name]):.2f} | {gone_text} |"
        )
    turns = results["throughput"]["turns"]
    base = med([t["rps"] for t in turns["thread"]])
    base2 = med([t["rps"] for t in turns["thread (phase 2)"]])
    print(
        f"\n### POST /rollout awaiting {args.sleep_ms} ms, concurrency {args.concurrency} "
        f"({args.rounds} rounds x {args.duration:g} s; medians)\n"
    )
    print("| server | req/s | p50 ms | p99 ms | errors | vs thread |")
    print("|---|---|---|---|---|---|")
    for name in ("thread", "subprocess-2", "ray-2", "ray-2-mor5", "thread (phase 2)"):
        rows = turns[name]
        rps = med([t["rps"] for t in rows])
        ref = base2 if name in ("ray-2-mor5", "thread (phase 2)") else base
        print(
            f"| {name} | {rps:.0f} | {med([t['p50_ms'] for t in rows]):.0f} | "
            f"{med([t['p99_ms'] for t in rows]):.0f} | {sum(t['errors'] for t in rows)} | "
            f"{rps / ref:.2f}x |"
        )
    print("\n### Memory at idle (PSS, MB)\n")
    for name, value in results["throughput"]["memory_pss_mb"].items():
        print(f"- {name}: {value:.0f}")
    if "sigkill" in results:
        kill = results["sigkill"]
        print(f"\n### SIGKILL of the parent: port free after {kill['port_free_s']:.1f} s\n")
        for item in kill["processes"]:
            when = (
                f"{item['gone_s']:.1f} s" if item["gone_s"] is not None else "still alive at 90 s"
            )
            print(f"- {item['name']}: gone after {when}")


if __name__ == "__main__":
    sys.exit(main())
