"""Write coalescing for the relay's sockets: the writes of one event-loop step leave in one
``send()``.

A relayed request crosses three sockets, and every frame or HTTP head the libraries write
(uvicorn's h11 writes a response head and its body separately, ``websockets`` writes each
message on its own) is one system call. On loopback a ``send()`` also runs the receiver's
TCP processing and wake-up, which made the writes about a third of the relay's CPU per
small request (py-spy, docs/performance.md). :class:`CoalescingTransport` collects what a
protocol writes during one step of the loop and hands it to the real transport in one
write at the start of the next, after the callbacks that were already ready (microseconds;
nothing waits for a timer, so no Nagle-like delay). TCP_NODELAY stays on.

:func:`coalescing` gives a subclass of an asyncio protocol (uvicorn's HTTP and WebSocket
protocols, the ``websockets`` client connection) that installs it in ``connection_made``.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

__all__ = ["FLUSH_AT", "CoalescingTransport", "coalescing"]

#: Pending bytes at which a write goes out at once instead of at the end of the loop step.
FLUSH_AT = 64 * 1024


class CoalescingTransport:
    """An asyncio transport proxy whose ``write`` is batched per event-loop step.

    Everything but writing, closing and the write-buffer size is the wrapped transport's.
    ``close``/``write_eof`` send what is pending first; ``abort`` drops it.
    """

    __slots__ = ("_loop", "_pending", "_pending_size", "_scheduled", "_transport")

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._scheduled = False

    @property
    def wrapped(self) -> Any:
        """The real transport."""
        return self._transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._pending.append(bytes(data) if not isinstance(data, bytes) else data)
        self._pending_size += len(data)
        if self._pending_size >= FLUSH_AT:
            # A bulk writer (a body streamed in one loop step) goes out now, so the reader
            # works on it while the writer makes the next piece, and the transport's own
            # buffer limits (pause_writing) see it.
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Hand what is pending to the real transport now (one write)."""
        self._scheduled = False
        pending = self._pending
        if not pending:
            return
        self._pending = []
        self._pending_size = 0
        if self._transport.is_closing():
            return
        self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def get_write_buffer_size(self) -> int:
        size: int = self._transport.get_write_buffer_size()
        return size + self._pending_size

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._pending_size = 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@functools.cache
def coalescing(protocol: type[Any]) -> type[Any]:
    """``protocol`` (an ``asyncio.Protocol`` class) writing through a
    :class:`CoalescingTransport`. A transport that already coalesces (uvicorn hands its
    HTTP transport to the WebSocket protocol on upgrade) is not wrapped twice."""

    class Coalescing(protocol):  # type: ignore[misc]
        def connection_made(self, transport: Any) -> None:
            if not isinstance(transport, CoalescingTransport):
                transport = CoalescingTransport(transport)
            super().connection_made(transport)

    Coalescing.__name__ = Coalescing.__qualname__ = f"Coalescing{protocol.__name__}"
    return Coalescing
