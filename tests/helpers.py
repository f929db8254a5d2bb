"""Plain helpers shared by the tests (no fixtures: those live in tests/conftest.py).

Import them as ``from tests.helpers import ...``; helpers of one area live beside its
tests (``from tests.<area>._x import ...``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

# The testing kit taskapp ships (docs/testing.md): its helpers are the ones these tests use.
from taskapp.testing.helpers import assert_released as kit_assert_released
from taskapp.testing.helpers import free_port, port_is_free, wait_until

#: The repository's root folder (the checkout the tests run from).
REPO = Path(__file__).resolve().parent.parent
#: tests/ itself.
TESTS = REPO / "tests"
#: Fixture distributions and files (tests/fixtures/).
FIXTURES = TESTS / "fixtures"

__all__ = [
    "FIXTURES",
    "REPO",
    "TESTS",
    "assert_released",
    "demo_config",
    "free_port",
    "minimal_app",
    "port_is_free",
    "read_line_with",
    "run_script",
    "server_stack",
    "start_script",
    "taskapp_threads",
    "wait_until",
]


def server_stack() -> str:
    """Which stack uvicorn's ``auto`` picks here: 'plain' (asyncio, h11) or 'fast' (uvloop, httptools)."""
    from taskapp.core.serving import describe_stack

    return "plain" if describe_stack().startswith("plain") else "fast"


def taskapp_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("taskapp-") and t.is_alive()]


def assert_released(port: int) -> None:
    """Nothing of a task app is left: no taskapp thread, the port can be bound again (at
    once: a stopped task app releases its port before stop() returns)."""
    assert wait_until(lambda: not [t for t in taskapp_threads() if "uvicorn" in t.name]), (
        f"threads left: {taskapp_threads()}"
    )
    kit_assert_released(port, timeout=0)


def minimal_app(*, key: str | None = None) -> Any:
    """A plain FastAPI app with /health that checks X-API-Key when ``key`` is given."""
    from fastapi import FastAPI, Header, HTTPException

    app = FastAPI()

    @app.get("/health")
    def health(x_api_key: str | None = Header(default=None)) -> dict[str, bool]:
        if key is not None and x_api_key != key:
            raise HTTPException(status_code=401, detail="bad key")
        return {"healthy": True}

    @app.get("/pid")
    def pid() -> dict[str, int]:
        return {"pid": os.getpid()}

    return app


def demo_config(**overrides: Any) -> Any:
    from taskapp import TaskAppConfig

    def describe() -> dict[str, Any]:
        return {"splits": {"train": 4, "test": 2}}

    def instances(seeds: list[int]) -> list[dict[str, Any]]:
        return [
            {"task": {"id": "demo", "name": "Demo"}, "task_metadata": {"seed": s}} for s in seeds
        ]

    async def rollout(request: Any, http_request: Any) -> dict[str, Any]:
        seed = request.env.seed or 0
        return {
            "run_id": request.run_id,
            "metrics": {"outcome_score": 1.0 if seed % 2 == 0 else 0.0},
        }

    fields: dict[str, Any] = {
        "app_id": "demo",
        "name": "Demo",
        "description": "a demo task app",
        "describe_taskset": describe,
        "provide_task_instances": instances,
        "rollout": rollout,
    }
    fields.update(overrides)
    return TaskAppConfig(**fields)


def run_script(
    code: str, *, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter and return the completed process."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def start_script(
    code: str, tmp_path: Path, *, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    script = tmp_path / "child_script.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def read_line_with(proc: subprocess.Popen[str], prefix: str, timeout: float = 30) -> str:
    """Read the child's stdout until a line starting with ``prefix``; return the rest."""
    assert proc.stdout is not None
    result: list[str] = []

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(prefix):
                result.append(line[len(prefix) :].strip())
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        proc.kill()
        _, err = proc.communicate(timeout=5)
        raise AssertionError(f"child never printed {prefix!r}; stderr:\n{err}")
    return result[0]
