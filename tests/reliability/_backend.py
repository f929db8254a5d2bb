"""``taskapp backend serve`` as a child process for the hostile-client tests (issue 24),
and a catch-all HTTP server that records every request it gets (what a client-chosen
URL would see).

The backend is tests.helpers.BackendChild (the installed console script on a free port),
here with its own SQLite file and an environment holding host secrets it must never send.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from taskapp.jobs.store import SqliteJobStore
from tests.cli._cli_helpers import _ThreadedUvicorn
from tests.helpers import BackendChild, backend_child_env
from tests.optimize._optimize_helpers import STAND_IN_MUTATION
from tests.optimize._optimize_helpers import toy_toml as shared_toy_toml

KEY = "backend-security-key-0123456789"
HOST_SECRET = "host-secret-of-the-backend-0001"
ENV_KEY_SECRET = "environment-api-key-of-the-backend-0002"
OPENAI_SECRET = "sk-openai-key-of-the-backend-0003"
MODEL_KEY = "operator-model-key-0004"
SECRETS = (KEY, HOST_SECRET, ENV_KEY_SECRET, OPENAI_SECRET, MODEL_KEY)


@contextlib.contextmanager
def store_with_a_job(folder: Path) -> Iterator[tuple[SqliteJobStore, str]]:
    """A SQLite job store in ``folder`` (owned by this process) holding one queued job:
    (store, job id); the store is closed at the end."""
    store = SqliteJobStore(folder / "jobs.sqlite3", owner=True)
    try:
        job_id, _ = store.create(
            {"budget": 10}, task_app_url="http://127.0.0.1:9", task_app_key=None,
            worker_token=None, warnings=[],
        )  # fmt: skip
        yield store, job_id
    finally:
        store.close()


def toy_toml(budget: int = 40, mutation: str = STAND_IN_MUTATION, head: str = "") -> str:
    """The toy job config with 10 validation seeds and a 1 s health timeout."""
    return shared_toy_toml(budget, 10, health_timeout=1.0, mutation=mutation, head=head)


def backend_env(**extra: str) -> dict[str, str]:
    secrets = {
        "BS_HOST_SECRET": HOST_SECRET,
        "ENVIRONMENT_API_KEY": ENV_KEY_SECRET,
        "OPENAI_API_KEY": OPENAI_SECRET,
        "BS_MODEL_KEY": MODEL_KEY,
    }
    return backend_child_env(KEY, **{**secrets, **extra})


class Backend(BackendChild):
    """``taskapp backend serve --port 0`` in a child process, with the host secrets in its
    environment."""

    db: Path

    def __init__(self, db: Path, *extra: str, port: int = 0) -> None:
        super().__init__("serve", db, *extra, env=backend_env(), cwd=db.parent, port=port)

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    def submit(self, **body: Any) -> httpx.Response:
        return self.request("POST", "/api/jobs", json=body)


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


class Recorder(_ThreadedUvicorn):
    """**Stand-in** for a client-chosen URL: a real uvicorn server in this process that
    answers 401 to everything and records each request's URL, headers and body."""

    def __init__(self) -> None:
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

        super().__init__(app)

    def text(self) -> str:
        return "\n".join(self.seen)
