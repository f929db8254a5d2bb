"""taskapp hosts and drives synth-containers 0.4.6 containers (issue 22, items 2 and 3).

Everything runs in the synth-containers venv (tests/interop/_venvs.py, ``containers-0.4.6``)
with this checkout's taskapp: a real ``Container``
(tests/fixtures/containers/yes_container.py, default submission mode ``async``) is

* hosted by taskapp: ``InProcessTaskApp(app=...)``, ``config_factory=``, the ``.py`` file
  under the thread and subprocess runners, ``taskapp serve file.py``; behind taskapp's key;
* driven by taskapp: ``TaskAppClient`` (polls the container's async answers),
  ``taskapp.check``, ``taskapp.evaluate``, ``taskapp eval --url`` and ``taskapp.optimize``
  (its seed prompt read from the container's ``GET /program``; the reflection model is
  taskapp's offline stand-in, no model can run here);

and synth-containers' own bundled target (``python -m synth_containers.serve --target
openenv_echo``) is read by ``TaskAppClient`` and ``taskapp.check``.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import run_child, start_child
from tests.interop._run import run_json
from tests.interop._venvs import CONTAINERS, child_env, python_for

pytestmark = pytest.mark.interop

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "containers" / "yes_container.py"

HOST = """
import json, sys, httpx
import taskapp
from taskapp import InProcessTaskApp
from taskapp.core.client import TaskAppClient
from taskapp.core.importing import exec_path

import pathlib
container = exec_path(pathlib.Path(sys.argv[1])).container
out = {}

def probe(app, label):
    url, key = app.url, app.api_key
    with httpx.Client(base_url=url, trust_env=False) as h:
        row = {
            "root": h.get("/").json(),
            "no_key": h.get("/metadata").status_code,
            "wrong_key": h.get("/metadata", headers={"X-API-Key": "wrong-key-000000"}).status_code,
            "gepa": h.get("/metadata", headers={"X-API-Key": key}).json()["metadata"]
                     ["optimizer_contracts"]["gepa"]["version"],
        }
    with TaskAppClient(url, key) as c:
        c.health()
        yes = c.rollout(seed=2, policy_config={"prompt": "yes please"})
        no = c.rollout(seed=3, policy_config={"prompt": "no"})
        row["rollouts"] = [[o.status, o.score, o.score_field] for o in (yes, no)]
        row["feedback"] = no.details.get("feedback")
    out[label] = row

with InProcessTaskApp(app=container, port=0) as app:
    probe(app, "app")
    report = taskapp.check(app.url, api_key=app.api_key, seeds=[1])
    out["check"] = [[c.name, c.ok, c.detail] for c in report.checks]
    result = taskapp.evaluate(app.url, seeds=[0, 1, 2, 3], api_key=app.api_key,
                              policy={"prompt": "yes"})
    out["evaluate"] = [result.summary.completed, result.summary.mean_score]
    split = taskapp.evaluate(app.url, split="test", api_key=app.api_key, policy={"prompt": "no"})
    out["evaluate_split"] = [split.plan.seeds, split.summary.mean_score]
with InProcessTaskApp(config_factory=lambda: container, port=0) as app:
    probe(app, "config_factory")
with InProcessTaskApp(task_app_path=sys.argv[1], port=0) as app:
    probe(app, "path_thread")
with InProcessTaskApp(task_app_path=sys.argv[1], port=0, server="subprocess") as app:
    probe(app, "path_subprocess")
    out["subprocess_pid"] = app.server_pid if hasattr(app, "server_pid") else None
print(json.dumps(out))
"""

OPTIMIZE = """
import json, sys
from taskapp import InProcessTaskApp
from taskapp.core.importing import exec_path
from taskapp.optimize import StandInReflectionLM, run

import pathlib
container = exec_path(pathlib.Path(sys.argv[1])).container
with InProcessTaskApp(app=container, port=0) as app:
    result = run(app.url, None, "0-3", "0-3", reflection_lm=StandInReflectionLM(),
                 budget=40, api_key=app.api_key, max_concurrency=2)
