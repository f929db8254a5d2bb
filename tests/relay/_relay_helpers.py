"""Helpers for the relay tests: a relay in a thread, a raw ASGI task app, a legacy v1 agent.

Everything talks to 127.0.0.1 only and is bounded in time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from taskapp.relay import protocol as p
from taskapp.relay.server.run import RunningRelay, start_relay_thread
from taskapp.relay.server.settings import AdminToken, RelaySettings
from tests.helpers import start_child

ADMIN = "admin-relay-token-for-tests-0123456789"
OTHER_ADMIN = "another-admin-token-abcdefghijklmnop"


def relay_settings(**overrides: Any) -> RelaySettings:
    values: dict[str, Any] = {
        "public_url": "auto",
        "admin_tokens": (AdminToken("tests", p.token_hash(ADMIN)),),
        "host": "127.0.0.1",
        "port": 0,
        "sweep_interval": 0.1,
        "drain_timeout": 2.0,
    }
    values.update(overrides)
    return RelaySettings(**values)


@contextlib.contextmanager
def running_relay(**overrides: Any) -> Iterator[RunningRelay]:
    relay = start_relay_thread(relay_settings(**overrides))
    try:
        yield relay
    finally:
        relay.stop()


def relay_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("taskapp-relay") and t.is_alive()]


# -- a raw ASGI task app ---------------------------------------------------------------


class TaskAppProbe:
    """A raw ASGI app that records what it saw (headers, disconnects) for assertions.

    /health            200 {"healthy": true}
    /echo              the request body back
    /headers           the request headers as JSON
    /sink              reads the body, answers {"n": bytes, "sha256": hex}
    /blob?n=N          N bytes (pattern) streamed in 64 KiB chunks, with Content-Length
    /drip?chunks=K     K chunks of 1 KiB, 0.1 s apart, no Content-Length (chunked)
    /slow?s=S          sleeps S seconds, watching for http.disconnect
    """

    def __init__(self) -> None:
        self.disconnects: list[tuple[str, float]] = []
        self.last_headers: dict[str, str] = {}
        self.first_chunk_sent = threading.Event()
        self.slow_started = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        query = dict(
            part.split("=", 1) for part in scope["query_string"].decode().split("&") if "=" in part
        )
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        if path == "/health":
            await _json(send, 200, {"healthy": True})
        elif path == "/echo":
            body = await read_body(receive)
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")],
                }
            )
            await send({"type": "http.response.body", "body": body})
        elif path == "/headers":
            await read_body(receive)
            self.last_headers = headers
            await _json(send, 200, headers)
        elif path == "/sink":
            digest = hashlib.sha256()
            count = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                digest.update(chunk)
                count += len(chunk)
                if not message.get("more_body"):
                    break
            await _json(send, 200, {"n": count, "sha256": digest.hexdigest()})
        elif path == "/blob":
            total = int(query.get("n", "0"))
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", str(total).encode())],
                }
            )
            sent = 0
            while sent < total:
                size = min(65536, total - sent)
                await send(
                    {
                        "type": "http.response.body",
                        "body": blob_bytes(sent, size),
                        "more_body": sent + size < total,
                    }
                )
                sent += size
        elif path == "/drip":
            chunks = int(query.get("chunks", "5"))
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for index in range(chunks):
                await send({"type": "http.response.body", "body": b"d" * 1024, "more_body": True})
                if index == 0:
                    self.first_chunk_sent.set()
                await asyncio.sleep(0.1)
            await send({"type": "http.response.body", "body": b""})
        elif path == "/abort":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"100000")],
                }
            )
            await send({"type": "http.response.body", "body": b"a" * 1000, "more_body": True})
            raise RuntimeError("the app failed half-way through its answer (expected in a test)")
        elif path == "/slow":
            seconds = float(query.get("s", "5"))
            await read_body(receive)
            started = time.monotonic()
            self.slow_started.set()
            try:
                async with asyncio.timeout(seconds):
                    while True:
                        message = await receive()
                        if message["type"] == "http.disconnect":
                            self.disconnects.append((path, time.monotonic() - started))
                            return
            except TimeoutError:
                pass
            await _json(send, 200, {"slept": seconds})
        else:
            await _json(send, 404, {"error": "no such path"})


def blob_bytes(offset: int, size: int) -> bytes:
    """Deterministic content for /blob: byte i is (i * 31) % 251."""
    pattern = bytes((i * 31) % 251 for i in range(251))
    start = offset % 251
    repeated = pattern[start:] + pattern * (size // 251 + 2)
    return repeated[:size]


def blob_sha256(total: int) -> str:
    digest = hashlib.sha256()
    sent = 0
    while sent < total:
        size = min(65536, total - sent)
        digest.update(blob_bytes(sent, size))
        sent += size
    return digest.hexdigest()


async def read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _json(send: Any, status: int, payload: Any) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


# -- raw HTTP for precise client behaviour ------------------------------------------------


def raw_request(url: str, head_lines: list[str], body: bytes = b"") -> socket.socket:
    """Send a request over a plain socket and return the socket (caller reads/closes)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    request = "\r\n".join(head_lines) + "\r\n\r\n"
    sock.sendall(request.encode() + body)
    return sock


