"""Each shared mechanism has one home, and ruff keeps it there (TID251, banned-api).

The rule lives in ``pyproject.toml``; these tests run the real ruff on small snippets to
show that each banned API is refused outside its home and allowed in it, and that every
message names a home that exists. docs/architecture.md names the same homes.
"""

from __future__ import annotations

import re
import shutil
import sys
import tomllib
from pathlib import Path

import pytest

from tests.helpers import run_child

REPO = Path(__file__).resolve().parents[2]
CONFIG = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
BANNED: dict[str, dict[str, str]] = CONFIG["tool"]["ruff"]["lint"]["flake8-tidy-imports"][
    "banned-api"
]

#: banned name -> (a snippet using it, a module allowed to, a module that is not)
CASES = {
    "signal.signal": (
        "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_DFL)\n",
        "core/signals.py",
        "jobs/backend.py",
    ),
    "uvicorn.Server": (
        "import uvicorn\nuvicorn.Server(None)\n",
        "core/serving.py",
        "relay/server/run.py",
    ),
    "uvicorn.Config": (
        "from uvicorn import Config\nConfig(None)\n",
        "core/serving.py",
        "plugins/servers/thread.py",
    ),
    "httpx.Client": ("import httpx\nhttpx.Client()\n", "core/transport.py", "jobs/client.py"),
    "httpx.AsyncClient": (
        "import httpx\nhttpx.AsyncClient()\n",
        "core/transport.py",
        "testing/conformance.py",
    ),
    "httpx.request": (
        "import httpx\nhttpx.request('GET', 'x')\n",
        "core/transport.py",
        "cli/jobs.py",
    ),
    "httpx.stream": (
        "import httpx\nhttpx.stream('GET', 'x')\n",
        "core/transport.py",
        "cli/jobs.py",
    ),
    "stat.S_IRWXO": (
        "import stat\nprint(stat.S_IRWXO)\n",
        "core/secrets.py",
        "relay/server/settings.py",
    ),
    "taskapp.examples": (
        "from taskapp.examples import BUNDLED\nprint(BUNDLED)\n",
        "cli/_common.py",
        "evaluation/evaluate.py",
    ),
}


def ruff_findings(source: str, module: str) -> str:
    ruff = shutil.which("ruff") or shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:
        pytest.skip("ruff is not installed (pip install '.[test]')")
    done = run_child(
        [ruff, "check", "--no-cache", "--select", "TID251", "--output-format", "concise",
         "--stdin-filename", f"src/taskapp/{module}", "-"],
        input=source, capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    return done.stdout


@pytest.mark.parametrize("name", sorted(CASES))
def test_banned_outside_its_home_and_allowed_in_it(name: str) -> None:
    source, home, elsewhere = CASES[name]
    found = ruff_findings(source, elsewhere)
    assert "TID251" in found and f"`{name}` is banned" in found, found
    assert "TID251" not in ruff_findings(source, home)


def test_every_ban_names_a_home_that_exists_and_is_exempt() -> None:
    ignores = CONFIG["tool"]["ruff"]["lint"]["per-file-ignores"]
    for name, entry in BANNED.items():
        message = entry["msg"]
        home = re.search(r"home: ([\w/]+\.py)", message)
        if home is None:
            assert name == "taskapp.examples", f"{name}: the message should name its home"
            continue
        path = f"src/taskapp/{home.group(1)}"
        assert (REPO / path).is_file(), f"{name}: {path} does not exist"
        assert "TID251" in ignores.get(path, []), f"{path} is {name}'s home: exempt it"


def test_every_ban_is_tested_and_documented() -> None:
    assert set(BANNED) - set(CASES) <= {"httpx.get", "httpx.post", "stat.S_IRWXG"}
    architecture = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    for name in BANNED:
        assert f"`{name}`" in architecture, f"docs/architecture.md does not name {name}"
