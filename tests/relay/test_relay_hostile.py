"""The relay against hostile and oversized input, synth-ai's lease client shapes, the error
envelope and --state-file directories. Real relay (uvicorn in a thread), real WebSockets.

The scripted agent answers each public request with whatever frames a test gives it, so
every misbehaviour of an agent (bad header names, NUL bytes, status 101, oversized frames)
is played over a real agent connection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from taskapp.core.errors import ConfigurationError, ServerStartError
from taskapp.relay import protocol as p
from taskapp.relay.server.leases import LeaseStore
from taskapp.relay.server.run import start_relay_thread
from tests.relay._relay_helpers import (
    ADMIN,
    ErrorRecords,
    Frames,
    ScriptedAgent,
    body,
    call,
    create_lease,
    end,
    head,
    nested,
    relay_error,
    relay_settings,
    running_relay,
)

MB = 1024 * 1024

pytestmark = pytest.mark.usefixtures("no_relay_threads")


# -- 17.6: a misbehaving agent's answers become 502 with the envelope -----------------------

BAD_HEADS: dict[str, Any] = {
    "status_101": (101, [["upgrade", "websocket"]]),
    "status_100": (100, []),
    "status_text": ("200", []),
    "status_huge": (10**20, []),
    "header_name_space": (200, [["bad name", "v"]]),
    "header_name_colon": (200, [["x:y", "v"]]),
    "header_name_empty": (200, [["", "v"]]),
    "header_name_nul": (200, [["x\x00y", "v"]]),
    "header_value_nul": (200, [["x-a", "a\x00b"]]),
    "header_value_newline": (200, [["x-a", "a\r\nset-cookie: evil=1"]]),
    "content_length_text": (200, [["content-length", "ten"]]),
    "content_length_negative": (200, [["content-length", "-1"]]),
    "content_length_disagree": (200, [["content-length", "1"], ["content-length", "2"]]),
    "headers_not_a_list": (200, "content-type: text/plain"),
    "header_not_a_pair": (200, [["a", "b", "c"]]),
    "header_value_object": (200, [["x-a", {"nested": [1, 2]}]]),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADS))
def test_a_bad_response_head_from_the_agent_is_a_502_with_the_envelope(
    case: str, errors: ErrorRecords
) -> None:
    status, headers = BAD_HEADS[case]
    with running_relay() as relay:
        lease = create_lease(relay.url)

        def answer(request: dict[str, Any]) -> Frames:
            return [head(request, status, headers), body(request, b"0123456789"), end(request)]

        with ScriptedAgent(lease, answer):
            for _ in range(2):  # the agent connection survives: the next request too
                answer_ = call(lease)
                assert answer_.status_code == 502, (case, answer_.text)
                assert relay_error(answer_) == "LOCAL_BAD_RESPONSE"
    assert errors.unhandled() == []


def test_body_and_content_length_mismatches_never_break_the_server(errors: ErrorRecords) -> None:
    with running_relay() as relay:
        lease = create_lease(relay.url)

        def answer(request: dict[str, Any]) -> Frames:
            path = request["path"]
            if path == "/head":  # a body on HEAD or 204 is dropped, not written
                return [head(request, 200, [["content-length", "5"]]), body(request, b"hello")]
            if path == "/204":
                return [head(request, 204), body(request, b"junk"), end(request)]
            if path == "/more":  # more than declared: truncated, never a protocol error
                return [head(request, 200, [["content-length", "3"]]), body(request, b"abcdef")]
            if path == "/exact":
                return [head(request, 200, [["content-length", "3"]]), body(request, b"abc")]
            return [head(request), body(request, b"ok"), end(request)]

        with ScriptedAgent(lease, answer):
            response = call(lease, "/head", method="HEAD")
            assert response.status_code == 200 and response.content == b""
            assert call(lease, "/204").status_code == 204
            with pytest.raises(httpx.HTTPError):
                call(lease, "/more")
            exact = call(lease, "/exact")
            assert (exact.status_code, exact.content) == (200, b"abc")
            assert call(lease, "/fine").content == b"ok"
    assert errors.unhandled() == []


def test_deeply_nested_json_from_the_agent_closes_its_socket_without_an_exception(
    errors: ErrorRecords,
) -> None:
    with running_relay() as relay:
        lease = create_lease(relay.url)
        with ScriptedAgent(lease, lambda request: []) as agent:
            agent.send('{"type": "RESP_HEADERS", "headers": ' + nested(100_000) + "}")
            assert agent.closed.wait(10)
            assert agent.close_code == 1008
        # The lease stays usable: a new agent attaches.
        with ScriptedAgent(lease, lambda r: [head(r), body(r, b"back"), end(r)]):
            assert call(lease).content == b"back"
    assert errors.unhandled() == []


def test_junk_frames_from_the_agent_are_ignored_or_close_it_never_an_exception(
    errors: ErrorRecords,
) -> None:
    junk: list[Any] = [
        {"type": "RESP_HEADERS", "rid": {"a": 1}},
        {"type": "RESP_BODY", "rid": ["x"], "chunk_b64": 5},
        {"type": "RESP_ERROR", "rid": "nope", "code": [1], "message": {"m": 1}},
        {"type": "CANCEL", "rid": None, "reason": nested(50)},
        {"type": "GOAWAY", "reason": {"r": [1, 2]}},
        {"type": "LEASE_RENEW", "requested_ttl_seconds": True},
        {"type": "UNKNOWN_FRAME", "x": nested(200)},
        {"type": 7},
        "[1, 2, 3]",
        "not json",
        b"\x00\x01",
    ]
    with running_relay() as relay:
        lease = create_lease(relay.url)
        for frame in junk:
            with ScriptedAgent(lease, lambda r: [head(r), body(r, b"ok"), end(r)]) as agent:
                agent.send(frame)
                # Either the relay ignored it (the agent still serves) or closed with 1008.
                if not agent.closed.wait(0.3):
                    answer = call(lease)
                    if isinstance(frame, dict) and frame.get("type") == "GOAWAY":
                        # GOAWAY (whatever its reason): no new requests on this connection.
                        assert (answer.status_code, relay_error(answer)) == (503, "no_agent")
                    else:
                        assert answer.content == b"ok", frame
                else:
                    assert agent.close_code == 1008, (frame, agent.close_code)
    assert errors.unhandled() == []


# -- 16.6: v1 messages as large as real agents send; v2 held to what was negotiated ---------


def test_a_v1_agent_may_send_one_resp_body_larger_than_1_mib(errors: ErrorRecords) -> None:
    payload = bytes(range(256)) * (5 * MB // 256)  # 5 MiB in ONE RESP_BODY (6.7 MB of JSON)
    with running_relay() as relay:
        lease = create_lease(relay.url)
        answer = [
            lambda r: [head(r, 200, [["content-length", str(len(payload))]])],
            lambda r: [body(r, payload), end(r)],
        ]
        with ScriptedAgent(lease, lambda r: answer[0](r) + answer[1](r)) as agent:
            response = call(lease, "/big")
            assert response.status_code == 200
            assert response.content == payload
            assert not agent.closed.is_set()
    assert errors.unhandled() == []


def test_the_relay_splits_req_body_to_the_chunk_size_a_v1_agent_advertised() -> None:
    upload = bytes(range(256)) * (300 * 1024 // 256)  # 300 KiB
    with running_relay() as relay:
        lease = create_lease(relay.url)
        with ScriptedAgent(
            lease,
            lambda r: [head(r), body(r, str(len(r["body"])).encode()), end(r)],
            attach={"capabilities": {"max_inflight": 4, "max_body_chunk_bytes": 16 * 1024}},
        ) as agent:
            response = call(lease, "/up", method="POST", content=upload)
            assert response.content == str(len(upload)).encode()
            chunks = [
                len(p.b64decode(f["chunk_b64"])) for f in agent.received if f["type"] == "REQ_BODY"
            ]
            assert sum(chunks) == len(upload)
            assert max(chunks) <= 16 * 1024
            assert len(chunks) >= len(upload) // (16 * 1024)


def test_a_v2_binary_frame_over_the_negotiated_size_closes_the_agent_with_1008(
    errors: ErrorRecords,
) -> None:
    with running_relay() as relay:
        lease = create_lease(relay.url)
        v2 = {
            "protocol_versions": [2, 1],
            "capabilities": {"binary_frames": True, "max_body_chunk_bytes": 16 * 1024},
        }
        with ScriptedAgent(lease, lambda r: [], attach=v2) as agent:
            assert agent.ack["protocol_version"] == 2
            assert agent.ack["limits"]["max_frame_bytes"] == 16 * 1024
            agent.send(p.encode_data(p.BIN_RESP_BODY, 1, b"x" * (16 * 1024)))  # at the limit
            assert not agent.closed.wait(0.5)
            agent.send(p.encode_data(p.BIN_RESP_BODY, 1, b"x" * (16 * 1024 + 1)))
            assert agent.closed.wait(10)
            assert agent.close_code == 1008
    assert errors.unhandled() == []


def test_websocket_message_limit_follows_the_response_limit() -> None:
    settings = relay_settings()
    assert settings.ws_max_size == 64 * MB  # 200 MB responses: capped at 64 MiB
    small = relay_settings(max_response_bytes=2 * MB)
    assert 2 * MB * 4 // 3 < small.ws_max_size < 3 * MB


# -- 17.6: hostile REST bodies ------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [nested(100_000), '{"metadata": ' + nested(5000) + "}", "{" * 50_000, '"x"', "\xff"],
)
def test_hostile_lease_bodies_get_4xx_with_the_envelope(raw: str, errors: ErrorRecords) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}", "content-type": "application/json"}
    with running_relay() as relay:
        lease = create_lease(relay.url)
        url = relay.url + p.LEASES_PATH
        for target in (url, f"{url}/{lease['lease_id']}/renew"):
            response = httpx.post(target, content=raw.encode(), headers=admin, timeout=10)
            assert 400 <= response.status_code < 500, (target, response.status_code)
            assert relay_error(response) in ("bad_request", "request_too_large")
    assert errors.unhandled() == []


# -- 14.9: the relay's own errors use the task app's envelope -------------------------------


def test_relay_401_403_404_bodies_are_the_task_app_error_envelope() -> None:
    from taskapp.core.transport import error_code, error_message

    with running_relay() as relay:
        lease = create_lease(relay.url)
        wrong = httpx.get(lease["public_url"] + "/x", headers={"X-SynthTunnel-Worker-Token": "no"})
        assert wrong.status_code == 401
        assert error_code(wrong.json()) == "unauthorized"
        message = error_message(wrong.json())
        assert message is not None and "worker token" in message
        assert lease["worker_token"] not in wrong.text
        unknown = httpx.get(relay.url + "/s/rt_nope/x")
        assert (unknown.status_code, error_code(unknown.json())) == (404, "not_found")
        admin_only = httpx.get(relay.url + p.LEASES_PATH)
        assert (admin_only.status_code, error_code(admin_only.json())) == (401, "unauthorized")
        missing = httpx.get(
            f"{relay.url}{p.LEASES_PATH}/lease_nope", headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert (missing.status_code, error_code(missing.json())) == (404, "not_found")


# -- 16.7: synth-ai 0.10-0.17's lease client shapes ----------------------------------------


def test_lease_rest_parity_with_synth_ai_lease_client() -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    with running_relay() as relay:
        created = httpx.post(
            relay.url + p.LEASES_PATH,
            headers=admin,
            json={
                "client_instance_id": "synth-ai-client",
                "local_target": {"host": "127.0.0.1", "port": 8000},
                "requested_ttl_seconds": 600,
                "metadata": {},
                "capabilities": {},
            },
        )
        assert created.status_code == 201
        lease = created.json()
        assert lease["agent_connect"]["transport"] == "websocket"
        for name in (
            "max_inflight",
            "max_request_bytes",
            "max_response_bytes",
            "max_request_duration_seconds",
            "idle_disconnect_seconds",
            "resume_window_seconds",
        ):
            assert isinstance(lease["limits"][name], int), name
        assert lease["heartbeat"]["required"] is False
        assert isinstance(lease["heartbeat"]["recommended_interval_seconds"], int)
        url = f"{relay.url}{p.LEASES_PATH}/{lease['lease_id']}"
        status = httpx.get(url, headers=admin).json()
        assert (status["status"], status["connected"], status["last_seen_at"]) == (
            "pending",
            False,
            None,
        )
        with ScriptedAgent(lease, lambda r: [head(r), body(r, b"ok"), end(r)]):
            status = httpx.get(url, headers=admin).json()
            assert (status["status"], status["connected"]) == ("active", True)
            assert status["last_seen_at"].endswith("Z")
            assert status["inflight"] == 0
            refreshed = httpx.post(url + "/token:refresh", headers=admin)
            assert refreshed.status_code == 200
            fresh = refreshed.json()
            assert fresh["lease_id"] == lease["lease_id"]
            assert fresh["worker_token"] != lease["worker_token"]
            ok = httpx.get(
                lease["public_url"] + "/x",
                headers={"X-SynthTunnel-Worker-Token": fresh["worker_token"]},
            )
            assert ok.content == b"ok"
        closed = httpx.delete(url, headers=admin)
        assert closed.status_code == 200
        assert closed.json()["status"] == "closed"
        assert closed.json()["lease_id"] == lease["lease_id"]
        assert httpx.post(url + "/token:refresh", headers=admin).status_code == 404


# -- 17.7: --state-file in a directory that does not exist -----------------------------------


def test_state_file_directory_is_created_and_leases_survive(tmp_path: Path) -> None:
    state = tmp_path / "not" / "yet" / "relay-state.json"
    with running_relay(state_file=state) as relay:
        assert state.parent.is_dir()
        assert (state.parent.stat().st_mode & 0o777) == 0o700
        lease = create_lease(relay.url)
        assert lease["lease_id"] in state.read_text()
        assert (state.stat().st_mode & 0o777) == 0o600


def test_state_file_that_cannot_be_written_refuses_to_start_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    state = blocker / "state.json"
    with pytest.raises(ConfigurationError, match=r"state-file .*a-file/state\.json.*is a file"):
        LeaseStore(state).prepare()
    with pytest.raises(ServerStartError):
        start_relay_thread(relay_settings(state_file=state), timeout=10)
