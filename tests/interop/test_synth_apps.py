"""Real synth-ai 0.7.3 task apps hosted by taskapp (issue 16, "Proof").

Every form a synth-ai user has: ``create_task_app(build_config())`` in a file, a file with
only ``build_config()``, ``config=`` and ``config_factory=``; each with the thread and the
subprocess runner, with and without ``ENVIRONMENT_API_KEY``. synth-ai's own
``TaskAppClient`` calls each app; the start must not wait out the health timeout; after
stop no lent key is left in ``os.environ``. ``taskapp eval --url`` and ``taskapp check``
(run from this checkout) read a hosted one.

The hosting runs in the synth-ai venv's python (synth-ai must be importable where the app
runs), with this checkout's taskapp on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli._cli_helpers import taskapp
from tests.helpers import run_child, start_child
from tests.interop._run import run_json
from tests.interop._venvs import child_env, python_for

pytestmark = pytest.mark.interop

KEY = "interop-apps-key-0123456789"

APP_MODULE = '''
"""A synth-ai 0.7.3 task app, as its users write one."""
from synth_ai.sdk.localapi._impl.contracts import RolloutMetrics, RolloutResponse, TaskInfo
from synth_ai.sdk.localapi._impl.server import TaskAppConfig


def build_config():
    def describe():
        return {"splits": {"train": list(range(6))}, "default_split": "train"}

    def instances(seeds):
        return [
            TaskInfo(
                task={"id": "synth-073", "name": "Synth 0.7.3"},
                dataset={"id": "numbers"},
                inference={},
                limits={"max_turns": 1},
                task_metadata={"seed": seed},
            )
            for seed in seeds
        ]

    async def rollout(request, http_request):
        seed = request.env.seed or 0
        reward = 1.0 if seed % 2 == 0 else 0.0
        return RolloutResponse(
            trace_correlation_id=request.trace_correlation_id,
            reward_info=RolloutMetrics(outcome_reward=reward, details={"parity": seed % 2}),
            success_status="success",
        )

    return TaskAppConfig(
        app_id="synth-073",
        name="Synth 0.7.3",
        description="even seeds score 1",
        provide_taskset_description=describe,
        provide_task_instances=instances,
        rollout=rollout,
    )


CONFIG = build_config()
'''

ASGI_FILE = """
from synth_ai.sdk.localapi._impl.server import create_task_app
from synth_073_app import build_config

app = create_task_app(build_config())
"""

CONFIG_ONLY_FILE = APP_MODULE.replace("\nCONFIG = build_config()\n", "\n")

HOST = """
import asyncio, json, os, sys, time
sys.path.insert(0, os.environ["APP_DIR"])
import synth_073_app
from taskapp import InProcessTaskApp
from synth_ai.sdk.localapi.client import TaskAppClient
from synth_ai.sdk.localapi._impl.contracts import (
    RolloutEnvSpec, RolloutPolicySpec, RolloutRequest,
)

folder = os.environ["APP_DIR"]
forms = {
    "create_task_app file": dict(task_app_path=os.path.join(folder, "synth_073_asgi.py")),
    "build_config file": dict(task_app_path=os.path.join(folder, "synth_073_config_only.py")),
    "config=": dict(config=synth_073_app.CONFIG),
    "config_factory=": dict(config_factory=synth_073_app.build_config),
}
names = ("ENVIRONMENT_API_KEY", "ENVIRONMENT_API_KEY_ALIASES", "DEV_ENVIRONMENT_API_KEY")
before = {name: os.environ.get(name) for name in names}
key = os.environ.get("INTEROP_KEY")

async def calls(url, api_key):
    async with TaskAppClient(url, api_key=api_key) as client:
        health = await client.health()
        info = await client.task_info(seeds=[2])
        wrong = await (TaskAppClient(url, api_key="wrong-key-0123456789")._ensure_client())
        refused = await wrong.get(url + "/info", headers={"X-API-Key": "wrong-key-0123456789"})
        await wrong.aclose()
        out = {"health": health, "seed": info.task_metadata["seed"], "rewards": [],
               "refused": [refused.status_code, refused.text]}
        for seed in (2, 3):
            response = await client.rollout(RolloutRequest(
                trace_correlation_id=f"t-{seed}",
                env=RolloutEnvSpec(seed=seed), policy=RolloutPolicySpec(config={}),
            ))
            out["rewards"].append(response.reward_info.outcome_reward)
        return out

