"""``taskapp.core.serving``: the one uvicorn server, its ``on_signal`` hook, and serving in
a thread -- real uvicorn on a real socket, real signals sent to this process."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest

from taskapp.core.ports import listen_tcp
from taskapp.core.serving import fast_exit_server_class, serve_in_thread, uvicorn_config


async def app(scope: Any, receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _get(port: int) -> bytes:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/")
        return connection.getresponse().read()
    finally:
        connection.close()


def _signal_when_started(server: Any, signals: list[int]) -> threading.Thread:
    def send() -> None:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        for signum in signals:
            os.kill(os.getpid(), signum)
            time.sleep(0.2)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals: main thread"
)
def test_on_signal_replaces_uvicorns_handling_and_a_second_signal_exits_now() -> None:
    """The hook sees the first SIGTERM (and decides: here it does not exit yet); the second
    one exits at once. Nothing is re-raised afterwards (this process is still here) and the
    previous handlers are back."""
    sock = listen_tcp("127.0.0.1", 0)
    server = fast_exit_server_class()(uvicorn_config(app, lifespan="off", log_config=None))
    seen: list[int] = []
    server.on_signal = seen.append
    before = signal.getsignal(signal.SIGTERM)
    sender = _signal_when_started(server, [signal.SIGTERM, signal.SIGINT])
    started = time.monotonic()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    sender.join(5)
    assert seen == [signal.SIGTERM]
    assert server.force_exit and time.monotonic() - started < 10
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals: main thread"
)
def test_on_signal_that_requests_exit_stops_cleanly() -> None:
    sock = listen_tcp("127.0.0.1", 0)
    server = fast_exit_server_class()(uvicorn_config(app, lifespan="off", log_config=None))
    server.on_signal = lambda signum: server.request_exit()
    _signal_when_started(server, [signal.SIGINT])
    try:
        server.run(sockets=[sock])  # a KeyboardInterrupt here would fail the test
    finally:
        sock.close()
    assert server.should_exit and not server.force_exit


def test_serve_in_thread_serves_and_stops() -> None:
    sock = listen_tcp("127.0.0.1", 0)
    port = sock.getsockname()[1]
    config = uvicorn_config(app, lifespan="off", log_config=None)
    serving = serve_in_thread(config, sock, name="taskapp-test-serving")
    try:
        assert serving.wait_started(10) and serving.error is None
        assert _get(port) == b"ok"
    finally:
        assert serving.stop(2.0)
        sock.close()
    assert not serving.thread.is_alive()


def test_serve_in_thread_reports_a_refused_start() -> None:
    async def lifespan_fails(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.failed", "message": "no"})

    sock = listen_tcp("127.0.0.1", 0)
    config = uvicorn_config(lifespan_fails, lifespan="on", log_config=None, log_level="critical")
    serving = serve_in_thread(config, sock, name="taskapp-test-refused")
    try:
        assert not serving.wait_started(10)
        serving.thread.join(5)
        assert isinstance(serving.error, SystemExit)
    finally:
        sock.close()


def test_the_access_log_is_off_for_this_server_only() -> None:
    import logging

    config = uvicorn_config(app, lifespan="off", log_config=None)
    assert config.http_protocol_class.__name__.startswith("Quiet")
    access = logging.getLogger("uvicorn.access")
    assert access.propagate or access.handlers  # not emptied process-wide
