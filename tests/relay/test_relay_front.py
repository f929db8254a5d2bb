"""The relay's HTTP/1.1 front for the public ingress (relay/server/front.py).

Two halves: a differential fuzz of its head and chunked-body reading against h11 (the
parser uvicorn would have used), and hostile clients over real sockets against a real
relay with a scripted agent on a real WebSocket.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskapp.relay.server import front
from taskapp.relay.server.front import BadRequest, ChunkedBody, IngressFront, parse_head
from tests.helpers import wait_until
from tests.relay._relay_helpers import (
    ScriptedAgent,
    body,
    create_lease,
    end,
    head,
    running_relay,
)

MAX_HEADERS = 100
#: ``TASKAPP_FUZZ=long`` runs many more cases, new ones each time (as test_relay_fuzz.py).
LONG = os.environ.get("TASKAPP_FUZZ", "").lower() == "long"


pytestmark = pytest.mark.usefixtures("no_relay_threads")


@pytest.fixture
def front_heads(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The request lines the front read (a test that used the relay checks it did)."""
    seen: list[bytes] = []

    def recording(data: bytes, max_headers: int) -> front.Head:
        seen.append(data.partition(b"\r\n")[0])
        return parse_head(data, max_headers)

    monkeypatch.setattr(front, "parse_head", recording)
    return seen


# -- the differential fuzz: front.parse_head against h11 ---------------------------------

_NAMES = st.sampled_from(
    [
        b"host",
        b"Host",
        b"content-length",
        b"Content-Length",
        b"transfer-encoding",
        b"expect",
        b"connection",
        b"x-a",
        b"X-Trace",
        b"a b",
        b"x:y",
        b"",
        b"x\x00",
        b"\xc3\xa9",
    ]
)
_VALUES = st.sampled_from(
    [
        b"",
        b"x",
        b"5",
        b"05",
        b"5, 5",
        b"5,6",
        b"-1",
        b"+5",
        b"1" * 21,
        b"chunked",
        b"Chunked",
        b"gzip",
        b"chunked, gzip",
        b"close",
        b"keep-alive",
        b"100-continue",
        b" a b ",
        b"a\tb",
        b"a\x00b",
        b"a\rb",
        b"a\nb",
        b"a\r\n b",
        b"\xff\xfe",
        b"a\x7fb",
        b"a\x01b",
    ]
)
_HEADER = st.tuples(
    _NAMES | st.binary(max_size=6),
    st.sampled_from([b": ", b":", b" : ", b":\t", b"\t: "]),
    _VALUES | st.binary(max_size=8),
)
_LINE = st.tuples(
    st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"G(T", b"", b"get"]),
    st.sampled_from([b" ", b"  ", b"\t"]),
    st.sampled_from(
        [
            b"/s/rt_abc/x",
            b"/s/rt_abc/a?b=c",
            b"http://h/s/rt_abc/",
            b"*",
            b"/s/rt_a\x7fb",
            b"/s/rt_a b",
            b"/s/rt_\xc3\xa9",
            b"/s/rt_a%20b/\x00",
            b"",
        ]
    ),
    st.sampled_from([b" "]),
    st.sampled_from(
        [
            b"HTTP/1.1",
            b"HTTP/1.0",
            b"HTTP/0.9",
            b"HTTP/2.0",
            b"HTTP/1.2",
            b"http/1.1",
            b"HTTP/1.1 ",
            b"HTTP/11",
            b"HTTP/1.1\r",
        ]
    ),
)


