"""The relay server over real sockets: lease REST, agent auth, ingress statuses, limits, logs.

The agent here is :class:`LegacyV1Agent`, written only from the original v1 frame list, so
these tests also show that an agent made for the original service works against ours.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from taskapp.core.errors import ConfigurationError
from taskapp.relay import protocol as p
from taskapp.relay.server.run import start_relay_thread
from taskapp.relay.server.settings import load_admin_tokens
from tests.helpers import wait_until as wait_for
from tests.relay._relay_helpers import (
    ADMIN,
    OTHER_ADMIN,
    LegacyV1Agent,
    create_lease,
    relay_error,
    relay_settings,
    running_relay,
)

V1_TYPES = {"ATTACH_ACK", "REQ_HEADERS", "REQ_BODY", "REQ_END", "CANCEL"}

pytestmark = pytest.mark.usefixtures("no_relay_threads")


def admin_headers(token: str = ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_lease_has_every_field_the_original_sdk_reads() -> None:
    with running_relay() as relay:
        lease = create_lease(relay.url, requested_ttl_seconds=120)
        for field in (
            "lease_id",
            "route_token",
            "public_base_url",
            "public_url",
            "worker_token",
            "expires_at",
            "limits",
            "heartbeat",
        ):
            assert lease[field], field
        assert lease["public_base_url"] == relay.url
        assert lease["public_url"] == f"{relay.url}/s/rt_{lease['route_token']}"
        assert lease["agent_connect"]["url"] == relay.url.replace("http", "ws") + p.AGENT_PATH
        assert len(lease["agent_connect"]["agent_token"]) >= 43
        assert lease["expires_at"].endswith("Z")
        assert lease["ttl_seconds"] == 120
        assert lease["protocol_versions"] == [1, 2]
        assert lease["limits"]["max_body_chunk_bytes"] == 65536
        # A GET with the lease's own agent token works; the worker token does not.
        url = f"{relay.url}{p.LEASES_PATH}/{lease['lease_id']}"
        agent_auth = {"Authorization": f"Bearer {lease['agent_connect']['agent_token']}"}
        assert httpx.get(url, headers=agent_auth).json()["agent_connected"] is False
        worker_auth = {"Authorization": f"Bearer {lease['worker_token']}"}
        assert httpx.get(url, headers=worker_auth).status_code == 401


def test_admin_endpoints_need_an_admin_token_and_say_nothing_more() -> None:
    with running_relay() as relay:
        leases = relay.url + p.LEASES_PATH
        for headers in (
            {},
            admin_headers("wrong-token-xxxxxxxxxxxxxxxx"),
            admin_headers(OTHER_ADMIN),
        ):
            answer = httpx.post(leases, headers=headers, json={})
            assert answer.status_code == 401
            assert relay_error(answer) == "unauthorized"
            assert httpx.get(relay.url + "/metrics", headers=headers).status_code == 401
            assert httpx.get(leases, headers=headers).status_code == 401
        assert httpx.get(relay.url + "/healthz").json() == {"ok": True, "draining": False}
        assert httpx.post(leases, headers=admin_headers(), content=b"[1]").status_code == 400


def test_a_legacy_v1_agent_serves_requests_through_the_relay() -> None:
    # No trusted proxy: the test client is a public caller whose X-Forwarded-For is a lie.
    with running_relay(trusted_proxies=()) as relay:
        lease = create_lease(relay.url)
        agent = LegacyV1Agent.for_lease(lease).start()
        try:
            assert agent.ack is not None
            assert agent.ack["type"] == "ATTACH_ACK"
            assert agent.ack["accepted_leases"] == [lease["lease_id"]]
            assert agent.ack["protocol_version"] == 1
            worker = lease["worker_token"]
            answer = httpx.post(
                lease["public_url"] + "/rollout/a%20b?seed=3&x=y",
                content=b"z" * 200_000,
                headers={
                    "X-SynthTunnel-Worker-Token": worker,
                    "X-Forwarded-For": "6.6.6.6",
                    "Connection": "keep-alive, X-Hop",
                    "X-Hop": "secret-hop",
                    "X-SynthTunnel-Lease-Id": "spoofed",
                    "Authorization": "Bearer app-own-token",
                },
            )
            assert answer.status_code == 200
            seen = answer.json()
            assert (seen["method"], seen["path"], seen["query"], seen["n"]) == (
                "POST",
                "/rollout/a%20b",
                "seed=3&x=y",
                200_000,
            )
            forwarded = {k: v for k, v in seen["headers"]}
            assert worker not in json.dumps(seen)
            assert forwarded["x-forwarded-for"] == "127.0.0.1"
            assert forwarded["x-forwarded-proto"] == "http"
            assert forwarded["authorization"] == "Bearer app-own-token"
            for gone in ("x-hop", "x-synthtunnel-lease-id", "host", "connection"):
                assert gone not in forwarded
            assert "x-drop" not in answer.headers  # named in the agent's Connection header
            assert answer.headers["x-content-type-options"] == "nosniff"
            # The worker token may also come as a bearer token; then it is not forwarded.
            answer = httpx.get(lease["public_url"], headers={"Authorization": f"Bearer {worker}"})
            assert answer.status_code == 200
            assert answer.json()["path"] == "/"
            assert "authorization" not in {k for k, _ in answer.json()["headers"]}
            assert {f["type"] for f in agent.frames} <= V1_TYPES
            assert all("sid" not in f for f in agent.frames)
        finally:
            agent.stop()


def test_behind_a_trusted_proxy_the_forwarded_client_address_is_used() -> None:
    with running_relay(trusted_proxies=("127.0.0.1",)) as relay:
        lease = create_lease(relay.url)
        agent = LegacyV1Agent.for_lease(lease).start()
        try:
            answer = httpx.get(
                lease["public_url"],
                headers={
                    "X-SynthTunnel-Worker-Token": lease["worker_token"],
                    "X-Forwarded-For": "203.0.113.9",
                },
            )
            forwarded = [v for k, v in answer.json()["headers"] if k == "x-forwarded-for"]
            assert forwarded == ["203.0.113.9"]
        finally:
            agent.stop()


def test_ingress_answers_404_401_503_without_detail() -> None:
    with running_relay(reattach_grace=60) as relay:
        lease = create_lease(relay.url)
        short = create_lease(relay.url, requested_ttl_seconds=1)
        good = {"X-SynthTunnel-Worker-Token": lease["worker_token"]}
        unknown = httpx.get(relay.url + "/s/rt_" + "0" * 32 + "/health", headers=good)
        assert (unknown.status_code, relay_error(unknown)) == (404, "not_found")
        for headers in (
            {},
            {"X-SynthTunnel-Worker-Token": "nope"},
            {"X-SynthTunnel-Worker-Token": short["worker_token"]},
        ):
            bad = httpx.get(lease["public_url"] + "/health", headers=headers)
            assert (bad.status_code, relay_error(bad)) == (401, "unauthorized")
        idle = httpx.get(lease["public_url"] + "/health", headers=good)
        assert idle.status_code == 503
        assert idle.headers["retry-after"] == "1"
        time.sleep(1.2)
        expired = httpx.get(
            short["public_url"], headers={"X-SynthTunnel-Worker-Token": short["worker_token"]}
        )
        assert expired.status_code == 404
        deleted = httpx.delete(
            f"{relay.url}{p.LEASES_PATH}/{lease['lease_id']}", headers=admin_headers()
        )
        assert deleted.json()["lease_id"] == lease["lease_id"]
        assert deleted.json()["deleted"] is True
        assert deleted.json()["status"] == "closed"
        assert httpx.get(lease["public_url"], headers=good).status_code == 404
        assert (
            httpx.delete(
                f"{relay.url}{p.LEASES_PATH}/{lease['lease_id']}", headers=admin_headers()
            ).status_code
            == 404
        )


def test_agent_socket_rejects_every_token_but_the_leases_agent_token() -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with running_relay() as relay:
        lease = create_lease(relay.url)
        url = lease["agent_connect"]["url"]
        for token in (ADMIN, lease["worker_token"], "x" * 43, ""):
            with pytest.raises(InvalidStatus) as caught:
                connect(url, additional_headers={"Authorization": f"Bearer {token}"}, proxy=None)
            assert caught.value.response.status_code == 401
            assert token not in caught.value.response.body.decode() or not token
        # A right token for a lease it does not name: ACK rejects it and the socket closes.
        with connect(
            url,
            additional_headers={"Authorization": f"Bearer {lease['agent_connect']['agent_token']}"},
            proxy=None,
        ) as ws:
            ws.send(json.dumps({"type": "ATTACH", "leases": [{"lease_id": "lease_other"}]}))
            ack = json.loads(ws.recv(timeout=5))
            assert ack["accepted_leases"] == []
            assert ack["rejected_leases"] == [{"lease_id": "lease_other", "code": "UNAUTHORIZED"}]


def test_inflight_limit_503_and_deadline_504_with_cancel_to_the_agent() -> None:
    with running_relay(max_inflight=2) as relay:
        lease = create_lease(relay.url)
        agent = LegacyV1Agent.for_lease(lease).start()
        headers = {
            "X-SynthTunnel-Worker-Token": lease["worker_token"],
            "X-SynthTunnel-Deadline-Ms": "1500",
        }
        try:
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                hangs = [
                    pool.submit(
                        httpx.get, lease["public_url"] + "/hang", headers=headers, timeout=10
                    )
                    for _ in range(2)
                ]
                assert wait_for(lambda: sum(f["type"] == "REQ_END" for f in agent.frames) == 2, 5)
                started = time.monotonic()
                over = httpx.get(lease["public_url"] + "/x", headers=headers)
                assert over.status_code == 503
                assert over.headers["retry-after"] == "1"
                assert relay_error(over) == "too_many_inflight"
                results = [f.result(10) for f in hangs]
            assert [r.status_code for r in results] == [504, 504]
            assert relay_error(results[0]) == "gateway_timeout_deadline"
            assert time.monotonic() - started < 3
            assert wait_for(lambda: len(agent.cancelled) == 2, 5)
            assert httpx.get(lease["public_url"] + "/x", headers=headers).status_code == 200
        finally:
            agent.stop()


def test_no_progress_for_the_stall_timeout_answers_504_and_cancels() -> None:
    with running_relay(stall_timeout=0.5) as relay:
        lease = create_lease(relay.url)
        agent = LegacyV1Agent.for_lease(lease).start()
        headers = {"X-SynthTunnel-Worker-Token": lease["worker_token"]}
        try:
            started = time.monotonic()
            answer = httpx.get(lease["public_url"] + "/hang", headers=headers, timeout=10)
            took = time.monotonic() - started
            assert (answer.status_code, relay_error(answer)) == (504, "gateway_timeout_stall")
            assert 0.5 <= took < 5  # the stall timeout, long before the 600 s deadline
            assert wait_for(lambda: len(agent.cancelled) == 1, 5)
            assert relay.app.counters["timeouts_504"] == 1
        finally:
            agent.stop()


def test_request_size_and_header_limits() -> None:
    with running_relay(max_request_bytes=1000, max_header_bytes=2048) as relay:
        lease = create_lease(relay.url)
        agent = LegacyV1Agent.for_lease(lease).start()
        headers = {"X-SynthTunnel-Worker-Token": lease["worker_token"]}
        try:
            assert (
                httpx.post(lease["public_url"], headers=headers, content=b"a" * 1000).status_code
                == 200
            )
            sized = httpx.post(lease["public_url"], headers=headers, content=b"a" * 1001)
            assert (sized.status_code, relay_error(sized)) == (413, "request_too_large")

            def chunks() -> Iterator[bytes]:
                for _ in range(4):
                    yield b"b" * 400

            streamed = httpx.post(lease["public_url"], headers=headers, content=chunks())
            assert streamed.status_code == 413
            big = httpx.get(lease["public_url"], headers={**headers, "X-Big": "h" * 3000})
            assert big.status_code == 431
        finally:
            agent.stop()


def test_no_token_reaches_logs_or_bodies_and_access_logs_drop_queries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with running_relay() as relay:
        lease = create_lease(relay.url)
        agent = LegacyV1Agent.for_lease(lease).start()
        worker = lease["worker_token"]
        bodies = []
        try:
            bodies.append(
                httpx.get(
                    lease["public_url"] + "/a?secret=query-secret-value",
                    headers={"X-SynthTunnel-Worker-Token": worker},
                ).text
            )
            bodies.append(
                httpx.get(
                    lease["public_url"] + "/a", headers={"Authorization": f"Bearer {ADMIN}"}
                ).text
            )
            bodies.append(httpx.post(relay.url + p.LEASES_PATH, headers=admin_headers(worker)).text)
        finally:
            agent.stop()
    # Everything the relay logs (uvicorn's loggers carry the WebSocket handshake at DEBUG);
    # the test's own legacy agent logs through websockets.client and is not the relay.
    relay_records = [r for r in caplog.records if r.name.startswith(("taskapp", "uvicorn"))]
    logs = "\n".join(r.getMessage() for r in relay_records)
    for secret in (ADMIN, worker, lease["agent_connect"]["agent_token"]):
        assert secret not in logs
        assert secret not in "\n".join(bodies)
    assert "query-secret-value" not in logs
    access = [r.getMessage() for r in caplog.records if r.name == "taskapp.relay.access"]
    assert any(" GET /s/rt_" in line and " 200 " in line for line in access)
    assert any(" 401 " in line for line in access)


def test_metrics_count_requests_and_leases() -> None:
    with running_relay() as relay:
        lease = create_lease(relay.url)
        httpx.get(
            lease["public_url"], headers={"X-SynthTunnel-Worker-Token": lease["worker_token"]}
        )
        metrics = httpx.get(relay.url + "/metrics", headers=admin_headers()).text
        assert "taskapp_relay_leases 1" in metrics
        assert "taskapp_relay_leases_created_total 1" in metrics
        assert 'taskapp_relay_responses_total{status="503"} 1' in metrics
        assert "taskapp_relay_buffered_bytes 0" in metrics


def test_leases_survive_a_restart_with_a_state_file(tmp_path: Path) -> None:
    state = tmp_path / "relay-state.json"
    relay = start_relay_thread(relay_settings(state_file=state))
    port = int(relay.url.rsplit(":", 1)[1])
    try:
        lease = create_lease(relay.url)
    finally:
        relay.stop()
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    saved = state.read_text()
    for secret in (lease["worker_token"], lease["agent_connect"]["agent_token"]):
        assert secret not in saved
    relay = start_relay_thread(relay_settings(state_file=state, port=port))
    try:
        answer = httpx.get(
            f"{relay.url}{p.LEASES_PATH}/{lease['lease_id']}", headers=admin_headers()
        )
        assert answer.status_code == 200
        assert answer.json()["public_url"] == lease["public_url"]
        agent = LegacyV1Agent.for_lease(lease).start()
        try:
            ok = httpx.get(
                lease["public_url"], headers={"X-SynthTunnel-Worker-Token": lease["worker_token"]}
            )
            assert ok.status_code == 200
        finally:
            agent.stop()
    finally:
        relay.stop()


def test_worker_token_rotation_keeps_the_old_token_for_a_grace_period() -> None:
    with running_relay(worker_token_grace=0.6) as relay:
        lease = create_lease(relay.url)
        agent = LegacyV1Agent.for_lease(lease).start()
        try:
            rotated = httpx.post(
                f"{relay.url}{p.LEASES_PATH}/{lease['lease_id']}/worker-token",
                headers={"Authorization": f"Bearer {lease['agent_connect']['agent_token']}"},
            ).json()
            new, old = rotated["worker_token"], lease["worker_token"]
            assert new != old

            def get(token: str) -> int:
                headers = {"X-SynthTunnel-Worker-Token": token}
                return httpx.get(lease["public_url"], headers=headers).status_code

            assert (get(new), get(old)) == (200, 200)
            time.sleep(0.7)
            assert (get(new), get(old)) == (200, 401)
            renewed = httpx.post(
                f"{relay.url}{p.LEASES_PATH}/{lease['lease_id']}/renew",
                headers=admin_headers(),
                json={"requested_ttl_seconds": 10**9},
            ).json()
            assert renewed["ttl_seconds"] <= 86400
        finally:
            agent.stop()


def test_a_new_agent_connection_replaces_the_old_one() -> None:
    with running_relay() as relay:
        lease = create_lease(relay.url)
        first = LegacyV1Agent.for_lease(lease).start()
        second = LegacyV1Agent.for_lease(lease).start()
        try:
            assert wait_for(lambda: not first._thread.is_alive(), 5)  # closed by the relay
            ok = httpx.get(
                lease["public_url"], headers={"X-SynthTunnel-Worker-Token": lease["worker_token"]}
            )
            assert ok.status_code == 200
            assert any(f["type"] == "REQ_HEADERS" for f in second.frames)
        finally:
            first.stop()
            second.stop()


def test_killed_agent_gives_503_then_a_new_agent_recovers_the_same_url() -> None:
    with running_relay() as relay:
        lease = create_lease(relay.url)
        headers = {"X-SynthTunnel-Worker-Token": lease["worker_token"]}
        agent = LegacyV1Agent.for_lease(lease).start()
        assert httpx.get(lease["public_url"], headers=headers).status_code == 200
        agent.kill()
        assert wait_for(
            lambda: httpx.get(lease["public_url"], headers=headers).status_code == 503, 5
        )
        agent = LegacyV1Agent.for_lease(lease).start()
        try:
            assert httpx.get(lease["public_url"], headers=headers).status_code == 200
        finally:
            agent.stop()


def test_abandoned_leases_are_removed_after_the_reattach_grace() -> None:
    with running_relay(reattach_grace=0.3) as relay:
        lease = create_lease(relay.url)
        url = f"{relay.url}{p.LEASES_PATH}/{lease['lease_id']}"
        assert wait_for(lambda: httpx.get(url, headers=admin_headers()).status_code == 404, 5)


def test_admin_token_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# relay admins\nops:{ADMIN}\n{OTHER_ADMIN}\n")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        load_admin_tokens(path)
    os.chmod(path, 0o600)
    tokens = load_admin_tokens(path)
    assert [t.name for t in tokens] == ["ops", "token3"]
    assert tokens[0].hash == p.token_hash(ADMIN)
    assert ADMIN not in repr(tokens)
    path.write_text("short\n")
    with pytest.raises(ConfigurationError, match="shorter than 16"):
        load_admin_tokens(path)
    env_tokens = load_admin_tokens(None, env={"TASKAPP_RELAY_ADMIN_TOKEN": ADMIN})
    assert env_tokens[0].hash == p.token_hash(ADMIN)
    with pytest.raises(ConfigurationError, match="at least one admin token"):
        relay_settings(admin_tokens=())
