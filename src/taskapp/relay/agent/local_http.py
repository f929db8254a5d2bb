"""The agent's local leg: a pooled keep-alive HTTP/1.1 client to the task app over asyncio
streams (standard library only; httpx cost 3-6 ms of CPU per request in this role)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from taskapp.core import http11

__all__ = ["Conn", "LocalHttp", "LocalResponseError"]


#: The local app's answer could not be read (reset, bad status line, early EOF).
LocalResponseError = http11.BadResponse


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

    request_head = staticmethod(http11.request_head)
    read_head = staticmethod(http11.read_head)
