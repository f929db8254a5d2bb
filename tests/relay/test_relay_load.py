"""The relay under concurrency on the stack a plain ``pip install`` user gets.

CI installs the Ray extra, which brings uvloop and httptools; with them the relay's v1 path
once passed while a plain install dropped the agent at concurrency 16 (the relay's listener
had proto 0, so asyncio never set TCP_NODELAY: ~40 ms delayed-ACK stalls per keep-alive
response). These tests run the relay, two task apps (one v1 agent, one v2 agent) and the
load generator in a CHILD process where ``import uvloop`` and ``import httptools`` fail,
and assert every request got its answer and no agent reconnected.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

from tests.helpers import run_child

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import asyncio, json, sys, time

for name in ("uvloop", "httptools"):
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{name} importable: not the plain stack")

from taskapp import InProcessTaskApp
from taskapp.relay.server.run import start_relay_thread
from tests.relay._relay_helpers import ADMIN, TaskAppProbe, relay_settings
from tests.helpers import free_port

CONC, PER_CONN, IDLE = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])


async def one(reader, writer, prefix, token, body):
    writer.write(
        f"POST {prefix}/echo HTTP/1.1\r\nHost: load\r\nX-SynthTunnel-Worker-Token: {token}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    )
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(
        (int(l.split(":", 1)[1]) for l in lines if l.lower().startswith("content-length:")), None
    )
    if length is None:  # chunked
        data = b""
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            data += chunk[:-2]
    else:
        data = await reader.readexactly(length)
    return status, data


async def load(url, token):
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    ok = dropped = wrong = 0
    reconnects = 0

    # Open every connection, then warm them up one after another (as a load generator
    # does): a connection waits idle while the others warm up, so slow keep-alive
    # responses (the missing TCP_NODELAY) outlast the relay's keep-alive timeout.
    conns = [await asyncio.open_connection(parts.hostname, parts.port) for _ in range(CONC)]
    warmup = []
    for index, (reader, writer) in enumerate(conns):
        for n in range(5):
            t0 = time.perf_counter()
            status, data = await asyncio.wait_for(
                one(reader, writer, parts.path, token, b"warm-up"), 30
            )
            warmup.append(time.perf_counter() - t0)
            assert status == 200 and data == b"warm-up", (status, data)
    warmup.sort()

    async def conn_worker(index):
        nonlocal ok, dropped, wrong, reconnects
        reader, writer = conns[index]
        try:
            for n in range(PER_CONN):
                body = f"{index}:{n}:".encode() * 64
                try:
                    status, data = await asyncio.wait_for(
                        one(reader, writer, parts.path, token, body), 30
                    )
                except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                    dropped += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
                    reconnects += 1
                    continue
                if status == 200 and data == body:
                    ok += 1
                else:
                    wrong += 1
                if n == PER_CONN // 2 and IDLE:
                    await asyncio.sleep(IDLE)  # keep-alive connection idle mid-run
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(conn_worker(i) for i in range(CONC)))
    return {
        "ok": ok,
        "dropped": dropped,
        "wrong": wrong,
        "client_reconnects": reconnects,
        "seconds": time.perf_counter() - started,
        "warmup_p50_ms": warmup[len(warmup) // 2] * 1000,
    }


relay = start_relay_thread(relay_settings())
results = {"loop": None}
try:
    apps = {}
    for proto in ("v1", "v2"):
        apps[proto] = InProcessTaskApp(
            app=TaskAppProbe(),
            port=free_port(),
            tunnel_mode="synthtunnel",
            tunnel_options={"relay_url": relay.url, "admin_token": ADMIN, "protocol": proto},
        ).start()
    try:
        for proto, ta in apps.items():
            results[proto] = asyncio.run(load(ta.url, ta.task_app_worker_token))
            results[proto]["lease"] = ta._tunnel_backend.lease.lease_id
        results["agent_connects"] = relay.call(lambda: relay.app.counters["agent_connects"])
        results["loop"] = relay.call(lambda: type(asyncio.get_running_loop()).__module__)
        results["agents_attached"] = relay.call(
            lambda: sum(1 for x in relay.app.store.by_id.values() if x.session is not None)
        )
    finally:
        for ta in apps.values():
            ta.stop()
finally:
    relay.stop()
print("RESULT " + json.dumps(results), flush=True)
"""


