"""synth-containers 0.4.6's own client and models drive taskapp apps (issue 22, "Proof").

In the synth-containers venv (tests/interop/_venvs.py, ``containers-0.4.6``):
``HTTPContainerClient`` reads ``/metadata``, ``/program``, ``/taskset``,
``/taskset/tasks``, runs sync and async rollouts, polls and terminates them, and the
vendor's models validate every answer (``RolloutRequestModel`` the requests;
``PromptProgram``, ``CompletedRolloutPayload``, ``RolloutStatePayload``,
``TasksetTasksPayload`` the answers; ``gepa_optimizer_contract()`` the advertisement).

synth-optimizers 0.1.1's ``container_gepa_compat.ContainerGepaAdapter`` scores candidates
against the bundled support-intents app: the vendor's optimizer code reading taskapp's
answers. Only its evaluation path runs here: its proposers call hosted models.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskapp import InProcessTaskApp
from taskapp.examples.support_intents import DEFAULT_PROMPT, LABELS, build_config, load_examples
from taskapp.examples.support_intents.policy import offline_predict
from tests.containers._probe import Probe, probe_config
from tests.interop._run import run_json
from tests.interop._venvs import CONTAINERS, python_for

pytestmark = pytest.mark.interop

KEY = "interop-containers-key-0123456789"

CLIENT = """
import asyncio, json, os, time
import httpx
from synth_containers.http_client import HTTPContainerClient
from synth_containers.http_models import RolloutRequestModel
from synth_containers.prompt_programs import (
    PromptModule, PromptProgram, TargetModule, gepa_optimizer_contract,
)
from synth_containers.sdk import CompletedRolloutPayload, RolloutStatePayload, TasksetTasksPayload

URL, KEY = os.environ["INTEROP_URL"], os.environ["INTEROP_KEY"]

def client():
    http = httpx.AsyncClient(base_url=URL, headers={"X-API-Key": KEY}, trust_env=False)
    return HTTPContainerClient(base_url=URL, client=http, max_retries=0)

def request(**fields):
    # every request passes the vendor's own (strict) request model first
    return RolloutRequestModel.model_validate(fields).model_dump(exclude_none=True)

async def main():
    out = {}
    async with client() as c:
        out["health"] = await c.health()
        meta = await c.metadata()
        out["gepa_matches"] = meta["metadata"]["optimizer_contracts"]["gepa"] == gepa_optimizer_contract()
        out["metadata"] = meta
        out["info_keys"] = sorted(await c.info())
        program = await c.program()
        # the vendor's dataclasses refuse a key they do not know
        parsed = PromptProgram(**{
            **program,
            "modules": [PromptModule(**m) for m in program["modules"]],
            "target_modules": [TargetModule(**t) for t in program["target_modules"]],
        })
        out["mutable_fields"] = parsed.mutable_field_ids()
        out["seed_candidate"] = program["seed_candidate"]
        out["taskset"] = await c.taskset()
        tasks = await c.taskset_tasks({"split": "test"})
        out["tasks"] = TasksetTasksPayload.model_validate(tasks).to_payload()
        candidate = {"prompt": os.environ["INTEROP_PROMPT"]}
        sync = await c.rollout(request(task_id="3", candidate=candidate, submission_mode="sync"))
        CompletedRolloutPayload.model_validate(sync).record_for(sync["rollout_id"])
        out["sync"] = sync
        started = time.monotonic()
        submitted = await c.rollouts(request(rollout_id="async-7", seed=7, candidate=candidate))
        out["submit_s"] = time.monotonic() - started
        out["submitted"] = submitted
        for _ in range(200):
            polled = await c.get_rollout("async-7")
            if polled.get("status") != "running":
                break
            await asyncio.sleep(0.02)
        CompletedRolloutPayload.model_validate(polled).record_for("async-7")
        out["polled"] = polled
        out["state"] = RolloutStatePayload.model_validate(await c.get_state("async-7")).to_payload()
        out["unknown"] = await c.get_rollout("never-submitted")
    print(json.dumps(out))

asyncio.run(main())
"""

TERMINATE = """
import asyncio, json, os, time
import httpx
from synth_containers.http_client import HTTPContainerClient
from synth_containers.http_models import RolloutRequestModel
from synth_containers.sdk import RolloutStatePayload

URL, KEY = os.environ["INTEROP_URL"], os.environ["INTEROP_KEY"]

async def main():
    http = httpx.AsyncClient(base_url=URL, headers={"X-API-Key": KEY}, trust_env=False)
    async with HTTPContainerClient(base_url=URL, client=http, max_retries=0) as c:
        body = RolloutRequestModel.model_validate(
            {"rollout_id": "slow-1", "seed": 1, "candidate": {"prompt": "p"}}
        ).model_dump(exclude_none=True)
        running = await c.rollouts(body)
        await asyncio.sleep(0.2)
        started = time.monotonic()
        state = await c.terminate("slow-1", {})
        took = time.monotonic() - started
        RolloutStatePayload.model_validate(state)
        after = await c.get_state("slow-1")
    print(json.dumps({"running": running, "state": state, "took": took, "after": after}))

asyncio.run(main())
"""

OPTIMIZER = """
import asyncio, json, os
import httpx
from synth_containers.http_client import HTTPContainerClient
from synth_optimizers.miprov2.container_gepa_compat import (
    ContainerGepaAdapter, ContainerGepaRolloutBinding,
)

