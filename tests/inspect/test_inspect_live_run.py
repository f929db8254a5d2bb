"""Rollouts share one live Inspect eval run (issue 23): concurrent rollouts, the next wave,
several prompts and a sample asked for twice all go through one ``eval_async`` call, each
rollout still getting its own prompt and its own sample; the app's stop ends the run."""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import httpx
import pytest

from taskapp import InProcessTaskApp
from taskapp.testing.helpers import free_port
from tests.inspect._helpers import target


def test_rollouts_share_one_eval_run() -> None:
    from inspect_ai.model import get_model

    from taskapp.plugins.inspect_tasks.runner import EvalRunner, _quiet_display
    from taskapp.plugins.inspect_tasks.tasks import load_task

    _quiet_display()
    runner = EvalRunner(load_task(target("intents_match")))
    runner.linger = 60.0  # idle tasks wait for more: here only aclose ends the run
    model = get_model("taskapp/standin")

    async def finished_sample() -> weakref.ref[Any]:
        return weakref.ref(await runner.run(5, "prompt 1", model))

    async def main() -> tuple[list[Any], list[Any], bool, bool]:
        first = await asyncio.gather(*(runner.run(seed, None, model) for seed in range(8)))
        # two prompts (two Inspect tasks), each sample of a prompt asked for twice
        second = await asyncio.gather(
            *(runner.run(n % 4, f"prompt {n % 2}", model) for n in range(8))
        )
        lingering = runner.busy
        # the live run keeps no finished sample (a long run would hold them all)
        gone = await asyncio.create_task(finished_sample())
        gc.collect()
        kept = gone() is not None
        await runner.aclose()
        return list(first), list(second), lingering, kept

    first, second, lingering, kept = asyncio.run(main())
    assert lingering  # the run outlived the rollouts, waiting for more
    assert not kept
    assert runner.calls == 1 and not runner.busy
    assert [sample.id for sample in first] == list(range(1, 9))
    assert all(sample.scores and sample.error is None for sample in first + second)
    for n, sample in enumerate(second):
        assert sample.id == n % 4 + 1
        system = sample.messages[0]
        assert system.role == "system" and system.text == f"prompt {n % 2}"


def test_stopping_the_app_ends_its_eval_run() -> None:
    from taskapp.plugins.inspect_tasks.app import build_config

    config = build_config(target("no_prompt"))
    runner = config.app_state["inspect_task_app"].runner
    runner.linger = 60.0  # the run would wait a minute for the next rollout
    with InProcessTaskApp(config=config, port=free_port()) as app:
        answer = httpx.post(
            f"{app.url}/rollout",
            headers={"X-API-Key": app.api_key},
            json={"run_id": "r", "env": {"seed": 0}},
            timeout=60,
        )
        assert answer.json()["success_status"] == "success", answer.text
        assert runner.busy
    # the stop ended it (its shutdown hook; else the loop cancels it): eval_async is free
    assert not runner.busy


@pytest.mark.parametrize("failure", ["the run raised", "a task failed"])
def test_a_failed_run_fails_its_rollouts_with_keys_redacted(
    failure: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import inspect_ai
    from inspect_ai.model import get_model

    from taskapp.core.secrets import register_secret
    from taskapp.plugins.inspect_tasks.runner import EvalRunner, RolloutFailure
    from taskapp.plugins.inspect_tasks.tasks import load_task

    key = "sk-live-run-test-0123456789"
    register_secret(key)
    message = f"the provider refused {key}"

    async def failing_eval(source: Any, **options: Any) -> Any:
        if failure == "the run raised":
            raise RuntimeError(message)
        # the task fails before its samples run (Inspect reports it to the TaskSource)
        log = SimpleNamespace(status="error", error=SimpleNamespace(message=message))
        await source.task_complete(log)
        return [log]

    monkeypatch.setattr(inspect_ai, "eval_async", failing_eval)
    runner = EvalRunner(load_task(target("no_prompt")))
    runner.log_dir = "kept"  # (nothing to delete from memory)
    model = get_model("taskapp/standin")

    async def main() -> list[Any]:
        return await asyncio.gather(
            *(runner.run(seed, None, model) for seed in range(3)), return_exceptions=True
        )

    for answer in asyncio.run(main()):
        assert isinstance(answer, RolloutFailure), answer
        assert "the provider refused" in str(answer) and key not in str(answer)
    assert not runner.busy


def test_closing_cancels_a_run_that_does_not_end(monkeypatch: pytest.MonkeyPatch) -> None:
    import inspect_ai
    from inspect_ai.model import get_model

    from taskapp.plugins.inspect_tasks import runner as module
    from taskapp.plugins.inspect_tasks.tasks import load_task

    async def stuck_eval(source: Any, **options: Any) -> Any:
        await asyncio.Event().wait()  # a sample that never finishes

    monkeypatch.setattr(inspect_ai, "eval_async", stuck_eval)
    monkeypatch.setattr(module, "CLOSE_GRACE_S", 0.05)
    runner = module.EvalRunner(load_task(target("no_prompt")))
    model = get_model("taskapp/standin")

    async def main() -> BaseException | None:
        rollout = asyncio.create_task(runner.run(0, None, model))
        for _ in range(5):  # the rollout queues, the worker starts the run with it
            await asyncio.sleep(0)
        await runner.aclose()
        done, _ = await asyncio.wait({rollout}, timeout=60)
        return rollout.exception() if done else None

    failure = asyncio.run(main())
    assert isinstance(failure, module.RolloutFailure), failure
    assert not runner.busy


GATED = """
import sys
from inspect_ai import Task, task
from inspect_ai.dataset import Sample
from inspect_ai.scorer import match
from inspect_ai.solver import generate, solver

@solver
def gate():
    async def solve(state, generate):
        if state.sample_id == 1:  # waits until the test opens the gate
            sys.modules["taskapp_test_gate"].entered.set()
            await sys.modules["taskapp_test_gate"].opened.wait()
        return state
    return solve

@task
def gated():
    samples = [Sample(input="a", target="a"), Sample(input="b", target="b")]
    return Task(dataset=samples, solver=[gate(), generate()], scorer=match())
"""


def test_a_new_prompt_starts_while_the_runs_first_task_is_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inspect_ai.model import get_model

    from taskapp.plugins.inspect_tasks.runner import EvalRunner
    from taskapp.plugins.inspect_tasks.tasks import load_task

    (tmp_path / "gated.py").write_text(GATED)
    gate = ModuleType("taskapp_test_gate")
    monkeypatch.setitem(sys.modules, "taskapp_test_gate", gate)
    runner = EvalRunner(load_task(f"{tmp_path / 'gated.py'}@gated"))
    model = get_model("taskapp/standin")

    async def main() -> tuple[bool, bool, int]:
        gate.opened = asyncio.Event()  # type: ignore[attr-defined]
        gate.entered = asyncio.Event()  # type: ignore[attr-defined]
        held = asyncio.create_task(runner.run(0, "prompt A", model))  # sample 1: gated
        await gate.entered.wait()  # type: ignore[attr-defined]  # the run is under way
        other = asyncio.create_task(runner.run(1, "prompt B", model))  # a second task
        done, _ = await asyncio.wait({other}, timeout=60)
        held_then = held.done()
        gate.opened.set()  # type: ignore[attr-defined]
        await held
        await runner.aclose()
        return other in done and bool(other.result().scores), held_then, runner.calls

    other_finished, held_then, calls = asyncio.run(main())
    assert other_finished and not held_then  # it did not wait for the busy task's sample
    assert calls == 1  # both tasks in one run
