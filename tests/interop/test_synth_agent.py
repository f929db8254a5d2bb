"""synth-ai 0.9.11's Rust SynthTunnel agent with ``taskapp relay serve`` (issue 16, "Proof").

The real agent (``synth_ai_py.synth_tunnel_start``, started by synth-ai's own
``TunneledContainer.create(..., backend=TunnelBackend.SynthTunnel)``) gets a lease from
the relay (the relay's admin token is synth-ai's API key, the relay its backend), attaches
on protocol v1 and forwards to a taskapp app. Through the public URL: 5 MB responses and
32 concurrent rollouts of 64 KiB each way arrive intact, several rounds (the agent sends
one ``RESP_BODY`` per upstream chunk with no size cap, so under load single messages
exceed 1 MiB; the relay must not close the agent with 1009, issue 16 item 6).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import textwrap
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from fastapi.responses import Response

from taskapp import InProcessTaskApp, RolloutRequest
from taskapp.core.client import WORKER_TOKEN_HEADER, AsyncTaskAppClient
from tests.helpers import demo_config, start_child
from tests.interop._venvs import child_env, python_for
from tests.relay._relay_helpers import ADMIN, RelayProcess, token_file

pytestmark = pytest.mark.interop

APP_KEY = "interop-agent-app-key-0123456789"
FIVE_MB = 5 * 1024 * 1024
ROLLOUT_BYTES = 64 * 1024

AGENT = """
import asyncio, json, os, sys
from synth_ai.core.tunnels.tunneled_api import TunneledContainer, TunnelBackend

async def main():
    tunnel = await TunneledContainer.create(
        local_port=int(os.environ["LOCAL_PORT"]),
        backend=TunnelBackend.SynthTunnel,
        api_key=os.environ["ADMIN"],
        env_api_key=os.environ["APP_KEY"],
        backend_url=os.environ["RELAY"],
    )
    print(json.dumps({"url": tunnel.url, "worker_token": tunnel.worker_token}), flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await tunnel.close_async()

asyncio.run(main())
"""


def _pattern(n: int) -> bytes:
    block = hashlib.sha256(b"taskapp-interop").digest() * 2048  # 64 KiB
    return (block * (n // len(block) + 1))[:n]


def _app() -> Any:
    router = APIRouter()

    @router.get("/blob")
    def blob(n: int) -> Response:
        return Response(_pattern(n), media_type="application/octet-stream")

    def rollout(request: RolloutRequest, _http: Any) -> dict[str, Any]:
        prompt = str(request.policy.config.get("prompt", ""))
        digest = hashlib.sha256(prompt.encode()).hexdigest()
        return {
            "run_id": request.run_id,
            "metrics": {"outcome_score": 1.0, "details": {"echo": prompt, "sha256": digest}},
        }

    # No key required: the 0.9.11 agent does not add the app's X-API-Key (its
    # container_keys are unused), so synth-ai's own bring-up probe, which sends only the
    # worker token, needs an app that admits worker-token holders (docs/compat.md).
    return demo_config(rollout=rollout, routers=[router], require_api_key=False)


@pytest.fixture(scope="module")
def tunnel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    python = python_for("0.9.11")
    home = tmp_path_factory.mktemp("agent-home")
    with (
        RelayProcess(token_file(tmp_path_factory.mktemp("relay"))) as relay,
        InProcessTaskApp(config=_app(), port=0, api_key=APP_KEY) as task_app,
    ):
        relay_url = relay.wait_url()
        env = {
            **child_env(home),
            "LOCAL_PORT": str(task_app.port),
            "ADMIN": ADMIN,
            "APP_KEY": APP_KEY,
            "RELAY": relay_url,
        }
        agent = start_child(
            [str(python), "-c", textwrap.dedent(AGENT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=home,
        )
        try:
            assert agent.stdout is not None
            line = agent.stdout.readline()
            if not line:
                agent.wait(timeout=30)
                err = agent.stderr.read() if agent.stderr else ""
                pytest.fail(f"the 0.9.11 agent did not come up:\n{err[-3000:]}")
            info = json.loads(line)
            yield {**info, "relay": relay_url, "relay_log": "".join(relay.err_lines)}
        finally:
            if agent.stdin is not None:
                agent.stdin.close()
            try:
                agent.wait(timeout=30)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(timeout=10)


def _headers(tunnel: dict[str, str]) -> dict[str, str]:
    return {WORKER_TOKEN_HEADER: tunnel["worker_token"], "X-API-Key": APP_KEY}


def test_agent_0_9_11_attaches_and_serves_health(tunnel: dict[str, str]) -> None:
    assert tunnel["url"].startswith(tunnel["relay"] + "/")
    answer = httpx.get(f"{tunnel['url']}/health", headers=_headers(tunnel), timeout=10)
    assert answer.status_code == 200 and answer.json() == {"healthy": True}


def test_agent_0_9_11_five_megabyte_responses_intact(tunnel: dict[str, str]) -> None:
    expected = hashlib.sha256(_pattern(FIVE_MB)).hexdigest()

    async def one(client: httpx.AsyncClient) -> tuple[int, int, str]:
        answer = await client.get(f"{tunnel['url']}/blob", params={"n": FIVE_MB})
        return answer.status_code, len(answer.content), hashlib.sha256(answer.content).hexdigest()

    async def rounds() -> list[tuple[int, int, str]]:
        async with httpx.AsyncClient(headers=_headers(tunnel), timeout=60) as client:
            results: list[tuple[int, int, str]] = []
            for _ in range(3):  # 3 rounds of 4 at once: 60 MB through one agent
                results += await asyncio.gather(*(one(client) for _ in range(4)))
            return results

    results = asyncio.run(rounds())
    assert results == [(200, FIVE_MB, expected)] * 12


def test_agent_0_9_11_32_concurrent_64k_rollouts_intact(tunnel: dict[str, str]) -> None:
    async def rounds() -> list[Any]:
        client = AsyncTaskAppClient(
            tunnel["url"],
            api_key=APP_KEY,
            worker_token=tunnel["worker_token"],
            timeout=60,
            limit=32,
        )
        outcomes: list[Any] = []
        try:
            for number in range(3):
                prompts = [
                    (f"{number}-{seed}-".encode() + _pattern(ROLLOUT_BYTES)).hex()[:ROLLOUT_BYTES]
                    for seed in range(32)
                ]
                outcomes += await asyncio.gather(
                    *(
                        client.rollout(seed, policy_config={"prompt": prompt})
                        for seed, prompt in enumerate(prompts)
                    )
                )
                for outcome, prompt in zip(outcomes[-32:], prompts, strict=True):
                    assert outcome.details.get("echo") == prompt, outcome.error
                    digest = hashlib.sha256(prompt.encode()).hexdigest()
                    assert outcome.details.get("sha256") == digest
        finally:
            await client.aclose()
        return outcomes

    outcomes = asyncio.run(rounds())
    assert [outcome.status for outcome in outcomes] == ["success"] * 96
    assert [outcome.score for outcome in outcomes] == [1.0] * 96