results = {}
for name, kwargs in forms.items():
    started = time.monotonic()
    with InProcessTaskApp(**kwargs, port=0, server=os.environ["RUNNER"], api_key=key,
                          health_check_timeout=60) as app:
        start_s = time.monotonic() - started
        out = asyncio.run(calls(app.url, app.api_key))
        out["start_s"] = start_s
        out["key_is_users"] = app.api_key == before["ENVIRONMENT_API_KEY"]
    out["env_after_stop"] = {name: os.environ.get(name) for name in names}
    results[name] = out
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def python_073() -> Path:
    return python_for("0.7.3")


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("synth-073-apps")
    (folder / "synth_073_app.py").write_text(textwrap.dedent(APP_MODULE))
    (folder / "synth_073_asgi.py").write_text(textwrap.dedent(ASGI_FILE))
    (folder / "synth_073_config_only.py").write_text(textwrap.dedent(CONFIG_ONLY_FILE))
    return folder


@pytest.mark.parametrize("runner", ["thread", "subprocess"])
@pytest.mark.parametrize("with_env_key", [False, True], ids=["no-env-key", "env-key"])
def test_synth_ai_073_apps_hosted(
    python_073: Path, app_dir: Path, tmp_path: Path, runner: str, with_env_key: bool
) -> None:
    env = {"APP_DIR": str(app_dir), "RUNNER": runner}
    if with_env_key:
        env["ENVIRONMENT_API_KEY"] = KEY  # taskapp and the app both take the user's key
    else:
        env["INTEROP_KEY"] = KEY  # an explicit key, no ENVIRONMENT_API_KEY: lent
    results = run_json(python_073, HOST, home=tmp_path, env=env, timeout=300)
    assert list(results) == [
        "create_task_app file",
        "build_config file",
        "config=",
        "config_factory=",
    ]
    for form, out in results.items():
        assert out["health"] == {"healthy": True}, form
        assert out["seed"] == 2, form
        status, body = out["refused"]
        assert status == 400 and "unauthorised" in body, form
        assert KEY[:6] not in body, f"{form}: the wrong-key answer shows the key's prefix"
        assert out["rewards"] == [1.0, 0.0], form
        assert out["start_s"] < 20, (
            f"{form}: waited out the health timeout ({out['start_s']:.1f} s)"
        )
        assert out["key_is_users"] is with_env_key, form
        after = out["env_after_stop"]
        if with_env_key:  # the user's own key stays (synth-ai copies it to DEV_...)
            assert after["ENVIRONMENT_API_KEY"] == KEY, form
            assert after["ENVIRONMENT_API_KEY_ALIASES"] is None, form
        else:
            assert after == dict.fromkeys(after), f"{form}: a lent key was left: {list(after)}"


SERVE = """
import os, sys
sys.path.insert(0, os.environ["APP_DIR"])
from taskapp import InProcessTaskApp
import synth_073_app
with InProcessTaskApp(config_factory=synth_073_app.build_config, port=0,
                      api_key=os.environ["INTEROP_KEY"]) as app:
    print(app.url, flush=True)
    sys.stdin.read()
"""


@pytest.fixture(scope="module")
def hosted_url(
    python_073: Path, app_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    home = tmp_path_factory.mktemp("serve-home")
    env = {**child_env(home), "APP_DIR": str(app_dir), "INTEROP_KEY": KEY}
    child = start_child(
        [str(python_073), "-c", textwrap.dedent(SERVE)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=home,
    )
    try:
        assert child.stdout is not None
        url = child.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), child.stderr.read() if child.stderr else url
        yield url
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=10)


