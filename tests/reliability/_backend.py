"""``taskapp backend serve`` as a child process for the hostile-client tests (issue 24),
and a catch-all HTTP server that records every request it gets (what a client-chosen
URL would see).

Self-contained (the jobs tests may move): the installed console script on a free port,
its own SQLite file, an environment holding host secrets the backend must never send.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Self

import httpx

from tests.helpers import start_child
from tests.optimize._optimize_helpers import STAND_IN_MUTATION
from tests.optimize._optimize_helpers import toy_toml as shared_toy_toml

TASKAPP = shutil.which("taskapp") or ""
KEY = "backend-security-key-0123456789"
HOST_SECRET = "host-secret-of-the-backend-0001"
ENV_KEY_SECRET = "environment-api-key-of-the-backend-0002"
OPENAI_SECRET = "sk-openai-key-of-the-backend-0003"
MODEL_KEY = "operator-model-key-0004"
SECRETS = (KEY, HOST_SECRET, ENV_KEY_SECRET, OPENAI_SECRET, MODEL_KEY)


def toy_toml(budget: int = 40, mutation: str = STAND_IN_MUTATION, head: str = "") -> str:
    """The toy job config with 10 validation seeds and a 1 s health timeout."""
    return shared_toy_toml(budget, 10, health_timeout=1.0, mutation=mutation, head=head)


def backend_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ENVIRONMENT_API_KEY", "TASKAPP_BACKEND", "OPENAI_"))
        and not k.lower().endswith("_proxy")
    }
    env.update(
        TASKAPP_BACKEND_API_KEY=KEY,
        BS_HOST_SECRET=HOST_SECRET,
        ENVIRONMENT_API_KEY=ENV_KEY_SECRET,
        OPENAI_API_KEY=OPENAI_SECRET,
        BS_MODEL_KEY=MODEL_KEY,
    )
    env.update(extra)
    return env


class Backend:
    """``taskapp backend serve --port 0`` in a child process."""

    def __init__(self, db: Path, *extra: str, port: int = 0) -> None:
        self.db = db
        self.extra = extra
        self.port = port
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.output: list[str] = []

    def start(self, *, expect_ready: bool = True) -> Self:
        assert TASKAPP, "the taskapp console script is not installed (pip install -e .)"
        self.output = []
        self.proc = start_child(
            [
                TASKAPP,
                "backend",
                "serve",
                "--port",
                str(self.port),
                "--db",
                str(self.db),
                *self.extra,
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
            env=backend_env(),
            cwd=self.db.parent,
        )
        if not expect_ready:
            return self
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.output.append(line)
            match = re.search(r"serving on (http://\S+)", line)
            if match:
                self.url = match.group(1)
                threading.Thread(target=self._drain, daemon=True).start()
                return self
        self.stop()
        raise AssertionError("the backend did not start:\n" + "".join(self.output))

    def _drain(self) -> None:
        proc = self.proc
        if proc is None or proc.stderr is None:
            return
        for line in proc.stderr:
            self.output.append(line)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    def request(self, method: str, path: str, *, key: str | None = KEY, **kw: Any) -> Any:
        headers = dict(kw.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return httpx.request(
            method, self.url + path, headers=headers, timeout=30, trust_env=False, **kw
        )

    def submit(self, **body: Any) -> httpx.Response:
        return self.request("POST", "/api/jobs", json=body)  # type: ignore[no-any-return]

    def wait_for(self, job_id: str, statuses: tuple[str, ...], timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        job: Any = {}
        while time.monotonic() < deadline:
            job = self.request("GET", f"/api/jobs/{job_id}").json()
            if job.get("status") in statuses:
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} never reached {statuses}: {job}")


def assert_envelope(response: httpx.Response, status: int | tuple[int, ...]) -> str:
    """The answer has ``status`` and the documented error envelope; its message."""
    wanted = (status,) if isinstance(status, int) else status
    assert response.status_code in wanted, (response.status_code, response.text[:300])
    data = response.json()
    error = data["detail"]["error"]
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    return str(error["message"])


def raw_request(host: str, port: int, data: bytes, *, read_timeout: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection; what comes back until close or timeout."""
    with socket.create_connection((host, port), timeout=read_timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


class Recorder:
    """**Stand-in** for a client-chosen URL: a real uvicorn server in this process that
    answers 401 to everything and records each request's URL, headers and body."""

    def __init__(self) -> None:
        import uvicorn

        self.seen: list[str] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            headers = b"\n".join(k + b": " + v for k, v in scope["headers"])
            self.seen.append(
                f"{scope['method']} {scope['path']}?{scope['query_string'].decode()}\n"
                f"{headers.decode('latin-1')}\n{body.decode('utf-8', 'replace')}"
            )
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, log_config=None, log_level="warning", lifespan="off")
        )
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the recorder did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def text(self) -> str:
        return "\n".join(self.seen)
