"""A header read timeout for uvicorn's h11 protocol (slow clients).

uvicorn closes an idle keep-alive connection, but a client that opens a connection and
sends its request headers slowly (or never) holds it for as long as it likes. The
protocol class :func:`header_timeout_protocol` returns closes a connection whose request
headers are not complete ``seconds`` after it opened or after its previous response,
answering ``408`` when part of a request arrived. Pass it as ``uvicorn.Config(http=...)``.
Nothing is imported until it is called.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

__all__ = ["header_timeout_protocol"]


@functools.cache
def header_timeout_protocol(seconds: float) -> type[Any]:  # noqa: C901 - one class's methods
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _got_bytes = False

        def _arm(self) -> None:
            self._disarm()
            self._got_bytes = False
            self._header_timer = self.loop.call_later(seconds, self._header_timeout)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            self._got_bytes = self._got_bytes or bool(data)
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the headers are complete
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state in (h11.IDLE, h11.DONE):
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a response is still being sent (pipelining)
            if self._got_bytes:
                body = b"request headers not received in time\n"
                self.transport.write(
                    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\n"
                    b"connection: close\r\ncontent-length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
            self.transport.close()

    return HeaderTimeoutH11Protocol
