"""Tunnel supervision, shared by every backend that can drop (cloudflared, ssh, relay, ...).

A backend opts in with ``supervised = True`` and implements
:meth:`~taskapp.core.backends.TunnelBackend.wait_dropped`. After the tunnel opened, the
lifecycle starts a :class:`TunnelSupervisor` thread that waits for the tunnel to drop,
then closes what is left of it and opens it again with exponential backoff. A new URL is
reported through ``ctx.url_changed`` (``task_app.url`` updates, the ``url_changed`` hook
and the ``on_url_change`` callback fire). After ``max_restarts`` consecutive failures it
logs a WARNING and gives up; the task app keeps running on its local URL.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from taskapp.core.backends import Tunnel, TunnelBackend, TunnelContext
from taskapp.core.health import Backoff
from taskapp.core.logs import get_logger

__all__ = ["TunnelSupervisor"]

logger = get_logger("taskapp.tunnel")


class TunnelSupervisor:
    """Restarts ``backend`` whenever its tunnel drops, until :meth:`stop`."""

    def __init__(
        self,
        backend: TunnelBackend,
        ctx: TunnelContext,
        *,
        verify: Callable[[Tunnel], None] | None = None,
        max_restarts: int = 5,
        first_delay: float = 0.5,
        max_delay: float = 15.0,
    ) -> None:
        self.backend = backend
        self.ctx = ctx
        self.verify = verify
        self.max_restarts = max_restarts
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.restarts = 0
        self.gave_up = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"taskapp-supervise-{backend.name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop supervising (idempotent). Does not close the tunnel."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _run(self) -> None:
        name = self.backend.name
        while not self._stop.is_set():
            reason = self.backend.wait_dropped(self._stop)
            if reason is None or self._stop.is_set():
                return
            logger.warning("tunnel %r dropped (%s); reconnecting", name, reason)
            if not self._reconnect():
                return

    def _close_quietly(self) -> None:
        try:
            self.backend.close()
        except Exception:
            logger.debug("closing tunnel %r failed", self.backend.name, exc_info=True)

    def _reconnect(self) -> bool:
        name = self.backend.name
        backoff = Backoff(first=self.first_delay, maximum=self.max_delay)
        failures = 0
        while not self._stop.is_set():
            self._close_quietly()
            if self._stop.wait(backoff.next_delay()):
                return False
            try:
                tunnel = self.backend.open(self.ctx)
                if self.verify is not None:
                    self.verify(tunnel)
            except Exception as exc:
                if self._stop.is_set():
                    self._close_quietly()
                    return False
                failures += 1
                logger.warning(
                    "reconnecting tunnel %r failed (%d/%d): %s",
                    name,
                    failures,
                    self.max_restarts,
                    exc,
                )
                if failures >= self.max_restarts:
                    self._close_quietly()  # e.g. opened but failed verification
                    logger.warning(
                        "giving up on tunnel %r after %d attempts; the task app still serves "
                        "its local URL %s",
                        name,
                        failures,
                        self.ctx.local_url,
                    )
                    self.gave_up = True  # last: whoever sees it also sees the warning
                    return False
                continue
            if self._stop.is_set():
                # stop() came while open() ran (and may have timed out waiting for us): the
                # lifecycle may already have closed the backend, so close what we opened.
                self._close_quietly()
                return False
            self.restarts += 1
            logger.info("tunnel %r reconnected: %s", name, tunnel.url)
            self.ctx.url_changed(tunnel)
            return True
        return False
