"""A minimal HTTP/1.1 client side over asyncio streams (standard library only): request
heads, response heads and bodies (Content-Length, chunked, read-until-close).

It is the home of this mechanism: the relay agent's local leg (relay/agent/local_http.py)
and the async loopback transport of the task-app client (core/transport.py) both use it.
A general client (httpx) costs several times the CPU per request in these roles
(docs/performance.md).
"""

from __future__ import annotations

import asyncio

__all__ = ["BadResponse", "read_body", "read_head", "request_head"]


class BadResponse(Exception):
    """The server's answer could not be read (reset, bad status line, early EOF)."""


def request_head(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


async def read_head(reader: asyncio.StreamReader) -> tuple[int, list[tuple[str, str]], str]:  # noqa: C901 -- complexity 16 at most (moved from relay/agent/local_http.py, issue 21 ratchet); split when next changed
    """Status, headers (names lower-cased) and body mode: ``none``/``length:N``/
    ``chunked``/``close``, with ``:close`` appended when the server will close."""
    while True:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            raise BadResponse("the server closed the connection") from exc
        except asyncio.LimitOverrunError as exc:
            raise BadResponse("the server sent oversized headers") from exc
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise BadResponse(f"bad status line {lines[0][:40]!r}")
        try:
            status = int(parts[1])
        except ValueError:
            raise BadResponse(f"bad status line {lines[0][:40]!r}") from None
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
                    raise BadResponse("bad Content-Length") from None
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


async def read_body(reader: asyncio.StreamReader, mode: str) -> bytes:
    """The whole body of a response whose head gave ``mode`` (see :func:`read_head`)."""
    kind = mode.split(":")[0]
    try:
        if kind == "none":
            return b""
        if kind == "length":
            return await reader.readexactly(int(mode.split(":")[1]))
        if kind == "close":
            return await reader.read()
        parts: list[bytes] = []
        while True:
            line = await reader.readuntil(b"\r\n")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BadResponse("bad chunk size") from None
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers are dropped
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            if await reader.readexactly(2) != b"\r\n":
                raise BadResponse("bad chunk terminator")
    except asyncio.IncompleteReadError as exc:
        raise BadResponse("the server ended the body early") from exc
    except asyncio.LimitOverrunError as exc:
        raise BadResponse("the server sent an oversized chunk line") from exc
