"""``taskapp eval evals.py@my_task --model provider/model`` (issue 23): the installed
``taskapp`` console script, the model reaching every rollout as ``policy.config.model``."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from tests.helpers import run_child
from tests.inspect._helpers import EXAMPLE, REPO, target


def _taskapp(*args: str) -> tuple[int, str, str]:
    found = shutil.which("taskapp", path=str(Path(sys.executable).parent))
    assert found, "the taskapp console script is not installed next to this Python"
    # Inspect's display as taskapp picks it: nothing may reach stdout (--json - parses it)
    env = {
        k: v for k, v in os.environ.items() if k not in ("INSPECT_DISPLAY", "INSPECT_EVAL_MODEL")
    }
    proc = run_child(
        [found, *args], capture_output=True, text=True, timeout=180, env=env, cwd=str(REPO)
    )
    return proc.returncode, proc.stdout, proc.stderr


def _results(stdout: str) -> list[dict[str, Any]]:
    return list(json.loads(stdout)["results"])


def test_eval_model_flag_names_the_policy_model_of_every_rollout() -> None:
    code, out, err = _taskapp(
        "eval", f"{EXAMPLE}@intents", "--model", "taskapp/standin", "--seeds", "0-5", "--json", "-"
    )
    assert code == 0, err[-2000:]
    results = _results(out)
    assert [r["status"] for r in results] == ["success"] * 6
    assert {r["details"]["model"] for r in results} == {"taskapp/standin"}
    assert json.loads(out)["policy_config"] == {"model": "taskapp/standin"}

    # a model Inspect has no provider for: every rollout fails saying which model
    code, out, err = _taskapp(
        "eval", target("no_prompt"), "--model", "nosuch/model", "--seeds", "0-1", "--json", "-"
    )
    assert code == 1, err[-2000:]
    results = _results(out)
    assert [r["status"] for r in results] == ["runtime_error"] * 2
    assert all("'nosuch/model' cannot be used" in r["error"] for r in results), results
    assert "Traceback" not in err


def test_eval_model_flag_and_policy_config_must_agree() -> None:
    code, _, err = _taskapp(
        "eval",
        target("no_prompt"),
        "--model",
        "taskapp/standin",
        "--policy-config",
        '{"model": "mockllm/model"}',
    )
    assert code == 2
    assert "name the model once" in err and "Traceback" not in err
    code, _, err = _taskapp("eval", target("no_prompt"), "--model", " ")
    assert code == 2 and "--model needs a model name" in err


def test_eval_help_shows_the_model_flag_with_an_example() -> None:
    code, out, _ = _taskapp("eval", "--help")
    assert code == 0
    assert "--model NAME" in out
    assert "evals.py@my_task --model openai/gpt-4o-mini" in out
