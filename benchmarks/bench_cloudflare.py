"""Time to a ready quick-tunnel URL: taskapp vs the anchor (synth-ai 0.7.3), with the
cloudflared STAND-IN (tests/standins/cloudflared) registering after a fixed delay D.

Usage (from the repository root)::

    python benchmarks/bench_cloudflare.py                 # D = 0.2 s and 1 s, 9 runs each
    python benchmarks/bench_cloudflare.py --runs 15 --delays 0.2 1 2 --json cf.json
    python benchmarks/bench_cloudflare.py --anchor-venv /elsewhere/anchor-venv

The real cloudflared cannot run here (no internet); the stand-in prints the real log lines,
serves ``/ready`` and ``/quicktunnel`` and registers its connection D seconds after it
started (``STANDIN_REGISTER_DELAY``). It appends wall-clock timestamps of its own events to
a timeline file, so each taskapp run splits into:

``before_spawn``  entering the context until the process manager is asked to spawn
                  (server start, local /health, finding cloudflared, temp config)
``spawn``         the process manager (fork on its spawner thread + exec wrapper)
``standin_boot``  the stand-in's own interpreter start-up (a Python script; not taskapp's)
``D``             the stand-in's registration delay (what Cloudflare would take)
``after_reg``     the "Registered" line until ``url`` is set: taskapp notices the line,
                  probes /ready, confirms /quicktunnel and returns

``taskapp overhead = total - standin_boot - standin_delay = before_spawn + spawn +
after_reg`` (target <= 50 ms): everything except the time the stand-in itself spends
starting its interpreter and waiting D (``standin_delay`` is its measured wait, which
overshoots D when the machine is loaded).

The anchor: its quick path (``open_quick_tunnel_with_dns_verification``) calls
``open_quick_tunnel`` (a ``cloudflared --version`` check, then parses the URL from the
output) and then sleeps a fixed 3.0 s, verifies DNS through public resolvers (1.1.1.1 /
8.8.8.8, impossible offline), and ``InProcessTaskApp`` then calls ``_verify_tunnel_ready``,
which first sleeps a fixed 3.0 s (``SYNTH_TUNNEL_VERIFY_INITIAL_DELAY_SECS``). This script
measures the anchor's ``open_quick_tunnel`` against the same stand-in (in the anchor's
venv, in a child process) and adds the two fixed sleeps: that is the anchor's *minimum* on
the same path (its DNS and HTTP checks after the sleeps can only add to it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STANDINS = REPO / "tests" / "standins"
ANCHOR_SLEEPS = 3.0 + 3.0  # open_quick_tunnel_with_dns_verification + _verify_tunnel_ready


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tiny_app() -> Any:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, bool]:
        return {"healthy": True}

    return app


def read_timeline(path: Path) -> dict[str, float]:
    events: dict[str, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, stamp = line.split()
            events.setdefault(name, float(stamp))
    return events


def run_taskapp(delay: float, app: Any, timeline: Path) -> dict[str, float]:
    import taskapp.core.processes as processes
    from taskapp import InProcessTaskApp

    marks: dict[str, float] = {}
    real_spawn = processes.spawn

    def timed_spawn(*args: Any, **kwargs: Any) -> Any:
        marks["spawn_call"] = time.time()
        try:
            return real_spawn(*args, **kwargs)
        finally:
            marks["spawn_return"] = time.time()

    timeline.unlink(missing_ok=True)
    os.environ["STANDIN_REGISTER_DELAY"] = str(delay)
    processes.spawn = timed_spawn  # type: ignore[assignment]
    try:
        task_app = InProcessTaskApp(
            app=app, tunnel_mode="quick", port=free_port(), skip_tunnel_verification=True
        )
        start = time.time()
        task_app.start()
        ready = time.time()
        task_app.stop()
    finally:
        processes.spawn = real_spawn  # type: ignore[assignment]
    events = read_timeline(timeline)
    total = ready - start
    boot = events["start"] - marks["spawn_return"]
    return {
        "total": total,
        "before_spawn": marks["spawn_call"] - start,
        "spawn": marks["spawn_return"] - marks["spawn_call"],
        "standin_boot": boot,
        "standin_delay": events["registered"] - events["start"],
        "after_reg": ready - events["registered"],
        "overhead": total - boot - (events["registered"] - events["start"]),
        "over_D": total - delay,
    }


ANCHOR_CHILD = textwrap.dedent(
    """
    import json, socket, sys, time
    from synth_ai.core.tunnels.cloudflare import open_quick_tunnel
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    results = []
    for _ in range(int(sys.argv[1])):
        start = time.time()
        url, proc = open_quick_tunnel(port)
        results.append(time.time() - start)
        proc.terminate(); proc.wait(5)
    print(json.dumps(results))
    """
)


def run_anchor(venv: Path, runs: int, timeline: Path) -> list[float] | str:
    python = venv / "bin" / "python"
    if not python.exists():
        return f"anchor venv not found at {venv}"
    env = {**os.environ, "STANDIN_REGISTER_DELAY": "0.2"}
    timeline.unlink(missing_ok=True)
    done = subprocess.run(
        [str(python), "-c", ANCHOR_CHILD, str(runs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        return f"anchor run failed: {done.stderr[-800:]}"
    result: list[float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def ms(value: float) -> str:
    return f"{value * 1000:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--delays", type=float, nargs="+", default=[0.2, 1.0])
    parser.add_argument("--anchor-venv", type=Path, default=REPO.parent / "anchor-venv")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-cloudflare-"))
    timeline = workdir / "timeline"
    os.environ["PATH"] = f"{STANDINS}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ["STANDIN_PYTHON"] = sys.executable
    os.environ["STANDIN_TIMELINE_FILE"] = str(timeline)
    for name in ("STANDIN_CLOUDFLARED_MODE", "STANDIN_EDGE_PORT", "TASKAPP_CLOUDFLARED"):
        os.environ.pop(name, None)

    app = tiny_app()
    run_taskapp(0.05, app, timeline)  # warm-up: imports, plugin registry, first spawn

    rows: dict[str, Any] = {}
    samples: dict[float, list[dict[str, float]]] = {d: [] for d in args.delays}
    for _ in range(args.runs):  # interleave the delays round by round
        for delay in args.delays:
            samples[delay].append(run_taskapp(delay, app, timeline))
    anchor = run_anchor(args.anchor_venv, args.runs, timeline)

    print(f"# cloudflared stand-in, {args.runs} runs per delay, medians in ms")
    print(
        f"# {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    keys = [
        "total",
        "over_D",
        "before_spawn",
        "spawn",
        "standin_boot",
        "standin_delay",
        "after_reg",
        "overhead",
    ]
    print("| D (s) | " + " | ".join(keys) + " | anchor minimum | ratio anchor/taskapp |")
    print("|---" * (len(keys) + 3) + "|")
    anchor_open = statistics.median(anchor) if isinstance(anchor, list) else None
    for delay in args.delays:
        med = {k: statistics.median(s[k] for s in samples[delay]) for k in keys}
        anchor_min = (anchor_open + ANCHOR_SLEEPS) if anchor_open is not None else ANCHOR_SLEEPS
        rows[str(delay)] = {"median": med, "anchor_minimum": anchor_min}
        print(
            f"| {delay:g} | "
            + " | ".join(ms(med[k]) for k in keys)
            + f" | {ms(anchor_min)} | {anchor_min / med['total']:.1f}x |"
        )
    if isinstance(anchor, list):
        print(
            f"# anchor open_quick_tunnel against the stand-in: median {ms(anchor_open or 0)} ms "
            f"(returns at the URL line, before registration) + fixed sleeps "
            f"{ANCHOR_SLEEPS:g} s = anchor minimum"
        )
    else:
        print(f"# anchor not measured ({anchor}); anchor minimum = its fixed sleeps only")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "anchor_open": anchor}, indent=2))


if __name__ == "__main__":
    main()
