"""``taskapp backend serve`` and ``taskapp backend worker`` as real child processes (the
installed console script), and the toy task app and configs the job tests submit."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import start_child
from tests.optimize._optimize_helpers import toy_toml as shared_toy_toml

TASKAPP = shutil.which("taskapp") or ""
KEY = "backend-test-key-0123456789"


def toy_toml(budget: int = 150, val: int = 30, patience: int = 50) -> str:
    """The toy job config with the jobs tests' health timeout (2 s)."""
    return shared_toy_toml(budget, val, patience, health_timeout=2.0)


def child_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ENVIRONMENT_API_KEY", "TASKAPP_BACKEND", "OPENAI_"))
        and not k.lower().endswith("_proxy")
    }
    env["TASKAPP_BACKEND_API_KEY"] = KEY
    env.update(extra)
    return env


class Proc:
    """A ``taskapp backend serve|worker`` child; its stderr is collected as it runs."""

    def __init__(self, kind: str, db: str, *extra: str, cwd: Path) -> None:
        assert TASKAPP, "the taskapp console script is not installed (pip install -e .)"
        args = [TASKAPP, "backend", kind, "--db", db, *extra]
        if kind == "serve":
            args += ["--port", "0"]
        self.lines: list[str] = []
        self.url = ""
        self._ready = threading.Event()
        self.proc = start_child(
            args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            text=True, env=child_env(), cwd=cwd,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(60):
            self.stop(signal.SIGKILL)
            raise AssertionError(f"taskapp backend {kind} did not start:\n{self.output}")

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            match = re.search(r"serving on (http://\S+)", line)
            if match:
                self.url = match.group(1)
            if match or "claiming jobs from" in line:
                self._ready.set()
        self._ready.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode

    def api(self, method: str, path: str, *, expect: int | None = None, **kw: Any) -> Any:
        response = httpx.request(method, self.url + path,
                                 headers={"Authorization": f"Bearer {KEY}", **kw.pop("headers", {})},
                                 timeout=15, trust_env=False, **kw)  # fmt: skip
        if expect is not None:
            assert response.status_code == expect, response.text
        else:
            response.raise_for_status()
        return response.json()

    def wait_for(self, job_id: str, predicate: Any, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = self.api("GET", f"/api/jobs/{job_id}")
            if predicate(job):
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} never got there: {job}")