print(json.dumps({"seed": result.seed_candidate, "baseline": result.baseline_score,
                  "best": result.best_score, "best_candidate": result.best_candidate}))
"""


@pytest.fixture(scope="module")
def python_containers() -> Path:
    return python_for(CONTAINERS)


def test_taskapp_hosts_and_drives_a_container(python_containers: Path, tmp_path: Path) -> None:
    out = run_json(python_containers, HOST + "", home=tmp_path, timeout=240, argv=[str(FIXTURE)])
    for label in ("app", "config_factory", "path_thread", "path_subprocess"):
        row = out[label]
        assert row["root"] == {"status": "ok", "service": "yes-task"}, label
        assert (row["no_key"], row["wrong_key"]) == (401, 401), label
        assert row["gepa"] == "synth_optimizers.gepa.v2", label
        # the container answers async (its default): the client polls GET /rollouts/{id}
        assert row["rollouts"] == [
            ["success", 1.0, "reward_info.outcome_reward"],
            ["success", 0.0, "reward_info.outcome_reward"],
        ], label
        assert row["feedback"] == "the answer must say yes", label  # actionable_side_info
    checks = {name: (ok, detail) for name, ok, detail in out["check"]}
    assert all(ok for ok, _ in checks.values()), out["check"]
    assert checks["GET /taskset"][1].startswith("splits train, test")
    assert "GEPA-ready" in checks["GET /metadata"][1]
    assert out["evaluate"] == [4, 1.0]
    assert out["evaluate_split"] == [[4, 5], 0.0]


def test_taskapp_optimize_reads_the_seed_prompt_from_the_containers_program(
    python_containers: Path, tmp_path: Path
) -> None:
    pytest.importorskip("gepa")
    out = run_json(python_containers, OPTIMIZE, home=tmp_path, timeout=240, argv=[str(FIXTURE)])
    assert out["seed"] == {"prompt": "Answer no."}  # from GET /program, no prompt given
    assert out["baseline"] == 0.0
    assert out["best"] == 1.0
    assert "yes" in out["best_candidate"]["prompt"].lower()


def _wait_ready(url: str, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            if httpx.get(url + "/health", timeout=1, trust_env=False).status_code in (200, 401):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"nothing answered at {url}")


def test_taskapp_serve_and_eval_url_with_a_container(
    python_containers: Path, tmp_path: Path
) -> None:
    from taskapp.testing.helpers import free_port

    port = free_port()
    env = {**child_env(tmp_path), "CONTAINER_KEY": "serve-container-key-0123456789"}
    env["ENVIRONMENT_API_KEY"] = env["CONTAINER_KEY"]
    bindir = str(python_containers.parent)
    serve = start_child(
        [str(python_containers), "-m", "taskapp", "serve", str(FIXTURE), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, serve)
        result = run_child(
            [
                str(python_containers),
                "-m",
                "taskapp",
                "eval",
                "--url",
                url,
                "--api-key-env",
                "CONTAINER_KEY",
                "--seeds",
                "0-3",
                "--policy-config",
                '{"prompt": "yes"}',
                "--json",
                "-",
            ],
            env={**env, "PATH": bindir + os.pathsep + env.get("PATH", "")},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-2000:] + result.stdout[-2000:]
        assert "mean score 1" in result.stdout or '"mean_score": 1.0' in result.stdout, (
            result.stdout[-2000:]
        )
    finally:
        serve.terminate()
        serve.wait(timeout=30)
    assert serve.returncode is not None


BUNDLED = """
import json, sys
import taskapp
from taskapp.core.client import TaskAppClient

url = sys.argv[1]
with TaskAppClient(url) as c:
    c.health()
    body = {"seed": 0, "env": {"seed": 0}, "policy_ref": {"harness": "gym_loop", "config": "echo"}}
    outcome = c.rollout(0, body=body)
report = taskapp.check(url)
print(json.dumps({"rollout": [outcome.status, outcome.score, outcome.score_field],
                  "check": [[c.name, c.ok, c.detail] for c in report.checks]}))
