"""The relay as one ASGI 3 app: dispatch to the REST API, the agent WebSocket and the
public ingress; lifespan, the lease sweeper and the graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from taskapp.core.logs import get_logger
from taskapp.relay import protocol as p
from taskapp.relay.server.agent_socket import agent_socket
from taskapp.relay.server.ingress import ingress
from taskapp.relay.server.rest import build_router
from taskapp.relay.server.settings import RelaySettings
from taskapp.relay.server.state import Receive, RelayState, Scope, Send

__all__ = ["RelayApp", "create_relay_app"]

logger = get_logger("taskapp.relay")


class RelayApp(RelayState):
    """The relay as an ASGI 3 app (HTTP + WebSocket + lifespan) on its :class:`RelayState`."""

    def __init__(self, settings: RelaySettings) -> None:
        super().__init__(settings)
        self._sweeper: asyncio.Task[None] | None = None
        self._router: Any = None

    # ASGI entry ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            raw_path = scope.get("raw_path") or scope["path"].encode()
            prefix = (self.base_path + p.INGRESS_PREFIX).encode()
            if raw_path.startswith(prefix):
                await ingress(self, scope, receive, send, raw_path[len(prefix) :])
                return
            await self._rest(scope, receive, send)
        elif kind == "websocket":
            if scope["path"] == self.base_path + p.AGENT_PATH:
                await agent_socket(self, scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1008})
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        loaded = self.store.load()
        self.store.prepare()
        if loaded:
            logger.info("restored %d lease(s) from %s", loaded, self.settings.state_file)
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def shutdown(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(BaseException):
                await self._sweeper
        for lease in list(self.store.by_id.values()):
            if lease.session is not None:
                await lease.session.close(1012, "relay shutting down")
        for task in list(self._tasks):
            task.cancel()

    async def drain(self) -> None:
        """Stop taking requests, GOAWAY every agent, wait for in-flight requests (bounded)."""
        self.draining = True
        sessions = [lease.session for lease in self.store.by_id.values() if lease.session]
        retry_ms = int(self.settings.retry_after * 1000)
        for session in sessions:
            session.goaway("relay_shutdown", retry_ms)
        if self.active_streams:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.drain_timeout):
                    await self.idle.wait()
        if self.active_streams:
            logger.warning("drain: %d request(s) still running; closing", self.active_streams)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval)
            try:
                await self.sweep()
            except Exception:
                logger.exception("lease sweep failed")

    async def sweep(self) -> None:
        now = time.time()
        mono = time.monotonic()
        changed = False
        for lease in list(self.store.by_id.values()):
            session = lease.session
            if lease.expires_at <= now:
                logger.info("lease %s expired", lease.lease_id)
                await self.end_lease(lease, "expired")
                changed = True
            elif (
                session is None
                and lease.detached_since is not None
                and mono - lease.detached_since > self.settings.reattach_grace
            ):
                logger.info(
                    "lease %s removed: no agent for %.0fs",
                    lease.lease_id,
                    self.settings.reattach_grace,
                )
                await self.end_lease(lease, "abandoned")
                changed = True
            elif (
                session is not None
                and session.version == p.V2
                and not lease.expiring_sent
                and lease.expires_at - now < 300
            ):
                lease.expiring_sent = True
                session.send_text(self.lease_state(lease, "expiring"))
        if changed:
            self.store.save()

    # REST ------------------------------------------------------------------------------

    async def _rest(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._router is None:
            self._router = build_router(self)
        await self._router(scope, receive, send)


def create_relay_app(settings: RelaySettings) -> RelayApp:
    """The relay as an ASGI app (serve it with :class:`RelayServer` or any ASGI server)."""
    return RelayApp(settings)