# -- a legacy v1 agent -----------------------------------------------------------------


class LegacyV1Agent:
    """An agent built only from the original v1 frame list (JSON text, base64 bodies).

    It buffers the request body until REQ_END (as the original agents did) and answers
    itself: ``/hang`` never answers, anything else gets 200 with
    ``{"method", "path", "query", "n"}`` sent in two RESP_BODY chunks.
    """

    def __init__(self, agent_url: str, agent_token: str, lease_id: str) -> None:
        self.agent_url = agent_url
        self.agent_token = agent_token
        self.lease_id = lease_id
        self.ack: dict[str, Any] | None = None
        self.frames: list[dict[str, Any]] = []
        self.cancelled: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ws: Any = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="taskapp-relay-legacy", daemon=True)

    @classmethod
    def for_lease(cls, lease: dict[str, Any]) -> LegacyV1Agent:
        """The agent of ``lease`` (the answer of :func:`create_lease`), not yet started."""
        connect = lease["agent_connect"]
        return cls(connect["url"], connect["agent_token"], lease["lease_id"])

    def start(self) -> LegacyV1Agent:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("legacy agent never attached")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        loop, ws = self._loop, self._ws
        if loop is not None and ws is not None and self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(ws.close(), loop).result(5)
        self._thread.join(5)

    def kill(self) -> None:
        """Drop the TCP connection without a close handshake (an agent that died)."""
        loop, ws = self._loop, self._ws
        if loop is not None and ws is not None:
            loop.call_soon_threadsafe(ws.transport.abort)
        self._thread.join(5)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _run(self) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        self._loop = asyncio.get_running_loop()
        async with connect(
            self.agent_url,
            additional_headers={"Authorization": f"Bearer {self.agent_token}"},
            compression=None,
            proxy=None,
            max_size=None,
        ) as ws:
            self._ws = ws
            await ws.send(
                json.dumps(
                    {
                        "type": "ATTACH",
                        "agent_id": "legacy-agent",
                        "leases": [
                            {"lease_id": self.lease_id, "local_target": {"host": "x", "port": 1}}
                        ],
                        "capabilities": {
                            "streaming": True,
                            "max_inflight": 16,
                            "max_body_chunk_bytes": 65536,
                            "supports_cancel": True,
                        },
                    }
                )
            )
            self.ack = json.loads(await ws.recv())
            self._ready.set()
            pending: dict[str, dict[str, Any]] = {}
            try:
                async for raw in ws:
                    frame = json.loads(raw)
                    self.frames.append(frame)
                    kind = frame["type"]
                    if kind == "REQ_HEADERS":
                        pending[frame["rid"]] = {**frame, "body": b""}
                    elif kind == "REQ_BODY":
                        pending[frame["rid"]]["body"] += p.b64decode(frame["chunk_b64"])
                    elif kind == "REQ_END":
                        request = pending.pop(frame["rid"])
                        if request["path"] != "/hang":
                            await self._answer(ws, request)
                    elif kind == "CANCEL":
                        self.cancelled.append(frame["rid"])
            except ConnectionClosed:
                pass

    async def _answer(self, ws: Any, request: dict[str, Any]) -> None:
        lease_id, rid = request["lease_id"], request["rid"]
        payload = json.dumps(
            {
                "method": request["method"],
                "path": request["path"],
                "query": request["query"],
                "n": len(request["body"]),
                "headers": request["headers"],
            }
        ).encode()
        half = len(payload) // 2
        await ws.send(
            json.dumps(
                {
                    "type": "RESP_HEADERS",
                    "lease_id": lease_id,
                    "rid": rid,
                    "status": 200,
                    "headers": [
                        ["content-type", "application/json"],
                        ["connection", "x-drop"],
                        ["x-drop", "1"],
                    ],
                }
            )
        )
        for chunk in (payload[:half], payload[half:]):
            await ws.send(
                json.dumps(
                    {
                        "type": "RESP_BODY",
                        "lease_id": lease_id,
                        "rid": rid,
                        "chunk_b64": p.b64encode(chunk),
                        "eof": False,
                    }
                )
            )
        await ws.send(json.dumps({"type": "RESP_END", "lease_id": lease_id, "rid": rid}))


