"""SSH reverse tunnels through a real loopback sshd: time to a working URL, and throughput.

Usage (from the repository root)::

    python benchmarks/bench_ssh.py                        # 15 runs, 5 load rounds
    python benchmarks/bench_ssh.py --runs 25 --rounds 7 --json /tmp/ssh.json

Starts ``sshd -D -e`` on a free 127.0.0.1 port (tests/tunnels/_ssh_helpers.py: temporary host key
and authorized key) and a task app (``InProcessTaskApp``, local mode, thread server, a raw
ASGI app) once, then measures, interleaving the variants in rotating order:

**Time to a working URL** (from "open the tunnel" until one ``GET /health`` through the
forwarded port answered 200):

``bare ssh -N -R``   ``subprocess.Popen`` of the system ssh with the minimum options
                     (key, known_hosts, BatchMode, ExitOnForwardFailure), reading stderr
                     until ``Allocated port N``: the reference (target: taskapp <= 1.2x)
``taskapp ssh``      ``SSHTunnel.open(ctx)`` (option handling, the process manager's
                     spawn with its exec wrapper, URL parsing) then the same GET
``asyncssh client``  reference only (not shipped): ``asyncssh.connect`` +
                     ``forward_remote_port`` on an event loop thread of this process
``curve25519 kex``   taskapp ssh with ``ssh_options={"KexAlgorithms": "curve25519-sha256"}``
                     (OpenSSH 9's default is the slower post-quantum sntrup761x25519)
``enter ssh/local``  ``InProcessTaskApp(tunnel_mode="ssh")`` vs ``tunnel_mode="local"``,
                     entering until ``url`` is set (server start and local /health too)

**Throughput** (bounded load on loopback): a separate load process (so the client does not
compete with the app for this process's GIL) opens C keep-alive ``http.client`` connections
and sends N requests in total, for a small JSON body and a 1 MiB body: direct to the app,
through a bare ssh tunnel, through taskapp's ssh tunnel, and through the asyncssh client
tunnel (whose forwarding runs inside the app's process).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from taskapp import InProcessTaskApp  # noqa: E402
from taskapp.core.backends import TunnelContext  # noqa: E402
from taskapp.core.health import probe  # noqa: E402
from taskapp.core.options import parse_options  # noqa: E402
from taskapp.plugins.tunnels.ssh import SSHTunnel  # noqa: E402
from tests.tunnels._ssh_helpers import SSHServer, free_port  # noqa: E402

BIG = b"x" * (1 << 20)
#: OpenSSH 9.x defaults to the post-quantum sntrup761x25519 key exchange; this variant shows
#: what it costs (a user can choose it through ssh_options; taskapp keeps ssh's default).
FAST: dict[str, Any] = {"ssh_options": {"KexAlgorithms": "curve25519-sha256"}}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    body = BIG if scope["path"] == "/big" else b'{"healthy": true}'
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def first_ok(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        try:
            status, _ = probe(url + "/health", {}, timeout=2.0)
            if status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} never answered 200")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


# -- time-to-URL variants -------------------------------------------------------------------


def open_bare(server: SSHServer, app_port: int) -> tuple[subprocess.Popen[str], int]:
    """A bare ssh -N -R (no process manager); returns it and the allocated port."""
    proc = subprocess.Popen(
        server.ssh_argv(
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            f"127.0.0.1:0:127.0.0.1:{app_port}",
        ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("Allocated port "):
            # Nothing else is printed at the default log level: the pipe cannot fill up.
            return proc, int(line.split()[2])
    proc.wait(5)
    raise RuntimeError("bare ssh printed no port")


def run_bare(server: SSHServer, app_port: int) -> float:
    started = time.perf_counter()
    proc, port = open_bare(server, app_port)
    try:
        first_ok(f"http://127.0.0.1:{port}")
        return time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()


def make_ctx(app_port: int) -> TunnelContext:
    return TunnelContext(
        local_url=f"http://127.0.0.1:{app_port}",
        host="127.0.0.1",
        port=app_port,
        api_key="bench-key-0123456789",
        force_new=False,
        start_timeout=15.0,
        logger=logging.getLogger("bench.ssh"),
        url_changed=lambda tunnel: None,
    )


def ssh_backend(server: SSHServer, **extra: Any) -> SSHTunnel:
    options = parse_options(
        SSHTunnel.Options,
        server.tunnel_options(server_alive_interval=5, server_alive_count_max=2, **extra),
        owner="bench",
    )
    return SSHTunnel(options)


def run_taskapp(server: SSHServer, app_port: int, **extra: Any) -> float:
    backend = ssh_backend(server, **extra)
    ctx = make_ctx(app_port)
    started = time.perf_counter()
    try:
        tunnel = backend.open(ctx)
        first_ok(tunnel.url)
        return time.perf_counter() - started
    finally:
        backend.close()


class AsyncSSHTunnel:
    """Reference only: the remote forward done by asyncssh inside this process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def open(self, server: SSHServer, app_port: int) -> tuple[Any, int]:
        import asyncssh

        conn = await asyncssh.connect(
            "127.0.0.1",
            port=server.port,
            username=server.user,
            client_keys=[str(server.client_key)],
            known_hosts=str(server.known_hosts),
            agent_path=None,
            config=[],
        )
        listener = await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", app_port)
        return conn, listener.get_port()

    async def close_conn(self, conn: Any) -> None:
        conn.close()
        await conn.wait_closed()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def run_asyncssh(helper: AsyncSSHTunnel, server: SSHServer, app_port: int) -> float:
    started = time.perf_counter()
    conn, port = helper.run(helper.open(server, app_port))
    try:
        first_ok(f"http://127.0.0.1:{port}")
        return time.perf_counter() - started
    finally:
        helper.run(helper.close_conn(conn))


