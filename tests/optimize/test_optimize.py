"""``taskapp.optimize.run()`` against real task apps over real HTTP (offline).

The reflection model is :class:`StandInReflectionLM`, a deterministic offline stand-in
(there is no model to call here). The task apps are real: the toy keyword task of
``tests/optimize/_optimize_helpers.py`` and the bundled support-intents example, served by
InProcessTaskApp (uvicorn in a thread, loopback HTTP).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskapp import ConfigurationError, InProcessTaskApp
from taskapp.core.seeds import format_seeds, parse_seeds
from taskapp.optimize import (
    OptimizeResult,
    ReflectionModelError,
    StandInReflectionLM,
    TaskAppUnavailableError,
    run,
    run_async,
)
from tests.optimize._optimize_helpers import SEED_PROMPT, ToyTask

TRAIN, VAL, TEST = "0-39", "100-129", "200-259"


@pytest.fixture(scope="module")
def toy() -> Iterator[tuple[ToyTask, InProcessTaskApp]]:
    task = ToyTask()
    with InProcessTaskApp(config=task.config()) as app:
        yield task, app


def optimize(app: Any, **kw: Any) -> OptimizeResult:
    args: dict[str, Any] = {
        "train_seeds": TRAIN,
        "val_seeds": VAL,
        "reflection_lm": StandInReflectionLM(),
        "budget": 150,
    }
    args.update(kw)
    return run(app, **args)


def comparable(result: OptimizeResult) -> dict[str, Any]:
    """The result without timings (which differ between identical runs)."""
    data = result.to_dict()
    data.pop("elapsed_s")
    data["history"] = [{k: v for k, v in e.items() if k != "elapsed_s"} for e in data["history"]]
    return data


# -- it works ------------------------------------------------------------------------------


def test_improves_the_toy_app(toy: tuple[ToyTask, InProcessTaskApp]) -> None:
    _, app = toy
    result = optimize(app, test_seeds=TEST)
    assert result.succeeded and result.status == "succeeded"
    assert result.baseline_score == pytest.approx(0.2)
    assert result.best_score > result.baseline_score + 0.2
    assert result.best_candidate == {"prompt": result.best_prompt}
    assert result.seed_candidate == {"prompt": SEED_PROMPT}  # advertised in /info
    assert result.test_scores is not None
    assert result.test_scores["best"] > result.test_scores["baseline"]
    assert result.val_seeds == list(range(100, 130))
    assert set(result.val_scores) == set(range(100, 130))  # keyed by seed, not position
    assert result.metric_calls <= result.budget
    assert result.candidates[0]["candidate"] == {"prompt": SEED_PROMPT}
    assert result.best_score == max(c["val_score"] for c in result.candidates)
    kinds = [event["event"] for event in result.history]
    assert kinds[0] == "baseline" and kinds[-1] == "stopped" and "candidate" in kinds
    assert result.reflection["calls"] >= 1 and result.reflection["failures"] == 0
    # the placeholders-free seed prompt grew: lines were only added
    assert all(line in result.best_prompt for line in SEED_PROMPT.splitlines()[:1])


def test_same_seed_same_result(toy: tuple[ToyTask, InProcessTaskApp]) -> None:
    _, app = toy
    first, second = optimize(app), optimize(app)
    assert comparable(first) == comparable(second)


def test_bundled_example_improves_deterministically() -> None:
    from taskapp.examples.support_intents import DEFAULT_PROMPT, build_config

    with InProcessTaskApp(config=build_config()) as app:
        runs = [
            run(
                app,
                None,
                "0-99",
                "100-139",
                reflection_lm=StandInReflectionLM(),
                budget=200,
            )
            for _ in range(2)
        ]
    first, second = runs
    assert first.seed_candidate == {"prompt": DEFAULT_PROMPT}  # advertised default
    assert first.best_score > first.baseline_score
    assert comparable(first) == comparable(second)


def test_budget_is_never_exceeded_and_counts_rollouts() -> None:
    task = ToyTask()
    with InProcessTaskApp(config=task.config()) as app:
        result = optimize(app, budget=97, patience=None)
    assert result.stopped_by == "budget"
    assert result.metric_calls <= 97
    # every counted metric call is one POST /rollout (no test seeds here)
    assert len(task.requests) == result.metric_calls == result.rollouts["sent"]


def test_request_shape(toy: tuple[ToyTask, InProcessTaskApp]) -> None:
    task, app = toy
    before = len(task.requests)
    optimize(
        app,
        policy={"model": "toy-model", "temperature": 0.0, "prompt": "overridden"},
        policy_name="toy-policy",
        env_config={"difficulty": "easy"},
        budget=66,
    )
    requests = task.requests[before:]
    assert requests
    first = requests[0]
    assert first["mode"] == "eval"
    assert first["policy"]["policy_name"] == "toy-policy"
    assert first["policy"]["config"]["model"] == "toy-model"
    assert first["policy"]["config"]["prompt"] == SEED_PROMPT  # the candidate wins
    assert first["env"]["config"] == {"difficulty": "easy"}
    assert {r["env"]["seed"] for r in requests[:30]} == set(range(100, 130))
    run_ids = [r["run_id"] for r in requests]
    assert len(set(run_ids)) == len(run_ids)


def test_several_prompt_components(toy: tuple[ToyTask, InProcessTaskApp]) -> None:
    task, app = toy
    before = len(task.requests)
    result = optimize(app, seed_prompt={"prompt": SEED_PROMPT, "suffix": "Be brief."}, budget=66)
    assert set(result.best_candidate) == {"prompt", "suffix"}
    assert all(r["policy"]["config"]["suffix"] for r in task.requests[before:])


def test_scores_above_one_need_perfect_score() -> None:
    task = ToyTask(scale=10.0)
    with InProcessTaskApp(config=task.config()) as app:
        result = optimize(app, perfect_score=10.0, budget=120)
    assert result.reflection["calls"] >= 1
    assert result.best_score > result.baseline_score


def test_placeholders_survive_or_cost_nothing() -> None:
    task = ToyTask()

    def forgetful(prompt: Any) -> str:  # a model that drops the {message} placeholder
        return "```\n- refund: refund, money\n```"

    with InProcessTaskApp(config=task.config()) as app:
        result = optimize(
            app,
            seed_prompt=SEED_PROMPT + "\nMessage: {message}",
            reflection_lm=forgetful,
            budget=66,
            patience=2,
        )
    assert result.rollouts["placeholder_rejections"] >= 1
    assert all("{message}" in prompt for prompt in task.prompts_seen())
    assert result.best_idx == 0


def test_failed_rollouts_score_zero_with_feedback() -> None:
    task = ToyTask(fail_seeds=frozenset({101, 102}))
    seen: list[dict[str, Any]] = []

    def lm(prompt: Any) -> str:
        seen.append({"prompt": prompt})
        return StandInReflectionLM()(prompt)

    with InProcessTaskApp(config=task.config()) as app:
        result = optimize(app, reflection_lm=lm, train_seeds="101-102,0-9", budget=120)
    assert result.baseline_val_scores[101] == 0.0
    assert result.rollouts["failed"] >= 2
    assert any("rollout failed" in item["prompt"] for item in seen)


def test_stop_event_gives_interrupted_result(tmp_path: Path) -> None:
    task = ToyTask()
    stop = threading.Event()

    def on_progress(event: dict[str, Any]) -> None:
        if event["event"] == "iteration":
            stop.set()

    with InProcessTaskApp(config=task.config()) as app:
        result = optimize(
            app, budget=300, on_progress=on_progress, stop_event=stop, output_dir=tmp_path
        )
    assert result.status == "interrupted" and result.stopped_by == "interrupted"
    assert result.iterations == 1
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["status"] == "interrupted"


def test_patience_stops_a_run_that_no_longer_improves(
    toy: tuple[ToyTask, InProcessTaskApp],
) -> None:
    _, app = toy

    def stuck(prompt: Any) -> str:  # proposes the same prompt every time
        return f"```\n{SEED_PROMPT}\n```"

    result = optimize(app, reflection_lm=stuck, budget=1000, patience=3)
    assert result.stopped_by == "patience" and result.status == "succeeded"
    assert result.iterations == 3 and result.metric_calls < 100


def test_no_stdout_noise(toy: tuple[ToyTask, InProcessTaskApp], capsys: Any) -> None:
    _, app = toy
    optimize(app, budget=66)
    assert capsys.readouterr().out == ""


# -- results on disk, resume ------------------------------------------------------------------


def test_save_and_resume(tmp_path: Path) -> None:
    task = ToyTask()
    out = tmp_path / "run"
    with InProcessTaskApp(config=task.config()) as app:
        first = optimize(app, budget=100, output_dir=out, patience=None)
        sent_first = len(task.requests)
        for name in ("result.json", "best_prompt.txt", "history.jsonl", "score_curve.svg"):
            assert (out / name).is_file(), name
        assert (out / "gepa" / "gepa_state.bin").is_file()
        ET.fromstring((out / "score_curve.svg").read_text())  # well-formed SVG
        loaded = OptimizeResult.from_dict(json.loads((out / "result.json").read_text()))
        assert loaded.best_score == first.best_score and loaded.val_scores == first.val_scores
        assert (out / "best_prompt.txt").read_text().strip() == first.best_prompt.strip()

        with pytest.raises(ConfigurationError, match="not empty"):
            optimize(app, budget=100, output_dir=out)
        with pytest.raises(ConfigurationError, match="other val seeds"):
            optimize(app, budget=200, output_dir=out, resume=True, val_seeds="100-128")

        second = optimize(app, budget=200, output_dir=out, resume=True, patience=None)
    assert second.metric_calls > first.metric_calls
    assert second.metric_calls <= 200
    assert second.best_score >= first.best_score
    # the baseline was not scored again: only the new metric calls were sent
    assert len(task.requests) - sent_first == second.metric_calls - first.metric_calls
    kinds = [e["event"] for e in second.history]
    assert kinds.count("baseline") == 1 and kinds.count("stopped") == 2
    lines = (out / "history.jsonl").read_text().splitlines()
    assert len(lines) == len(second.history)


def test_a_run_whose_records_cannot_be_written_stops_saying_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """history.jsonl cannot be written (a full disk): the run stops after its current step
    with a RunRecordError naming the cause (a job backend reads its errno: a storage
    fault, queued and resumed), where the write's failure used to be logged and the run
    went on with a hole in the records that --resume reads."""
    import errno

    from taskapp.jobs.pool import storage_error
    from taskapp.optimize import RunRecordError
    from taskapp.optimize.progress import JsonlWriter

    def full(self: JsonlWriter, event: dict[str, Any]) -> None:
        # a stand-in for the disk filling up at this write
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(JsonlWriter, "__call__", full)
    out = tmp_path / "run"
    with InProcessTaskApp(config=ToyTask().config()) as app:
        with pytest.raises(RunRecordError) as caught:
            optimize(app, budget=300, output_dir=out, patience=None)
    message = caught.value.message
    assert "cannot write the run's records" in message and "--resume" in message, message
    fault = storage_error(caught.value)
    assert fault is not None and fault.errno == errno.ENOSPC
    result = caught.value.result
    assert result is not None and result.stopped_by == "error"
    assert result.metric_calls < 300  # stopped at once, not at the budget
    assert not (out / "result.json").exists()  # no writes after the records failed


def test_png_plot_when_matplotlib_is_installed(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    task = ToyTask()
    with InProcessTaskApp(config=task.config()) as app:
        optimize(app, budget=66, output_dir=tmp_path)
    assert (tmp_path / "score_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- failures -----------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_task_app_down_fails_fast() -> None:
    started = time.monotonic()
    with pytest.raises(TaskAppUnavailableError, match="did not answer 200") as info:
        optimize(f"http://127.0.0.1:{closed_port()}", health_timeout=1.0)
    assert time.monotonic() - started < 5
    assert info.value.result is None


def test_wrong_key_is_reported_without_the_key(toy: tuple[ToyTask, InProcessTaskApp]) -> None:
    _, app = toy
    wrong = "wrong-key-0123456789"
    with pytest.raises(TaskAppUnavailableError, match="rejected the API key") as info:
        optimize(app.local_url, api_key=wrong)
    assert wrong not in str(info.value)


def test_baseline_rollouts_failing_stops_the_run(tmp_path: Path) -> None:
    task = ToyTask(fail_seeds=frozenset(range(110, 130)))  # 20 of 30 val seeds: HTTP 500
    out = tmp_path / "run"
    with InProcessTaskApp(config=task.config()) as app:
        with pytest.raises(TaskAppUnavailableError, match="baseline rollouts failed") as info:
            optimize(app, output_dir=out)
    assert "20 of 30 baseline rollouts failed" in str(info.value)
    assert "HTTP 500" in str(info.value)
    assert info.value.result is None
    assert not out.exists() or not any(out.iterdir())  # the next attempt needs no --resume


def test_seeds_outside_the_task_set_are_refused_before_any_rollout() -> None:
    task = ToyTask(size=110)  # /task_info says seeds 0-109: val seeds 110-129 do not exist
    with InProcessTaskApp(config=task.config()) as app:
        with pytest.raises(ConfigurationError) as info:
            optimize(app, test_seeds="105-112")
    assert "val_seeds 110-129; test_seeds 110-112 outside the task set" in str(info.value)
    assert "(its seeds are 0-109)" in str(info.value)
    assert task.requests == []  # not a single rollout was sent


def test_baseline_broken_by_an_unreachable_model_fails_fast() -> None:
    # The bundled example answers 200 with success_status "runtime_error" when its model
    # cannot be reached: without this check the run would "succeed" at score 0.
    from taskapp.examples.support_intents import build_config

    policy = {"inference_url": f"http://127.0.0.1:{closed_port()}/v1", "model": "m"}
    with InProcessTaskApp(config=build_config()) as app:
        with pytest.raises(TaskAppUnavailableError) as info:
            run(app, None, "0-9", "10-19", reflection_lm=StandInReflectionLM(), policy=policy,
                budget=100)  # fmt: skip
    message = str(info.value)
    assert "10 of 10 baseline rollouts failed" in message
    assert "success_status 'runtime_error': could not reach the inference URL" in message


def test_task_app_dying_mid_run_keeps_the_partial_result(tmp_path: Path) -> None:
    task = ToyTask()
    app = InProcessTaskApp(config=task.config()).start()
    try:

        def on_progress(event: dict[str, Any]) -> None:
            if event["event"] == "iteration":
                app.stop()

        with pytest.raises(TaskAppUnavailableError, match="stopped answering") as info:
            optimize(
                app.local_url,
                api_key=app.api_key,
                budget=300,
                on_progress=on_progress,
                output_dir=tmp_path,
            )
    finally:
        app.stop()
    partial = info.value.result
    assert partial is not None and partial.status == "failed"
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "failed"


def test_reflection_model_failing_every_time(toy: tuple[ToyTask, InProcessTaskApp]) -> None:
    _, app = toy
    calls: list[int] = []

    def broken(prompt: Any) -> str:
        calls.append(1)
        raise ConnectionError("the model server is down")

    with pytest.raises(ReflectionModelError, match=r"failed \d+ time.*server is down") as info:
        optimize(app, reflection_lm=broken, budget=300)
    assert 3 <= len(calls) <= 6  # stops after 3 failed calls in a row (gepa retries once)
    assert info.value.result is not None
    assert info.value.result.best_score == info.value.result.baseline_score


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"train_seeds": "0-x"}, "not a seed"),
        ({"val_seeds": ""}, "empty"),
        ({"val_seeds": "1,1"}, "twice"),
        ({"budget": 40}, "too small"),
        ({"budget": 0}, "budget"),
        ({"minibatch_size": 100}, "larger than"),
        ({"reflection_lm": None}, "no reflection model"),
        ({"reflection_lm": 42}, "callable"),
        ({"reflection_prompt_template": "no placeholders"}, "<curr_param>"),
        ({"seed_prompt": "  "}, "empty"),
        ({"resume": True}, "output_dir"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"selection": "random"}, "selection"),
    ],
)
def test_bad_inputs_fail_before_anything_starts(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        optimize("http://127.0.0.1:9", **kw)  # never contacted


def test_no_prompt_anywhere_is_a_configuration_error() -> None:
    task = ToyTask(advertise=False)
    with InProcessTaskApp(config=task.config()) as app:
        with pytest.raises(ConfigurationError, match="no seed prompt"):
            optimize(app)


def test_resume_needs_a_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="nothing to resume"):
        optimize("http://127.0.0.1:9", output_dir=tmp_path, resume=True)


def test_seed_specs() -> None:
    assert parse_seeds("0-2, 5") == [0, 1, 2, 5]
    assert parse_seeds({"start": 3, "end": 5}) == [3, 4]
    assert format_seeds([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    with pytest.raises(ConfigurationError, match="backwards"):
        parse_seeds("5-2")


# -- async -------------------------------------------------------------------------------


def test_run_async_with_the_task_app_on_the_same_event_loop() -> None:
    """gepa's synchronous loop must not run on the loop that serves the task app."""
    import uvicorn

    from taskapp import create_task_app

    task = ToyTask()
    key = "loop-key-0123456789"

    async def main() -> OptimizeResult:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(
            uvicorn.Config(
                create_task_app(task.config(), api_keys=[key]),
                log_config=None,
                lifespan="off",
            )
        )
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:
                await asyncio.sleep(0.01)
            return await run_async(
                f"http://127.0.0.1:{port}",
                train_seeds=TRAIN,
                val_seeds=VAL,
                reflection_lm=StandInReflectionLM(),
                budget=100,
                api_key=key,
                rollout_timeout=5.0,
            )
        finally:
            server.should_exit = True
            await serving
            sock.close()

    result = asyncio.run(asyncio.wait_for(main(), 30))
    assert result.best_score > result.baseline_score


