"""Helpers for tests/inspect: the fixture task file and the real `inspect eval` CLI."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import run_child

REPO = Path(__file__).resolve().parents[2]
EVALS = REPO / "tests" / "fixtures" / "inspect" / "evals.py"
EXAMPLE = REPO / "examples" / "inspect_intents.py"

inspect_ai = pytest.importorskip("inspect_ai", reason="Inspect AI is not installed (.[inspect])")


def target(name: str) -> str:
    return f"{EVALS}@{name}"


def inspect_cli() -> str:
    found = shutil.which("inspect", path=str(Path(sys.executable).parent))
    assert found, "the inspect command of inspect-ai is not installed next to this Python"
    return found


def run_inspect_eval(specs: list[str], model: str, log_dir: Path) -> dict[str, dict[Any, float]]:
    """Run the real ``inspect eval`` CLI on ``specs``; {task name: {sample id: score}}, the
    score being the first scorer's value as Inspect's metrics read it."""
    from inspect_ai.scorer import value_to_float

    env = {**os.environ, "INSPECT_DISPLAY": "none"}
    proc = run_child(
        [
            inspect_cli(),
            "eval",
            *specs,
            "--model",
            model,
            "--log-dir",
            str(log_dir),
            "--log-format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=str(log_dir),
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    to_float = value_to_float()
    found: dict[str, dict[Any, float]] = {}
    for log in sorted(log_dir.glob("*.json")):
        data = json.loads(log.read_text())
        assert data["status"] == "success", data.get("error")
        scores = found.setdefault(data["eval"]["task"], {})
        for sample in data["samples"]:
            first = next(iter(sample["scores"].values()))
            scores[sample["id"]] = to_float(first["value"])
    return found


def run_example_child(
    script: str, *, pythonpath: list[Path], cwd: Path, timeout: float
) -> dict[str, Any]:
    """Run ``script`` (with ``TARGET`` set to the shipped example task) in a fresh Python on
    ``pythonpath`` and return the JSON it prints on its ``RESULT `` line.

    Inspect's display is left at its default (``INSPECT_DISPLAY`` removed), as a user has it.
    """
    import textwrap

    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    env.pop("INSPECT_DISPLAY", None)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    code = f"TARGET = {str(EXAMPLE) + '@intents'!r}\n" + textwrap.dedent(script)
    proc = run_child(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=str(cwd),
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line, proc.stdout[-2000:] + proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    return result
