"""Helpers for the command-line tests: run the installed ``taskapp`` script like a user.

* :func:`taskapp` runs one command to completion (a subprocess of the console script).
* :class:`Served` runs ``taskapp serve`` in the background and reads its URL.
* :class:`ChatStandIn` is a **stand-in** for an OpenAI-compatible model server (a tiny
  FastAPI app on real uvicorn, in a thread): there is no model to call here, so it answers
  chat completions by a fixed rule and records what it was sent.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from tests.helpers import free_port, run_child, start_child

TASKAPP = shutil.which("taskapp") or ""
KEY = "test-key-0123456789abcdef"
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"


def env(**extra: str) -> dict[str, str]:
    """The environment of a child: no inherited task-app key unless given, no proxies."""
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ENVIRONMENT_API_KEY", "ENVIRONMENT_API_KEY_ALIASES")
        and not k.lower().endswith("_proxy")
    }
    base["COLUMNS"] = "120"
    base.update(extra)
    return base


def taskapp(
    *args: str, timeout: float = 45.0, cwd: str | Path | None = None, **env_extra: str
) -> subprocess.CompletedProcess[str]:
    assert TASKAPP, "the taskapp console script is not installed (pip install -e .)"
    return run_child(
        [TASKAPP, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(**env_extra),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def children_of(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


class Served:
    """``taskapp serve ...`` in the background; ``url`` once it printed it.

    Two reader threads drain stdout and stderr (so the child never blocks on a full pipe)
    into ``stdout_lines`` / ``stderr_lines``.
    """

    def __init__(
        self,
        *args: str,
        port: int | None = None,
        cwd: str | Path | None = None,
        **env_extra: str,
    ) -> None:
        assert TASKAPP
        self.port = port or free_port()
        self.proc = start_child(
            [TASKAPP, "serve", *args, "--port", str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(**env_extra),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=cwd,
        )
        self.stdout_lines: queue.Queue[str] = queue.Queue()
        self.stderr_lines: list[str] = []
        self.stdout = ""
        self.url = ""
        self._readers = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, True), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stderr, False), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _drain(self, stream: Any, is_stdout: bool) -> None:
        for line in stream:
            if is_stdout:
                self.stdout_lines.put(line)
            else:
                self.stderr_lines.append(line)
        if is_stdout:
            self.stdout_lines.put("")

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def wait_url(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.stdout_lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if not line:
                break
            self.stdout += line
            match = re.search(r"url:\s+(\S+)", line)
            if match:
                self.url = match.group(1)
            if line.startswith("press Ctrl-C"):
                return self.url
        self.proc.poll()
        for reader in self._readers:
            reader.join(timeout=1 if self.proc.returncode is not None else 0)
        raise AssertionError(
            f"taskapp serve printed no URL (exit {self.proc.returncode}); "
            f"stdout={self.stdout!r} stderr={self.stderr!r}"
        )

    def stop(self, signum: int = signal.SIGINT, timeout: float = 10.0) -> tuple[int, float, str]:
        """Send ``signum``; return (exit code, seconds to exit, stderr)."""
        started = time.monotonic()
        self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        elapsed = time.monotonic() - started
        for reader in self._readers:
            reader.join(timeout=5)
        return code, elapsed, self.stderr

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.kill()
        for reader in self._readers:
            reader.join(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


class _ThreadedUvicorn:
    """A real uvicorn server in a thread of the test process, on a pre-bound socket."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_config=None, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "stand-in server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


class ChatStandIn(_ThreadedUvicorn):
    """**Stand-in** for an OpenAI-compatible server: ``POST /v1/chat/completions``.

    It is not a model. It answers ``answer`` (default: the intent ``refund`` spelled the
    way models often do, ``"Refund."``), or with HTTP ``fail_status`` when set, and keeps
    every request body and Authorization header in ``requests``.
    """

    def __init__(self, *, answer: str = "Refund.", fail_status: int | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answer = answer
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def completions(request: Request) -> Any:
            body = await request.json()
            self.requests.append(
                {"body": body, "authorization": request.headers.get("authorization")}
            )
            if fail_status is not None:
                return JSONResponse({"error": {"message": "stand-in failure"}}, fail_status)
            return {
                "id": "standin-1",
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self.answer},
                        "finish_reason": "stop",
                    }
                ],
            }

        super().__init__(app)


class NotATaskApp(_ThreadedUvicorn):
    """A web app that is not a task app: HTML at /, 404 elsewhere."""

    def __init__(self) -> None:
        app = FastAPI()

        @app.get("/")
        async def index() -> Any:
            return HTMLResponse("<!doctype html><title>hello</title><p>a blog</p>")

        super().__init__(app)


@contextlib.contextmanager
def served(*args: str, port: int | None = None, **env_extra: str) -> Iterator[Served]:
    with Served(*args, port=port, **env_extra) as server:
        server.wait_url()
        yield server


BETTER_PROMPT_FILE = EXAMPLES_DIR / "support_intents_better_prompt.json"
PYTHON = sys.executable