def run_enter(server: SSHServer, mode: str) -> float:
    kwargs: dict[str, Any] = {}
    if mode == "ssh":
        kwargs["tunnel_options"] = server.tunnel_options()
    started = time.perf_counter()
    with InProcessTaskApp(app=app, port=free_port(), tunnel_mode=mode, **kwargs) as task_app:
        first_ok(task_app.url or "")
        return time.perf_counter() - started


# -- throughput -------------------------------------------------------------------------------

LOAD = textwrap.dedent(
    """
    import http.client, json, sys, threading, time
    port, path, conns, total = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    per = total // conns
    barrier = threading.Barrier(conns + 1)
    received = [0] * conns
    errors = []

    def worker(i):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.connect()
        barrier.wait()
        try:
            for _ in range(per):
                c.request("GET", path)
                r = c.getresponse()
                received[i] += len(r.read())
                if r.status != 200:
                    errors.append(r.status)
        except Exception as exc:
            errors.append(repr(exc))
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(conns)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    print(json.dumps({"elapsed": elapsed, "requests": per * conns, "bytes": sum(received),
                      "errors": errors[:3]}))
    """
)


def load(port: int, path: str, conns: int, total: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", LOAD, str(port), path, str(conns), str(total)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    if result["errors"]:
        raise RuntimeError(f"load errors through port {port}: {result['errors']}")
    return result


# -- reporting --------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="time-to-URL samples per variant")
    parser.add_argument("--rounds", type=int, default=5, help="throughput rounds per path")
    parser.add_argument("--conns", type=int, default=4)
    parser.add_argument("--small", type=int, default=2000, help="small requests per round")
    parser.add_argument("--big", type=int, default=40, help="1 MiB requests per round")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import tempfile

    work = Path(tempfile.mkdtemp(prefix="bench-ssh-"))
    server = SSHServer(work / "sshd").start()
    helper = AsyncSSHTunnel()
    samples: dict[str, list[float]] = {}
    rates: dict[str, dict[str, list[float]]] = {}
    try:
        with InProcessTaskApp(app=app, port=free_port()) as task_app:
            app_port = task_app.port
            variants: list[tuple[str, Callable[[], float]]] = [
                ("bare ssh -N -R", lambda: run_bare(server, app_port)),
                ("taskapp ssh", lambda: run_taskapp(server, app_port)),
                ("asyncssh client", lambda: run_asyncssh(helper, server, app_port)),
                ("taskapp ssh, curve25519 kex", lambda: run_taskapp(server, app_port, **FAST)),
            ]
            for _name, fn in variants:  # warm-up, discarded
                fn()
            for run in range(args.runs):
                shift = run % len(variants)
                for name, fn in variants[shift:] + variants[:shift]:
                    samples.setdefault(name, []).append(fn())

            # throughput: one long-lived tunnel of each kind
            backend = ssh_backend(server)
            tunnel = backend.open(make_ctx(app_port))
            conn, async_port = helper.run(helper.open(server, app_port))
            bare_proc, bare_port = open_bare(server, app_port)
            paths = {
                "direct": app_port,
                "bare ssh tunnel": bare_port,
                "taskapp ssh tunnel": int(tunnel.url.rsplit(":", 1)[1]),
                "asyncssh client tunnel": async_port,
            }
            try:
                for port in paths.values():  # warm-up
                    load(port, "/health", args.conns, 200)
                for rnd in range(args.rounds):
                    order = list(paths.items())
                    order = order[rnd % len(order) :] + order[: rnd % len(order)]
                    for name, port in order:
                        small = load(port, "/health", args.conns, args.small)
                        big = load(port, "/big", args.conns, args.big)
                        entry = rates.setdefault(name, {"rps": [], "mbps": []})
                        entry["rps"].append(small["requests"] / small["elapsed"])
                        entry["mbps"].append(big["bytes"] / big["elapsed"] / 1e6)
            finally:
                backend.close()
                helper.run(helper.close_conn(conn))
                bare_proc.terminate()
                bare_proc.wait(5)
                if bare_proc.stderr is not None:
                    bare_proc.stderr.close()
        # full enter, ssh vs local (each a fresh task app)
        run_enter(server, "ssh")
        run_enter(server, "local")
        for run in range(args.runs):
            pair = [("enter ssh", "ssh"), ("enter local", "local")]
            for name, mode in pair[run % 2 :] + pair[: run % 2]:
                samples.setdefault(name, []).append(run_enter(server, mode))
    finally:
        helper.stop()
        server.stop()

    bare = statistics.median(samples["bare ssh -N -R"])
    print(
        f"## SSH tunnel benchmark ({platform.python_version()}, {platform.machine()}, "
        f"runs={args.runs}, rounds={args.rounds})\n"
    )
    print("Time to a working URL (open until one GET /health through the tunnel is 200)\n")
    print("| variant | median ms | p90 ms | x bare ssh |")
    print("|---|---:|---:|---:|")
    for name in ("bare ssh -N -R", "taskapp ssh", "asyncssh client", "taskapp ssh, curve25519 kex"):
        values = samples[name]
        med = statistics.median(values)
        print(f"| {name} | {med * 1000:.0f} | {pct(values, 0.9) * 1000:.0f} | {med / bare:.2f} |")
    local = statistics.median(samples["enter local"])
    for name in ("enter local", "enter ssh"):
        values = samples[name]
        med = statistics.median(values)
        print(
            f"| InProcessTaskApp {name} | {med * 1000:.0f} | {pct(values, 0.9) * 1000:.0f} "
            f"| (+{(med - local) * 1000:.0f} ms vs local) |"
        )
    direct = rates["direct"]
    print(
        f"\nThroughput ({args.conns} keep-alive connections; {args.small} small requests "
        f"and {args.big} x 1 MiB per round; medians of {args.rounds} rounds)\n"
    )
    print("| path | small req/s | x direct | 1 MiB MB/s | x direct |")
    print("|---|---:|---:|---:|---:|")
    for name, entry in rates.items():
        rps = statistics.median(entry["rps"])
        mbps = statistics.median(entry["mbps"])
        print(
            f"| {name} | {rps:.0f} | {rps / statistics.median(direct['rps']):.2f} "
            f"| {mbps:.0f} | {mbps / statistics.median(direct['mbps']):.2f} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"samples": samples, "rates": rates}, indent=1))


if __name__ == "__main__":
    main()
