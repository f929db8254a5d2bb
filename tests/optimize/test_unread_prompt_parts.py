"""A several-part seed prompt (a TOML's ``initial_prompt.messages``) whose keys the task app
never reads is said at the start of the run (issue 21 item 6): the toy app reads only
``policy.config["prompt"]``, so optimizing "system" and "user" would change nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskapp import InProcessTaskApp
from taskapp.optimize import StandInReflectionLM, run
from tests.optimize._optimize_helpers import SEED_PROMPT, ToyTask


def optimize(prompt: object, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> list[str]:
    with InProcessTaskApp(config=ToyTask().config(), port=0) as app:
        with caplog.at_level("WARNING", logger="taskapp.optimize"):
            run(app, prompt, "0-5", "100-104", reflection_lm=StandInReflectionLM(),  # type: ignore[arg-type]
                budget=16, output_dir=tmp_path / "run")  # fmt: skip
    return [
        r.getMessage() for r in caplog.records if "not among the policy.config" in r.getMessage()
    ]


def test_parts_the_app_never_reads_are_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (warning,) = optimize({"system": SEED_PROMPT, "user": "{message}"}, tmp_path, caplog)
    assert "'system', 'user'" in warning and "('prompt')" in warning


def test_parts_named_after_the_apps_keys_are_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert optimize({"prompt": SEED_PROMPT}, tmp_path, caplog) == []
