"""Every Python snippet of docs/python_api.md runs as written (imports included)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.helpers import run_child

DOC = Path(__file__).resolve().parents[2] / "docs" / "python_api.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_the_doc_has_snippets() -> None:
    assert len(SNIPPETS) >= 5


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_snippet_runs(index: int, tmp_path: Path) -> None:
    result = run_child(
        [sys.executable, "-c", SNIPPETS[index]],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, f"snippet {index}:\n{SNIPPETS[index]}\n{result.stderr}"
