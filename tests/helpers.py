"""Plain helpers shared by the tests (no fixtures: those live in tests/conftest.py).

Import them as ``from tests.helpers import ...``; helpers of one area live beside its
tests (``from tests.<area>._x import ...``).
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
import textwrap
import threading
from pathlib import Path
from typing import Any

from taskapp.core.processes import guarded_popen

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
    "build_wheels",
    "demo_config",
    "free_port",
    "install_wheels",
    "minimal_app",
    "new_venv",
    "port_is_free",
    "read_line_with",
    "run_child",
    "run_script",
    "server_stack",
    "start_child",
    "start_script",
    "taskapp_threads",
    "venv_with_distributions",
    "wait_until",
]


# --- child processes: every child a test starts dies with the test process -------------
# A killed test run (CI timeout, SIGKILL, Ctrl-C) must leave nothing behind, so tests
# start children only through these two (tests/core/test_killed_test_run.py checks that
# no test module calls subprocess.Popen/run itself). They fork through taskapp's own orphan
# guard (taskapp.core.processes.guarded_popen: a death signal on Linux).


def start_child(args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(args, **kwargs)``; the child is SIGKILLed if this process dies."""
    return guarded_popen(args, **kwargs)


def run_child(
    args: Any,
    *,
    input: Any = None,
    capture_output: bool = False,
    timeout: float | None = None,
    check: bool = False,
    **kwargs: Any,
) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run`` through :func:`start_child` (same arguments, same result)."""
    if input is not None:
        kwargs["stdin"] = subprocess.PIPE
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    with start_child(args, **kwargs) as process:
        try:
            stdout, stderr = process.communicate(input, timeout=timeout)
        except BaseException:
            process.kill()
            process.wait()
            raise
        code = process.poll()
        assert code is not None
    if check and code:
        raise subprocess.CalledProcessError(code, process.args, output=stdout, stderr=stderr)
    return subprocess.CompletedProcess(process.args, code, stdout, stderr)


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
    return run_child(
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
    return start_child(
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


# --- venvs with real installed distributions --------------------------------------------
# Built only from what `.ci/run` installs (`.[test]` in the venv running the tests): the
# wheels are built by THIS environment's pip and hatchling, and the new venv sees THIS
# environment's site-packages through a .pth file. Never `--system-site-packages`: that
# shows the base interpreter's packages, which on a fresh machine have no hatchling,
# fastapi or uvicorn (issue 21 item 1).


def _pip(*args: str, timeout: float = 300) -> None:
    result = run_child(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"pip {args[0]} failed:\n{result.stdout}{result.stderr}")


def build_wheels(out: Path, *sources: Path) -> list[Path]:
    """Build a wheel of each source tree into ``out`` with this environment's pip and build
    backend (no build isolation, no index: nothing is downloaded)."""
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.glob("*.whl"))
    _pip(
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-w",
        str(out),
        *map(str, sources),
    )
    return sorted(set(out.glob("*.whl")) - before)


def install_wheels(python: Path, *wheels: Path) -> None:
    """Install ``wheels`` into the venv of ``python`` (which needs no pip of its own)."""
    _pip("--python", str(python), "install", "--no-deps", "--no-index", *map(str, wheels))


def _purelib(python: Path) -> Path:
    found = run_child(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return Path(found.stdout.strip())


def new_venv(root: Path, *, taskapp_from_checkout: bool = True) -> Path:
    """A venv at ``root`` (no pip) that sees this environment's packages after its own, and
    this checkout's taskapp first when ``taskapp_from_checkout``; returns its python."""
    run_child(
        [sys.executable, "-m", "venv", "--without-pip", str(root)],
        capture_output=True,
        timeout=120,
        check=True,
    )
    python = root / "bin" / "python"
    purelib = _purelib(python)
    outer = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    paths = [str(REPO / "src")] if taskapp_from_checkout else []
    paths += [p for p in outer if Path(p).is_dir() and p != str(purelib)]
    # A .pth file appends its lines to sys.path: the venv's own packages still come first.
    (purelib / "_taskapp_tests_outer.pth").write_text("\n".join(dict.fromkeys(paths)) + "\n")
    return python


def venv_with_distributions(root: Path, *sources: Path) -> Path:
    """A :func:`new_venv` with the distributions at ``sources`` built and installed as
    wheels (real ``importlib.metadata`` entry points); returns its python."""
    python = new_venv(root)
    install_wheels(python, *build_wheels(root.parent / f"{root.name}-wheels", *sources))
    return python
