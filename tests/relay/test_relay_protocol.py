"""The relay protocol module: codecs, negotiation, flow-control arithmetic, header hygiene."""

from __future__ import annotations

import asyncio
import json

import pytest

from taskapp.relay import protocol as p


def test_v1_text_frames_round_trip_with_the_original_field_names() -> None:
    frame = {
        "type": "RESP_BODY",
        "lease_id": "lease_1",
        "rid": "r1",
        "chunk_b64": p.b64encode(b"\x00\xffhello"),
        "eof": False,
    }
    text = p.encode_text(frame)
    assert json.loads(text) == frame
    decoded = p.decode_text(text)
    assert p.b64decode(decoded["chunk_b64"]) == b"\x00\xffhello"


@pytest.mark.parametrize(
    "bad",
    ["not json", "[1, 2]", '{"no_type": 1}', '{"type": 3}', b"\xff\xfe"],
)
def test_malformed_text_frames_are_frame_errors(bad: str | bytes) -> None:
    with pytest.raises(p.FrameError):
        p.decode_text(bad)


def test_bad_base64_is_a_frame_error_and_empty_is_empty() -> None:
    with pytest.raises(p.FrameError):
        p.b64decode("!!!not base64")
    with pytest.raises(p.FrameError):
        p.b64decode(42)
    assert p.b64decode(None) == b""
    assert p.b64decode("") == b""


def test_binary_frames_carry_type_flags_sid_and_raw_bytes() -> None:
    data = bytes(range(256)) * 300
    frame = p.encode_data(p.BIN_REQ_BODY, 0xFFFFFFFE, data, end=True)
    assert len(frame) == p.HEADER_SIZE + len(data)
    kind, flags, sid, payload = p.decode_binary(frame)
    assert (kind, flags, sid, payload) == (p.BIN_REQ_BODY, p.FLAG_END, 0xFFFFFFFE, data)
    update = p.encode_window_update(0, 1 << 20)
    kind, _, sid, payload = p.decode_binary(update)
    assert (kind, sid, p.window_increment(payload)) == (p.BIN_WINDOW_UPDATE, 0, 1 << 20)


def test_short_binary_frames_and_bad_window_updates_are_rejected() -> None:
    with pytest.raises(p.FrameError):
        p.decode_binary(b"\x10\x00")
    with pytest.raises(p.FrameError):
        p.window_increment(b"\x00\x00\x00\x00")
    with pytest.raises(p.FrameError):
        p.window_increment(b"\x00\x01")


@pytest.mark.parametrize(
    ("attach", "server", "expected"),
    [
        ({"type": "ATTACH"}, (2, 1), 1),  # an original agent: no protocol_versions
        ({"protocol_versions": [2, 1], "capabilities": {"binary_frames": True}}, (2, 1), 2),
        ({"protocol_versions": [2, 1], "capabilities": {"binary_frames": True}}, (1,), 1),
        ({"protocol_versions": [2, 1], "capabilities": {}}, (2, 1), 1),  # no binary frames
        ({"protocol_versions": [1]}, (2, 1), 1),
        ({"protocol_versions": [7, 2], "capabilities": {"binary_frames": True}}, (2, 1), 2),
        ({"protocol_versions": "2"}, (2, 1), 1),
    ],
)
def test_version_negotiation_falls_back_to_v1(
    attach: dict[str, object], server: tuple[int, ...], expected: int
) -> None:
    assert p.negotiate_version(attach, server) == expected


def test_error_codes_map_to_statuses() -> None:
    assert p.status_for_error("LOCAL_CONNECT_FAILED") == 502
    assert p.status_for_error("LOCAL_TIMEOUT") == 504
    assert p.status_for_error("TOO_LARGE") == 413
    assert p.status_for_error("OVERLOADED") == 503
    assert p.status_for_error("BAD_REQUEST_FRAME") == 400
    assert p.status_for_error("SOMETHING_NEW") == 502