def _h11_request(data: bytes) -> h11.Request | None:
    """What h11 makes of ``data`` (a complete head), or None when it refuses it."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
    conn.receive_data(data)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    return event if isinstance(event, h11.Request) else None


def _deliberately_stricter(data: bytes, event: h11.Request) -> bool:
    """The heads h11 takes and the front refuses on purpose (a public endpoint)."""
    lines = data[:-4].split(b"\r\n")
    names = [name.lower() for name, _ in event.headers]
    lengths = [value for name, value in event.headers if name.lower() == b"content-length"]
    raw_lengths = [line for line in lines[1:] if line[:15].lower() == b"content-length:"]
    return (
        b"\n" in data[:-4].replace(b"\r\n", b"")  # a bare LF line end (h11 takes it)
        or data.find(b"\r\n\r\n") != len(data) - 4  # h11 took a shorter head
        or any(line[:1] in (b" ", b"\t") for line in lines[1:])  # obs-fold
        or event.http_version not in (b"1.0", b"1.1")  # HTTP/0.9, 2.0, ...: 400
        or not event.target.startswith(b"/")  # absolute-form, asterisk-form
        or any(b"," in line for line in raw_lengths)  # Content-Length lists
        or (b"transfer-encoding" in names and bool(lengths))  # CL and TE together
        or len(lines) - 1 > MAX_HEADERS
    )


@settings(
    max_examples=20_000 if LONG else 600,
    deadline=None,
    derandomize=not LONG,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    line=_LINE,
    headers=st.lists(_HEADER, max_size=6),
    host=st.booleans(),
    fold=st.booleans(),
)
def test_the_front_reads_heads_as_h11_does_or_deliberately_stricter(
    line: tuple[bytes, ...], headers: list[tuple[bytes, bytes, bytes]], host: bool, fold: bool
) -> None:
    lines = [b"".join(line)]
    if host:
        lines.append(b"Host: relay")
    lines += [name + sep + value for name, sep, value in headers]
    if fold:
        lines.append(b" folded")
    data = b"\r\n".join(lines) + b"\r\n\r\n"
    event = _h11_request(data)
    try:
        ours: front.Head | None = parse_head(data, MAX_HEADERS)
    except BadRequest:
        ours = None
    if event is None:
        assert ours is None, f"the front took a head h11 refuses: {data!r}"
        return
    if ours is None:
        assert _deliberately_stricter(data, event), f"the front refused a fine head: {data!r}"
        return
    assert (ours.method, ours.target, ours.version) == (
        event.method,
        event.target,
        event.http_version,
    )
    assert ours.headers == [(name.lower(), value) for name, value in event.headers]
    conn_close = any(
        name.lower() == b"connection" and b"close" in value.lower().replace(b" ", b"").split(b",")
        for name, value in event.headers
    )
    assert ours.keep_alive == (event.http_version == b"1.1" and not conn_close)


def test_the_front_refuses_the_smuggling_shapes_h11_takes() -> None:
    """Each deliberately stricter case once, named (the fuzz above finds them too)."""
    base = b"POST /s/rt_abc/ HTTP/1.1\r\nHost: r\r\n"
    stricter = {
        "cl_and_te": base + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
        "cl_list": base + b"Content-Length: 4, 4\r\n\r\n",
        "obs_fold": base + b"X-A: a\r\n b\r\n\r\n",
        "http_2": b"GET /s/rt_abc/ HTTP/2.0\r\nHost: r\r\n\r\n",
        "absolute_form": b"GET http://r/s/rt_abc/ HTTP/1.1\r\nHost: r\r\n\r\n",
    }
    for name, data in stricter.items():
        assert _h11_request(data) is not None, name
        with pytest.raises(BadRequest):
            parse_head(data, MAX_HEADERS)
    refused_by_both = {
        "cl_conflict": base + b"Content-Length: 4\r\nContent-Length: 5\r\n\r\n",
        "te_gzip": base + b"Transfer-Encoding: gzip\r\n\r\n",
        "two_te": base + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        "cl_sign": base + b"Content-Length: +4\r\n\r\n",
        "no_host": b"GET /s/rt_abc/ HTTP/1.1\r\n\r\n",
        "cr_in_value": base + b"X-A: a\rb\r\n\r\n",
    }
    for name, data in refused_by_both.items():
        assert _h11_request(data) is None, name
        with pytest.raises(BadRequest):
            parse_head(data, MAX_HEADERS)


def _h11_chunked(data: bytes, pieces: list[int]) -> bytes | None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"POST /s/rt_a/ HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Request)
    out = bytearray()
    for piece in _split(data, pieces):
        conn.receive_data(piece)
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                return None
            if isinstance(event, h11.Data):
                out += event.data
            elif isinstance(event, h11.EndOfMessage):
                return bytes(out)
            else:
                break
    return None  # incomplete


def _front_chunked(data: bytes, pieces: list[int]) -> bytes | None:
    decoder = ChunkedBody(4096)
    buf = bytearray()
    out = bytearray()
    try:
        for piece in _split(data, pieces):
            buf += piece
            out += decoder.feed(buf)
            if decoder.done:
                return bytes(out)
    except BadRequest:
        return None
    return None


def _split(data: bytes, pieces: list[int]) -> Iterator[bytes]:
    """``data`` in pieces of the given sizes (never an empty one: h11 reads that as EOF)."""
    start = 0
    for size in [*pieces, len(data)]:
        if data[start : start + size]:
            yield data[start : start + size]
        start += size


_CHUNK = st.tuples(
    st.binary(min_size=1, max_size=20),
    st.sampled_from([b"", b";ext", b";a=b", b" ", b"\t", b";a\x00", b";a\rb", b"x", b" ;a"]),
    st.sampled_from([None, b"0x", b"-", b"+", b"g", b"0" * 21]),
    st.sampled_from([b"\r\n", b"\n", b"\r\n\r\n", b"", b"xy"]),
)


@settings(max_examples=20_000 if LONG else 400, deadline=None, derandomize=not LONG)
@given(
    chunks=st.lists(_CHUNK, max_size=4),
    trailer=st.sampled_from([b"", b"X-T: 1\r\n", b"bad line\r\n", b"X-T: a\x00\r\n"]),
    pieces=st.lists(st.integers(0, 12), max_size=6),
)
def test_the_front_reads_chunked_bodies_as_h11_does_or_deliberately_stricter(
    chunks: list[tuple[bytes, bytes, bytes | None, bytes]], trailer: bytes, pieces: list[int]
) -> None:
    wire = bytearray()
    for data, ext, size_spelling, after in chunks:
        size = b"%x" % len(data) if size_spelling is None else size_spelling + b"%x" % len(data)
        wire += size + ext + b"\r\n" + data + after
    wire += b"0\r\n" + trailer + b"\r\n"
    theirs = _h11_chunked(bytes(wire), pieces)
    ours = _front_chunked(bytes(wire), pieces)
    if ours is not None:
        assert theirs == ours, bytes(wire)
        return
    if theirs is not None:
        # Stricter on purpose: no NUL or CR in a chunk extension, CRLF line ends only.
        assert (
            b";a\x00" in wire or b";a\rb" in wire or b"\n" in bytes(wire).replace(b"\r\n", b"")
        ), bytes(wire)


# -- hostile clients over real sockets ------------------------------------------------------


def _echo(request: dict[str, Any]) -> list[Any]:
    data = request["body"]
    return [
        head(request, 200, [["content-type", "text/plain"], ["content-length", str(len(data))]]),
        body(request, data),
        end(request),
    ]


def _streamed(request: dict[str, Any]) -> list[Any]:
    """No Content-Length: chunked to an HTTP/1.1 caller, until close to HTTP/1.0."""
    return [head(request), body(request, b"part1-"), body(request, b"part2"), end(request)]


def _answer(request: dict[str, Any]) -> list[Any]:
    return _streamed(request) if request["path"].startswith("/stream") else _echo(request)


class Client:
    """A raw HTTP/1.1 client on one socket, reading responses itself."""

    def __init__(self, url: str = "", sock: socket.socket | None = None) -> None:
        if sock is None:
            host, port = url.removeprefix("http://").split(":")
            sock = socket.create_connection((host, int(port)), timeout=10)
        self.sock = sock
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def _line_block(self) -> bytes:
        while b"\r\n\r\n" not in self.buf:
            assert self._fill(), f"closed before a response head: {self.buf!r}"
        block, _, self.buf = self.buf.partition(b"\r\n\r\n")
        return block

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """One response: status, headers (lower-case names), body."""
        lines = self._line_block().split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            size = int(headers["content-length"])
            while len(self.buf) < size:
                assert self._fill(), "closed mid-body"
            data, self.buf = self.buf[:size], self.buf[size:]
        elif headers.get("transfer-encoding") == "chunked":
            data = self._chunked()
        else:
            while self._fill():
                pass
            data, self.buf = self.buf, b""
        return status, headers, data

    def _chunked(self) -> bytes:
        out = b""
        while True:
            while b"\r\n" not in self.buf:
                assert self._fill()
            size_line, _, self.buf = self.buf.partition(b"\r\n")
            size = int(size_line, 16)
            while len(self.buf) < size + 2:
                assert self._fill()
            out, self.buf = out + self.buf[:size], self.buf[size + 2 :]
            if not size:
                return out

    def closed(self) -> bool:
        """Whether the relay closed the connection (after what was read)."""
        try:
            return not self._fill() and True
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def _chunked_request(lease: dict[str, Any]) -> bytes:
    """The head of a chunked POST to ``/echo`` (the chunks follow)."""
    return _request(lease, "/echo", "Transfer-Encoding: chunked\r\n").replace(
        b"Content-Length: 0\r\n", b""
    )


def _request(lease: dict[str, Any], path: str, extra: str = "", data: bytes = b"") -> bytes:
    url = lease["public_url"].removeprefix("http://")
    target = "/" + url.partition("/")[2] + path
    return (
        f"POST {target} HTTP/1.1\r\nHost: relay\r\n"
        f"X-SynthTunnel-Worker-Token: {lease['worker_token']}\r\n{extra}"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode() + data


@pytest.fixture
def relayed(front_heads: list[bytes]) -> Iterator[tuple[Any, dict[str, Any]]]:
    with running_relay() as relay:
        lease = create_lease(relay.url)
        with ScriptedAgent(lease, _answer):
            yield relay, lease
    assert front_heads, "the ingress requests did not go through the front"


def test_the_ingress_is_served_by_the_front_and_the_rest_by_uvicorn(
    relayed: tuple[Any, dict[str, Any]],
) -> None:
    relay, lease = relayed
    client = Client(relay.url)
    client.send(_request(lease, "/echo", data=b"hi"))
    status, headers, data = client.response()
    assert (status, data) == (200, b"hi")
    assert "date" in headers and headers["server"] == "uvicorn"
    kinds = relay.call(
        lambda: [type(c).__name__ for c in relay.server.server.server_state.connections]
    )
    assert any(kind.startswith("IngressFront") for kind in kinds), kinds
    # A REST request on a fresh connection goes to uvicorn's own protocol (h11, or
    # httptools where it is installed).
    rest = Client(relay.url)
    rest.send(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
    assert rest.response()[0] == 200
    kinds = relay.call(
        lambda: [type(c).__name__ for c in relay.server.server.server_state.connections]
    )
    assert any(kind.endswith(("H11Protocol", "HttpToolsProtocol")) for kind in kinds), kinds
    client.close()
    rest.close()


def test_pipelined_requests_are_answered_in_order(relayed: tuple[Any, dict[str, Any]]) -> None:
    relay, lease = relayed
    client = Client(relay.url)
    client.send(b"".join(_request(lease, f"/echo{i}", data=b"n%d" % i) for i in range(5)))
    assert [client.response()[2] for _ in range(5)] == [b"n%d" % i for i in range(5)]
    # A pipelined REST request after an ingress one is handed over to uvicorn.
    client.send(_request(lease, "/last", data=b"z") + b"GET /healthz HTTP/1.1\r\nHost: r\r\n\r\n")
    assert client.response()[2] == b"z"
    status, _, data = client.response()
    assert status == 200 and isinstance(json.loads(data), dict)
    client.close()


def test_a_head_whose_blank_line_arrives_in_two_reads_is_read(
    relayed: tuple[Any, dict[str, Any]],
) -> None:
    relay, lease = relayed
    client = Client(relay.url)
    raw = _request(lease, "/echo", data=b"pieces")
    first = raw[: raw.index(b"\r\n\r\n") + 2]  # the head up to half its blank line
    client.send(first)

    def buffered() -> list[int]:
        connections = relay.server.server.server_state.connections
        return [len(c.buf) for c in connections if isinstance(c, IngressFront)]

    assert wait_until(lambda: relay.call(buffered) == [len(first)], 10)
    client.send(raw[len(first) :])
    assert client.response()[2] == b"pieces"
    client.close()


def test_an_answer_before_the_body_drops_the_rest_and_the_connection_goes_on(
    relayed: tuple[Any, dict[str, Any]],
) -> None:
    relay, lease = relayed
    client = Client(relay.url)
    refused = _request(lease, "/echo", data=b"b" * 300_000).replace(
        lease["worker_token"].encode(), b"not-the-token"
    )
    client.send(refused[:-200_000])
    assert client.response()[0] == 401  # answered with most of the body still to come
    client.send(refused[-200_000:] + _request(lease, "/echo", data=b"next"))
    assert client.response()[2] == b"next"
    client.send(_request(lease, "/echo", "Connection: close\r\n", b"last"))
    status, headers, data = client.response()
    assert (status, headers["connection"], data) == (200, "close", b"last")
    assert client.closed()
    client.close()


def test_a_chunked_upload_and_a_chunked_response(relayed: tuple[Any, dict[str, Any]]) -> None:
    relay, lease = relayed
    client = Client(relay.url)
    raw = _chunked_request(lease)
    client.send(raw + b"5;ext=1\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\nX-Trailer: t\r\n\r\n")
    status, _, data = client.response()
    assert (status, data) == (200, b"hello world!")
    client.send(_request(lease, "/stream"))
    status, headers, data = client.response()
    assert (status, headers["transfer-encoding"], data) == (200, "chunked", b"part1-part2")
    client.close()


def test_http_10_gets_a_close_delimited_answer_and_the_connection_closes(
    relayed: tuple[Any, dict[str, Any]],
) -> None:
    relay, lease = relayed
    client = Client(relay.url)
    client.send(_request(lease, "/stream").replace(b"HTTP/1.1", b"HTTP/1.0"))
    status, headers, data = client.response()
    assert (status, headers["connection"], data) == (200, "close", b"part1-part2")
    assert "transfer-encoding" not in headers
    assert client.closed()
    client.close()


def test_expect_100_continue_is_answered_when_the_body_is_read(
    relayed: tuple[Any, dict[str, Any]],
) -> None:
    relay, lease = relayed
    client = Client(relay.url)
    raw = _request(lease, "/echo", "Expect: 100-continue\r\n", b"later")
    client.send(raw[: -len(b"later")])
    assert client._line_block() == b"HTTP/1.1 100 Continue"
    client.send(b"later")
    status, _, data = client.response()
    assert (status, data) == (200, b"later")
    client.close()


@pytest.mark.parametrize(
    "extra",
    [
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        "Content-Length: 7\r\n",  # a second, different Content-Length
        "X-A: a\r\n folded\r\n",
        "Transfer-Encoding: gzip\r\n",
        "Bad Name: x\r\n",
    ],
)
def test_smuggling_shapes_get_400_and_the_connection_closes(
    relayed: tuple[Any, dict[str, Any]], extra: str
) -> None:
    relay, lease = relayed
    client = Client(relay.url)
    smuggled = b"GET /s/rt_other/ HTTP/1.1\r\nHost: r\r\n\r\n"
    client.send(_request(lease, "/echo", extra, b"0\r\n\r\n") + smuggled)
    status, headers, _ = client.response()
    assert status in (400, 501) and headers["connection"] == "close"
    assert client.closed()
    client.close()


def test_a_bad_chunk_size_gets_400(relayed: tuple[Any, dict[str, Any]]) -> None:
    relay, lease = relayed
    client = Client(relay.url)
    raw = _chunked_request(lease)
    client.send(raw + b"0x5\r\nhello\r\n0\r\n\r\n")
    assert client.response()[0] == 400
    assert client.closed()
    client.close()


def test_a_slow_head_gets_408_and_an_idle_connection_is_closed(front_heads: list[bytes]) -> None:
    with running_relay(header_timeout=0.3) as relay:  # --header-timeout
        lease = create_lease(relay.url)
        with ScriptedAgent(lease, _answer):
            slow = Client(relay.url)
            slow.send(_request(lease, "/echo", data=b"first"))
            assert slow.response()[2] == b"first"  # then a head that never completes
            slow.send(_request(lease, "/echo")[:30])  # the ingress prefix and no more
            status, headers, _ = slow.response()
            assert (status, headers["connection"]) == (408, "close")
            assert slow.closed()
            idle = Client(relay.url)
            assert idle.closed()  # nothing sent: closed without an answer
            assert idle.buf == b""
            slow.close()
            idle.close()
    assert front_heads


def test_a_client_gone_mid_body_cancels_the_agents_stream(front_heads: list[bytes]) -> None:
    with running_relay() as relay:
        lease = create_lease(relay.url)
        with ScriptedAgent(lease, _answer) as agent:
            client = Client(relay.url)
            raw = _request(lease, "/echo", data=b"x" * 100_000)
            client.send(raw[:-50_000])
            assert wait_until(lambda: any(f["type"] == "REQ_BODY" for f in agent.received), 10)
            client.close()
            assert wait_until(lambda: any(f["type"] == "CANCEL" for f in agent.received), 10), [
                f["type"] for f in agent.received
            ]
    assert front_heads


def test_a_big_upload_to_a_stalled_agent_keeps_the_relays_buffer_bounded() -> None:
    """A v2 agent that never grants credit: the front stops reading the client."""
    with running_relay(stream_window=65536, conn_window=65536) as relay:
        lease = create_lease(relay.url)
        attach = {
            "protocol_versions": [2],
            "capabilities": {"binary_frames": True, "max_inflight": 4},
        }
        with ScriptedAgent(lease, _answer, attach=attach):
            client = Client(relay.url)
            client.send(_request(lease, "/sink")[:-4] + b"9" * 8 + b"\r\n\r\n")
            client.sock.setblocking(False)
            chunk = b"u" * 65536
            sent = [0]

            def stuck() -> bool:
                progress = 0
                for _ in range(64):
                    try:
                        progress += client.sock.send(chunk)
                    except BlockingIOError:
                        break
                sent[0] += progress
                return progress == 0 and sent[0] > 0

            assert wait_until(lambda: stuck() and stuck(), 20)

            def buffered() -> list[int]:
                connections = relay.server.server.server_state.connections
                return [
                    len(c.buf) + (len(c.request.body) if c.request else 0)
                    for c in connections
                    if isinstance(c, IngressFront)
                ]

            held = relay.call(buffered)
            assert held and max(held) <= 4 * front.HIGH_WATER, (held, sent[0])
            client.close()


def test_the_relay_answers_http_errors_for_ingress_heads_it_cannot_take(
    relayed: tuple[Any, dict[str, Any]],
) -> None:
    relay, _ = relayed
    client = Client(relay.url)
    client.send(b"GET /s/rt_x/ HTTP/1.1\r\nHost: r\r\n" + b"X-Big: " + b"a" * 80_000)
    assert client.response()[0] == 431
    client.close()
    client = Client(relay.url)
    client.send(b"GET /s/rt_x/ HTTP/1.1\r\nHost: r\r\n\r\n")
    assert client.response()[0] == 404  # no such route: the ingress's own answer
    client.close()


def _self_signed(tmp_path: Any) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key (PEM files)."""
    pytest.importorskip("cryptography")
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    keyfile.chmod(0o600)
    return str(certfile), str(keyfile)


def test_over_tls_the_front_serves_the_ingress_and_hands_the_rest_over(
    tmp_path: Any, front_heads: list[bytes]
) -> None:
    import ssl

    certfile, keyfile = _self_signed(tmp_path)
    context = ssl.create_default_context(cafile=certfile)
    with running_relay(ssl_certfile=certfile, ssl_keyfile=keyfile) as relay:
        port = int(relay.url.rsplit(":", 1)[1])
        for request, status in [
            (b"GET /s/rt_nope/x HTTP/1.1\r\nHost: r\r\n\r\n", 404),  # the front
            (b"GET /healthz HTTP/1.1\r\nHost: r\r\n\r\n", 200),  # uvicorn's h11
        ]:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
            ):
                tls.sendall(request)
                client = Client(sock=tls)
                assert client.response()[0] == status
    assert front_heads == [b"GET /s/rt_nope/x HTTP/1.1"]
