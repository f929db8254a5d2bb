"""Transports of the task-app client: they carry one request and bring back one
:class:`Answer`, or raise :class:`TransportError` saying in words why nothing came back.

* :class:`LoopbackTransport`: keep-alive :mod:`http.client` connections, one per thread,
  for ``http://`` loopback URLs. No proxy, no TLS, a fraction of httpx's CPU per request,
  which matters when the task app runs in the same interpreter.
* :class:`HttpxTransport`: httpx for everything else (TLS, proxies from the environment),
  or any httpx transport passed in (``httpx.MockTransport``, ``httpx.WSGITransport``).
* :class:`AsyncLoopbackTransport`: the asyncio twin of :class:`LoopbackTransport`
  (keep-alive asyncio connections, :mod:`taskapp.core.http11`), the async client's
  default for ``http://`` loopback URLs.
* :class:`AsyncHttpxTransport`: the asyncio twin (``httpx.ASGITransport(app)`` calls an
  app in memory).

Any object with the same ``request``/``close`` methods is a transport (the
:class:`Transport` protocol), as in httpx's ``BaseTransport``. Used through
:class:`taskapp.core.client.TaskAppClient`, which re-exports these names.
"""

from __future__ import annotations

import contextlib
import http.client
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from taskapp.core.errors import TaskAppRequestError
from taskapp.core.secrets import redact

if TYPE_CHECKING:
    import httpx

__all__ = [
    "KEY_REJECTED_CODES",
    "Answer",
    "AsyncHttpxTransport",
    "AsyncLoopbackTransport",
    "AsyncTransport",
    "ClientTimeout",
    "HttpxTransport",
    "LoopbackTransport",
    "Transport",
    "TransportError",
    "async_http_client",
    "describe_transport_error",
    "error_code",
    "error_message",
    "http_client",
    "is_key_rejection",
    "is_loopback_url",
]

#: Error codes meaning "wrong or missing key": taskapp's and synth-ai's spelling (synth-ai
#: answers a wrong key with HTTP 400 and ``unauthorised``).
KEY_REJECTED_CODES = frozenset({"unauthorized", "unauthorised"})


def is_loopback_url(url: str) -> bool:
    """True when ``url``'s host is ``localhost`` or a loopback address."""
    import ipaddress

    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- answers -----------------------------------------------------------------------------


