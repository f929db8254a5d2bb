"""The shell quick starts in docs/ run as printed on a machine that has none of the
folders they name (issue 21 item 6: docs/relay.md wrote a token file into a folder it never
created). The system paths are moved into a scratch folder; nothing else is changed."""

from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path

from tests.helpers import REPO, run_child

RELAY_DOC = REPO / "docs" / "relay.md"


def quick_start_block(page: Path, heading: str) -> str:
    """The first ```sh block after ``heading``."""
    text = page.read_text(encoding="utf-8")
    after = text[text.index(heading) :]
    found = re.search(r"```sh\n(.*?)```", after, re.S)
    assert found, f"no sh block after {heading!r} in {page.name}"
    return found.group(1)


def test_relay_quick_start_makes_its_token_file(tmp_path: Path) -> None:
    block = quick_start_block(RELAY_DOC, "## Quick start")
    # Up to (not including) `taskapp relay serve`, which runs until stopped; no pip install.
    lines = []
    for line in block.replace("\\\n", " ").splitlines():
        if line.startswith("taskapp relay serve"):
            break
        if not line.startswith("pip install"):
            lines.append(line)
    script = "\n".join(lines).replace("/etc/", f"{tmp_path}/etc/")
    result = run_child(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    assert result.returncode == 0, f"{script}\n{result.stderr}"
    tokens = tmp_path / "etc" / "taskapp" / "relay.tokens"
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    assert tokens.read_text().startswith("ops:")
