"""The agent's local leg: a pooled keep-alive HTTP/1.1 client to the task app over asyncio
streams (standard library only; httpx cost 3-6 ms of CPU per request in this role)."""

from __future__ import annotations

import asyncio
import contextlib
import time

__all__ = ["Conn", "LocalHttp", "LocalResponseError"]


class LocalResponseError(Exception):
    """The local app's answer could not be read (reset, bad status line, early EOF)."""


class Conn:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


class LocalHttp:
    """A small keep-alive HTTP/1.1 client for one local origin (loopback).

    Much cheaper per request than a general client (RELAY.md measured httpx at 3-6 ms CPU
    per request in this role); speaks just what a task app behind uvicorn needs:
    Content-Length and chunked bodies both ways, read-until-close responses, 1xx skipped.
    """

    #: uvicorn closes idle keep-alive connections after 5 s; never reuse one that old.
    max_idle = 4.0

    def __init__(self, host: str, port: int, *, max_idle_conns: int = 32) -> None:
        self.host = host
        self.port = port
        self.max_idle_conns = max_idle_conns
        self._idle: list[Conn] = []

    async def acquire(self, fresh: bool = False) -> tuple[Conn, bool]:
        """A connection and whether it was reused."""
        now = time.monotonic()
        while self._idle and not fresh:
            conn = self._idle.pop()
            if now - conn.idle_since < self.max_idle and not conn.reader.at_eof():
                return conn, True
            conn.close()
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=256 * 1024)
        return Conn(reader, writer), False

    def release(self, conn: Conn, reusable: bool) -> None:
        if reusable and len(self._idle) < self.max_idle_conns:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    @staticmethod
    def request_head(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
        lines = [f"{method} {target} HTTP/1.1"]
        lines.extend(f"{name}: {value}" for name, value in headers)
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")

    @staticmethod
    async def read_head(reader: asyncio.StreamReader) -> tuple[int, list[tuple[str, str]], str]:  # noqa: C901 -- complexity 16 at most (issue 21 ratchet); split when next changed
        """Status, headers and body mode (``none``/``length:N``/``chunked``/``close``)."""
        while True:
            try:
                raw = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                raise LocalResponseError("the local app closed the connection") from exc
            except asyncio.LimitOverrunError as exc:
                raise LocalResponseError("the local app sent oversized headers") from exc
            lines = raw.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
                raise LocalResponseError(f"bad status line {lines[0][:40]!r}")
            try:
                status = int(parts[1])
            except ValueError:
                raise LocalResponseError(f"bad status line {lines[0][:40]!r}") from None
            if 100 <= status < 200 and status != 101:
                continue  # 100 Continue / 103 Early Hints: the final answer follows
            headers: list[tuple[str, str]] = []
            length: int | None = None
            chunked = False
            close = parts[0] == "HTTP/1.0"
            for line in lines[1:]:
                if not line:
                    continue
                name, _, value = line.partition(":")
                name = name.strip().lower()
                value = value.strip()
                if name == "content-length":
                    try:
                        length = int(value)
                    except ValueError:
                        raise LocalResponseError("bad Content-Length") from None
                elif name == "transfer-encoding":
                    chunked = "chunked" in value.lower()
                elif name == "connection":
                    close = close or "close" in value.lower()
                headers.append((name, value))
            if chunked:
                mode = "chunked"
            elif length is not None:
                mode = f"length:{length}"
            else:
                mode = "close"
            if close and mode != "close":
                mode += ":close"
            return status, headers, mode
