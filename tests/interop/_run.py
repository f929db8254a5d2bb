"""Run a script with a synth-ai release's python and read the JSON it prints last."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

from tests.helpers import run_child
from tests.interop._venvs import child_env


def run_json(
    python: Path,
    code: str,
    *,
    home: Path,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    argv: list[str] | None = None,
) -> Any:
    """Run ``code`` with ``python`` (this checkout's taskapp importable); the last line of
    its stdout is JSON. A failure shows the child's stderr."""
    home.mkdir(parents=True, exist_ok=True)
    result = run_child(
        [str(python), "-c", textwrap.dedent(code), *(argv or [])],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**child_env(home), **(env or {})},
        cwd=os.fspath(home),
        check=False,
    )
    assert result.returncode == 0, (
        f"synth-ai script failed (exit {result.returncode}):\n{result.stderr[-4000:]}"
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith(("{", "["))]
    assert lines, f"the script printed no JSON:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return json.loads(lines[-1])
