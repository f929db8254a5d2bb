"""Hostile clients on the synth-containers routes: oversize and deep bodies, chunked bodies
that grow past the limit, random junk, many async rollouts at once, terminate storms.

Short profile by default (CI); ``TASKAPP_FUZZ=long`` runs many more cases.
"""

from __future__ import annotations

import json
import os
import random
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from taskapp import InProcessTaskApp
from taskapp.core.containers import MAX_CONTAINER_BODY
from tests.containers._probe import Probe, probe_config, wait_for

LONG = os.environ.get("TASKAPP_FUZZ", "").lower() == "long"
CASES = 600 if LONG else 60


@pytest.fixture
def served() -> Iterator[tuple[httpx.Client, Probe]]:
    probe = Probe()
    probe.release.set()
    with (
        InProcessTaskApp(config=probe_config(probe, max_async_rollouts=8), port=0) as app,
        httpx.Client(
            base_url=str(app.url),
            headers={"X-API-Key": app.api_key or "", "content-type": "application/json"},
            timeout=30,
        ) as client,
    ):
        yield client, probe


def error_code(answer: httpx.Response) -> str:
    return str(answer.json()["detail"]["error"]["code"])


@pytest.mark.parametrize("path", ["/rollouts", "/taskset/tasks", "/rollouts/x/terminate"])
def test_oversize_bodies_are_413_whether_announced_or_chunked(
    served: tuple[httpx.Client, Probe], path: str
) -> None:
    client, _ = served
    big = b'{"seed": 1, "pad": "' + b"a" * (MAX_CONTAINER_BODY + 1) + b'"}'
    answer = client.post(path, content=big)
    assert answer.status_code == 413
    assert error_code(answer) == "body_too_large"

    def chunks() -> Iterator[bytes]:
        yield b'{"seed": 1, "pad": "'
        for _ in range(MAX_CONTAINER_BODY // (1 << 20) + 1):
            yield b"a" * (1 << 20)
        yield b'"}'

    answer = client.post(path, content=chunks())
    if path.endswith("/terminate"):  # terminate reads no body: it answers before any arrives
        assert answer.status_code == 404
    else:
        assert answer.status_code == 413
        assert error_code(answer) == "body_too_large"
    assert client.get("/health").status_code == 200


def test_deep_bodies_are_refused_in_the_error_envelope(served: tuple[httpx.Client, Probe]) -> None:
    client, probe = served
    for opener, closer in ((b'{"a":', b"}"), (b"[", b"]")):
        depth = 100_000
        body = b'{"seed": 1, "candidate": ' + opener * depth + b"1" + closer * depth + b"}"
        answer = client.post("/rollouts", content=body)
        assert answer.status_code in (400, 422), answer.text
        assert error_code(answer) in ("invalid_body", "invalid_candidate", "invalid_request")
    assert probe.started == []
    assert client.post("/rollouts", json={"seed": 1}).status_code == 200


def junk(rng: random.Random) -> Any:
    choices: list[Any] = [
        None,
        rng.randint(-(10**20), 10**20),
        rng.random(),
        "".join(chr(rng.randint(0, 0x2FFF)) for _ in range(rng.randint(0, 20))),
        [],
        {},
        True,
    ]
    return rng.choice(choices)


def test_random_container_requests_never_reach_a_500(served: tuple[httpx.Client, Probe]) -> None:
    client, _ = served
    rng = random.Random(22)
    keys = ["seed", "task_id", "candidate", "submission_mode", "rollout_id", "env", "policy"]
    for _ in range(CASES):
        body = {key: junk(rng) for key in rng.sample(keys, rng.randint(1, len(keys)))}
        if rng.random() < 0.3 and isinstance(body.get("candidate"), dict):
            body["candidate"] = {"prompt": junk(rng)}
        answer = client.post("/rollouts", content=json.dumps(body))
        assert answer.status_code in (200, 409, 422, 429), (body, answer.text)
        if answer.status_code != 200:
            assert error_code(answer)
        rollout_id = rng.choice(["x", "a" * 300, "%00", "a%2Fb"])
        assert client.get(f"/rollouts/{rollout_id}").status_code in (404,)
    assert client.get("/health").status_code == 200


def test_many_async_rollouts_hit_the_cap_then_drain() -> None:
    probe = Probe()
    with InProcessTaskApp(config=probe_config(probe, max_async_rollouts=8), port=0) as app:
        statuses: list[int] = []
        lock = threading.Lock()

        def flood(n: int) -> None:
            with httpx.Client(base_url=str(app.url), headers={"X-API-Key": app.api_key or ""}) as c:
                for i in range(CASES // 4):
                    body = {"seed": 1, "submission_mode": "async", "rollout_id": f"f{n}-{i}"}
                    answer = c.post("/rollouts", json=body)
                    with lock:
                        statuses.append(answer.status_code)
                    if answer.status_code == 429:
                        assert answer.headers["retry-after"] == "1"

        threads = [threading.Thread(target=flood, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert statuses.count(200) == 8  # the cap, nothing more ran
        assert set(statuses) == {200, 429}
        assert len(probe.started) == 8
        probe.release.set()
        assert wait_for(lambda: len(probe.finished) == 8)
        with httpx.Client(base_url=str(app.url), headers={"X-API-Key": app.api_key or ""}) as c:
            body = {"seed": 1, "submission_mode": "async", "rollout_id": "after"}
            assert c.post("/rollouts", json=body).status_code == 200
