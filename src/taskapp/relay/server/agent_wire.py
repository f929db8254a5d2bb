"""The agent WebSocket's frame path: frames in and out without the ASGI message layer.

uvicorn's WebSocket protocol hands every received message to the app through a queue (one
task wake-up each) and pauses reading after each one until the app asks for the next; each
send goes through an ASGI message. On the relay's agent socket that was four messages per
small relayed request. :func:`agent_wire` gives a subclass of uvicorn's sans-I/O WebSocket
protocol (``ws="websockets-sansio"``, which the relay server uses) that keeps uvicorn's
handshake, ping/pong keep-alive, close handshake and size limit, and adds:

* a *sink*: once :meth:`attach` is called, every complete message goes straight to
  ``sink.on_text(str)`` / ``sink.on_binary(bytes)`` from ``data_received``, with no queue and
  no pause; the ASGI ``receive()`` then only reports the disconnect;
* direct writes: :meth:`write_text` / :meth:`write_bytes` put one frame on the transport at
  once (in call order, so frame order is call order); a bulk sender awaits
  :attr:`writable` between frames (back-pressure);
* :meth:`hold` / :meth:`release`: stop and restart reading (v1 agents have no flow control).

The agent socket endpoint (``agent_socket.py``) finds the wire in the ASGI scope's
extensions under :data:`WIRE_EXTENSION`. It runs the handshake, the token check and ATTACH
through ASGI as before.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["WIRE_EXTENSION", "FrameSink", "Wire", "agent_wire"]

#: The ASGI scope extension under which the relay server's WebSocket protocol offers itself.
WIRE_EXTENSION = "taskapp.relay.wire"


class FrameSink(Protocol):
    """Receives an agent's messages, called from the protocol's ``data_received``."""

    def on_text(self, text: str) -> None: ...

    def on_binary(self, data: bytes) -> None: ...


class Wire(Protocol):
    """What :func:`agent_wire`'s protocol offers the agent session."""

    writable: Any  # asyncio.Event: set while the transport takes more

    def attach(self, sink: FrameSink) -> None: ...

    def write_text(self, text: str) -> None: ...

    def write_bytes(self, data: bytes | bytearray | memoryview) -> None: ...

    def hold(self) -> None: ...

    def release(self) -> None: ...


class _WireMixin:
    """The direct frame path, mixed into uvicorn's protocol class by :func:`agent_wire`."""

    # set by uvicorn's protocol
    queue: asyncio.Queue[Any]
    transport: Any
    conn: Any
    frames: list[Any]
    read_paused: bool
    curr_msg_data_type: str
    close_sent: bool
    disconnected: bool
    writable: asyncio.Event
    handle_parser_exception: Callable[[], None]

    _sink: FrameSink | None = None
    _held = False

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)  # type: ignore[misc]
        scope = getattr(self, "scope", None)
        if scope is not None:  # a 101: the app sees the scope on its next step
            scope["extensions"][WIRE_EXTENSION] = {"wire": self}

    def attach(self, sink: FrameSink) -> None:
        """Deliver every further message to ``sink``, starting with any already queued."""
        queued = []
        while not self.queue.empty():
            queued.append(self.queue.get_nowait())
        self._sink = sink
        for message in queued:
            if message["type"] != "websocket.receive":
                self.queue.put_nowait(message)  # a disconnect: the endpoint still sees it
            elif message.get("text") is not None:
                sink.on_text(message["text"])
            else:
                sink.on_binary(message["bytes"])
        if self.read_paused and not self._held:
            self.read_paused = False
            self.transport.resume_reading()

    def send_receive_event_to_app(self) -> None:
        sink = self._sink
        if sink is None:
            super().send_receive_event_to_app()  # type: ignore[misc]
            return
        frames = self.frames
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        self.frames = []
        if self.close_sent:
            return
        if self.curr_msg_data_type == "text":
            try:
                text = bytes(data).decode()
            except UnicodeDecodeError:
                self.conn.send_close(1007)
                self.handle_parser_exception()
                return
            sink.on_text(text)
        else:
            sink.on_binary(data)

    def write_text(self, text: str) -> None:
        if self.close_sent or self.disconnected:
            raise ConnectionError("the agent connection is closed")
        self.conn.send_text(text.encode())
        self.transport.write(b"".join(self.conn.data_to_send()))

    def write_bytes(self, data: bytes | bytearray | memoryview) -> None:
        if self.close_sent or self.disconnected:
            raise ConnectionError("the agent connection is closed")
        self.conn.send_binary(data)
        self.transport.write(b"".join(self.conn.data_to_send()))

    def hold(self) -> None:
        if not self._held:
            self._held = True
            self.transport.pause_reading()

    def release(self) -> None:
        if self._held:
            self._held = False
            if not self.transport.is_closing():
                self.transport.resume_reading()


@functools.cache
def agent_wire(protocol: type[Any]) -> Any:
    """``protocol`` (uvicorn's ``WebSocketsSansIOProtocol``) with the direct frame path."""
    return type(f"AgentWire{protocol.__name__}", (_WireMixin, protocol), {})