def _plain_stack_dir(tmp_path: Path) -> Path:
    blocked = tmp_path / "plain-stack"
    for name in ("uvloop", "httptools"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(
            f"raise ImportError('{name} blocked: plain-stack test')\n"
        )
    return blocked


def _run_child(tmp_path: Path, conc: int, per_conn: int, idle: float) -> dict[str, object]:
    script = tmp_path / "load_child.py"
    script.write_text(textwrap.dedent(CHILD))
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(_plain_stack_dir(tmp_path)), str(REPO / "src"), str(REPO)]
    )
    proc = run_child(
        [sys.executable, str(script), str(conc), str(per_conn), str(idle)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (
        proc.returncode,
        proc.stdout[-2000:],
        proc.stderr[-4000:],
    )
    result: dict[str, object] = json.loads(lines[-1][len("RESULT ") :])
    return result


def test_v1_and_v2_at_concurrency_16_on_the_plain_stack_drop_nothing(tmp_path: Path) -> None:
    conc, per_conn = 16, 25
    result = _run_child(tmp_path, conc, per_conn, idle=1.0)
    assert result["loop"] == "asyncio.unix_events", result  # not uvloop
    for proto in ("v1", "v2"):
        figures = result[proto]
        assert isinstance(figures, dict)
        # Sequential keep-alive requests: ~1-2 ms each; a delayed-ACK stall costs ~40-90 ms.
        assert figures["warmup_p50_ms"] < 25, (proto, figures)
        assert figures["dropped"] == 0, (proto, figures)
        assert figures["wrong"] == 0, (proto, figures)
        assert figures["client_reconnects"] == 0, (proto, figures)
        assert figures["ok"] == conc * per_conn, (proto, figures)
    # One attach per agent for the whole run: no agent dropped and reconnected.
    assert result["agent_connects"] == 2, result
    assert result["agents_attached"] == 2, result


def test_relay_listeners_say_tcp_so_asyncio_sets_nodelay() -> None:
    import socket

    from taskapp.core.ports import listen_tcp
    from taskapp.relay.server.run import RelayServer
    from tests.relay._relay_helpers import relay_settings

    sock = listen_tcp("127.0.0.1", 0)
    with sock:
        assert sock.proto == socket.IPPROTO_TCP
    # A socket the embedding code made with proto 0 is served through a TCP duplicate.
    plain = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen(8)
        assert plain.proto == 0
        server = RelayServer(relay_settings(), sock=plain)
        assert server.sock is not None
        assert server.sock.proto == socket.IPPROTO_TCP
        assert server.sock.getsockname() == plain.getsockname()
        server.sock.close()


def test_concurrency_equal_to_max_inflight_gets_no_503() -> None:
    """As many keep-alive callers as the agent's max_inflight, each sending its next request
    as soon as the answer arrives: every request is served. The relay once freed a lease's
    in-flight slot only after cleanup that awaited, so the next request on the same
    connection found it taken (about 20% 503 too_many_inflight)."""
    import asyncio
    from urllib.parse import urlsplit

    from taskapp import InProcessTaskApp
    from tests.helpers import free_port
    from tests.relay._relay_helpers import ADMIN, TaskAppProbe, running_relay

    async def load(url: str, token: str, conc: int, per: int) -> dict[int, int]:
        parts = urlsplit(url)
        codes: dict[int, int] = {}

        async def worker() -> None:
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
            head_lines = (
                f"GET {parts.path}/health HTTP/1.1\r\nHost: load\r\n"
                f"X-SynthTunnel-Worker-Token: {token}\r\n\r\n"
            ).encode()
            for _ in range(per):
                writer.write(head_lines)
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                codes[int(head.split()[1])] = codes.get(int(head.split()[1]), 0) + 1
                lengths = [x for x in head.split("\r\n") if x.lower().startswith("content-length")]
                if lengths:
                    await reader.readexactly(int(lengths[0].split(":")[1]))
                    continue
                while True:  # chunked
                    size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            writer.close()

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(conc))), 60)
        return codes

    with running_relay() as relay:
        for proto in ("v1", "v2"):
            options = {"relay_url": relay.url, "admin_token": ADMIN, "protocol": proto}
            with InProcessTaskApp(
                app=TaskAppProbe(),
                port=free_port(),
                tunnel_mode="synthtunnel",
                tunnel_options={**options, "max_inflight": 8},
            ) as task_app:
                assert task_app.url and task_app.task_app_worker_token
                codes = asyncio.run(load(task_app.url, task_app.task_app_worker_token, 8, 100))
                assert codes == {200: 800}, (proto, codes)