def create_lease(relay_url: str, token: str = ADMIN, **body: Any) -> dict[str, Any]:
    import httpx

    response = httpx.post(
        relay_url + p.LEASES_PATH,
        headers={"Authorization": f"Bearer {token}"},
        json={
            "client_instance_id": "tests",
            "local_target": {"host": "127.0.0.1", "port": 1},
            **body,
        },
        timeout=10,
    )
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


# -- `taskapp relay serve` as a child process ---------------------------------------------


class RelayProcess:
    """``taskapp relay serve`` in a child process (its own session), URL read from stdout."""

    def __init__(self, token_file: Any, *args: str, env: dict[str, str] | None = None) -> None:
        import os
        import subprocess
        import sys

        environ = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        environ.update(env or {})
        self.proc = start_child(
            [
                sys.executable,
                "-m",
                "taskapp",
                "relay",
                "serve",
                "--port",
                "0",
                "--admin-token-file",
                str(token_file),
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=environ,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.err_lines: list[str] = []
        self.url = ""
        self._got_url = threading.Event()
        self._readers = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(
                target=self._drain, args=(self.proc.stderr, self.err_lines), daemon=True
            ),
        ]
        for reader in self._readers:
            reader.start()

    def _drain(self, stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line)
            if line.startswith("taskapp relay: listening on "):
                self.url = line.split("listening on ", 1)[1].strip()
                self._got_url.set()

    def wait_url(self, timeout: float = 20.0) -> str:
        if not self._got_url.wait(timeout):
            self.kill()
            raise AssertionError(f"relay printed no URL: {''.join(self.lines + self.err_lines)}")
        return self.url

    @property
    def stderr(self) -> str:
        return "".join(self.err_lines)

    def kill(self) -> None:
        import os
        import signal

        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)
        for reader in self._readers:
            reader.join(5)

    def __enter__(self) -> RelayProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.kill()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def token_file(tmp_path: Any, mode: int = 0o600) -> Any:
    path = tmp_path / "relay.tokens"
    path.write_text(f"tests:{ADMIN}\n")
    path.chmod(mode)
    return path


def relay_error(answer: Any) -> str:
    """The code of a relay error answer, after checking it is the task app's envelope
    ``{"detail": {"error": {"code": ..., "message": ...}}}`` with a non-empty message."""
    body = answer.json()
    assert set(body) == {"detail"}, body
    error = body["detail"]["error"]
    assert isinstance(error["message"], str) and error["message"], body
    code: str = error["code"]
    return code


# -- hostile agents and error capture (test_relay_hostile, test_relay_fuzz) -------------------

Frames = list[Any]  # dicts (JSON text frames), str (raw text) or bytes (binary frames)


