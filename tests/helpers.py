"""Plain helpers shared by the tests (no fixtures: those live in tests/conftest.py).

Import them as ``from tests.helpers import ...``; helpers of one area live beside its
tests (``from tests.<area>._x import ...``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import httpx

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
    "TASKAPP",
    "TESTS",
    "BackendChild",
    "assert_released",
    "backend_child_env",
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


#: The installed console script (``pip install -e .``), "" when it is missing.
TASKAPP = shutil.which("taskapp") or ""


def backend_child_env(key: str, **extra: str) -> dict[str, str]:
    """This environment for a backend child: without the host's task-app/OpenAI keys, backend
    settings and proxies; ``TASKAPP_BACKEND_API_KEY`` = ``key``; then ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ENVIRONMENT_API_KEY", "TASKAPP_BACKEND", "OPENAI_"))
        and not k.lower().endswith("_proxy")
    }
    env["TASKAPP_BACKEND_API_KEY"] = key
    env.update(extra)
    return env


class BackendChild:
    """``taskapp backend serve|worker`` (the installed console script) as a child process:
    the one launcher of the job backend for the tests and benchmarks.

    ``serve`` listens on ``port`` (0: a free one) and is ready once it prints its ``url``;
    ``worker`` once it claims jobs. A reader thread collects stderr into ``lines`` from the
    start; with ``expect_ready=False`` nothing reads it (the caller owns ``proc``'s pipes).
    ``start`` again after ``stop`` restarts it on the same database."""

    def __init__(
        self, kind: str, db: Path | str, *extra: str, env: dict[str, str], cwd: Path, port: int = 0
    ) -> None:
        self.kind = kind
        self.db = db
        self.args = [TASKAPP, "backend", kind, "--db", str(db), *extra]
        if kind == "serve":
            self.args += ["--port", str(port)]
        self.env = env
        self.key = env.get("TASKAPP_BACKEND_API_KEY", "")
        self.cwd = cwd
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.url = ""
        self._reader: threading.Thread | None = None

    def start(self, *extra: str, expect_ready: bool = True, ready_timeout: float = 60) -> Self:
        """Start it (``extra``: more options for this start only); wait until it is ready."""
        assert TASKAPP, "the taskapp console script is not installed (pip install -e .)"
        self.lines = []
        self.url = ""
        self._reader = None
        self.proc = start_child(
            [*self.args, *extra], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL, text=True, env=self.env, cwd=self.cwd,
        )  # fmt: skip
        if not expect_ready:
            return self
        ready = threading.Event()
        self._reader = threading.Thread(target=self._read, args=(self.proc, ready), daemon=True)
        self._reader.start()
        ready.wait(ready_timeout)
        if not (self.url if self.kind == "serve" else "claiming jobs from" in self.output):
            self.stop(signal.SIGKILL)
            raise AssertionError(f"taskapp backend {self.kind} did not start:\n{self.output}")
        return self

    def _read(self, proc: subprocess.Popen[str], ready: threading.Event) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.lines.append(line)
            match = re.search(r"serving on (http://\S+)", line)
            if match:
                self.url = match.group(1)
            if match or "claiming jobs from" in line:
                ready.set()
        ready.set()

    @property
    def output(self) -> str:
        """What it wrote to stderr so far."""
        return "".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig``; SIGKILL after 30 s; its exit status."""
        assert self.proc is not None, "not started"
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        return self.proc.returncode

    def close(self) -> None:
        """Stop it if it runs (for fixtures' ``finally``)."""
        if self.proc is not None and self.proc.poll() is None:
            self.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def request(
        self, method: str, path: str, *, key: str | None = None, timeout: float = 30, **kw: Any
    ) -> httpx.Response:
        """One request to ``serve`` with its key (``key``: another one; "" none)."""
        key = self.key if key is None else key
        headers = dict(kw.pop("headers", {}))
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return httpx.request(
            method, self.url + path, headers=headers, timeout=timeout, trust_env=False, **kw
        )

    def api(self, method: str, path: str, *, expect: int | None = None, **kw: Any) -> Any:
        """A request's JSON answer; its status ``expect`` (default: any 2xx)."""
        response = self.request(method, path, timeout=15, **kw)
        if expect is not None:
            assert response.status_code == expect, response.text
        else:
            response.raise_for_status()
        return response.json()

    def wait_for(
        self, job_id: str, until: Callable[[Any], bool] | tuple[str, ...], timeout: float = 90
    ) -> dict[str, Any]:
        """The job once ``until(job)`` holds, or its status is one of ``until`` (polled
        every 0.1 s; an error answer is polled past)."""
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            response = self.request("GET", f"/api/jobs/{job_id}", timeout=15)
            job = response.json()
            if response.is_success and (
                job.get("status") in until if isinstance(until, tuple) else until(job)
            ):
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} never got there: {job}")


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
