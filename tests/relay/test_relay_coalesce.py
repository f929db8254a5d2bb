"""Write coalescing (relay/coalesce.py) over real loopback TCP connections: the writes of
one loop step reach the socket as one write, in order; close sends what is pending,
abort drops it; an already coalescing transport is not wrapped twice."""

from __future__ import annotations

import asyncio
from typing import Any

from taskapp.relay.coalesce import FLUSH_AT, CoalescingTransport, coalescing


class _Sink(asyncio.Protocol):
    """The receiving side: collects bytes until the peer closes."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _Writer(asyncio.Protocol):
    transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport


class _CountingWrites:
    """Counts the writes reaching the real transport (the system calls' source)."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


async def _pair() -> tuple[Any, _Sink, _CountingWrites, asyncio.AbstractServer]:
    loop = asyncio.get_running_loop()
    sinks: list[_Sink] = []

    def make_sink() -> _Sink:
        sinks.append(_Sink())
        return sinks[-1]

    server = await loop.create_server(make_sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, protocol = await loop.create_connection(coalescing(_Writer), "127.0.0.1", port)
    while not sinks:
        await asyncio.sleep(0)
    wrapped = protocol.transport
    assert isinstance(wrapped, CoalescingTransport)
    counting = _CountingWrites(wrapped.wrapped)
    wrapped._transport = counting  # observe what reaches the real transport
    return wrapped, sinks[0], counting, server


def test_writes_of_one_step_leave_in_one_write_in_order() -> None:
    async def scenario() -> tuple[list[bytes], bytes, int]:
        transport, sink, counting, server = await _pair()
        transport.write(b"head ")
        transport.write(bytearray(b"body "))
        transport.writelines([b"more ", memoryview(b"end")])
        pending = transport.get_write_buffer_size()
        assert counting.writes == []  # nothing yet: the step is not over
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        transport.write(b"!")  # a later step: a write of its own
        transport.close()  # sends what is pending first
        await asyncio.wait_for(sink.closed, 5)
        server.close()
        return counting.writes, bytes(sink.data), pending

    writes, received, pending = asyncio.run(scenario())
    assert writes == [b"head body more end", b"!"]
    assert received == b"head body more end!"
    assert pending == len(b"head body more end")


def test_abort_drops_what_is_pending_and_eof_flushes() -> None:
    async def scenario() -> tuple[bytes, bytes]:
        transport, sink, _, server = await _pair()
        transport.write(b"kept")
        transport.write_eof()  # flushes, then half-closes
        await asyncio.wait_for(sink.closed, 5)
        first = bytes(sink.data)
        transport.abort()
        transport2, sink2, counting2, _ = await _pair()
        transport2.write(b"dropped")
        transport2.abort()
        await asyncio.wait_for(sink2.closed, 5)
        await asyncio.sleep(0)
        server.close()
        assert counting2.writes == []
        return first, bytes(sink2.data)

    first, second = asyncio.run(scenario())
    assert first == b"kept"
    assert second == b""


def test_a_coalescing_transport_is_not_wrapped_again() -> None:
    async def scenario() -> bool:
        transport, _, _, server = await _pair()
        inner = coalescing(_Writer)()
        inner.connection_made(transport)  # what uvicorn does on a WebSocket upgrade
        same = inner.transport is transport
        transport.abort()
        server.close()
        return same

    assert asyncio.run(scenario())
    assert coalescing(_Writer) is coalescing(_Writer)


def test_a_bulk_writer_reaches_the_socket_within_the_step_and_meets_back_pressure() -> None:
    """A body streamed in one loop step (an in-process app that never yields) must not
    pile up in the coalescing buffer: from FLUSH_AT pending bytes on, writes go out at
    once, so the transport's own limits pause the writer."""

    async def scenario() -> tuple[list[int], bool, int]:
        transport, sink, counting, server = await _pair()
        paused: list[bool] = []
        real = counting.transport
        real.set_write_buffer_limits(high=FLUSH_AT)
        piece = b"x" * (FLUSH_AT // 4)
        transport.write(b"small")
        for _ in range(400):  # 6.4 MB in one step: more than loopback takes at once
            transport.write(piece)
            paused.append(real.get_write_buffer_size() > FLUSH_AT)
        sizes = [len(write) for write in counting.writes]
        pending = transport.get_write_buffer_size() - real.get_write_buffer_size()
        transport.close()
        await asyncio.wait_for(sink.closed, 5)
        server.close()
        assert len(sink.data) == 5 + 400 * len(piece)
        return sizes, any(paused), pending

    sizes, saw_back_pressure, pending = asyncio.run(scenario())
    assert sizes, "nothing reached the socket within the step"
    assert sizes[0] == FLUSH_AT + 5  # the small write joins the first bulk piece
    assert all(size == FLUSH_AT for size in sizes[1:])
    assert pending < FLUSH_AT  # never more than one bulk piece held back
    assert saw_back_pressure  # the real transport's buffer (pause_writing) saw the bytes