def test_run_async_cancelled_stops_cleanly() -> None:
    task = ToyTask(latency=0.01)
    progress: list[str] = []

    async def main() -> None:
        async with InProcessTaskApp(config=task.config()) as app:
            job = asyncio.create_task(
                run_async(
                    app,
                    train_seeds=TRAIN,
                    val_seeds=VAL,
                    reflection_lm=StandInReflectionLM(),
                    budget=1000,
                    on_progress=lambda e: progress.append(e["event"]),
                )
            )
            while "iteration" not in progress:
                await asyncio.sleep(0.01)
            job.cancel()
            with pytest.raises(asyncio.CancelledError):
                await job
            count = len(task.requests)
            await asyncio.sleep(0.2)
            assert len(task.requests) == count  # nothing runs on after the cancel

    asyncio.run(asyncio.wait_for(main(), 30))
    assert progress[-1] == "stopped"
    assert not [t for t in threading.enumerate() if t.name.startswith("taskapp-optimize")]


# -- the adapter's HTTP clients -------------------------------------------------------------


def flaky_app(failures: int) -> Any:
    """A /rollout that answers 503 (Retry-After: 0) ``failures`` times, then scores 1."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()
    calls = {"n": 0}

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"healthy": True}

    @app.post("/rollout")
    async def rollout() -> Any:
        calls["n"] += 1
        if calls["n"] <= failures:
            return JSONResponse({"detail": "busy"}, status_code=503, headers={"retry-after": "0"})
        return {"run_id": "x", "metrics": {"outcome_score": 1.0, "details": {"feedback": "ok"}}}

    app.state.calls = calls
    return app


@pytest.mark.parametrize("client", ["loopback", "httpx"])
def test_adapter_retries_busy_answers(client: str) -> None:
    import httpx

    from taskapp.optimize import TaskAppAdapter

    app = flaky_app(2)
    with InProcessTaskApp(app=app) as served:
        adapter = TaskAppAdapter(
            served.local_url,
            api_key=served.api_key,
            seed_candidate={"prompt": "p"},
            retries=2,
            transport=httpx.HTTPTransport() if client == "httpx" else None,
        )
        try:
            batch = adapter.evaluate([1], {"prompt": "p"}, capture_traces=True)
            assert batch.scores == [1.0] and app.state.calls["n"] == 3
            assert (
                adapter.make_reflective_dataset({"prompt": "p"}, batch, ["prompt"])["prompt"][0][
                    "Feedback"
                ]
                == "ok"
            )
            app.state.calls["n"] = -10  # ten 503s in a row: retries run out
            failed = adapter.run_rollouts([({"prompt": "p"}, 2)])[0]
        finally:
            adapter.close()
    assert failed.score == 0.0 and failed.status == 503 and "HTTP 503" in (failed.error or "")