URL, KEY = os.environ["INTEROP_URL"], os.environ["INTEROP_KEY"]
SEEDS = json.loads(os.environ["INTEROP_SEEDS"])

async def main():
    http = httpx.AsyncClient(base_url=URL, headers={"X-API-Key": KEY}, trust_env=False)
    client = HTTPContainerClient(base_url=URL, client=http, max_retries=0)
    adapter = ContainerGepaAdapter(client=client, binding=ContainerGepaRolloutBinding(), max_concurrency=4)
    rows = [{"seed": seed} for seed in SEEDS]
    results = {}
    for name in ("default", "better"):
        batch = await adapter.evaluate(rows, {"prompt": os.environ["PROMPT_" + name.upper()]}, capture_traces=True)
        results[name] = {"scores": batch.scores, "outputs": batch.outputs[:2]}
    reflective = adapter.make_reflective_dataset({"prompt": "x"}, batch, ["prompt"])
    await client.aclose()
    print(json.dumps({"results": results, "calls": adapter.metric_call_count,
                      "reflective": reflective["prompt"][:1]}))

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def python_containers() -> Path:
    return python_for(CONTAINERS)


@pytest.fixture(scope="module")
def example_url() -> Iterator[str]:
    with InProcessTaskApp(config=build_config(), port=0, api_key=KEY) as task_app:
        assert task_app.url is not None
        yield task_app.url


def test_the_vendor_client_and_models_read_a_taskapp_app(
    python_containers: Path, example_url: str, tmp_path: Path
) -> None:
    out = run_json(
        python_containers,
        CLIENT,
        home=tmp_path,
        env={"INTEROP_URL": example_url, "INTEROP_KEY": KEY, "INTEROP_PROMPT": DEFAULT_PROMPT},
    )
    assert out["health"] == {"healthy": True}
    assert out["gepa_matches"] is True
    assert out["metadata"]["capabilities"]["protocol"] == "synth.container.contract.v1"
    assert {"metadata", "capabilities", "runtime", "service", "dataset"} <= set(out["info_keys"])
    assert out["mutable_fields"] == ["prompt"]
    assert out["seed_candidate"] == {"prompt": DEFAULT_PROMPT}
    assert out["taskset"]["split_sizes"] == {"train": 300, "test": 100}
    assert out["tasks"]["task_ids"][:3] == ["3", "7", "11"]
    assert len(out["tasks"]["task_ids"]) == 100

    examples = load_examples()
    expected = float(
        offline_predict(DEFAULT_PROMPT, examples[3].text, LABELS).label == examples[3].label
    )
    sync = out["sync"]
    assert sync["status"] == "completed"
    assert sync["reward_info"]["outcome_reward"] == expected
    assert sync["objective_scores"][0] == {
        "objective": "outcome_reward",
        "value": expected,
        "source": "reward_info",
    }
    assert sync["actionable_side_info"]["feedback"] == sync["metrics"]["details"]["feedback"]
    assert out["submit_s"] < 1.0
    assert out["submitted"]["status"] == "running"
    assert out["polled"]["status"] == "completed"
    assert out["polled"]["metrics"]["details"]["seed"] == 7
    assert out["state"]["rollout_id"] == "async-7"
    assert out["state"]["status"] == "completed"
    assert out["unknown"] == {}  # the vendor client reads our 404 as "no such rollout"


def test_the_vendor_client_terminates_a_running_rollout(
    python_containers: Path, tmp_path: Path
) -> None:
    probe = Probe()
    with InProcessTaskApp(config=probe_config(probe), port=0, api_key=KEY) as task_app:
        out = run_json(
            python_containers,
            TERMINATE,
            home=tmp_path,
            env={"INTEROP_URL": str(task_app.url), "INTEROP_KEY": KEY},
        )
        assert probe.started == ["slow-1"]
        assert probe.cancelled == ["slow-1"]
    assert out["running"]["status"] == "running"
    assert out["state"]["status"] == "terminated"
    assert out["took"] < 1.0
    assert out["after"]["status"] == "terminated"
    assert probe.finished == []


def test_synth_optimizers_scores_candidates_against_a_taskapp_app(
    python_containers: Path, example_url: str, tmp_path: Path
) -> None:
    better = json.loads(
        (
            Path(__file__).resolve().parents[2] / "examples/support_intents_better_prompt.json"
        ).read_text()
    )["prompt"]
    seeds = [3, 7, 11, 15, 19, 23, 27, 31]
    out = run_json(
        python_containers,
        OPTIMIZER,
        home=tmp_path,
        env={
            "INTEROP_URL": example_url,
            "INTEROP_KEY": KEY,
            "INTEROP_SEEDS": json.dumps(seeds),
            "PROMPT_DEFAULT": DEFAULT_PROMPT,
            "PROMPT_BETTER": better,
        },
    )
    examples = load_examples()

    def score(prompt: str, seed: int) -> float:
        example = examples[seed]
        return float(offline_predict(prompt, example.text, LABELS).label == example.label)

    # the vendor's adapter reads exactly the scores taskapp's own policy gives
    assert out["results"]["default"]["scores"] == [score(DEFAULT_PROMPT, s) for s in seeds]
    assert out["results"]["better"]["scores"] == [score(better, s) for s in seeds]
    assert sum(out["results"]["better"]["scores"]) > sum(out["results"]["default"]["scores"])
    assert out["calls"] == 2 * len(seeds)
    assert out["reflective"][0]["source"] == "container_rollout"
