"""Inspect AI tasks as task apps: loading, /task_info, rollouts, bad input (issue 23)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from taskapp import InProcessTaskApp, evaluate
from taskapp.core.errors import AppLoadError, TaskAppError
from taskapp.testing.helpers import free_port
from tests.helpers import run_child
from tests.inspect._helpers import EVALS, EXAMPLE, REPO, target


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return run_child(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(REPO),
    )


def test_import_taskapp_and_listing_plugins_never_import_inspect() -> None:
    proc = _python(
        """
        import sys, taskapp
        from taskapp.core.plugins import get_registry
        get_registry().describe(include_builtins=True)
        assert "inspect_ai" not in sys.modules, "Inspect was imported"
        print("clean")
        """
    )
    assert proc.returncode == 0 and "clean" in proc.stdout, proc.stderr


def test_without_inspect_the_error_says_how_to_install_it() -> None:
    proc = _python(
        f"""
        import sys
        sys.modules["inspect_ai"] = None  # Inspect absent
        from taskapp import InProcessTaskApp
        from taskapp.core.errors import AppLoadError
        try:
            with InProcessTaskApp(task_app_path={str(EVALS) + "@intents_match"!r}, port={free_port()}):
                pass
        except AppLoadError as exc:
            print("ERR", exc)
        # everything else still works without Inspect
        with InProcessTaskApp(task_app_path="examples/support_intents_app.py", port={free_port()}) as app:
            print("OK", app.url)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "names an Inspect AI task, and Inspect is not installed" in proc.stdout
    assert "'.[inspect]'" in proc.stdout
    assert "OK http://" in proc.stdout


def test_task_info_describes_the_dataset() -> None:
    with InProcessTaskApp(task_app_path=target("intents_choice"), port=free_port()) as app:
        headers = {"X-API-Key": app.api_key}
        info = httpx.get(f"{app.url}/task_info", headers=headers, timeout=30).json()
        one = httpx.get(f"{app.url}/task_info", params={"seed": 2}, headers=headers, timeout=30)
        described = httpx.get(f"{app.url}/info", headers=headers, timeout=30).json()
    taskset = info.get("taskset", info)
    assert taskset["size"] == 24
    assert taskset["sample_ids"] == [f"q{n}" for n in range(24)]
    assert taskset["splits"] == {"all": {"size": 24, "seeds": list(range(24))}}
    assert taskset["inspect"]["scorers"] == ["inspect_ai/choice"]
    assert taskset["inspect"]["prompt"] == "system_message"
    instance = one.json()
    instance = instance[0] if isinstance(instance, list) else instance
    assert instance["task_metadata"]["sample_id"] == "q2"
    assert instance["task_metadata"]["choices"] and len(instance["task_metadata"]["choices"]) == 4
    assert "Classify the customer's message" in str(described)


def test_splits_come_from_sample_metadata_and_rollouts_score_like_the_bundled_example() -> None:
    result = evaluate(f"{EXAMPLE}@intents", split="test", concurrency=8)
    assert len(result.results) == 100
    assert all(r.ok for r in result.results), [r.error for r in result.results if not r.ok][:3]
    mean = sum(r.score or 0 for r in result.results) / 100
    # the stand-in model reads the prompt as the bundled support-intents baseline does
    assert mean == pytest.approx(0.42)
    wrong = next(r for r in result.by_seed() if r.score == 0)
    assert wrong.details["expected"] != wrong.details["predicted"]
    assert "expected" in wrong.details["feedback"] and wrong.details["model"] == "taskapp/standin"


def test_candidate_prompt_replaces_the_declared_system_message() -> None:
    better = (REPO / "examples" / "support_intents_better_prompt.json").read_text()
    import json

    prompt = json.loads(better)["prompt"]
    plain = evaluate(f"{EXAMPLE}@intents", seeds="0-39", concurrency=8)
    tuned = evaluate(f"{EXAMPLE}@intents", seeds="0-39", concurrency=8, policy={"prompt": prompt})
    assert (tuned.summary.mean_score or 0) > (plain.summary.mean_score or 0) + 0.2


