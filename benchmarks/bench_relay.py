"""Relay benchmark: direct vs through the relay (v1 and v2), side by side in one run.

Three processes on loopback, as deployed (and a fourth for the floor):

* the **relay**: ``taskapp relay serve`` (child process);
* the **task app**: a child running two ``InProcessTaskApp(tunnel_mode="synthtunnel")``
  (one agent speaking v1, one v2) - the agent threads live in the task app's process;
* the **floor**: a TCP byte pipe in front of the task app's port (``PIPE_CHILD``), what any
  relay in Python on this loop costs at least;
* the **load generator**: this process (asyncio, raw keep-alive HTTP/1.1, uvloop if present).

Measured: latency at concurrency 1 (1 KiB POST echo), requests/s at concurrency 16, one
50 MiB download and upload, relay CPU per request and per MB (from /proc), the task app's and
the load generator's CPU per MB of the transfers (with few cores the three compete, so the
transfer rate follows their sum), relay RSS and the relay's buffered-bytes gauge with a
slow consumer, and time from entering the context to a working public URL. Modes are
interleaved in every repetition; medians are reported.

    python benchmarks/bench_relay.py            # full run (about 2 minutes)
    python benchmarks/bench_relay.py --quick    # shorter phases, one repetition
    python benchmarks/bench_relay.py --local-leg 3000   # the agent's local leg only
    python benchmarks/bench_relay.py --stack plain      # as after a plain pip install:
                                                        # asyncio loop and h11, no uvloop/httptools

The first line of the report names the stack measured (event loop and HTTP parser of the
relay, the task app and the load generator).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

MB = 1024 * 1024
REPO = Path(__file__).resolve().parent.parent

APP_CHILD = r"""
import json, os, sys, time, threading
import http.client
from taskapp import InProcessTaskApp

RELAY, ADMIN = sys.argv[1], os.environ["BENCH_RELAY_ADMIN"]  # never a token in argv
PATTERN = bytes(range(256)) * 256  # 64 KiB

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"}); return
    path = scope["path"]
    if path == "/blob":
        n = int(scope["query_string"].decode().split("=")[1])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(n).encode())]})
        sent = 0
        while sent < n:
            size = min(65536, n - sent)
            more = sent + size < n
            await send({"type": "http.response.body", "body": PATTERN[:size], "more_body": more})
            sent += size
        return
    body = []
    count = 0
    while True:
        m = await receive()
        if m["type"] != "http.request":
            break
        if path == "/sink":
            count += len(m.get("body", b""))
        else:
            body.append(m.get("body", b""))
        if not m.get("more_body"):
            break
    payload = str(count).encode() if path == "/sink" else (b"".join(body) or b'{"healthy":true}')
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})

def public_get(url, token):
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", parts.path + "/health", headers={"X-SynthTunnel-Worker-Token": token})
    status = conn.getresponse().status
    conn.close()
    return status

opts = {"relay_url": RELAY, "admin_token": ADMIN}
ttu = []
for i in range(int(os.environ.get("TTU_ROUNDS", "8"))):
    t0 = time.perf_counter()
    ta = InProcessTaskApp(app=app, port=18400 + i, tunnel_mode="synthtunnel", tunnel_options=opts)
    with ta:
        assert public_get(ta.url, ta.task_app_worker_token) == 200
        ttu.append(time.perf_counter() - t0)

apps = {}
for name, proto in (("v1", "v1"), ("v2", "v2")):
    ta = InProcessTaskApp(app=app, port=18500 if proto == "v1" else 18501,
                          tunnel_mode="synthtunnel", tunnel_options={**opts, "protocol": proto})
    ta.start()
    apps[name] = ta
print(json.dumps({
    "pid": os.getpid(),
    "direct": apps["v2"].local_url,
    "v1": [apps["v1"].url, apps["v1"].task_app_worker_token],
    "v2": [apps["v2"].url, apps["v2"].task_app_worker_token],
    "ttu": ttu,
}), flush=True)
sys.stdin.read()
for ta in apps.values():
    ta.stop()