"""


def test_taskapp_reads_synth_containers_bundled_target(
    python_containers: Path, tmp_path: Path
) -> None:
    from taskapp.testing.helpers import free_port

    port = free_port()
    target = start_child(
        [
            str(python_containers),
            "-m",
            "synth_containers.serve",
            "--target",
            "openenv_echo",
            "--port",
            str(port),
        ],
        env=child_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, target)
        out = run_json(python_containers, BUNDLED, home=tmp_path, argv=[url])
    finally:
        target.terminate()
        target.wait(timeout=30)
    # the bundled target answers with a top-level ``reward`` (no reward_info)
    assert out["rollout"] == ["success", 1.0, "reward"]
    checks = {name: (ok, detail) for name, ok, detail in out["check"]}
    for name in ("GET /", "GET /health", "GET /info", "GET /metadata"):
        assert checks[name][0], out["check"]
    assert checks["GET /info"][1] == "synth-containers target 'openenv_echo'"
    # it serves no task set (nor /taskset): check says so rather than pass it
    assert checks["GET /task_info"][0] is False


NOT_IMPORTED = """
import json, sys
from taskapp import InProcessTaskApp
from taskapp.core.plugins import get_registry
from tests.helpers import demo_config

get_registry()  # every builtin plugin, the synth_containers loader included
with InProcessTaskApp(config=demo_config(), port=0) as app:
    pass
print(json.dumps({"imported": "synth_containers" in sys.modules}))
"""


def test_taskapp_never_imports_synth_containers_itself(
    python_containers: Path, tmp_path: Path
) -> None:
    # installed (this venv has it), yet loading plugins and hosting an app leave it alone
    out = run_json(python_containers, NOT_IMPORTED, home=tmp_path)
    assert out == {"imported": False}


THROUGH_RELAY = """
import asyncio, json, pathlib, sys
import httpx
from synth_containers.http_client import HTTPContainerClient
from taskapp import InProcessTaskApp
from taskapp.core.client import TaskAppClient
from taskapp.core.importing import exec_path
from tests.relay._relay_helpers import ADMIN, running_relay

container = exec_path(pathlib.Path(sys.argv[1])).container

async def vendor(url, headers):
    http = httpx.AsyncClient(base_url=url, headers=headers, trust_env=False, timeout=30)
    async with HTTPContainerClient(base_url=url, client=http, max_retries=0) as c:
        meta = await c.metadata()
        sync = await c.rollout({"seed": 1, "candidate": {"prompt": "yes"}})
        submitted = await c.rollouts({"rollout_id": "slow-r", "seed": 1,
                                      "candidate": {"prompt": "x"},
                                      "policy": {"config": {"sleep": 30}}})
        state = await c.terminate("slow-r", {})
    return {"gepa": meta["metadata"]["optimizer_contracts"]["gepa"]["version"],
            "sync": [sync["status"], sync["reward_info"]["outcome_reward"]],
            "submitted": submitted["status"], "terminated": state["status"]}

with running_relay() as relay:
    with InProcessTaskApp(app=container, port=0, tunnel_mode="synthtunnel",
                          tunnel_options={"relay_url": relay.url, "admin_token": ADMIN}) as app:
        token = app.task_app_worker_token
        with TaskAppClient(app.url, app.api_key, worker_token=token) as client:
            client.health()
            outcome = client.rollout(seed=2, policy_config={"prompt": "yes"})
        headers = {"X-API-Key": app.api_key, "X-SynthTunnel-Worker-Token": token}
        out = asyncio.run(vendor(app.url, headers))
        out["url_is_relay"] = app.url.startswith(relay.url)
        out["taskapp_client"] = [outcome.status, outcome.score]
print(json.dumps(out))
"""


def test_a_hosted_container_through_the_relay(python_containers: Path, tmp_path: Path) -> None:
    out = run_json(
        python_containers, THROUGH_RELAY, home=tmp_path, timeout=120, argv=[str(FIXTURE)]
    )
    assert out["url_is_relay"] is True
    assert out["taskapp_client"] == ["success", 1.0]  # async answer polled through the relay
    assert out["gepa"] == "synth_optimizers.gepa.v2"
    assert out["sync"] == ["completed", 1.0]
    assert (out["submitted"], out["terminated"]) == ("running", "terminated")
