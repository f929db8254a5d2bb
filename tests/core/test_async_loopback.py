"""The async client's loopback transport (``AsyncLoopbackTransport``, core/http11.py)
against a real uvicorn app: bodies of every framing, HEAD/204, keep-alive reuse, a
connection the server closed, timeouts and refusals in words, and the real task app."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from taskapp.core.client import (
    AsyncLoopbackTransport,
    AsyncTaskAppClient,
    ClientTimeout,
    TransportError,
)
from taskapp.core.contract import create_task_app
from taskapp.examples.support_intents import build_config
from tests.cli._cli_helpers import _ThreadedUvicorn
from tests.helpers import free_port

KEY = "client-key-0123456789abc"


async def _raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers in every framing a server may use; counts connections by client port."""
    assert scope["type"] == "http"
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    peer = str(scope["client"][1]).encode()
    if path == "/chunked":  # no Content-Length: uvicorn sends chunked
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for piece in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/empty":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/close":
        headers = [(b"content-length", b"2"), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    if path == "/slow":
        await asyncio.sleep(2)
    payload = b"echo:" + body + b" peer:" + peer + b" host:" + dict(scope["headers"])[b"host"]
    headers = [(b"content-length", str(len(payload)).encode()), (b"x-kind", b"Echo")]
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def test_framings_head_reuse_and_close() -> None:
    with _ThreadedUvicorn(_raw_app) as running:

        async def main() -> list[Any]:
            transport = AsyncLoopbackTransport(running.url + "/", timeout=5)
            out: list[Any] = []
            try:
                first = await transport.request("POST", "/echo", headers={}, body=b"hi")
                second = await transport.request("POST", "/echo", headers={}, body=b"again")
                out += [first, second]
                out.append(await transport.request("GET", "/chunked", headers={}))
                out.append(await transport.request("HEAD", "/echo", headers={}))
                out.append(await transport.request("GET", "/empty", headers={}))
                out.append(await transport.request("GET", "/close", headers={}))
                out.append(len(transport._idle))
                out.append(await transport.request("POST", "/echo", headers={}, body=b""))
            finally:
                await transport.aclose()
            return out

        first, second, chunked, head, empty, close, idle, after = asyncio.run(main())
    assert first.status == 201 and first.headers["x-kind"] == "Echo"
    assert first.content.startswith(b"echo:hi peer:")
    assert f"host:127.0.0.1:{running.port}".encode() in first.content
    # the same kept-alive connection (same client port) carried the second request
    assert first.content.split(b" peer:")[1] == second.content.split(b" peer:")[1]
    assert chunked.status == 200 and chunked.content == b"one,two,three"
    assert head.status == 201 and head.content == b""
    assert empty.status == 204 and empty.content == b""
    assert close.content == b"ok" and idle == 0  # Connection: close is not kept
    assert after.content.startswith(b"echo: peer:")


def test_a_kept_alive_connection_the_server_closed_is_reconnected_once() -> None:
    with _ThreadedUvicorn(_raw_app) as running:

        async def main() -> tuple[bytes, bytes]:
            transport = AsyncLoopbackTransport(running.url, timeout=5)
            try:
                one = await transport.request("POST", "/echo", headers={}, body=b"1")
                assert len(transport._idle) == 1
                transport._idle[0].writer.transport.abort()  # as if the server had closed it
                await asyncio.sleep(0.05)
                two = await transport.request("POST", "/echo", headers={}, body=b"2")
            finally:
                await transport.aclose()
            return one.content, two.content

        one, two = asyncio.run(main())
    assert one.startswith(b"echo:1") and two.startswith(b"echo:2")
    assert one.split(b" peer:")[1] != two.split(b" peer:")[1]  # a fresh connection


def test_timeouts_and_refusals_are_said_in_words() -> None:
    port = free_port()

    async def refused() -> None:
        transport = AsyncLoopbackTransport(f"http://127.0.0.1:{port}", timeout=2)
        await transport.request("GET", "/health", headers={})

    with pytest.raises(TransportError, match="connection refused: nothing is listening"):
        asyncio.run(refused())
    with _ThreadedUvicorn(_raw_app) as running:

        async def slow() -> None:
            transport = AsyncLoopbackTransport(running.url, timeout=5)
            try:
                await transport.request("GET", "/slow", headers={}, timeout=0.3)
            finally:
                assert transport._idle == []  # a spent connection is not kept
                await transport.aclose()

        with pytest.raises(ClientTimeout, match="within 0.3 s"):
            asyncio.run(slow())


def test_the_async_client_uses_it_for_loopback_and_runs_rollouts() -> None:
    app = create_task_app(build_config(), api_keys=[KEY])
    with _ThreadedUvicorn(app) as running:

        async def main() -> tuple[Any, list[Any]]:
            async with AsyncTaskAppClient(running.url, KEY) as client:
                assert isinstance(client.transport, AsyncLoopbackTransport)
                await client.health()
                outcomes = await asyncio.gather(*(client.rollout(seed) for seed in range(20)))
                return await client.task_info([0, 1]), list(outcomes)

        info, outcomes = asyncio.run(main())
    assert isinstance(info, list) and len(info) == 2
    assert all(o.ok and o.score is not None for o in outcomes)
    assert {o.seed for o in outcomes} == set(range(20))
