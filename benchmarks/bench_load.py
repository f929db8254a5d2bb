"""Bounded loopback load through the thread runner, the subprocess runner and the relay.

Usage (from the repository root)::

    python benchmarks/bench_load.py                  # 3 rounds x 5 s per point, c=64
    python benchmarks/bench_load.py --quick          # 1 round x 2 s
    python benchmarks/bench_load.py --connections 16 --seconds 3 --json /tmp/load.json

Targets, all serving the bundled support-intents task app (``build_config()``):

``thread``         ``InProcessTaskApp(server="thread")`` in this process
``subprocess-2``   ``InProcessTaskApp(server="subprocess", server_options={"workers": 2})``
``relay``          the thread runner behind ``taskapp relay serve`` (a child process) with
                   ``tunnel_backend="relay"``: load goes to the public URL with the worker
                   token; the relay injects the app's key

Load: ``wrk -t1 -c{connections} -d{seconds}s --latency`` on 127.0.0.1 (bounded in time and
connections; wrk comes from apt): ``GET /health`` and ``POST /rollout`` (offline baseline,
seed 3). For each point: requests/s, p50 and p99 latency, errors (non-2xx answers plus
socket errors), and the RSS of the serving processes before the first and after the last
round (this process for ``thread``, the children for ``subprocess-2``, this process plus
the relay for ``relay``). Targets are interleaved in every round; medians are reported.

The first line names the stack measured: uvicorn's ``auto`` picks uvloop and httptools
when they are installed (the ``ray`` extra brings them); run it in a venv with plain
``pip install -e .`` to measure the asyncio loop and h11. Nothing here asserts a number.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from taskapp import InProcessTaskApp
from taskapp.core.serving import describe_stack
from taskapp.examples.support_intents import build_config

ROLLOUT = {"run_id": "load", "env": {"seed": 3}, "policy": {"config": {}}}


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(raw[raw.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry))
    return found


def descendants(pid: int) -> list[int]:
    result, stack_ = [], [pid]
    while stack_:
        for child in children(stack_.pop()):
            result.append(child)
            stack_.append(child)
    return result


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"cannot read wrk's latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(url: str, headers: dict[str, str], connections: int, seconds: float, script: Path | None,
        ) -> dict[str, float]:  # fmt: skip
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    if script is not None:
        argv += ["-s", str(script)]
    # wrk puts headers on its command line: loopback-only benchmark keys, made for this run.
    out = subprocess.run(
        [*argv, url], capture_output=True, text=True, timeout=seconds + 30, check=True
    ).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        result[f"p{pct}_ms"] = _ms(match.group(1)) if match else float("nan")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    if sock:
        errors += sum(int(g) for g in sock.groups())
    result["errors"] = errors
    result["requests"] = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return result


@contextmanager
def relay_server(workdir: Path) -> Iterator[tuple[str, Path, int]]:
    token = workdir / "relay.token"
    token.write_text(secrets.token_urlsafe(32) + "\n")
    token.chmod(0o600)
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskapp", "relay", "serve", "--port", "0", "--no-access-log",
         "--admin-token-file", str(token)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = ""
        deadline = time.monotonic() + 30
        for line in proc.stdout:
            if line.startswith("taskapp relay: listening on "):
                url = line.split("on ", 1)[1].strip()
                break
            if time.monotonic() > deadline:
                break
        if not url:
            raise RuntimeError("the relay did not start")
        yield url, token, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="1 round x 2 s")
    parser.add_argument("--json", type=Path, help="write the raw samples here")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 2.0
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    print(f"stack: {describe_stack()}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-load-"))
    post = workdir / "rollout.lua"
    post.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(ROLLOUT))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    me = os.getpid()
    with ExitStack() as stack_:
        relay_url, token_file, relay_pid = stack_.enter_context(relay_server(workdir))
        thread = stack_.enter_context(InProcessTaskApp(config=build_config(), port=0))
        sub = stack_.enter_context(
            InProcessTaskApp(
                app="taskapp.examples.support_intents.app:build_config",
                server="subprocess",
                server_options={"workers": 2},
                port=0,
            )
        )
        relayed = stack_.enter_context(
            InProcessTaskApp(
                config=build_config(),
                port=0,
                tunnel_backend="relay",
                tunnel_options={"relay_url": relay_url, "admin_token_file": str(token_file)},
            )
        )
        sub_pids = descendants(me)
        sub_pids = [p for p in sub_pids if p != relay_pid and p not in descendants(relay_pid)]
        targets: dict[str, tuple[str, dict[str, str], list[int]]] = {
            "thread": (thread.local_url, {"X-API-Key": thread.api_key}, [me]),
            "subprocess-2": (sub.local_url, {"X-API-Key": sub.api_key}, sub_pids),
            "relay": (
                str(relayed.url),
                {"X-SynthTunnel-Worker-Token": str(relayed.task_app_worker_token)},
                [me, relay_pid],
            ),
        }
        rss_before = {name: rss_mib(pids) for name, (_, _, pids) in targets.items()}
        samples: dict[str, dict[str, list[float]]] = {}
        for url, headers, _ in targets.values():  # warm-up, not recorded
            wrk(url.rstrip("/") + "/health", headers, 4, 1, None)
        for rnd in range(args.rounds):
            for route, script in (("GET /health", None), ("POST /rollout", post)):
                order = list(targets) if rnd % 2 == 0 else list(reversed(targets))
                for name in order:
                    url, headers, _ = targets[name]
                    path = "/health" if script is None else "/rollout"
                    out = wrk(url.rstrip("/") + path, headers, args.connections, args.seconds,
                              script)  # fmt: skip
                    for key, value in out.items():
                        samples.setdefault(f"{name}|{route}", {}).setdefault(key, []).append(value)
            print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        rss_after = {name: rss_mib(pids) for name, (_, _, pids) in targets.items()}

    print(
        f"\n# load ({args.rounds} round(s) x {args.seconds:g} s, wrk -c{args.connections}, "
        "loopback; medians)\n"
    )
    print(
        "| target | route | req/s | p50 ms | p99 ms | errors / requests | RSS MiB before -> after |"
    )
    print("|---|---|---|---|---|---|---|")
    for key, values in samples.items():
        name, route = key.split("|")
        med = {k: statistics.median(v) for k, v in values.items()}
        print(
            f"| {name} | {route} | {med['rps']:.0f} | {med['p50_ms']:.1f} | {med['p99_ms']:.1f} | "
            f"{sum(values['errors']):.0f} / {sum(values['requests']):.0f} | "
            f"{rss_before[name]:.0f} -> {rss_after[name]:.0f} |"
        )
    print(f"\nload average: {os.getloadavg()[0]:.2f} (2-core machine, shared)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "stack": describe_stack(),
                    "samples": samples,
                    "rss_before": rss_before,
                    "rss_after": rss_after,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
