"""End to end on loopback: InProcessTaskApp -> relay backend + agent -> a real relay (uvicorn
in a thread) -> public HTTP clients. v1 and v2, streaming, cancellation, limits, restarts."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskapp import InProcessTaskApp
from taskapp.core.errors import ConfigurationError, TunnelAuthError, TunnelError
from taskapp.relay import protocol as p
from taskapp.relay.agent.config import AgentConfig
from taskapp.relay.agent.thread import AgentThread
from taskapp.relay.server.run import start_relay_thread
from tests.helpers import free_port, port_is_free
from tests.helpers import wait_until as wait_for
from tests.relay._relay_helpers import (
    ADMIN,
    TaskAppProbe,
    blob_sha256,
    raw_request,
    read_body,
    relay_error,
    relay_settings,
    relay_threads,
    running_relay,
)

MB = 1024 * 1024

pytestmark = pytest.mark.usefixtures("no_relay_threads")


def task_app(relay_url: str, probe: Any = None, **options: Any) -> InProcessTaskApp:
    return InProcessTaskApp(
        app=probe if probe is not None else TaskAppProbe(),
        port=free_port(),
        tunnel_mode="synthtunnel",
        tunnel_options={"relay_url": relay_url, "admin_token": ADMIN, **options},
    )


def auth(app: InProcessTaskApp) -> dict[str, str]:
    assert app.task_app_worker_token
    return {"X-SynthTunnel-Worker-Token": app.task_app_worker_token}


def lease_info(relay: Any, app: InProcessTaskApp) -> dict[str, Any]:
    lease_id = app._tunnel_backend.lease.lease_id  # type: ignore[union-attr]
    answer = httpx.get(
        f"{relay.url}{p.LEASES_PATH}/{lease_id}", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    result: dict[str, Any] = answer.json() if answer.status_code == 200 else {"status": 404}
    return result


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_synthtunnel_mode_serves_through_the_relay_and_cleans_up(protocol: str) -> None:
    probe = TaskAppProbe()
    with running_relay() as relay:
        app = InProcessTaskApp(
            app=probe,
            port=free_port(),
            tunnel_mode="synthtunnel",
            skip_tunnel_verification=False,
            tunnel_options={"relay_url": relay.url, "admin_token": ADMIN, "protocol": protocol},
        )
        with app:
            assert app.url is not None
            assert app.url.startswith(relay.url + "/s/rt_")
            assert app.tunnel is not None
            assert app.tunnel.headers == auth(app)
            state = lease_info(relay, app)
            assert state["protocol_version"] == int(protocol[1])
            answer = httpx.get(f"{app.url}/headers?x=1", headers={**auth(app), "X-A": "b"})
            assert answer.status_code == 200
            seen = answer.json()
            assert app.task_app_worker_token is not None
            assert app.task_app_worker_token not in json.dumps(seen)
            assert seen["x-a"] == "b"
            assert seen["x-api-key"] == app.api_key  # injected by the agent
            assert seen["x-synthtunnel-lease-id"] == state["lease_id"]
            assert seen["host"] == f"127.0.0.1:{app.port}"
            echo = httpx.post(f"{app.url}/echo", headers=auth(app), content=b"q" * 300_000)
            assert echo.content == b"q" * 300_000
            lease_id = state["lease_id"]
        after = httpx.get(
            f"{relay.url}{p.LEASES_PATH}/{lease_id}", headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert after.status_code == 404  # deleted on exit
        assert port_is_free(app.port)


@pytest.mark.parametrize("protocol", ["v2", "v1"])
def test_50_mb_streams_both_ways(protocol: str) -> None:
    size = 50 * MB
    with running_relay() as relay, task_app(relay.url, protocol=protocol) as app:
        assert app.url is not None
        digest = hashlib.sha256()
        received = 0
        started = time.monotonic()
        with httpx.stream("GET", f"{app.url}/blob?n={size}", headers=auth(app), timeout=60) as r:
            assert r.status_code == 200
            assert r.headers["content-length"] == str(size)
            for chunk in r.iter_raw():
                digest.update(chunk)
                received += len(chunk)
        down = time.monotonic() - started
        assert received == size
        assert digest.hexdigest() == blob_sha256(size)

        piece = os.urandom(MB)

        def upload() -> Iterator[bytes]:
            for _ in range(50):
                yield piece

        started = time.monotonic()
        answer = httpx.post(f"{app.url}/sink", headers=auth(app), content=upload(), timeout=60)
        up = time.monotonic() - started
        assert answer.json() == {
            "n": size,
            "sha256": hashlib.sha256(piece * 50).hexdigest(),
        }
        assert down < 30 and up < 30, (down, up)
        assert relay.app.buffered == 0


def test_many_concurrent_requests_share_one_agent() -> None:
    with running_relay() as relay, task_app(relay.url) as app:
        assert app.url is not None

        async def burst() -> list[bytes]:
            async with httpx.AsyncClient(headers=auth(app), timeout=30) as client:
                answers = await asyncio.gather(
                    *(
                        client.post(f"{app.url}/echo", content=f"r{i}".encode() * 100)
                        for i in range(48)
                    )
                )
            return [a.content for a in answers]

        bodies = asyncio.run(burst())
        assert bodies == [f"r{i}".encode() * 100 for i in range(48)]


def test_a_streamed_response_arrives_chunk_by_chunk() -> None:
    probe = TaskAppProbe()
    with running_relay() as relay, task_app(relay.url, probe) as app:
        with httpx.stream("GET", f"{app.url}/drip?chunks=6", headers=auth(app)) as response:
            started = time.monotonic()
            chunks = response.iter_raw()
            first = next(chunks)
            first_at = time.monotonic() - started
            rest = b"".join(chunks)
            total = time.monotonic() - started
        assert len(first) + len(rest) == 6 * 1024
        assert first_at < 0.3 < total


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_client_disconnect_cancels_the_request_in_the_app(protocol: str) -> None:
    probe = TaskAppProbe()
    with running_relay() as relay, task_app(relay.url, probe, protocol=protocol) as app:
        assert app.url is not None
        path = app.url.split(relay.url, 1)[1]
        sock = raw_request(
            relay.url,
            [
                f"GET {path}/slow?s=10 HTTP/1.1",
                "Host: relay",
                f"X-SynthTunnel-Worker-Token: {app.task_app_worker_token}",
            ],
        )
        assert wait_for(lambda: relay.app.active_streams == 1, 5)
        time.sleep(0.1)  # the request reached the app
        closed_at = time.monotonic()
        sock.close()
        assert wait_for(lambda: probe.disconnects, 5)
        assert time.monotonic() - closed_at < 1.0
        assert wait_for(lambda: relay.app.active_streams == 0, 5)


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_an_app_that_fails_mid_body_gives_a_truncated_response_not_a_short_200(
    protocol: str,
) -> None:
    with running_relay() as relay, task_app(relay.url, protocol=protocol) as app:
        received = b""
        with pytest.raises(httpx.RemoteProtocolError):  # noqa: PT012
            with httpx.stream("GET", f"{app.url}/abort", headers=auth(app)) as response:
                assert response.status_code == 200
                for chunk in response.iter_raw():
                    received += chunk
        assert len(received) < 100_000
        # v2 reports it with an agent -> relay CANCEL, v1 with RESP_ERROR.
        assert relay.app.counters["agent_cancels"] == (1 if protocol == "v2" else 0)
        assert wait_for(lambda: relay.app.active_streams == 0, 5)
        assert httpx.get(f"{app.url}/health", headers=auth(app)).status_code == 200


def test_deadline_answers_504_and_cancels_the_app() -> None:
    probe = TaskAppProbe()
    with running_relay() as relay, task_app(relay.url, probe) as app:
        started = time.monotonic()
        answer = httpx.get(
            f"{app.url}/slow?s=5",
            headers={**auth(app), "X-SynthTunnel-Deadline-Ms": "300"},
            timeout=10,
        )
        assert answer.status_code == 504
        assert time.monotonic() - started < 2
        assert wait_for(lambda: probe.disconnects, 5)


@pytest.mark.parametrize("protocol", ["v2", "v1"])
def test_a_slow_consumer_keeps_relay_memory_bounded(protocol: str) -> None:
    size = 24 * MB
    with (
        running_relay(v1_stream_buffer=1 * MB) as relay,
        task_app(relay.url, protocol=protocol) as app,
    ):
        assert app.url is not None
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], relay.app.buffered)
                time.sleep(0.002)

        sampler = threading.Thread(target=sample)
        sampler.start()
        path = app.url.split(relay.url, 1)[1]
        sock = raw_request(
            relay.url,
            [
                f"GET {path}/blob?n={size} HTTP/1.1",
                "Host: relay",
                f"X-SynthTunnel-Worker-Token: {app.task_app_worker_token}",
            ],
        )
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        received = 0
        other_ok = None
        try:
            while received < size:
                data = sock.recv(64 * 1024)
                if not data:
                    break
                received += len(data)
                time.sleep(0.003)  # about 10-20 MB/s: far slower than the relay
                if other_ok is None and received > 4 * MB and protocol == "v2":
                    # Another request on the same lease is not stuck behind the slow one.
                    other_ok = httpx.get(
                        f"{app.url}/health", headers=auth(app), timeout=5
                    ).status_code
        finally:
            sock.close()
            done.set()
            sampler.join()
        assert received >= size  # headers + body
        print(f"peak buffered {protocol}: {peak[0]}")
        if protocol == "v2":
            assert peak[0] <= 2 * MB + 64 * 1024, peak[0]
            assert other_ok == 200
        else:
            # Reading stops in the frame that crosses the limit; the frames already read with
            # it (one read is at most 256 KiB: the frame and two more) are still queued.
            assert peak[0] <= 1 * MB + 3 * 90 * 1024, peak[0]
        assert wait_for(lambda: relay.app.buffered == 0, 5)


def test_over_the_memory_budget_new_requests_get_503() -> None:
    with running_relay(memory_budget=512 * 1024) as relay, task_app(relay.url) as app:
        assert app.url is not None
        path = app.url.split(relay.url, 1)[1]
        sock = raw_request(
            relay.url,
            [
                f"GET {path}/blob?n={16 * MB} HTTP/1.1",
                "Host: relay",
                f"X-SynthTunnel-Worker-Token: {app.task_app_worker_token}",
            ],
        )
        try:
            assert wait_for(lambda: relay.app.buffered >= 512 * 1024, 5)
            answer = httpx.get(f"{app.url}/health", headers=auth(app))
            assert answer.status_code == 503
            assert answer.headers["retry-after"] == "1"
            assert relay_error(answer) == "relay_memory_budget"
        finally:
            sock.close()
        assert wait_for(lambda: relay.app.buffered == 0, 5)
        assert httpx.get(f"{app.url}/health", headers=auth(app)).status_code == 200


def test_a_blocked_caller_loop_does_not_starve_the_agent() -> None:
    done: dict[str, Any] = {}

    async def main(relay_url: str) -> None:
        async with task_app(relay_url) as app:
            assert app.url is not None

            def call() -> None:
                answer = httpx.get(f"{app.url}/health", headers=auth(app), timeout=5)
                done["status"], done["at"] = answer.status_code, time.monotonic()

            caller = threading.Thread(target=call)
            caller.start()
            time.sleep(1.5)  # user code that blocks the caller's event loop
            blocked_until = time.monotonic()
            caller.join(5)
        assert done["status"] == 200
        assert done["at"] < blocked_until, "the request waited for the caller's loop"

    with running_relay() as relay:
        asyncio.run(main(relay.url))


def test_agent_connection_killed_then_it_reconnects_by_itself() -> None:
    with running_relay() as relay, task_app(relay.url, reconnect_max_delay=0.3) as app:
        assert app.url is not None
        backend: Any = app._tunnel_backend
        agent = backend._agent.agent
        loop = backend._agent._loop
        connections = agent.connections
        loop.call_soon_threadsafe(agent.ws.transport.abort)
        assert wait_for(lambda: agent.connections > connections, 5)
        assert wait_for(
            lambda: httpx.get(f"{app.url}/health", headers=auth(app)).status_code == 200, 5
        )


def test_agent_reattaches_the_same_url_after_a_relay_restart(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    relay = start_relay_thread(relay_settings(state_file=state))
    port = int(relay.url.rsplit(":", 1)[1])
    try:
        with task_app(relay.url, reconnect_max_delay=0.5) as app:
            assert app.url is not None
            url = app.url
            backend: Any = app._tunnel_backend
            agent = backend._agent.agent
            relay.stop()
            assert wait_for(lambda: agent.ws is None, 5)  # the agent saw the relay go
            relay = start_relay_thread(relay_settings(state_file=state, port=port))
            restarted = time.monotonic()
            assert wait_for(
                lambda: httpx.get(url + "/health", headers=auth(app)).status_code == 200, 5
            )
            assert time.monotonic() - restarted < 2.5
            assert app.url == url
            assert agent.connections == 2
    finally:
        relay.stop()


def test_a_relay_that_lost_the_lease_gets_a_new_lease_and_url() -> None:
    changes: list[str | None] = []
    relay = start_relay_thread(relay_settings())
    port = int(relay.url.rsplit(":", 1)[1])
    try:
        app = InProcessTaskApp(
            app=TaskAppProbe(),
            port=free_port(),
            tunnel_mode="synthtunnel",
            tunnel_options={
                "relay_url": relay.url,
                "admin_token": ADMIN,
                "reconnect_max_delay": 0.3,
            },
            on_url_change=lambda ta: changes.append(ta.url),
        )
        with app:
            old = app.url
            relay.stop()
            relay = start_relay_thread(relay_settings(port=port))  # no state: lease unknown
            assert wait_for(lambda: changes, 10)
            assert app.url != old
            assert app.url is not None
            assert httpx.get(f"{app.url}/health", headers=auth(app)).status_code == 200
    finally:
        relay.stop()


def test_our_agent_speaks_v1_to_a_v1_only_relay() -> None:
    with running_relay(protocols=(1,)) as relay, task_app(relay.url, protocol="auto") as app:
        assert lease_info(relay, app)["protocol_version"] == 1
        body = os.urandom(200_000)
        assert httpx.post(f"{app.url}/echo", headers=auth(app), content=body).content == body


def test_our_agent_falls_back_to_v1_with_an_ack_that_names_no_version() -> None:
    """A stand-in for the original relay: its ATTACH_ACK has no protocol_version field."""
    from websockets.asyncio.server import serve

    frames: list[Any] = []
    answered = threading.Event()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def handler(ws: Any) -> None:
        attach = json.loads(await ws.recv())
        frames.append(attach)
        await ws.send(json.dumps({"type": "ATTACH_ACK", "agent_id": attach["agent_id"]}))
        await ws.send(
            json.dumps(
                {
                    "type": "REQ_HEADERS",
                    "lease_id": "lease_x",
                    "rid": "r1",
                    "method": "POST",
                    "path": "/echo",
                    "query": "",
                    "headers": [["content-length", "5"]],
                    "deadline_ms": 5000,
                }
            )
        )
        await ws.send(
            json.dumps({"type": "REQ_BODY", "rid": "r1", "chunk_b64": p.b64encode(b"hello")})
        )
        await ws.send(json.dumps({"type": "REQ_END", "rid": "r1"}))
        async for message in ws:
            frames.append(message)
            if '"RESP_END"' in message:
                answered.set()

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0, compression=None) as server:
            holder["port"] = server.sockets[0].getsockname()[1]
            holder["loop"] = asyncio.get_running_loop()
            holder["stop"] = asyncio.Event()
            ready.set()
            await holder["stop"].wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="taskapp-relay-stub")
    thread.start()
    assert ready.wait(5)
    with InProcessTaskApp(app=TaskAppProbe(), port=free_port()) as local:
        agent = AgentThread(
            AgentConfig(
                lease_id="lease_x",
                agent_url=f"ws://127.0.0.1:{holder['port']}/api/v1/synthtunnel/agent",
                agent_token="agent-token-for-the-stub-relay",
                local_host="127.0.0.1",
                local_port=local.port,
                expires_at=time.time() + 3600,
                renew=False,
                use_proxy=False,
            )
        )
        agent.start(5)
        try:
            assert answered.wait(5)
            assert agent.agent is not None
            assert agent.agent.version == 1
        finally:
            agent.stop()
    holder["loop"].call_soon_threadsafe(holder["stop"].set)
    thread.join(5)
    assert frames[0]["protocol_versions"] == [2, 1]
    replies = [json.loads(f) for f in frames[1:]]
    assert [r["type"] for r in replies] == ["RESP_HEADERS", "RESP_BODY", "RESP_END"]
    assert p.b64decode(replies[1]["chunk_b64"]) == b"hello"
    assert replies[0]["status"] == 200 and "sid" not in replies[0]


def test_a_failed_enter_leaves_no_lease_thread_or_port() -> None:
    with running_relay() as relay:
        port = free_port()
        bad = InProcessTaskApp(
            app=TaskAppProbe(),
            port=port,
            tunnel_mode="synthtunnel",
            tunnel_options={"relay_url": relay.url, "admin_token": "wrong-admin-token-123456789"},
        )
        with pytest.raises(TunnelAuthError) as caught:
            bad.start()
        assert "wrong-admin-token" not in str(caught.value)
        assert port_is_free(port)
        # A lease is rented but the agent cannot reach the relay's (wrong) public address.
        closed = free_port()
        with running_relay(public_url=f"http://127.0.0.1:{closed}") as misconfigured:
            broken = InProcessTaskApp(
                app=TaskAppProbe(),
                port=port,
                tunnel_mode="synthtunnel",
                tunnel_options={
                    "relay_url": misconfigured.url,
                    "admin_token": ADMIN,
                    "ready_timeout": 1.0,
                },
            )
            started = time.monotonic()
            with pytest.raises(TunnelError, match="did not attach"):
                broken.start()
            assert time.monotonic() - started < 5
            assert misconfigured.app.store.by_id == {}  # the lease was deleted
        assert port_is_free(port)
        assert not [t for t in relay_threads() if "agent" in t.name]
        assert relay.app.store.by_id == {}


def test_unreachable_relay_fails_fast_with_a_hint() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    app = InProcessTaskApp(
        app=TaskAppProbe(),
        port=free_port(),
        tunnel_mode="synthtunnel",
        tunnel_options={"relay_url": url, "admin_token": ADMIN},
    )
    with pytest.raises(TunnelError, match="taskapp relay serve"):
        app.start()


@pytest.mark.parametrize("protocol", ["v2", "v1"])
def test_the_agent_renews_a_short_lease(protocol: str) -> None:
    with running_relay() as relay, task_app(relay.url, protocol=protocol, ttl_seconds=3) as app:
        first = lease_info(relay, app)["expires_at"]
        assert wait_for(lambda: lease_info(relay, app).get("expires_at", first) != first, 5)
        time.sleep(1.5)  # past the original expiry
        assert httpx.get(f"{app.url}/health", headers=auth(app)).status_code == 200


def test_worker_token_rotation_updates_the_task_app() -> None:
    with running_relay(worker_token_grace=0.3) as relay, task_app(relay.url) as app:
        old = app.task_app_worker_token
        backend: Any = app._tunnel_backend
        backend.rotate_worker_token()
        assert app.task_app_worker_token not in (None, old)
        assert httpx.get(f"{app.url}/health", headers=auth(app)).status_code == 200
        time.sleep(0.4)
        stale = httpx.get(f"{app.url}/health", headers={"X-SynthTunnel-Worker-Token": str(old)})
        assert stale.status_code == 401


def test_explicit_options_beat_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with running_relay() as relay:
        monkeypatch.setenv("TASKAPP_RELAY_URL", f"http://127.0.0.1:{free_port()}")
        monkeypatch.setenv("TASKAPP_RELAY_TOKEN", "env-token-that-is-wrong-xxxxxxxx")
        token_file = tmp_path / "token"
        token_file.write_text(ADMIN + "\n")
        token_file.chmod(0o600)
        explicit = InProcessTaskApp(
            app=TaskAppProbe(),
            port=free_port(),
            tunnel_mode="synthtunnel",
            tunnel_options={"relay_url": relay.url, "admin_token_file": str(token_file)},
        )
        with explicit as app:
            assert app.url is not None and app.url.startswith(relay.url)
        monkeypatch.setenv("TASKAPP_RELAY_URL", relay.url)
        monkeypatch.setenv("TASKAPP_RELAY_TOKEN", ADMIN)
        with InProcessTaskApp(
            app=TaskAppProbe(), port=free_port(), tunnel_mode="synthtunnel"
        ) as app:
            assert app.url is not None and app.url.startswith(relay.url)
    monkeypatch.delenv("TASKAPP_RELAY_URL")
    monkeypatch.delenv("TASKAPP_RELAY_TOKEN")
    with pytest.raises(ConfigurationError, match="taskapp relay serve"):
        InProcessTaskApp(app=TaskAppProbe(), tunnel_mode="synthtunnel")
    with pytest.raises(ConfigurationError, match="clear text"):
        InProcessTaskApp(
            app=TaskAppProbe(),
            tunnel_mode="synthtunnel",
            tunnel_options={"relay_url": "http://relay.example.com", "admin_token": ADMIN},
        )


class StateApp:
    """Lifespan puts a marker in the state; requests report what they saw."""

    def __init__(self) -> None:
        self.loops: list[asyncio.AbstractEventLoop] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    scope["state"]["marker"] = "from-lifespan"
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        self.loops.append(asyncio.get_running_loop())
        body = await read_body(receive)
        if scope["path"] == "/boom":
            raise RuntimeError("the app failed")
        payload = json.dumps(
            {
                "marker": scope["state"].get("marker"),
                "path": scope["path"],
                "raw_path": scope["raw_path"].decode(),
                "query": scope["query_string"].decode(),
                "method": scope["method"],
                "body": len(body),
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": payload})


@pytest.mark.parametrize("protocol", ["v1", "v2"])
@pytest.mark.parametrize("in_process", [True, False])
def test_thread_server_is_called_in_process_as_uvicorn_would(
    protocol: str, in_process: bool
) -> None:
    """With the ``thread`` server the agent runs on the server's loop and calls the app
    directly (no loopback connection), as uvicorn would call it: lifespan state in the
    scope, 500 for an exception before the response, path and query intact;
    ``in_process=False`` keeps the loopback HTTP leg."""
    app = StateApp()
    with running_relay() as relay:
        served = task_app(relay.url, app, protocol=protocol, in_process=in_process)
        with served:
            headers = auth(served)
            url = f"{served.url}/a%20b/c?x=1&y=%20"
            answer = httpx.post(url, headers=headers, content=b"z" * 200_000)
            assert answer.status_code == 200
            assert answer.json() == {
                "marker": "from-lifespan",
                "path": "/a b/c",
                "raw_path": "/a%20b/c",
                "query": "x=1&y=%20",
                "method": "POST",
                "body": 200_000,
            }
            boom = httpx.get(f"{served.url}/boom", headers=headers)
            assert (boom.status_code, boom.text) == (500, "Internal Server Error")
            head = httpx.head(f"{served.url}/x", headers=headers)
            assert (head.status_code, head.content) == (200, b"")
            backend: Any = served._tunnel_backend
            agent = backend._agent.agent
            pooled = list(agent.local._idle)
            server_loop = served.server.in_process.loop  # type: ignore[union-attr]
            on_server_loop = all(loop is server_loop for loop in app.loops)
            dispatched = backend._agent.config.in_process
        if in_process:
            assert pooled == []  # no loopback connection was ever made
            assert dispatched is not None
        else:
            assert pooled  # the loopback leg keeps its connection alive
            assert dispatched is None
        assert on_server_loop  # the app always runs on its server's loop
