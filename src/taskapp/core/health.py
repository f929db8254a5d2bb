"""Readiness polling, shared by the lifecycle, every server runner and every tunnel.

:func:`wait_healthy` polls ``GET {url}/health`` with the API key until it answers 200,
with a short exponential backoff (no fixed sleeps). 401/403 fails at once (the key was
rejected), a dead server fails at once (the ``alive`` callback raises), anything else is
retried until the deadline, then reported with the last status or error.

The requests go through the one task-app client (:mod:`taskapp.core.client`): loopback
URLs over kept-alive :mod:`http.client` connections (no proxy, no TLS context: about a
millisecond), other URLs through httpx, which honours the environment's proxy settings and
verifies TLS. A 400 with synth-ai's ``unauthorised`` envelope counts as a rejected key,
like 401 and 403.
"""

from __future__ import annotations

import http.client
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from taskapp.core.client import (
    TaskAppClient,
    TransportError,
    auth_headers,
    is_key_rejection,
    is_loopback_url,
)
from taskapp.core.errors import ApiKeyRejectedError, HealthCheckError
from taskapp.core.logs import get_logger
from taskapp.core.secrets import fingerprint

__all__ = ["Backoff", "auth_headers", "is_loopback_url", "probe", "wait_healthy"]

logger = get_logger("taskapp.health")


class Backoff:
    """Delays for polling: ``first`` doubling up to ``maximum``, never past ``deadline``.

    >>> b = Backoff(first=0.005, maximum=0.25)
    >>> [round(b.next_delay(), 3) for _ in range(4)]
    [0.005, 0.01, 0.02, 0.04]
    """

    def __init__(
        self, *, first: float = 0.005, maximum: float = 0.25, deadline: float | None = None
    ) -> None:
        self._delay = first
        self._maximum = maximum
        self.deadline = deadline

    def next_delay(self) -> float:
        delay = self._delay
        self._delay = min(self._delay * 2, self._maximum)
        if self.deadline is not None:
            delay = max(0.0, min(delay, self.deadline - time.monotonic()))
        return delay

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def sleep(self) -> None:
        time.sleep(self.next_delay())


def probe(
    url: str, headers: Mapping[str, str], timeout: float, client: Any = None
) -> tuple[int, bytes]:
    """One GET; returns (status, body). Raises OSError / httpx errors on transport failure."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "http" and is_loopback_url(url):
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)
        try:
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            conn.request("GET", path, headers=dict(headers))
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()
    if client is None:
        from taskapp.core.transport import http_client

        with http_client(timeout=timeout) as own:
            answer = own.get(url, headers=dict(headers))
    else:
        answer = client.get(url, headers=dict(headers), timeout=timeout)
    return answer.status_code, answer.content


def wait_healthy(
    base_url: str,
    *,
    api_key: str | None,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    alive: Callable[[], None] | None = None,
    what: str = "the task app",
    error: Callable[[str], Exception] | None = None,
    path: str = "/health",
    limit: str | None = None,
) -> float:
    """Poll ``base_url + path`` until it answers 200; return the seconds it took.

    ``alive`` is called before every attempt and should raise when the thing being waited
    for has died. ``error`` builds the exception raised on timeout (default
    :class:`HealthCheckError`); a 401/403 always raises :class:`ApiKeyRejectedError`.
    ``limit`` names the time limit in that message (default ``"<timeout> s"``); a caller
    waiting out the rest of a larger budget names the budget the user set.
    """
    url = base_url.rstrip("/") + path
    started = time.monotonic()
    backoff = Backoff(deadline=started + timeout)
    last = "no attempt made"
    answered: str | None = None  # the most recent HTTP answer: more telling than a late timeout
    attempts = 0
    client = TaskAppClient(base_url, api_key, timeout=min(10.0, max(timeout, 0.5)), headers=headers)
    try:
        while True:
            if alive is not None:
                alive()
            attempts += 1
            remaining = max(0.05, (backoff.deadline or 0) - time.monotonic())
            try:
                answer = client.request("GET", path, timeout=min(5.0, remaining))
            except TransportError as exc:  # refused, reset, DNS, TLS, timeout
                last = str(exc)
            else:
                if answer.status == 200:
                    elapsed = time.monotonic() - started
                    logger.debug("%s healthy at %s after %d attempt(s)", what, url, attempts)
                    return elapsed
                if is_key_rejection(answer):
                    key_note = f"key {fingerprint(api_key)}" if api_key else "no key"
                    raise ApiKeyRejectedError(
                        f"{what} rejected the API key at {url} (HTTP {answer.status}, "
                        f"{key_note}). Pass the key the app expects with api_key=..., or "
                        "build the app from a TaskAppConfig so taskapp can give it the key."
                    )
                last = answered = f"HTTP {answer.status}"
            logger.debug("health check %s: %s (attempt %d)", url, last, attempts)
            if backoff.expired():
                break
            backoff.sleep()
    finally:
        client.close()
    if answered is not None and last != answered:
        # The last try ran into the deadline (its timeout shrinks to what is left): report
        # the answer the app gave before it, and the late failure after it.
        last = f"{answered}, then {last}"
    message = (
        f"{what} did not answer 200 at {url} within {limit or f'{timeout:g} s'} "
        f"({attempts} attempt(s); last result: {last}). Check that it serves GET {path} "
        "with status 200, or allow it more time"
    )
    raise (error or HealthCheckError)(message)
