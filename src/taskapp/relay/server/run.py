"""Running the relay: uvicorn with WebSocket compression off, log redaction, a graceful
drain on SIGTERM/SIGINT (:class:`RelayServer`), and a relay in a background thread
(:func:`start_relay_thread`, for tests, benchmarks and embedding)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import socket
import threading
from collections.abc import Callable
from typing import Any

from taskapp.core.errors import ConfigurationError, ServerStartError
from taskapp.core.importing import install_command
from taskapp.core.ports import listen_tcp
from taskapp.core.serving import (
    ServingThread,
    fast_exit_server_class,
    serve_in_thread,
    uvicorn_config,
)
from taskapp.relay.coalesce import coalescing
from taskapp.relay.server.agent_wire import agent_wire
from taskapp.relay.server.app import RelayApp, create_relay_app
from taskapp.relay.server.front import ingress_front
from taskapp.relay.server.settings import RelaySettings

__all__ = ["RelayServer", "RunningRelay", "start_relay_thread"]


class _HeaderRedactor(logging.Filter):
    """Hides credential headers in uvicorn's and websockets' debug logs of the handshake.

    The relay never keeps agent or worker tokens (only hashes), so they cannot be
    registered for redaction; this filter removes them by header name instead.
    """

    _pattern = re.compile(
        r"(?im)^([<>]?\s*(?:authorization|x-synthtunnel-worker-token|cookie)\s*:\s*)(.+)$"
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self._pattern.sub(r"\1[redacted]", message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


_REDACTOR = _HeaderRedactor()


def _install_log_redaction() -> None:
    for name in ("uvicorn.error", "uvicorn.access", "websockets.server", "websockets"):
        log = logging.getLogger(name)
        if _REDACTOR not in log.filters:
            log.addFilter(_REDACTOR)


def _uvicorn_config(app: RelayApp, settings: RelaySettings, **overrides: Any) -> Any:
    try:
        import websockets  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            "the relay needs the 'websockets' package: " + install_command("relay")
        ) from None
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "ws": "websockets-sansio",
        "ws_per_message_deflate": False,
        "ws_max_size": settings.ws_max_size,
        "ws_ping_interval": settings.ping_interval,
        "ws_ping_timeout": settings.ping_timeout,
        "proxy_headers": bool(settings.trusted_proxies),
        "forwarded_allow_ips": list(settings.trusted_proxies),
        "lifespan": "on",
        "log_config": None,
        # Off for this server's protocol only (core/serving.uvicorn_config): uvicorn's
        # access_log=False would empty the process-wide "uvicorn.access" logger.
        "timeout_keep_alive": 5,
        "timeout_graceful_shutdown": settings.drain_timeout,
        "ssl_certfile": settings.ssl_certfile,
        "ssl_keyfile": settings.ssl_keyfile,
        "h11_max_incomplete_event_size": settings.max_header_bytes + 1024,
    }
    options.update(overrides)
    config = uvicorn_config(app, **options)
    # One send() per loop step on every connection (coalesce.py): a relayed request's
    # response head and body, and the frames written to an agent together, leave together.
    config.http_protocol_class = coalescing(config.http_protocol_class)
    if isinstance(app, RelayApp):
        # The public ingress is read by the relay's own HTTP/1.1 front (front.py); every
        # other connection is handed to the protocol above on its first request line.
        config.http_protocol_class = ingress_front(config.http_protocol_class)
    ws_class: Any = config.ws_protocol_class
    if ws_class is not None:
        # The agent socket's frames skip the ASGI message layer (agent_wire.py).
        config.ws_protocol_class = coalescing(agent_wire(ws_class))
    return config


def _with_tcp_proto(sock: socket.socket) -> socket.socket:
    """``sock``, or a duplicate whose proto says TCP when the caller made it with proto 0.

    asyncio sets TCP_NODELAY on accepted connections only when the listener's proto is
    IPPROTO_TCP; without it every keep-alive response waits ~40 ms for a delayed ACK.
    """
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.proto == socket.IPPROTO_TCP:
        return sock
    return socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=os.dup(sock.fileno()))


class RelayServer:
    """uvicorn serving a :class:`RelayApp`, with a graceful drain on SIGTERM/SIGINT.

    The first signal drains (GOAWAY to every agent, new requests get 503, in-flight ones
    get ``drain_timeout`` seconds); a second signal exits at once.
    """

    def __init__(self, settings: RelaySettings, *, sock: socket.socket | None = None) -> None:
        self.settings = settings
        self.app = create_relay_app(settings)
        self.sock = _with_tcp_proto(sock) if sock is not None else None
        self._own_sock = self.sock is not sock  # a duplicate we made: ours to close
        _install_log_redaction()
        config = _uvicorn_config(self.app, settings)
        # taskapp's one uvicorn Server (core/serving.py); its on_signal hook gives the
        # relay's signal handling: the first SIGTERM/SIGINT drains, a second exits at once.
        self.server = fast_exit_server_class()(config)
        self.server.on_signal = lambda signum: self.request_stop()
        self._stopping = False
        self.started = threading.Event()
        self.server.on_started = self.started.set

    @property
    def _loop(self) -> asyncio.AbstractEventLoop | None:
        loop: asyncio.AbstractEventLoop | None = self.server._loop
        return loop

    async def serve(self) -> None:
        try:
            await self.server.serve(sockets=[self.sock] if self.sock is not None else None)
        finally:
            if self._own_sock and self.sock is not None:
                self.sock.close()

    def run(self) -> None:
        """Serve until stopped (blocking). Uses uvloop when installed."""
        loop_factory = self.server.config.get_loop_factory()
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(self.serve())

    def request_stop(self) -> None:
        """Drain then exit (thread- and signal-safe); a second call exits at once."""
        loop = self._loop
        if self._stopping or loop is None:
            self.server.force_exit = self._stopping
            self.server.request_exit()
            return
        self._stopping = True

        def begin() -> None:
            async def drain_then_exit() -> None:
                try:
                    await self.app.drain()
                finally:
                    self.server.request_exit()

            self.app.spawn(drain_then_exit())

        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(begin)

    @property
    def port(self) -> int:
        for server in getattr(self.server, "servers", []):
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.settings.port


@dataclasses.dataclass
class RunningRelay:
    """A relay serving in a background thread (see :func:`start_relay_thread`)."""

    server: RelayServer
    serving: ServingThread
    url: str

    @property
    def app(self) -> RelayApp:
        return self.server.app

    @property
    def thread(self) -> threading.Thread:
        return self.serving.thread

    @property
    def errors(self) -> list[BaseException]:
        """What ended the serving thread (empty while it serves)."""
        return [self.serving.error] if self.serving.error is not None else []

    def stop(self, timeout: float = 15.0, *, drain: bool = False) -> None:
        if drain:
            self.server.request_stop()
        else:
            self.server.server.request_exit()
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.server.force_exit = True
            self.thread.join(5)
        if not self.thread.is_alive():
            self.serving.sock.close()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the relay's event loop and return its result (for tests)."""
        loop = self.server._loop
        assert loop is not None
        return asyncio.run_coroutine_threadsafe(_call(fn), loop).result(10)


async def _call(fn: Callable[[], Any]) -> Any:
    result = fn()
    if asyncio.iscoroutine(result):
        result = await result
    return result


def start_relay_thread(settings: RelaySettings, *, timeout: float = 10.0) -> RunningRelay:
    """Start a relay in a daemon thread on ``settings.host:settings.port`` (port 0: any).

    The socket is bound before the thread starts, so the URL is known and no other process
    can take the port. ``settings.public_url`` may be ``"auto"``: the bound address.
    """
    sock = listen_tcp(settings.host, settings.port)
    port = sock.getsockname()[1]
    url = f"http://{settings.host}:{port}"
    if settings.public_url == "auto":
        settings = dataclasses.replace(settings, public_url=url, port=port)
    else:
        settings = dataclasses.replace(settings, port=port)
    server = RelayServer(settings, sock=sock)
    serving = serve_in_thread(
        server.server.config, sock, name=f"taskapp-relay-{port}", server=server.server
    )
    if not serving.wait_started(timeout):
        serving.stop(5.0)
        sock.close()
        raise ServerStartError(
            f"the relay did not start on {url} within {timeout:g}s"
            + (f": {serving.error!r}" if serving.error is not None else "")
        )
    return RunningRelay(server=server, serving=serving, url=url)
