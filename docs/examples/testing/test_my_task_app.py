"""Testing a task app with taskapp's pytest plugin (docs/testing.md, "Testing a task app").

Nothing to configure: the plugin is active wherever taskapp is installed.
"""

from __future__ import annotations

import httpx
import pytest
from my_task_app import build_config

import taskapp
from taskapp.testing import assert_task_app_contract


def test_health(taskapp_factory):
    # taskapp_factory takes InProcessTaskApp's arguments and returns the started app;
    # at teardown it is stopped and checked (port free, no thread or child left).
    task_app = taskapp_factory(config=build_config())
    response = httpx.get(
        f"{task_app.url}/health", headers={"X-API-Key": task_app.api_key}, trust_env=False
    )
    assert response.json() == {"healthy": True}


def test_keeps_the_contract(taskapp_factory):
    # The checks `taskapp check` runs; an AssertionError lists every violation.
    task_app = taskapp_factory(config=build_config())
    assert_task_app_contract(task_app, seeds=[0, 1, 2])


def test_score_does_not_regress():
    # taskapp.evaluate starts the app, runs one rollout per seed and stops it again.
    result = taskapp.evaluate(build_config(), seeds=range(6), policy={"answer": "first"})
    assert result.ok
    assert result.mean_score == pytest.approx(1.0)
    worse = taskapp.evaluate(build_config(), seeds=range(6), policy={"answer": "last"})
    assert worse.mean_score < result.mean_score


@pytest.mark.anyio
async def test_from_async_code(taskapp_factory_async):
    task_app = await taskapp_factory_async(config=build_config())
    report = await taskapp.acheck(task_app.url, api_key=task_app.api_key, seeds=[3])
    assert report.ok, report.format()


@pytest.fixture
def anyio_backend():
    return "asyncio"
