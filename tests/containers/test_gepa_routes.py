"""Every task app is also a GEPA-ready synth-containers container (issue 22, item 1).

Real uvicorn (InProcessTaskApp, free ports), real HTTP. The vendor's own client and models
drive the same routes in tests/interop/test_containers_client.py; these tests pin the
taskapp side: the shapes, the async table's bounds, terminate, disconnect and app stop.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from taskapp import InProcessTaskApp
from taskapp.core.containers import AsyncRollouts, declared_prompts, split_task_ids
from taskapp.examples.support_intents import DEFAULT_PROMPT, build_config
from tests.containers._probe import Probe, probe_config, wait_for
from tests.helpers import demo_config


@pytest.fixture
def support() -> Iterator[httpx.Client]:
    with (
        InProcessTaskApp(config=build_config(), port=0) as app,
        httpx.Client(
            base_url=str(app.url), headers={"X-API-Key": app.api_key or ""}, trust_env=False
        ) as client,
    ):
        yield client


# -- discovery ------------------------------------------------------------------------------


def test_metadata_advertises_the_gepa_contract_and_info_is_a_superset(
    support: httpx.Client,
) -> None:
    meta = support.get("/metadata").json()
    gepa = meta["metadata"]["optimizer_contracts"]["gepa"]
    assert gepa == {
        "version": "synth_optimizers.gepa.v2",
        "program_route": "/program",
        "taskset_route": "/taskset",
        "taskset_tasks_route": "/taskset/tasks",
        "rollout_route": "/rollouts",
    }
    assert meta["capabilities"]["protocol"] == "synth.container.contract.v1"
    assert meta["capabilities"]["metadata"] == {"policy_ready": True, "program_ready": True}
    assert meta["runtime"]["runtime_id"] == "support-intents"
    info = support.get("/info").json()
    assert {k: info[k] for k in meta} == meta  # every /metadata key, same value
    assert {"service", "task_info", "dataset", "inference", "limits"} <= set(info)


def test_program_is_the_declared_prompt_with_its_seed_candidate(support: httpx.Client) -> None:
    program = support.get("/program").json()
    assert program["version"] == "prompt_program.v1"
    assert program["seed_candidate"] == {"prompt": DEFAULT_PROMPT}
    (module,) = program["modules"]
    assert module["mutable"] is True
    assert module["candidate_field"] == "prompt"
    assert module["content"] == DEFAULT_PROMPT
    assert program["target_modules"][0]["candidate_field"] == "prompt"


def test_taskset_and_its_task_ids(support: httpx.Client) -> None:
    taskset = support.get("/taskset").json()
    assert taskset["splits"] == ["test", "train"]
    assert taskset["split_sizes"] == {"train": 300, "test": 100}
    assert taskset["task_count"] == 400
    tasks = support.post("/taskset/tasks", json={"split": "test", "limit": 3}).json()
    assert tasks == {"split": "test", "task_ids": ["3", "7", "11"], "filters": {}}
    answer = support.post("/taskset/tasks", json={"split": "validation"})
    assert answer.status_code == 404
    assert answer.json()["detail"]["error"]["code"] == "unknown_split"
    assert "test, train" in answer.json()["detail"]["error"]["message"]


def test_prompts_default_from_the_advertised_policy_prompt_and_can_be_declined() -> None:
    base = {"task_metadata": {"default_prompt": "Answer."}}
    assert declared_prompts(demo_config(base_task_info=base)) == {"prompt": "Answer."}
    assert declared_prompts(demo_config(base_task_info=base, prompts={})) == {}
    assert declared_prompts(demo_config()) == {}
    with pytest.raises(ValueError, match="prompts must map"):
        demo_config(prompts={"prompt": 3})
    assert split_task_ids({"seed_range": [0, 3]}, None) == ["0", "1", "2"]


def test_an_app_without_prompts_does_not_claim_the_gepa_contract() -> None:
    with (
        InProcessTaskApp(config=demo_config(), port=0) as app,
        httpx.Client(base_url=str(app.url), headers={"X-API-Key": app.api_key or ""}) as client,
    ):
        meta = client.get("/metadata").json()
        assert "optimizer_contracts" not in meta["metadata"]
        assert "optimizer_contracts" not in meta
        assert meta["capabilities"]["metadata"]["program_ready"] is False
        answer = client.get("/program")
        assert answer.status_code == 404
        assert answer.json()["detail"]["error"]["code"] == "program_not_declared"
        # the container routes are behind the key like every other
        assert httpx.get(f"{app.url}/metadata").status_code == 401
        assert httpx.post(f"{app.url}/rollouts", json={"seed": 1}).status_code == 401


# -- rollouts -------------------------------------------------------------------------------


def test_sync_rollout_with_a_candidate_answers_both_contracts(support: httpx.Client) -> None:
    body = {"task_id": "3", "candidate": {"prompt": DEFAULT_PROMPT}, "submission_mode": "sync"}
    answer = support.post("/rollouts", json=body)
    assert answer.status_code == 200, answer.text
    out = answer.json()
    # taskapp / synth-ai fields
    assert out["metrics"]["outcome_score"] == out["reward_info"]["outcome_reward"]
    assert out["success_status"] == "success"
    assert out["run_id"] == out["trace_correlation_id"]
    # synth-containers fields
    assert out["rollout_id"] == out["run_id"]
    assert out["status"] == "completed"
    assert out["task_id"] == "3"
    assert out["objective_scores"][0]["objective"] == "outcome_reward"
    assert out["actionable_side_info"]["feedback"] == out["metrics"]["details"]["feedback"]
    assert out["summary"]["outcome_reward"] == out["metrics"]["outcome_score"]
    # /rollout with container fields is the same route
    again = support.post("/rollout", json={**body, "rollout_id": "r-2"}).json()
    assert again["rollout_id"] == "r-2"
    assert again["metrics"] == out["metrics"]


def test_the_candidate_reaches_policy_config_and_several_objectives_are_reported() -> None:
    probe = Probe()
    probe.release.set()
    with (
        InProcessTaskApp(config=probe_config(probe), port=0) as app,
        httpx.Client(base_url=str(app.url), headers={"X-API-Key": app.api_key or ""}) as client,
    ):
        out = client.post(
            "/rollouts",
            json={"seed": 2, "task_payload": {"candidate": {"prompt": "a good prompt"}}},
        ).json()
        assert out["metrics"]["outcome_score"] == 1.0
        objectives = {s["objective"]: s["value"] for s in out["objective_scores"]}
        assert objectives == {"outcome_reward": 1.0, "brevity": 0.5}
        assert out["summary"]["output"] == "x"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"nonsense": True}, "missing_task"),
        ({"seed": 1, "submission_mode": "later"}, "invalid_submission_mode"),
        ({"seed": 1, "candidate": {"prompt": 3}}, "invalid_candidate"),
        ({"seed": 1, "candidate": "text"}, "invalid_candidate"),
        ({"task_id": "../etc"}, "unknown_task_id"),
        ({"seed": "one"}, "invalid_seed"),
        ({"seed": 1, "rollout_id": "a/b"}, "invalid_rollout_id"),
        ({"seed": 1, "rollout_id": "x" * 200}, "invalid_rollout_id"),
    ],
)
def test_bad_container_requests_are_422_in_the_error_envelope(
    support: httpx.Client, body: dict[str, Any], code: str
) -> None:
    for path in ("/rollouts", "/rollout"):
        answer = support.post(path, json=body)
        assert answer.status_code == 422, (path, answer.text)
        assert answer.json()["detail"]["error"]["code"] == code


def test_plain_rollout_requests_answer_as_before(support: httpx.Client) -> None:
    body = {"run_id": "r1", "env": {"seed": 3}, "policy": {"config": {}}}
    out = support.post("/rollout", json=body).json()
    assert "rollout_id" not in out
    assert "objective_scores" not in out
    assert set(out) == {
        "run_id",
        "metrics",
        "reward_info",
        "trajectories",
        "success_status",
        "trace_correlation_id",
    }
    # an empty env is still a request (synth-ai's clients always send env)
    assert support.post("/rollout", json={"env": {}}).status_code == 422  # the app: no seed
    answer = support.post("/rollout", json={"env": {}}).json()
    assert answer["detail"]["error"]["code"] == "missing_seed"


def test_async_rollout_answers_at_once_then_polls_to_the_result() -> None:
    probe = Probe()
    with (
        InProcessTaskApp(config=probe_config(probe), port=0) as app,
        httpx.Client(base_url=str(app.url), headers={"X-API-Key": app.api_key or ""}) as client,
    ):
        started = time.monotonic()
        first = client.post(
            "/rollouts",
            json={"seed": 1, "submission_mode": "async", "rollout_id": "a1"},
        )
        assert time.monotonic() - started < 1.0
        assert first.json()["status"] == "running"
        assert client.get("/rollouts/a1/state").json()["status"] == "running"
        probe.release.set()
        assert wait_for(lambda: client.get("/rollouts/a1").json()["status"] == "completed")
        done = client.get("/rollouts/a1").json()
        assert done["reward_info"]["outcome_reward"] == 0.0
        state = client.get("/rollouts/a1/state").json()
        assert set(state) == {
            "rollout_id",
            "status",
            "success_status",
            "status_detail",
            "created_at",
            "updated_at",
            "summary",
            "metadata",
        }
        again = client.post(
            "/rollouts", json={"seed": 1, "submission_mode": "async", "rollout_id": "a1"}
        )
        assert again.status_code == 409
        assert again.json()["detail"]["error"]["code"] == "rollout_exists"
        missing = client.get("/rollouts/nope")
        assert missing.status_code == 404
        assert missing.json()["detail"]["error"]["code"] == "unknown_rollout"


def test_terminate_cancels_within_a_second_and_frees_the_slot() -> None:
    probe = Probe()
    with (
        InProcessTaskApp(config=probe_config(probe, max_async_rollouts=1), port=0) as app,
        httpx.Client(base_url=str(app.url), headers={"X-API-Key": app.api_key or ""}) as client,
    ):
        client.post("/rollouts", json={"seed": 1, "submission_mode": "async", "rollout_id": "t1"})
        assert wait_for(lambda: probe.started == ["t1"])
        full = client.post("/rollouts", json={"seed": 1, "submission_mode": "async"})
        assert full.status_code == 429
        assert full.headers["retry-after"] == "1"
        assert full.json()["detail"]["error"]["code"] == "too_many_rollouts"
        started = time.monotonic()
        state = client.post("/rollouts/t1/terminate").json()
        assert time.monotonic() - started < 1.0
        assert state["status"] == "terminated"
        assert probe.cancelled == ["t1"]  # the rollout's own code saw the cancellation
        assert client.get("/rollouts/t1").json()["status"] == "terminated"
        # the slot is free again, and terminate is idempotent
        assert (
            client.post("/rollouts", json={"seed": 1, "submission_mode": "async"}).status_code
            == 200
        )
        assert client.post("/rollouts/t1/terminate").json()["status"] == "terminated"
        assert client.post("/rollouts/none/terminate").status_code == 404


def test_a_terminate_storm_leaves_nothing_running() -> None:
    probe = Probe()
    with (
        InProcessTaskApp(config=probe_config(probe, max_async_rollouts=20), port=0) as app,
        httpx.Client(base_url=str(app.url), headers={"X-API-Key": app.api_key or ""}) as client,
    ):
        ids = [f"s{i}" for i in range(20)]
        for rollout_id in ids:
            body = {"seed": 1, "submission_mode": "async", "rollout_id": rollout_id}
            assert client.post("/rollouts", json=body).status_code == 200
        assert wait_for(lambda: len(probe.started) == 20)

        def storm() -> None:
            with httpx.Client(base_url=str(app.url), headers={"X-API-Key": app.api_key or ""}) as c:
                for rollout_id in ids:
                    c.post(f"/rollouts/{rollout_id}/terminate")

        threads = [threading.Thread(target=storm) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(probe.cancelled) == sorted(ids)
        # every slot is free again: 20 more fit under the cap of 20
        for i in range(20):
            body = {"seed": 1, "submission_mode": "async", "rollout_id": f"n{i}"}
            assert client.post("/rollouts", json=body).status_code == 200


def test_app_stop_cancels_async_rollouts_in_flight() -> None:
    probe = Probe()
    with (
        InProcessTaskApp(config=probe_config(probe), port=0) as app,
        httpx.Client(base_url=str(app.url), headers={"X-API-Key": app.api_key or ""}) as client,
    ):
        for i in range(5):
            client.post(
                "/rollouts", json={"seed": 1, "submission_mode": "async", "rollout_id": f"x{i}"}
            )
        assert wait_for(lambda: len(probe.started) == 5)
    assert sorted(probe.cancelled) == [f"x{i}" for i in range(5)]
    assert probe.finished == []


def test_a_client_that_disconnects_mid_rollout_leaves_nothing_running() -> None:
    probe = Probe()
    with InProcessTaskApp(config=probe_config(probe), port=0) as app:
        assert app.url is not None
        host, port = app.url.removeprefix("http://").split(":")
        body = b'{"seed": 1, "rollout_id": "d1"}'
        request = (
            f"POST /rollouts HTTP/1.1\r\nHost: x\r\nX-API-Key: {app.api_key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(request)
            assert wait_for(lambda: probe.started == ["d1"])
        assert wait_for(lambda: probe.cancelled == ["d1"], 3.0)
        assert probe.finished == []


def test_finished_records_expire_and_stay_bounded() -> None:
    async def scenario() -> None:
        table = AsyncRollouts(limit=2, ttl_s=0.2)

        async def work() -> dict[str, Any]:
            return {"rollout_id": "r", "status": "completed", "success_status": "success"}

        for i in range(12):
            table.submit(f"r{i}", work, 5.0)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        assert table.running == 0
        assert table.get("r0") is None  # more than 4 x limit finished: the oldest went
        assert table.get("r11") is not None
        await asyncio.sleep(0.3)
        assert table.get("r11") is None  # expired
        await table.aclose()

    asyncio.run(scenario())


def test_an_async_rollout_past_its_deadline_is_a_timeout() -> None:
    probe = Probe()
    with (
        InProcessTaskApp(config=probe_config(probe), port=0) as app,
        httpx.Client(base_url=str(app.url), headers={"X-API-Key": app.api_key or ""}) as client,
    ):
        body = {
            "seed": 1,
            "submission_mode": "async",
            "rollout_id": "late",
            "safety": {"max_time_s": 0.2},
        }
        client.post("/rollouts", json=body)
        assert wait_for(lambda: client.get("/rollouts/late").json()["status"] == "timeout")
        assert client.get("/rollouts/late").json()["success_status"] == "timeout"
        assert probe.cancelled == ["late"]