def test_inbound_window_batches_updates_at_half_and_detects_overrun() -> None:
    window = p.InboundWindow(1000)
    assert window.received(600)
    assert window.consumed(400) == 0
    assert window.consumed(200) == 600  # 600 >= 500: hand it all back
    assert window.outstanding == 1000
    assert window.received(1000)
    assert not window.received(1)  # overrun: a FLOW_CONTROL_ERROR


def test_credit_waits_for_both_the_stream_and_the_connection() -> None:
    async def scenario() -> list[int]:
        conn = p.Credit(100)
        stream = p.Credit(1000)
        got = [await stream.take(70, conn)]
        waiter = asyncio.create_task(stream.take(70, conn))
        got.append(await waiter)  # only 30 left on the connection
        blocked = asyncio.create_task(stream.take(10, conn))
        await asyncio.sleep(0.01)
        assert not blocked.done()
        conn.grant(5)
        got.append(await asyncio.wait_for(blocked, 1))
        closed = asyncio.create_task(stream.take(10, conn))
        await asyncio.sleep(0.01)
        conn.close()
        got.append(await asyncio.wait_for(closed, 1))
        return got

    assert asyncio.run(scenario()) == [70, 30, 5, 0]


def test_request_hygiene_drops_hop_by_hop_tokens_and_spoofed_forwarding() -> None:
    raw = [
        (b"host", b"relay.example.com"),
        (b"connection", b"keep-alive, X-Secret-Hop"),
        (b"x-secret-hop", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"),
        (b"te", b"trailers"),
        (b"upgrade", b"h2c"),
        (b"proxy-authorization", b"Basic xyz"),
        (b"x-forwarded-for", b"6.6.6.6"),
        (b"forwarded", b"for=6.6.6.6"),
        (b"x-synthtunnel-worker-token", b"worker-secret"),
        (b"x-synthtunnel-lease-id", b"spoofed"),
        (b"x-taskapp-anything", b"spoofed"),
        (b"authorization", b"Bearer worker-secret"),
        (b"expect", b"100-continue"),
        (b"x-api-key", b"app-key"),
        (b"content-type", b"application/json"),
    ]
    cleaned = p.clean_request_headers(
        raw, strip_authorization=True, client_ip="10.0.0.7", proto="https", host="relay.example"
    )
    names = [name for name, _ in cleaned]
    assert names == [
        "x-api-key",
        "content-type",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
    ]
    assert dict((name, value) for name, value in cleaned)["x-forwarded-for"] == "10.0.0.7"
    kept = p.clean_request_headers(
        [(b"authorization", b"Bearer app-token")],
        strip_authorization=False,
        client_ip=None,
        proto="http",
        host="h",
    )
    assert ["authorization", "Bearer app-token"] in kept


def test_response_hygiene_adds_nosniff_and_drops_connection_named_headers() -> None:
    out = p.clean_response_headers(
        [
            ["Connection", "close, X-Internal"],
            ["X-Internal", "1"],
            ["Transfer-Encoding", "chunked"],
            ["Content-Type", "text/plain"],
            ["X-Bad", "a\r\nInjected: 1"],
        ]
    )
    assert out == [(b"content-type", b"text/plain"), (b"x-content-type-options", b"nosniff")]


def test_agent_side_headers_name_the_local_target_and_the_request() -> None:
    out = p.local_request_headers(
        [["host", "public"], ["content-length", "5"], ["x-a", "1"], ["connection", "x-a"]],
        lease_id="lease_1",
        rid="r9",
        host="127.0.0.1:8114",
        content_length=5,
    )
    assert out == [
        ("host", "127.0.0.1:8114"),
        ("x-synthtunnel-lease-id", "lease_1"),
        ("x-synthtunnel-request-id", "r9"),
        ("content-length", "5"),
    ]


def test_tokens_are_compared_by_hash() -> None:
    digest = p.token_hash("secret-token-123")
    assert len(digest) == 64 and "secret" not in digest
    assert p.token_matches("secret-token-123", ["", digest])
    assert not p.token_matches("secret-token-124", [digest])
    assert not p.token_matches(None, [digest])
    assert not p.token_matches("", [p.token_hash("")])