class Answer:
    """One HTTP answer, whichever transport produced it."""

    __slots__ = ("_body", "content", "elapsed_s", "headers", "path", "status")

    def __init__(
        self,
        status: int,
        headers: Mapping[str, str],
        content: bytes,
        *,
        path: str = "",
        elapsed_s: float = 0.0,
    ) -> None:
        self.status = status
        self.headers = headers
        self.content = content
        self.path = path
        self.elapsed_s = elapsed_s
        self._body: Any = ...

    @property
    def status_code(self) -> int:  # the httpx spelling
        return self.status

    def json(self) -> Any:
        """The body as JSON; raises :class:`ValueError` when it is not JSON."""
        import json

        return json.loads(self.content)

    @property
    def body(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        if self._body is ...:
            try:
                import json

                self._body = json.loads(self.content) if self.content else None
            except ValueError:
                self._body = None
        return self._body

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    @property
    def reason_phrase(self) -> str:
        return f"HTTP {self.status}"

    def is_html(self) -> bool:
        return self.text.lstrip()[:15].lower().startswith(("<!doctype", "<html"))

    def error_message(self) -> str | None:
        """The message of the error envelope, if the body is one."""
        return error_message(self.body)

    def describe(self, limit: int = 200) -> str:
        """``HTTP 500: boom (internal_error)``: the status and what the body says."""
        message = self.error_message()
        if message is None:
            if self.body is not None:
                message = _short(self.body, limit)
            elif self.is_html():
                message = "an HTML page"
            else:
                message = self.text.strip()[:limit] or "an empty body"
        return f"HTTP {self.status}: {message}"


def error_message(body: Any) -> str | None:
    """The message of a task-app error envelope ``{"detail": {"error": {...}}}``, if any.

    >>> error_message({"detail": {"error": {"code": "unauthorized", "message": "bad key"}}})
    'bad key (unauthorized)'
    """
    if isinstance(body, dict):
        detail = body.get("detail")
        if isinstance(detail, dict) and isinstance(detail.get("error"), dict):
            error = detail["error"]
            code = error.get("code")
            message = error.get("message")
            return f"{message} ({code})" if code else str(message)
        if isinstance(detail, str):
            return detail
    return None


def error_code(body: Any) -> str | None:
    if isinstance(body, dict):
        detail = body.get("detail")
        if isinstance(detail, dict) and isinstance(detail.get("error"), dict):
            code = detail["error"].get("code")
            return code if isinstance(code, str) else None
    return None


def is_key_rejection(answer: Answer) -> bool:
    """True when ``answer`` says the key is wrong or missing: 401, 403, or synth-ai's 400
    with the ``unauthorised`` envelope."""
    if answer.status in (401, 403):
        return True
    return answer.status == 400 and error_code(answer.body) in KEY_REJECTED_CODES


# -- transport errors --------------------------------------------------------------------


class TransportError(TaskAppRequestError):
    """No answer came back: refused, reset, DNS, TLS. The message says which, in words."""


class ClientTimeout(TransportError):
    """No answer within the time limit (the request may still be running on the app)."""


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def describe_transport_error(exc: BaseException, url: str, timeout: float) -> str:
    """Why a request to ``url`` failed, in words: refused, timeout, TLS, DNS, ..."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or url
    try:
        port = parts.port
    except ValueError:
        port = None
    where = f"{host}:{port}" if port else host
    chain = _chain(exc)
    text = " ".join(str(item) for item in chain)
    names = {type(item).__name__ for item in chain}
    if "ConnectTimeout" in names:
        return f"timeout: could not connect to {where} within {timeout:g} s"
    if names & {"TimeoutException", "ReadTimeout", "WriteTimeout", "PoolTimeout"} or any(
        isinstance(item, TimeoutError) for item in chain
    ):
        return f"timeout: no answer from {where} within {timeout:g} s"
    if any(isinstance(item, ssl.SSLError) for item in chain) or "SSL" in text or "TLS" in text:
        reason = next((str(item) for item in chain if isinstance(item, ssl.SSLError)), text)
        hint = (
            "the server does not speak TLS: use http:// instead of https://"
            if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text
            else "is the certificate valid and trusted (SSL_CERT_FILE)?"
        )
        return f"TLS handshake with {where} failed ({redact(reason)}); {hint}"
    if any(isinstance(item, ConnectionRefusedError) for item in chain) or "refused" in text:
        return f"connection refused: nothing is listening at {where}; is the task app running?"
    if "Name or service not known" in text or "nodename nor servname" in text:
        return f"DNS lookup failed: the host {host!r} is unknown"
    if "ConnectError" in names:
        return f"cannot connect to {where}: {redact(text) or type(exc).__name__}"
    if names & {"RemoteProtocolError", "RemoteDisconnected", "BadStatusLine"} or isinstance(
        exc, http.client.HTTPException | ConnectionResetError
    ):
        return (
            f"{where} closed the connection or answered something that is not HTTP "
            f"({type(exc).__name__})"
        )
    return f"request to {where} failed: {type(exc).__name__}: {redact(str(exc))}"


def _transport_error(exc: BaseException, url: str, timeout: float) -> TransportError:
    message = describe_transport_error(exc, url, timeout)
    kind = ClientTimeout if message.startswith("timeout:") else TransportError
    return kind(message)


# -- transports --------------------------------------------------------------------------


class Transport(Protocol):
    """Sends one request and returns one answer; raises :class:`TransportError`.

    ``timeout`` (seconds) overrides the transport's own limit for this request.
    """

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None = None,
        timeout: float | None = None,
    ) -> Answer: ...

    def close(self) -> None: ...


class AsyncTransport(Protocol):
    """The asyncio twin of :class:`Transport`."""

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - per request, like httpx
    ) -> Answer: ...

    async def aclose(self) -> None: ...


class LoopbackTransport:
    """Keep-alive :mod:`http.client` connections to a loopback ``http://`` URL, one per
    thread (thread-safe). A kept-alive connection the server closed meanwhile is
    reconnected once."""

    def __init__(self, base_url: str, *, timeout: float) -> None:
        parts = urllib.parse.urlsplit(base_url)
        self.base_url = base_url
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None = None,
        timeout: float | None = None,
    ) -> Answer:
        started = time.perf_counter()
        limit = self.timeout if timeout is None else timeout
        for attempt in (1, 2):
            reused = getattr(self._local, "conn", None) is not None
            conn = self._connection()
            conn.timeout = limit
            if conn.sock is not None:
                conn.sock.settimeout(limit)
            try:
                conn.request(method, self.prefix + path, body=body, headers=dict(headers))
                response = conn.getresponse()
                content = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                if reused and attempt == 1 and not isinstance(exc, TimeoutError):
                    continue  # the server closed an idle kept-alive connection: reconnect
                raise _transport_error(exc, self.base_url, limit) from exc
            if response.will_close:
                self._drop()
            answer_headers = {key.lower(): value for key, value in response.getheaders()}
            return Answer(
                response.status,
                answer_headers,
                content,
                path=path,
                elapsed_s=time.perf_counter() - started,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()


class _Conn:
    __slots__ = ("loop", "reader", "writer")

    def __init__(self, reader: Any, writer: Any, loop: Any) -> None:
        self.reader = reader
        self.writer = writer
        self.loop = loop

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


class AsyncLoopbackTransport:
    """Keep-alive asyncio connections to a loopback ``http://`` URL: the asyncio twin of
    :class:`LoopbackTransport` (standard library, :mod:`taskapp.core.http11`). It costs
    a fraction of httpx's CPU per request, and unlike httpx's pool its cost does not grow
    with the number of connections (httpcore checks every pooled connection on each
    request: a third of the client's CPU at concurrency 32, docs/performance.md).

    Up to ``limit`` connections are kept; more concurrent requests open more and close
    them after use. A kept-alive connection the server closed meanwhile is reconnected
    once, as :class:`LoopbackTransport` and :class:`AsyncHttpxTransport` do.
    """

    def __init__(self, base_url: str, *, timeout: float, limit: int = 16) -> None:
        parts = urllib.parse.urlsplit(base_url)
        self.base_url = base_url
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.limit = limit
        self._host_header = f"{self.host}:{self.port}" if parts.port else self.host
        self._idle: list[_Conn] = []

    async def _acquire(self) -> tuple[_Conn, bool]:
        import asyncio

        loop = asyncio.get_running_loop()
        while self._idle:
            conn = self._idle.pop()
            if conn.loop is loop and not conn.reader.at_eof():
                return conn, True
            conn.close()  # the server closed it, or it belongs to an earlier event loop
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        return _Conn(reader, writer, loop), False

    async def _exchange(
        self, head: bytes, body: bytes | None, no_body: bool
    ) -> tuple[int, Any, bytes]:
        from taskapp.core import http11

        for attempt in (1, 2):
            conn, reused = await self._acquire()
            try:
                conn.writer.write(head + body if body else head)
                status, headers, mode = await http11.read_head(conn.reader)
                if no_body or status in (204, 304):  # HEAD: a length, but no body
                    mode = "none" + (":close" if mode.endswith(":close") else "")
                content = await http11.read_body(conn.reader, mode)
            except (OSError, http11.BadResponse):
                conn.close()
                if reused and attempt == 1:
                    continue  # the server closed an idle kept-alive connection
                raise
            except BaseException:
                conn.close()  # cancelled or timed out mid-answer: the connection is spent
                raise
            if mode.endswith("close") or len(self._idle) >= self.limit:
                conn.close()
            else:
                self._idle.append(conn)
            return status, dict(headers), content
        raise AssertionError("unreachable")  # pragma: no cover

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - per request, like httpx
    ) -> Answer:
        import asyncio

        from taskapp.core import http11

        started = time.perf_counter()
        limit = self.timeout if timeout is None else timeout
        lines = [("host", self._host_header)]
        lines.extend(
            (name, value)
            for name, value in headers.items()
            if name.lower() not in ("host", "content-length")
        )
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(("content-length", str(len(body or b""))))
        head = http11.request_head(method, self.prefix + path, lines)
        try:
            async with asyncio.timeout(limit):
                status, answer_headers, content = await self._exchange(head, body, method == "HEAD")
        except (OSError, TimeoutError, http11.BadResponse) as exc:
            raise _transport_error(exc, self.base_url, limit) from exc
        return Answer(
            status,
            answer_headers,
            content,
            path=path,
            elapsed_s=time.perf_counter() - started,
        )

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _httpx_options(base_url: str, timeout: float, limit: int) -> dict[str, Any]:
    import httpx

    return {
        "base_url": base_url,
        "timeout": httpx.Timeout(timeout, connect=min(15.0, timeout)),
        "limits": httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
        "trust_env": not is_loopback_url(base_url),  # no proxy detour for loopback
        "follow_redirects": False,
    }


class HttpxTransport:
    """httpx for any URL (TLS, proxies from the environment), or over ``transport`` (an
    httpx transport such as ``httpx.MockTransport`` or ``httpx.WSGITransport``)."""

    def __init__(
        self, base_url: str, *, timeout: float, limit: int = 16, transport: Any = None
    ) -> None:
        import httpx

        self.base_url = base_url
        self.timeout = timeout
        self._httpx = httpx
        self._client = httpx.Client(**_httpx_options(base_url, timeout, limit), transport=transport)

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None = None,
        timeout: float | None = None,
    ) -> Answer:
        started = time.perf_counter()
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        try:
            response = self._client.request(
                method, path, content=body, headers=dict(headers), **extra
            )
        except self._httpx.HTTPError as exc:
            limit = self.timeout if timeout is None else timeout
            raise _transport_error(exc, self.base_url, limit) from exc
        return Answer(
            response.status_code,
            response.headers,
            response.content,
            path=path,
            elapsed_s=time.perf_counter() - started,
        )

    def close(self) -> None:
        self._client.close()


class AsyncHttpxTransport:
    """One ``httpx.AsyncClient`` (``limit`` connections), or over an async httpx
    ``transport`` (e.g. ``httpx.ASGITransport(app)`` to call an app in memory)."""

    def __init__(
        self, base_url: str, *, timeout: float, limit: int = 16, transport: Any = None
    ) -> None:
        import httpx

        self.base_url = base_url
        self.timeout = timeout
        self._httpx = httpx
        self._client = httpx.AsyncClient(
            **_httpx_options(base_url, timeout, limit), transport=transport
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - per request, like httpx
    ) -> Answer:
        httpx = self._httpx
        started = time.perf_counter()
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        try:
            try:
                response = await self._client.request(
                    method, path, content=body, headers=dict(headers), **extra
                )
            except (httpx.ReadError, httpx.RemoteProtocolError):
                # The server closed a kept-alive connection as we reused it (uvicorn does
                # so after an app error): nothing was answered, so send it once more.
                response = await self._client.request(
                    method, path, content=body, headers=dict(headers), **extra
                )
        except httpx.HTTPError as exc:
            limit = self.timeout if timeout is None else timeout
            raise _transport_error(exc, self.base_url, limit) from exc
        return Answer(
            response.status_code,
            response.headers,
            response.content,
            path=path,
            elapsed_s=time.perf_counter() - started,
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def _short(value: Any, limit: int) -> str:
    import json

    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def http_client(**options: Any) -> httpx.Client:
    """An ``httpx.Client`` for a service that is not a task app (the job backend, the
    testing kit's probes, a readiness check of any URL); ``options`` are httpx's own.

    With :func:`async_http_client` and the transports above, the one place taskapp makes
    an httpx client (ruff's banned-api rule TID251 keeps it here): a task app is called
    through :class:`taskapp.core.client.TaskAppClient`, everything else through these.
    """
    import httpx

    return httpx.Client(**options)


def async_http_client(**options: Any) -> httpx.AsyncClient:
    """The asyncio twin of :func:`http_client`."""
    import httpx

    return httpx.AsyncClient(**options)
