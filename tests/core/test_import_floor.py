"""``from taskapp import InProcessTaskApp`` stays near the asyncio floor (issue 27).

Structural, not timed: a fresh interpreter runs the line and lists the modules the line
itself added to ``sys.modules`` (whatever ``site`` preloaded does not count). None of the
modules below may be among them: they belong to what a start, a request or a plugin
needs, and are imported there. ``benchmarks/bench_import.py`` measures the time.
"""

from __future__ import annotations

import sys

import pytest

from tests.helpers import run_child

# Third-party packages the lifecycle uses once a start runs (plugins, server, contract).
THIRD_PARTY = ("pluggy", "fastapi", "starlette", "uvicorn", "pydantic", "httpx", "anyio", "h11")
# Standard-library modules beyond `import asyncio, http.client, typing` that one function
# each needs (the fingerprint, a request body, a file path, the lsof fallback, run ids),
# and dataclasses (the backends' and options' classes, made by the first construct).
STDLIB_BEYOND_FLOOR = (
    "json",
    "hashlib",
    "hmac",
    "secrets",
    "pathlib",
    "shutil",
    "bz2",
    "lzma",
    "uuid",
    "platform",
    "importlib.util",
    "dataclasses",
)
# taskapp's own construct- and start-time machinery: imported by the first construct or
# start, not by the import.
START_MACHINERY = (
    "taskapp.core.backends",
    "taskapp.core.options",
    "taskapp.core.env_keys",
    "taskapp.core.hookspecs",
    "taskapp.core.plugins",
    "taskapp.core.client",
    "taskapp.core.transport",
    "taskapp.core.health",
    "taskapp.core.ports",
    "taskapp.core.supervisor",
)


def added_by(line: str) -> set[str]:
    """The modules ``line`` adds to ``sys.modules`` in a fresh interpreter."""
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        f"{line}\n"
        "print(' '.join(sorted(set(sys.modules) - before)))\n"
    )
    done = run_child([sys.executable, "-c", code], capture_output=True, check=True, timeout=60)
    return set(done.stdout.decode().strip().splitlines()[-1].split())


@pytest.mark.parametrize(
    "line", ["import taskapp", "from taskapp import InProcessTaskApp", "import taskapp.core.errors"]
)
def test_the_import_line_stays_off_the_start_time_modules(line: str) -> None:
    added = added_by(line)
    assert "taskapp" in added  # the line ran in a fresh interpreter
    forbidden = {*THIRD_PARTY, *STDLIB_BEYOND_FLOOR, *START_MACHINERY}
    assert not added & forbidden, sorted(added & forbidden)


def test_the_class_line_imports_the_lifecycle_and_nothing_of_the_contract() -> None:
    added = added_by("from taskapp import InProcessTaskApp")
    assert "taskapp.core.lifecycle" in added
    assert not {m for m in added if m.startswith(("taskapp.plugins", "taskapp.core.contract"))}


def test_hookimpl_is_pluggys_marker_imported_on_first_use() -> None:
    code = (
        "import sys, taskapp\n"
        "assert 'pluggy' not in sys.modules\n"
        "@taskapp.hookimpl\n"
        "def register_tunnels(register): pass\n"
        "import pluggy\n"
        "assert isinstance(taskapp.hookimpl, pluggy.HookimplMarker)\n"
        "assert hasattr(register_tunnels, 'taskapp_impl')\n"
        "from taskapp import hookimpl\n"
        "assert hookimpl is taskapp.hookimpl\n"
    )
    run_child([sys.executable, "-c", code], check=True, timeout=60)


def test_a_start_imports_what_the_import_left_out() -> None:
    """The deferred imports are really reached: a local start in a fresh process."""
    code = (
        "import sys\n"
        "from fastapi import FastAPI\n"
        "from taskapp import InProcessTaskApp\n"
        "app = FastAPI()\n"
        "@app.get('/health')\n"
        "def health(): return {'ok': True}\n"
        "with InProcessTaskApp(app=app, tunnel_mode='local', port=0, api_key='k' * 16) as t:\n"
        "    assert t.url.startswith('http://')\n"
        "missing = [m for m in ('taskapp.core.health', 'taskapp.core.ports', "
        "'taskapp.core.supervisor', 'taskapp.core.backends', 'pluggy') "
        "if m not in sys.modules]\n"
        "assert not missing, missing\n"
    )
    run_child([sys.executable, "-c", code], check=True, timeout=120)