class ErrorRecords(logging.Handler):
    """Every ERROR record logged anywhere (uvicorn's 'Exception in ASGI application',
    asyncio's 'Task exception was never retrieved', the relay's own)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def unhandled(self) -> list[str]:
        return [
            r.getMessage()
            for r in self.records
            if r.exc_info is not None
            or "Exception in ASGI" in r.getMessage()
            or "never retrieved" in r.getMessage()
        ]


class ScriptedAgent:
    """A v1 (or v2) agent on a real WebSocket whose answers a test scripts.

    ``answer(request) -> frames`` gets the REQ_HEADERS frame (with ``body``: the request
    body, collected until REQ_END) and returns the frames to send back.
    """

    def __init__(
        self,
        lease: dict[str, Any],
        answer: Callable[[dict[str, Any]], Frames],
        *,
        attach: dict[str, Any] | None = None,
    ) -> None:
        self.lease = lease
        self.answer = answer
        self.attach = attach or {}
        self.received: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.closed = threading.Event()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ws: Any = None
        self._thread = threading.Thread(target=self._main, name="taskapp-relay-scripted")

    def __enter__(self) -> ScriptedAgent:
        self._thread.start()
        assert self._ready.wait(10), "scripted agent never attached"
        return self

    def __exit__(self, *exc: Any) -> None:
        loop, ws = self._loop, self._ws
        if loop is not None and ws is not None and not self.closed.is_set():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(ws.close(), loop).result(5)
        self._thread.join(10)

    def send(self, frame: Any) -> None:
        """Send one frame from the test thread."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._send(frame), self._loop).result(10)

    async def _send(self, frame: Any) -> None:
        with contextlib.suppress(Exception):
            await self._ws.send(json.dumps(frame) if isinstance(frame, dict) else frame)

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        self._loop = asyncio.get_running_loop()
        lease = self.lease
        async with connect(
            lease["agent_connect"]["url"],
            additional_headers={"Authorization": f"Bearer {lease['agent_connect']['agent_token']}"},
            compression=None,
            proxy=None,
            max_size=None,
        ) as ws:
            self._ws = ws
            attach = {
                "type": "ATTACH",
                "agent_id": "scripted",
                "leases": [{"lease_id": lease["lease_id"]}],
                "capabilities": {"max_inflight": 16, "max_body_chunk_bytes": 65536},
                **self.attach,
            }
            await ws.send(json.dumps(attach))
            self.ack = json.loads(await ws.recv())
            self._ready.set()
            pending: dict[str, dict[str, Any]] = {}
            try:
                async for raw in ws:
                    if isinstance(raw, bytes):
                        continue
                    frame = json.loads(raw)
                    self.received.append(frame)
                    if frame["type"] == "REQ_HEADERS":
                        pending[frame["rid"]] = {**frame, "body": b""}
                    elif frame["type"] == "REQ_BODY":
                        pending[frame["rid"]]["body"] += p.b64decode(frame["chunk_b64"])
                    elif frame["type"] == "REQ_END":
                        request = pending.pop(frame["rid"])
                        for out in self.answer(request):
                            await ws.send(json.dumps(out) if isinstance(out, dict) else out)
            except ConnectionClosed:
                pass
            finally:
                self.close_code = ws.close_code
                self.closed.set()


def head(request: dict[str, Any], status: Any = 200, headers: Any = None) -> dict[str, Any]:
    return {
        "type": "RESP_HEADERS",
        "lease_id": request["lease_id"],
        "rid": request["rid"],
        "status": status,
        "headers": headers if headers is not None else [["content-type", "text/plain"]],
    }


def body(request: dict[str, Any], data: bytes) -> dict[str, Any]:
    return {
        "type": "RESP_BODY",
        "lease_id": request["lease_id"],
        "rid": request["rid"],
        "chunk_b64": base64.b64encode(data).decode(),
        "eof": False,
    }


def end(request: dict[str, Any]) -> dict[str, Any]:
    return {"type": "RESP_END", "lease_id": request["lease_id"], "rid": request["rid"]}


def call(lease: dict[str, Any], path: str = "/x", **kwargs: Any) -> httpx.Response:
    return httpx.request(
        kwargs.pop("method", "GET"),
        lease["public_url"] + path,
        headers={"X-SynthTunnel-Worker-Token": lease["worker_token"]},
        timeout=10,
        **kwargs,
    )


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth
