"""Inspect task apps under uvloop (issue 23): a rollout served by real uvicorn with
``loop="uvloop"`` succeeds.

Every rollout once failed there with "Can't patch loop of type uvloop.Loop": reading the
samples back from Inspect's zip log went through a synchronous read that applies
nest_asyncio to the running loop. uvloop is not in ``.[test]`` (the main suite runs on the
plain stack, which ``TASKAPP_EXPECT_STACK=plain`` enforces), so the server runs in a child
process whose ``PYTHONPATH`` adds uvloop, installed once from the package registry into
``~/.cache/taskapp-uvloop/<python>`` (``TASKAPP_UVLOOP_CACHE`` overrides the folder).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.helpers import run_child
from tests.inspect._helpers import REPO, run_example_child

UVLOOP = "uvloop>=0.19"


def uvloop_dir() -> Path:
    """A folder holding uvloop (``pip install --target``), built once and cached."""
    root = Path(os.environ.get("TASKAPP_UVLOOP_CACHE") or Path.home() / ".cache" / "taskapp-uvloop")
    target = root / f"py{sys.version_info.major}{sys.version_info.minor}"
    if (target / "uvloop" / "__init__.py").is_file():
        return target
    pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    result = run_child(
        [*pip, "--no-deps", "--target", str(target), UVLOOP],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        message = f"could not install {UVLOOP} into {target}: {result.stderr[-1000:]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return target


SERVE = """
import asyncio, json, socket, threading, time
import httpx, uvicorn, uvloop
import inspect_ai._util._async as inspect_async
from taskapp.core.loading import materialize
from taskapp.plugins.inspect_tasks.app import build_config

app, _ = materialize(build_config(TARGET), api_key="k-uvloop", origin=TARGET)
loops = []

async def recording(scope, receive, send):
    loops.append(type(asyncio.get_running_loop()).__module__)
    await app(scope, receive, send)

sock = socket.socket()
sock.bind(("127.0.0.1", 0))
config = uvicorn.Config(recording, loop="uvloop", log_level="warning", lifespan="on")
server = uvicorn.Server(config)
thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
thread.start()
deadline = time.monotonic() + 60
while not server.started and time.monotonic() < deadline:
    time.sleep(0.05)
url = "http://127.0.0.1:%d" % sock.getsockname()[1]

def rollout(seed):
    return httpx.post(
        url + "/rollout",
        headers={"X-API-Key": "k-uvloop"},
        json={"run_id": "u%d" % seed, "env": {"seed": seed}, "policy": {"config": {}}},
        timeout=120,
    ).json()

from concurrent.futures import ThreadPoolExecutor
with ThreadPoolExecutor(4) as pool:
    answers = list(pool.map(rollout, range(4)))
server.should_exit = True
thread.join(30)
print("RESULT " + json.dumps({
    "loops": sorted(set(loops)),
    "statuses": [a["success_status"] for a in answers],
    "errors": [a["metrics"]["details"].get("error") for a in answers],
    "scores": [a["metrics"]["outcome_score"] for a in answers],
    "nest_asyncio": inspect_async._initialised_nest_asyncio,
}))
"""


def test_a_rollout_served_by_uvicorn_on_uvloop_succeeds() -> None:
    site = uvloop_dir()
    result = run_example_child(SERVE, pythonpath=[site, REPO / "src"], cwd=REPO, timeout=240)
    assert result["loops"] == ["uvloop"], result  # really served on uvloop
    assert result["statuses"] == ["success"] * 4, result["errors"]
    assert all(score in (0.0, 1.0) for score in result["scores"]), result
    # no Inspect path patched the server's loop with nest_asyncio
    assert result["nest_asyncio"] is False, result