def test_registry_spelling_of_an_installed_package() -> None:
    # taskapp registers taskapp/intents with Inspect through the inspect_ai entry point
    result = evaluate("taskapp/intents", seeds="0-7", concurrency=4)
    assert [r.ok for r in result.results] == [True] * 8


def test_unknown_task_lists_the_tasks_in_the_file() -> None:
    with pytest.raises(AppLoadError) as info:
        InProcessTaskApp(task_app_path=f"{EVALS}@intent_match", port=free_port()).start()
    message = str(info.value)
    assert "no Inspect task 'intent_match'" in message
    assert "intents_match" in message and "intents_graded" in message
    assert "Traceback" not in message


def test_unknown_registered_task_lists_the_package_tasks() -> None:
    with pytest.raises(AppLoadError, match=r"no Inspect task 'taskapp/nope'.*taskapp/intents"):
        InProcessTaskApp(task_app_path="taskapp/nope", port=free_port()).start()


def test_sandbox_tasks_say_so_at_load() -> None:
    with pytest.raises(AppLoadError, match="needs a 'k8s' sandbox"):
        InProcessTaskApp(task_app_path=target("needs_cluster"), port=free_port()).start()
    if shutil.which("docker") is None:
        with pytest.raises(AppLoadError, match="'docker' command is not installed"):
            InProcessTaskApp(task_app_path=target("needs_docker"), port=free_port()).start()


def test_cli_serve_spelling_reaches_the_loader(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "taskapp"
    proc = run_child(
        [str(exe), "eval", f"{EVALS}@missing_task", "--seeds", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 or proc.returncode == 1, proc.stderr
    assert "no Inspect task 'missing_task'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_model_without_its_package_or_key_is_a_failed_rollout_saying_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    result = evaluate(target("intents_match"), seeds="0-1", policy={"model": "anthropic/claude-x"})
    for r in result.results:
        assert r.success_status == "runtime_error"
        assert "anthropic" in r.details["error"].lower()


def test_request_cannot_choose_keys_or_endpoints() -> None:
    with InProcessTaskApp(task_app_path=target("no_prompt"), port=free_port()) as app:
        answer = httpx.post(
            f"{app.url}/rollout",
            headers={"X-API-Key": app.api_key},
            json={
                "run_id": "r",
                "env": {"seed": 0},
                "policy": {"config": {"model": "openai/gpt-4o", "base_url": "http://evil"}},
            },
            timeout=60,
        )
        bad_seed = httpx.post(
            f"{app.url}/rollout",
            headers={"X-API-Key": app.api_key},
            json={"run_id": "r", "env": {"seed": 99}},
            timeout=60,
        )
    assert answer.status_code == 422
    assert answer.json()["detail"]["error"]["field"] == "policy.config.base_url"
    assert bad_seed.status_code == 422 and "0-3" in bad_seed.text


def test_no_log_file_is_left_per_rollout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INSPECT_LOG_DIR", raising=False)
    result = evaluate(target("no_prompt"), seeds="0-3")
    assert all(r.ok for r in result.results)
    assert list(tmp_path.rglob("*")) == []


def test_logs_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKAPP_INSPECT_LOG_DIR", str(tmp_path / "logs"))
    evaluate(target("no_prompt"), seeds="0-1", concurrency=1)
    logs = sorted((tmp_path / "logs").glob("*.json"))  # Inspect's json log format
    assert logs
    from inspect_ai.log import read_eval_log

    # one log per Inspect task of the live run, holding the rollouts' samples
    samples = [s for log in logs for s in read_eval_log(str(log)).samples or []]
    assert sorted(s.id for s in samples) == [1, 2]
    assert all(s.scores for s in samples)


def test_loader_is_listed_as_a_builtin() -> None:
    from taskapp.core.plugins import get_registry

    names = [row["name"] for row in get_registry().describe(include_builtins=True)]
    assert "taskapp.plugins.loaders.inspect" in names
    assert issubclass(AppLoadError, TaskAppError)
