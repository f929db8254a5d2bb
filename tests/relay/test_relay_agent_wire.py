"""The agent socket's direct frame path (relay/server/agent_wire.py) against a real relay:
frames that arrive with ATTACH, invalid text, and the ASGI-only server it refuses."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import MutableMapping
from typing import Any

import pytest

from taskapp.relay import protocol as p
from taskapp.relay.server.agent_socket import agent_socket
from tests.helpers import wait_until as wait_for
from tests.relay._relay_helpers import (
    ErrorRecords,
    create_lease,
    running_relay,
)

pytestmark = pytest.mark.usefixtures("no_relay_threads")


def _agent(lease: dict[str, Any]) -> Any:
    from websockets.sync.client import connect

    token = lease["agent_connect"]["agent_token"]
    return connect(
        lease["agent_connect"]["url"],
        additional_headers={"Authorization": f"Bearer {token}"},
        proxy=None,
    )


def _attach(lease: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": p.ATTACH,
        "agent_id": "wire-test",
        "leases": [{"lease_id": lease["lease_id"]}],
        "protocol_versions": [2, 1],
        "capabilities": {"binary_frames": True},
    }


def _write_at_once(ws: Any, *texts: bytes) -> None:
    """Frames in one TCP write, so the relay reads them in one ``data_received``."""
    for text in texts:
        ws.protocol.send_text(text)
    ws.socket.sendall(b"".join(ws.protocol.data_to_send()))


def test_frames_that_arrive_with_attach_reach_the_session() -> None:
    with running_relay() as relay:
        lease = create_lease(relay.url)
        with _agent(lease) as ws:
            renew = {"type": p.LEASE_RENEW, "requested_ttl_seconds": 120}
            _write_at_once(ws, json.dumps(_attach(lease)).encode(), json.dumps(renew).encode())
            ack = json.loads(ws.recv(timeout=5))
            assert ack["type"] == p.ATTACH_ACK
            assert ack["protocol_version"] == 2
            # The LEASE_RENEW came in the same read as ATTACH: it is answered, not dropped.
            state = json.loads(ws.recv(timeout=5))
            assert (state["type"], state["state"]) == (p.LEASE_STATE, "active")


def test_a_text_frame_that_is_not_utf8_closes_the_agent_with_1007(errors: ErrorRecords) -> None:
    from websockets.exceptions import ConnectionClosed

    with running_relay() as relay:
        lease = create_lease(relay.url)
        with _agent(lease) as ws:
            ws.send(json.dumps(_attach(lease)))
            assert json.loads(ws.recv(timeout=5))["type"] == p.ATTACH_ACK
            _write_at_once(ws, b"\xff\xfe not utf-8")
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=5)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1007
        # The lease is free again: the relay dropped the session.
        assert wait_for(lambda: relay.app.store.by_id[lease["lease_id"]].session is None, 5)
    assert errors.unhandled() == []


def test_under_another_asgi_server_the_agent_socket_refuses_saying_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with running_relay() as relay:
        lease = create_lease(relay.url)
        token = lease["agent_connect"]["agent_token"]
        scope = {
            "type": "websocket",
            "path": "/api/v1/synthtunnel/agent",
            "headers": [(b"authorization", f"Bearer {token}".encode())],
            "extensions": {"websocket.http.response": {}},
        }
        sent: list[MutableMapping[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "websocket.connect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        with caplog.at_level(logging.ERROR, logger="taskapp.relay"):
            asyncio.run(agent_socket(relay.app, scope, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1011}]
    assert "needs the relay server's WebSocket protocol" in caplog.text
