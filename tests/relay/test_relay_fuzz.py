"""Hypothesis fuzzing of the relay: agent frames, agent response heads, lease REST bodies.

One real relay (uvicorn in a thread) and real WebSocket agents per test; hypothesis drives
the inputs. Promised, whatever the input: no 5xx except the intended ones (502 for a bad
agent answer, 503 once an agent said GOAWAY), always the task app's error envelope on
errors, never a dropped public connection, zero unhandled exceptions logged, and no bytes
left buffered in the relay.

Short profile by default (CI); ``TASKAPP_FUZZ=long`` runs many more cases.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskapp.relay import protocol as p
from tests.relay._relay_helpers import (
    ADMIN,
    ErrorRecords,
    ScriptedAgent,
    body,
    call,
    create_lease,
    end,
    head,
    relay_error,
    running_relay,
)

LONG = os.environ.get("TASKAPP_FUZZ", "").lower() == "long"
FUZZ = settings(
    max_examples=1500 if LONG else 60,
    deadline=None,
    derandomize=not LONG,  # CI: the same cases every run; long: new ones each time
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)


# The long profile runs for minutes: lift pytest-timeout's per-test limit for it.
# The relay's and the agents' threads use the global random module while hypothesis draws
# examples; hypothesis notices and warns, though the draws are not affected.
pytestmark = [
    pytest.mark.usefixtures("no_relay_threads"),
    pytest.mark.timeout(3600 if LONG else 180),
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
TOKEN_CHARS = "!#$%&'*+-.^_`|~abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
header_names = st.text(TOKEN_CHARS, min_size=1, max_size=12) | st.text(max_size=12)
header_values = st.text(max_size=30) | st.integers(0, 10**6).map(str) | json_values
headers = st.lists(st.tuples(header_names, header_values).map(list), max_size=6) | json_values
statuses = st.integers(-10, 1000) | st.sampled_from([101, 100, 204, 304, 200, 404]) | json_values


@given(status=statuses, head_headers=headers, data=st.binary(max_size=2048))
@FUZZ
def _response_head_case(
    status: Any, head_headers: Any, data: bytes, agent_lease: dict[str, Any], script: dict[str, Any]
) -> None:
    script["frames"] = lambda r: [head(r, status, head_headers), body(r, data), end(r)]
    try:
        answer = call(agent_lease, "/fuzz")
    except httpx.HTTPError as exc:  # a dropped connection is the failure this guards against
        raise AssertionError(f"public connection dropped: {exc!r}") from exc
    script["cases"] += 1
    valid_status = isinstance(status, int) and not isinstance(status, bool) and 200 <= status <= 599
    if answer.status_code == 502 and answer.headers.get("x-content-type-options") == "nosniff":
        with_envelope = answer.headers.get("content-type") == "application/json"
        if with_envelope and relay_error(answer) == "LOCAL_BAD_RESPONSE":
            return  # the intended 502
    assert valid_status, (status, answer.status_code)
    assert answer.status_code == status
    if status not in (204, 304):
        assert answer.content == data


def test_fuzz_agent_response_heads(errors: ErrorRecords) -> None:
    script: dict[str, Any] = {"frames": None, "cases": 0}
    with running_relay() as relay:
        lease = create_lease(relay.url)
        with ScriptedAgent(lease, lambda r: script["frames"](r)) as agent:
            _response_head_case(agent_lease=lease, script=script)
            assert not agent.closed.is_set()
        assert relay.call(lambda: relay.app.buffered) == 0
    assert script["cases"] >= 20
    assert errors.unhandled() == []


frame_types = st.sampled_from(
    [
        p.RESP_HEADERS,
        p.RESP_BODY,
        p.RESP_END,
        p.RESP_ERROR,
        p.CANCEL,
        p.GOAWAY,
        p.LEASE_RENEW,
        p.ATTACH,
        "WINDOW_UPDATE",
        "",
    ]
)
frames = (
    st.builds(
        lambda kind, fields: {**fields, "type": kind},
        frame_types,
        st.dictionaries(
            st.sampled_from(
                [
                    "rid",
                    "sid",
                    "lease_id",
                    "status",
                    "headers",
                    "chunk_b64",
                    "eof",
                    "code",
                    "message",
                    "reason",
                    "requested_ttl_seconds",
                    "x",
                ]
            ),
            json_values,
            max_size=5,
        ),
    ).map(json.dumps)
    | json_values.map(json.dumps)
    | st.text(max_size=40)
    | st.binary(max_size=40)
)


@given(frame=frames)
@FUZZ
def _agent_frame_case(frame: Any, state: dict[str, Any]) -> None:
    lease = state["lease"]
    with ScriptedAgent(lease, lambda r: [head(r), body(r, b"ok"), end(r)]) as agent:
        agent.send(frame)
        closed = agent.closed.wait(0.05)
        state["cases"] += 1
        if closed:
            assert agent.close_code == 1008, (frame, agent.close_code)
            return
        try:
            answer = call(lease)
        except httpx.HTTPError as exc:
            raise AssertionError(f"public connection dropped after {frame!r}: {exc!r}") from exc
        if answer.status_code == 503:  # the frame was a GOAWAY: no new requests on it
            assert relay_error(answer) == "no_agent"
        else:
            assert (answer.status_code, answer.content) == (200, b"ok"), frame


def test_fuzz_agent_frames(errors: ErrorRecords) -> None:
    state: dict[str, Any] = {"cases": 0}
    with running_relay() as relay:
        state["lease"] = create_lease(relay.url)
        _agent_frame_case(state=state)
        assert relay.call(lambda: relay.app.buffered) == 0
    assert state["cases"] >= 20
    assert errors.unhandled() == []


rest_bodies = (
    json_values.map(lambda v: json.dumps(v).encode())
    | st.fixed_dictionaries(
        {
            "requested_ttl_seconds": json_values,
            "metadata": json_values,
            "client_instance_id": json_values,
        }
    ).map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=64)
    | st.integers(1, 3000).map(lambda n: ("[" * n + "]" * n).encode())
)


@given(raw=rest_bodies, renew=st.booleans())
@FUZZ
def _rest_case(raw: bytes, renew: bool, state: dict[str, Any]) -> None:
    url = state["url"] + p.LEASES_PATH
    if renew:
        url = f"{url}/{state['lease']['lease_id']}/renew"
    answer = httpx.post(url, content=raw, headers=state["headers"], timeout=10)
    state["cases"] += 1
    if renew and answer.status_code == 404:
        # An earlier case renewed it with a tiny TTL and it expired: legitimate. Rent another.
        assert relay_error(answer) == "not_found"
        state["lease"] = create_lease(state["url"])
        return
    assert answer.status_code in (200, 201, 400, 413, 429), (raw[:80], answer.status_code)
    if answer.status_code >= 400:
        assert relay_error(answer) in ("bad_request", "request_too_large", "too_many_leases")
    elif answer.status_code == 201:
        created = answer.json()
        httpx.delete(
            f"{state['url']}{p.LEASES_PATH}/{created['lease_id']}", headers=state["headers"]
        )


def test_fuzz_lease_rest_bodies(errors: ErrorRecords) -> None:
    with running_relay() as relay:
        state: dict[str, Any] = {
            "url": relay.url,
            "lease": create_lease(relay.url),
            "headers": {"Authorization": f"Bearer {ADMIN}", "content-type": "application/json"},
            "cases": 0,
        }
        _rest_case(state=state)
    assert state["cases"] >= 20
    assert errors.unhandled() == []