"""


PIPE_CHILD = r"""
# The floor for any relay written in Python on this event loop: a TCP byte pipe in front of
# the task app's own port. No HTTP parsing, no auth, no framing: each read goes out as is.
import asyncio, sys

HOST, PORT = sys.argv[1], int(sys.argv[2])


class Half(asyncio.Protocol):
    def __init__(self):
        self.peer, self.transport, self.early = None, None, []

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if self.peer is None or self.peer.transport is None:
            self.early.append(data)
        else:
            self.peer.transport.write(data)

    def pause_writing(self):  # our socket is full: stop reading the other side
        self.peer.transport.pause_reading()

    def resume_writing(self):
        self.peer.transport.resume_reading()

    def connection_lost(self, exc):
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class Front(Half):
    def connection_made(self, transport):
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self.dial())

    async def dial(self):
        back = Half()
        back.peer = self
        await asyncio.get_running_loop().create_connection(lambda: back, HOST, PORT)
        self.peer = back
        for data in self.early:
            back.transport.write(data)
        self.early = []


async def main():
    server = await asyncio.get_running_loop().create_server(Front, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
"""


# -- which stack --------------------------------------------------------------------------

FAST_STACK = ("uvloop", "httptools")


def block_fast_stack(directory: Path) -> Path:
    """A directory that, first on PYTHONPATH, makes ``import uvloop``/``import httptools``
    fail: uvicorn and taskapp then run on the asyncio loop and h11 (a plain install)."""
    for name in FAST_STACK:
        package = directory / name
        package.mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").write_text(f"raise ImportError('{name} blocked: plain stack')\n")
    return directory


def describe_stack(env: dict[str, str]) -> str:
    """What the child processes will import: 'plain (asyncio loop, h11)' or the fast stack."""
    probe = (
        "import importlib.util, sys\n"
        "found = []\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        __import__(name)\n"
        "        found.append(name)\n"
        "    except ImportError:\n"
        "        pass\n"
        "print(','.join(found))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, *FAST_STACK],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not out:
        return "plain (asyncio event loop, h11 HTTP parser; the relay's ingress has its own)"
    loop = "uvloop" if "uvloop" in out else "asyncio event loop"
    parser = "httptools" if "httptools" in out else "h11"
    return f"{loop}, {parser} HTTP parser; the relay's ingress has its own"


# -- /proc readings --------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- a minimal keep-alive HTTP/1.1 client ------------------------------------------------


class Conn:
    def __init__(self, url: str, headers: dict[str, str]) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, int]:
        assert self.reader is not None
        assert self.writer is not None
        head = (
            f"{method} {self.prefix}{path} HTTP/1.1\r\nHost: bench\r\n{self.extra}"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            if line.lower().startswith("content-length:"):
                length = int(line.split(":", 1)[1])
        remaining = length
        while remaining:
            chunk = await self.reader.read(min(remaining, 1 << 20))
            if not chunk:
                raise ConnectionError("short body")
            remaining -= len(chunk)
        return status, length


async def small_requests(
    url: str, headers: dict[str, str], conc: int, seconds: float
) -> dict[str, float]:
    body = os.urandom(1024)
    conns = [Conn(url, headers) for _ in range(conc)]
    for conn in conns:
        await conn.open()
    for conn in conns:  # warm-up
        for _ in range(5):
            await conn.request("POST", "/echo", body)
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds
    errors = 0

    async def worker(conn: Conn) -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            status, _ = await conn.request("POST", "/echo", body)
            latencies.append(time.perf_counter() - t0)
            errors += status != 200

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - started
    for conn in conns:
        conn.close()
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "count": len(latencies),
        "errors": errors,
    }


async def big_transfer(url: str, headers: dict[str, str], direction: str, size: int) -> float:
    conn = Conn(url, headers)
    await conn.open()
    started = time.perf_counter()
    if direction == "down":
        status, length = await conn.request("GET", f"/blob?n={size}")
        assert status == 200, status
        assert length == size, (length, size)
    else:
        assert conn.writer is not None
        assert conn.reader is not None
        head = (
            f"POST {conn.prefix}/sink HTTP/1.1\r\nHost: bench\r\n{conn.extra}"
            f"Content-Length: {size}\r\n\r\n"
        ).encode()
        conn.writer.write(head)
        piece = os.urandom(MB)
        for _ in range(size // MB):
            conn.writer.write(piece)
            await conn.writer.drain()
        raw = await conn.reader.readuntil(b"\r\n\r\n")
        assert b" 200 " in raw.split(b"\r\n")[0], raw[:60]
    elapsed = time.perf_counter() - started
    conn.close()
    return size / MB / elapsed


async def slow_download(
    url: str, headers: dict[str, str], size: int, relay_pid: int, metrics: Any
) -> dict[str, float]:
    conn = Conn(url, headers)
    await conn.open()
    assert conn.writer is not None
    assert conn.reader is not None
    conn.writer.write(
        f"GET {conn.prefix}/blob?n={size} HTTP/1.1\r\nHost: bench\r\n{conn.extra}\r\n".encode()
    )
    before = rss_mib(relay_pid)
    peak_rss, peak_buffered = before, 0.0
    received = 0
    started = time.perf_counter()
    while received < size:
        data = await conn.reader.read(64 * 1024)
        if not data:
            break
        received += len(data)
        await asyncio.sleep(0.004)  # a consumer reading about 10 MB/s
        if received % (2 * MB) < 64 * 1024:
            peak_rss = max(peak_rss, rss_mib(relay_pid))
            peak_buffered = max(peak_buffered, await asyncio.to_thread(metrics))
    conn.close()
    return {
        "rss_before_mib": before,
        "rss_peak_mib": peak_rss,
        "buffered_peak_mib": peak_buffered / MB,
        "mb_s": received / MB / (time.perf_counter() - started),
    }


LEG_BODY = b"x" * 1024


async def _echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _asgi_call(app: Any) -> int:
    """One 1 KiB echo straight into the ASGI app (what in-process dispatch would run)."""
    sent: list[Any] = []
    request = {"type": "http.request", "body": LEG_BODY, "more_body": False}
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/echo",
        "raw_path": b"/echo",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-length", b"1024")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
        "state": {},
    }

    async def receive() -> Any:
        return request

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return len(sent)


def local_leg(count: int) -> int:
    """CPU per request of the agent's local leg: its keep-alive HTTP client to the app's
    uvicorn (what taskapp ships) vs calling the ASGI app directly, on the agent's loop or
    on another thread's loop (an in-process dispatch must run the app on the server's)."""
    import threading

    from taskapp import InProcessTaskApp
    from taskapp.relay.agent.local_http import LocalHttp

    head = LocalHttp.request_head(
        "POST", "/echo", [("host", "127.0.0.1"), ("content-length", str(len(LEG_BODY)))]
    )

    async def over_http(port: int) -> None:
        local = LocalHttp("127.0.0.1", port)
        for _ in range(count):
            conn, _ = await local.acquire()
            conn.writer.write(head + LEG_BODY)
            status, _, mode = await LocalHttp.read_head(conn.reader)
            await conn.reader.readexactly(int(mode.split(":")[1]))
            assert status == 200
            local.release(conn, True)
        local.close()

    async def direct() -> None:
        for _ in range(count):
            await _asgi_call(_echo_app)

    other = asyncio.new_event_loop()
    thread = threading.Thread(target=other.run_forever, daemon=True)
    thread.start()

    async def cross_thread() -> None:
        for _ in range(count):
            future = asyncio.run_coroutine_threadsafe(_asgi_call(_echo_app), other)
            await asyncio.wrap_future(future)

    rows: dict[str, list[float]] = {"http": [], "asgi": [], "asgi_cross_thread": []}
    with InProcessTaskApp(app=_echo_app, tunnel_mode="local") as task_app:
        port = task_app.port
        assert port is not None
        for _ in range(5):  # interleaved repetitions
            for name, make in (
                ("http", lambda: over_http(port)),
                ("asgi", direct),
                ("asgi_cross_thread", cross_thread),
            ):
                cpu0, wall0 = time.process_time(), time.perf_counter()
                asyncio.run(make())
                cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
                rows[name].append(cpu / count * 1e6)
                rows[name + "_wall"] = [*rows.get(name + "_wall", []), wall / count * 1e6]
    other.call_soon_threadsafe(other.stop)
    thread.join(5)
    other.close()
    print(f"\n# local leg, 1 KiB POST echo, {count} requests x 5 repetitions (medians, us)\n")
    print("| local leg | process CPU per request (us) | wall per request (us) |")
    print("|---|---:|---:|")
    for name, label in (
        ("http", "keep-alive HTTP/1.1 to the app's uvicorn (shipped)"),
        ("asgi", "ASGI call on the agent's own loop"),
        ("asgi_cross_thread", "ASGI call on another thread's loop"),
    ):
        print(
            f"| {label} | {statistics.median(rows[name]):.0f} | "
            f"{statistics.median(rows[name + '_wall']):.0f} |"
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--size-mib", type=int, default=50)
    parser.add_argument(
        "--stack",
        choices=("installed", "plain"),
        default="installed",
        help="installed: uvloop/httptools when present; plain: block them in every process",
    )
    parser.add_argument(
        "--local-leg",
        type=int,
        metavar="N",
        help="only measure the agent's local leg (HTTP vs in-process ASGI), N requests each",
    )
    args = parser.parse_args()
    if args.local_leg:
        return local_leg(args.local_leg)
    if args.quick:
        args.reps, args.seconds = 1, 1.5

    admin = secrets.token_urlsafe(32)
    workdir = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    pythonpath = [str(REPO / "src")]
    loop_factory: Any = None
    if args.stack == "plain":
        pythonpath.insert(0, str(block_fast_stack(workdir / "plain-stack")))
    else:
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:
            pass
    tokens = workdir / "tokens"
    tokens.write_text(admin + "\n")
    tokens.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    stack = describe_stack(env)
    print(f"stack: {stack}", file=sys.stderr, flush=True)
    relay = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskapp",
            "relay",
            "serve",
            "--port",
            "0",
            "--no-access-log",
            "--admin-token-file",
            str(tokens),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    app: subprocess.Popen[str] | None = None
    pipe: subprocess.Popen[str] | None = None
    try:
        assert relay.stdout is not None
        relay_url = ""
        for line in relay.stdout:
            if line.startswith("taskapp relay: listening on "):
                relay_url = line.split("on ", 1)[1].strip()
                break
        script = workdir / "app_child.py"
        script.write_text(textwrap.dedent(APP_CHILD))
        app = subprocess.Popen(
            [sys.executable, str(script), relay_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**env, "BENCH_RELAY_ADMIN": admin},
        )
        assert app.stdout is not None
        info = json.loads(app.stdout.readline())
        from urllib.parse import urlsplit

        target = urlsplit(info["direct"])
        pipe_script = workdir / "pipe_child.py"
        pipe_script.write_text(PIPE_CHILD)
        pipe = subprocess.Popen(
            [sys.executable, str(pipe_script), str(target.hostname), str(target.port)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert pipe.stdout is not None
        pipe_url = f"http://127.0.0.1:{int(pipe.stdout.readline())}"
        # The relay's CPU columns read the pipe's process in the floor's rows.
        middle = {"floor": pipe.pid}
        modes = {
            "direct": (info["direct"], {}),
            "floor": (pipe_url, {}),
            "relay v1": (info["v1"][0], {"X-SynthTunnel-Worker-Token": info["v1"][1]}),
            "relay v2": (info["v2"][0], {"X-SynthTunnel-Worker-Token": info["v2"][1]}),
        }

        def metrics_buffered() -> float:
            import httpx

            text = httpx.get(
                relay_url + "/metrics", headers={"Authorization": f"Bearer {admin}"}
            ).text
            for line in text.splitlines():
                if line.startswith("taskapp_relay_buffered_bytes "):
                    return float(line.split()[1])
            return 0.0

        results: dict[str, dict[str, list[float]]] = {m: {} for m in modes}

        def record(mode: str, key: str, value: float) -> None:
            results[mode].setdefault(key, []).append(value)

        async def run_all() -> dict[str, Any]:
            for rep in range(args.reps):
                for conc in (1, 16):
                    for mode, (url, headers) in modes.items():
                        hop = middle.get(mode, relay.pid)
                        relay_cpu0, app_cpu0 = cpu_seconds(hop), cpu_seconds(info["pid"])
                        out = await small_requests(url, headers, conc, args.seconds)
                        relay_cpu = cpu_seconds(hop) - relay_cpu0
                        app_cpu = cpu_seconds(info["pid"]) - app_cpu0
                        record(mode, f"c{conc}_rps", out["rps"])
                        record(mode, f"c{conc}_p50_ms", out["p50_ms"])
                        record(mode, f"c{conc}_p99_ms", out["p99_ms"])
                        record(
                            mode, f"c{conc}_relay_cpu_ms_per_req", relay_cpu / out["count"] * 1000
                        )
                        record(mode, f"c{conc}_app_cpu_ms_per_req", app_cpu / out["count"] * 1000)
                        assert out["errors"] == 0, (mode, out)
                for direction in ("down", "up"):
                    for mode, (url, headers) in modes.items():
                        hop = middle.get(mode, relay.pid)
                        relay_cpu0, app_cpu0 = cpu_seconds(hop), cpu_seconds(info["pid"])
                        own_cpu0 = time.process_time()
                        mbs = await big_transfer(url, headers, direction, args.size_mib * MB)
                        spent = {
                            "relay": cpu_seconds(hop) - relay_cpu0,
                            "app": cpu_seconds(info["pid"]) - app_cpu0,
                            "client": time.process_time() - own_cpu0,
                        }
                        record(mode, f"{direction}_mb_s", mbs)
                        for who, seconds in spent.items():
                            per_mb = seconds / args.size_mib * 1000
                            record(mode, f"{direction}_{who}_cpu_ms_per_mb", per_mb)
                print(f"repetition {rep + 1}/{args.reps} done", file=sys.stderr, flush=True)
            slow = {}
            for mode in ("relay v1", "relay v2"):
                url, headers = modes[mode]
                slow[mode] = await slow_download(url, headers, 32 * MB, relay.pid, metrics_buffered)
            return slow

        if loop_factory is not None:
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                slow = runner.run(run_all())
        else:
            slow = asyncio.run(run_all())
    finally:
        if pipe is not None:
            pipe.kill()
            pipe.wait(20)
        if app is not None and app.stdin is not None:
            app.stdin.close()
            try:
                app.wait(20)
            except subprocess.TimeoutExpired:
                app.kill()
        relay.terminate()
        relay.wait(20)

    med = {
        mode: {k: statistics.median(v) for k, v in values.items()}
        for mode, values in results.items()
    }
    direct = med["direct"]
    print(
        f"\n# relay benchmark ({args.reps} repetition(s), {args.seconds:g} s per point, "
        f"{args.size_mib} MiB transfers; medians)\n\nstack: {stack}\n"
    )
    hops = ("floor", "relay v1", "relay v2")
    print(
        "The floor is a TCP byte pipe in front of the task app's port (no parsing, no auth, no "
        "framing): what any relay in Python on this loop costs at least.\n"
    )
    print(
        "| metric | direct | floor | relay v1 | relay v2 "
        "| floor / direct | v1 / direct | v2 / direct |"
    )
    print("|---|---|---|---|---|---|---|---|")
    rows = [
        ("p50 latency, c=1, 1 KiB echo (ms)", "c1_p50_ms"),
        ("p99 latency, c=1 (ms)", "c1_p99_ms"),
        ("req/s, c=1", "c1_rps"),
        ("req/s, c=16", "c16_rps"),
        ("p50 latency, c=16 (ms)", "c16_p50_ms"),
        (f"{args.size_mib} MiB download (MB/s)", "down_mb_s"),
        (f"{args.size_mib} MiB upload (MB/s)", "up_mb_s"),
    ]
    for label, key in rows:
        d = direct[key]
        values = [med[mode][key] for mode in hops]
        print(
            f"| {label} | {d:.2f} | "
            + " | ".join(f"{v:.2f}" for v in values)
            + " | "
            + " | ".join(f"{v / d:.2f}" for v in values)
            + " |"
        )

    def cost_row(label: str, values: list[float], digits: int = 2) -> None:
        print(f"| {label} | " + " | ".join(f"{v:.{digits}f}" for v in values) + " |")

    print()
    print("| cost of the hop | floor | relay v1 | relay v2 |")
    print("|---|---|---|---|")
    cost_row(
        "added p50 latency at c=1 (ms)",
        [med[mode]["c1_p50_ms"] - direct["c1_p50_ms"] for mode in hops],
    )
    for label, key in (
        ("hop's CPU per request, c=16 (ms)", "c16_relay_cpu_ms_per_req"),
        (
            "task-app process CPU per request, c=16 (ms; direct: "
            f"{direct['c16_app_cpu_ms_per_req']:.2f})",
            "c16_app_cpu_ms_per_req",
        ),
        ("hop's CPU per MB, download (ms)", "down_relay_cpu_ms_per_mb"),
        ("hop's CPU per MB, upload (ms)", "up_relay_cpu_ms_per_mb"),
    ):
        cost_row(label, [med[mode][key] for mode in hops])
    # On a machine with few cores a transfer is bound by the CPU all three processes spend
    # per MB: these rows give the whole path's cost next to the direct one.
    for direction, word in (("down", "download"), ("up", "upload")):
        for who, label in (("app", "task-app process"), ("client", "load generator")):
            key = f"{direction}_{who}_cpu_ms_per_mb"
            cost_row(
                f"{label} CPU per MB, {word} (ms; direct: {direct[key]:.2f})",
                [med[mode][key] for mode in hops],
            )
        total = {
            mode: sum(
                med[mode][f"{direction}_{who}_cpu_ms_per_mb"] for who in ("relay", "app", "client")
            )
            for mode in med
        }
        cost_row(
            f"all three processes' CPU per MB, {word} (ms; direct: {total['direct']:.2f})",
            [total[mode] for mode in hops],
        )
    print()
    print("| slow consumer (relay only) | relay v1 | relay v2 |")
    print("|---|---|---|")
    for label, key in (
        ("relay RSS before slow 32 MiB download (MiB)", "rss_before_mib"),
        ("relay RSS peak during it (MiB)", "rss_peak_mib"),
        ("relay buffered-bytes gauge peak (MiB)", "buffered_peak_mib"),
        ("slow consumer rate (MB/s)", "mb_s"),
    ):
        cost_row(label, [slow["relay v1"][key], slow["relay v2"][key]], 1)
    ttu = sorted(info["ttu"])
    print()
    print(
        f"time from entering InProcessTaskApp to a working public URL: first "
        f"{info['ttu'][0] * 1000:.0f} ms (imports), then median "
        f"{statistics.median(info['ttu'][1:]) * 1000:.0f} ms, "
        f"max {ttu[-1] * 1000:.0f} ms over {len(ttu)} rounds"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