def test_taskapp_eval_url_reads_a_hosted_synth_ai_app(hosted_url: str, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = taskapp(
        "eval", "--url", hosted_url, "--seeds", "0-5", "--keep-going", "--json", str(out),
        ENVIRONMENT_API_KEY=KEY,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(out.read_text())
    scores = {row["seed"]: row["score"] for row in report["results"]}
    assert scores == {seed: float(seed % 2 == 0) for seed in range(6)}
    assert {row["status"] for row in report["results"]} == {"success"}


def test_taskapp_check_against_a_hosted_synth_ai_app(hosted_url: str) -> None:
    good = taskapp("check", hosted_url, "--seeds", "0-1", ENVIRONMENT_API_KEY=KEY)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "GET /health" in good.stdout
    wrong = taskapp("check", hosted_url, ENVIRONMENT_API_KEY="not-the-key-0123456")
    assert wrong.returncode == 1
    assert "rejected" in (wrong.stdout + wrong.stderr).lower() or "HTTP 400" in wrong.stdout


GEN_B_HOST = """
import json, os
import httpx
from synth_ai.sdk.task.contracts import TaskInfo
from synth_ai.sdk.task.server import TaskAppConfig
from taskapp import InProcessTaskApp

def rollout(request, http_request):
    reward = 1.0 if (request.env.seed or 0) % 2 == 0 else 0.0
    return {"run_id": request.run_id, "trajectories": [],
            "metrics": {"episode_returns": [reward], "mean_return": reward, "num_steps": 1}}

base = TaskInfo.model_validate({
    "task": {"id": "gen-b", "name": "Gen B"}, "environment": "numbers", "dataset": {},
    "rubric": {}, "inference": {}, "limits": {},
})
config = TaskAppConfig(
    app_id="gen-b", name="Gen B", description="synth-ai 0.3 config", base_task_info=base,
    describe_taskset=lambda: {"splits": {"train": [0, 1, 2]}},
    provide_task_instances=lambda seeds: [base for _ in seeds], rollout=rollout,
)
key = os.environ["INTEROP_KEY"]
with InProcessTaskApp(config=config, port=0, api_key=key) as app:
    lent = os.environ.get("ENVIRONMENT_API_KEY") == key
    headers = {"X-API-Key": key}
    health = httpx.get(app.url + "/health", headers=headers).status_code
    body = {"run_id": "b-2", "env": {"seed": 2, "config": {}}, "policy": {"config": {}},
            "ops": ["agent", "env"], "mode": "eval"}
    answer = httpx.post(app.url + "/rollout", json=body, headers=headers)
print(json.dumps({"health": health, "lent": lent, "status": answer.status_code,
                  "answer": answer.json(), "left": os.environ.get("ENVIRONMENT_API_KEY")}))
"""


def test_synth_ai_039_gen_b_config_hosted(tmp_path: Path) -> None:
    """A Gen B (0.3.9) TaskAppConfig, built by 0.3.9's create_task_app, key lent."""
    out = run_json(python_for("0.3.9"), GEN_B_HOST, home=tmp_path, env={"INTEROP_KEY": KEY})
    assert out["health"] == 200
    assert out["lent"] is True and out["left"] is None
    assert out["status"] == 200, out["answer"]
    assert out["answer"]["run_id"] == "b-2"
    assert out["answer"]["metrics"]["mean_return"] == 1.0


def test_taskapp_eval_of_a_synth_ai_073_file(
    python_073: Path, app_dir: Path, tmp_path: Path
) -> None:
    """``taskapp eval app.py`` loads the file on a worker thread; synth-ai 0.7.3 installs
    signal handlers when imported, which fails off the main thread unless taskapp lets it."""
    report_path = tmp_path / "report.json"
    result = run_child(
        [str(python_073), "-m", "taskapp", "eval", str(app_dir / "synth_073_config_only.py"),
         "--seeds", "0-3", "--json", str(report_path)],
        capture_output=True, text=True, timeout=120, env=child_env(tmp_path), cwd=tmp_path,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert {row["seed"]: row["score"] for row in report["results"]} == {
        0: 1.0,
        1: 0.0,
        2: 1.0,
        3: 0.0,
    }


def test_taskapp_serve_of_a_synth_ai_073_file_stops_on_sigterm(
    python_073: Path, app_dir: Path, tmp_path: Path
) -> None:
    """synth-ai 0.7.3's import installs its own SIGINT/SIGTERM handlers (which do not
    exit); loaded by ``taskapp serve`` they must not replace taskapp's."""
    import signal

    child = start_child(
        [str(python_073), "-m", "taskapp", "serve", str(app_dir / "synth_073_config_only.py"),
         "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env=child_env(tmp_path), cwd=tmp_path,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        lines = []
        for line in child.stdout:
            lines.append(line)
            if line.strip().startswith("url:"):
                break
        url = lines[-1].split("url:", 1)[1].strip() if lines else ""
        assert url.startswith("http://127.0.0.1:"), "".join(lines)
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
            pytest.fail("taskapp serve ignored SIGTERM (synth-ai's handler replaced taskapp's)")
