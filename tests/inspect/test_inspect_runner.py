"""The Inspect runner's per-call costs hoisted (issue 23): the git revision Inspect records
in each eval log is computed once per process for taskapp's calls, never for anyone else's.

Inspect skips git under pytest (``PYTEST_CURRENT_TEST``), so the check runs in a child
process without it, in a throwaway git repository, counting the ``git`` commands run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import run_child
from tests.inspect._helpers import REPO, run_example_child

CHILD = """
import asyncio, copy, json, subprocess, uuid
from inspect_ai import eval_async, task_with
from inspect_ai.model import get_model
from taskapp.plugins.inspect_tasks.runner import EvalRunner, _quiet_display
from taskapp.plugins.inspect_tasks.tasks import load_task

gits = []
run = subprocess.run
def counting(args, *a, **k):
    if str(args[0]).endswith("git"):
        gits.append(args[1])
    return run(args, *a, **k)
subprocess.run = counting

loaded = load_task(TARGET)
runner = EvalRunner(loaded)
runner.linger = 0  # each run ends with its rollout: one eval_async call per rollout
model = get_model("taskapp/standin")
_quiet_display()

async def main():
    counts = []
    for seed in range(3):  # three eval_async calls through the runner
        sample = await runner.run(seed, None, model)
        assert sample.scores, sample
        await runner.idle()
        counts.append(len(gits))
    task = task_with(copy.copy(loaded.task), dataset=runner.samples[:1], model=model)
    logs = await eval_async(task, log_dir="memory://other/" + uuid.uuid4().hex, log_format="json")
    counts.append(len(gits))
    revision = logs[0].eval.revision
    return counts, revision.commit if revision else None

counts, commit = asyncio.run(main())
print("RESULT " + json.dumps({"counts": counts, "calls": runner.calls, "commit": commit}))
"""


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_revision_is_computed_once_for_the_runner_and_per_call_for_others(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "checkout"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    run_child([*git, "init", "-q"], check=True, timeout=60)
    (repo / "f.txt").write_text("x")
    run_child([*git, "add", "f.txt"], check=True, timeout=60)
    run_child([*git, "commit", "-qm", "one"], check=True, timeout=60)
    result = run_example_child(CHILD, pythonpath=[REPO / "src"], cwd=repo, timeout=180)
    assert result["calls"] == 3
    first, second, third, other = result["counts"]
    assert first > 0, "Inspect ran no git command: nothing to hoist (did Inspect change?)"
    assert second == first and third == first  # the runner's later calls: cached
    assert other == 2 * first  # someone else's eval_async: computed as Inspect does
    assert result["commit"]  # and recorded in their log
