"""The page's own routes under hostile and many clients: ``/api/stream``, ``/static/``,
``/jobs/...``, ``/api/jobs/ID/seeds``.

A real ``taskapp backend serve`` child process; real sockets. ``TASKAPP_FUZZ=long`` runs
more clients.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.jobs.test_jobs import KEY, Backend
from tests.optimize._optimize_helpers import toy_toml

LONG = os.environ.get("TASKAPP_FUZZ") == "long"
CLIENTS = 150 if LONG else 30
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    # --workers 0: an API process alone, so submitted jobs stay queued
    server = Backend(tmp_path_factory.mktemp("api") / "jobs.sqlite3").start("--workers", "0")
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()


def submit(backend: Backend) -> str:
    job = backend.api(
        "POST", "/api/jobs", json={"config_toml": toy_toml(), "task_app_url": "http://127.0.0.1:9"}
    )
    return str(job["id"])


def get(backend: Backend, path: str, **kw: Any) -> httpx.Response:
    return httpx.get(backend.url + path, trust_env=False, timeout=10, **kw)


@pytest.mark.parametrize("since", ["abc", "nan", "inf", "-inf", "1e999", "", "0x10", "9" * 400])
def test_a_bad_since_is_a_clear_400_not_an_endless_stream(backend: Backend, since: str) -> None:
    started = time.monotonic()
    with httpx.stream("GET", f"{backend.url}/api/stream?since={since}", headers=AUTH,
                      trust_env=False, timeout=10) as response:  # fmt: skip
        assert response.status_code in (400, 422), response.status_code
        body = json.loads(response.read())
    assert time.monotonic() - started < 5
    assert "since" in json.dumps(body)
    assert KEY not in json.dumps(body)


def test_many_stream_clients_each_see_a_change_and_the_api_stays_responsive(
    backend: Backend,
) -> None:
    job_id = submit(backend)
    since = backend.api("GET", f"/api/jobs/{job_id}")["updated_at"]
    seen: list[float] = []
    lock = threading.Lock()
    ready = threading.Barrier(CLIENTS + 1, timeout=30)

    def follow() -> None:
        with httpx.stream("GET", f"{backend.url}/api/stream?since={since}", headers=AUTH,
                          trust_env=False, timeout=30) as response:  # fmt: skip
            assert response.status_code == 200
            ready.wait()
            for line in response.iter_lines():
                if line.startswith("data:") and '"cancelled"' in line and job_id in line:
                    with lock:
                        seen.append(time.monotonic())
                    return

    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(follow) for _ in range(CLIENTS)]
        ready.wait()
        started = time.monotonic()
        health = get(backend, "/health")
        assert health.status_code == 200
        assert time.monotonic() - started < 2  # the streams do not starve the API
        cancelled_at = time.monotonic()
        backend.api("POST", f"/api/jobs/{job_id}/cancel")
        for future in futures:
            future.result(timeout=30)
    assert len(seen) == CLIENTS
    assert max(seen) - cancelled_at < 5  # every client heard of it, within seconds
    # the streams are gone with their clients: the API answers as before
    assert get(backend, "/api/jobs?limit=1", headers=AUTH).status_code == 200


def test_a_client_that_never_reads_its_stream_harms_no_one(backend: Backend) -> None:
    host, port = urlsplit(backend.url).hostname, urlsplit(backend.url).port
    assert host is not None and port is not None
    stuck = []
    for _ in range(5):
        s = socket.create_connection((host, port), timeout=5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        s.sendall(
            f"GET /api/stream?since=0 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode()
        )
        stuck.append(s)  # never read: the kernel buffers fill
    try:
        for _ in range(20):  # lots of changes to push at the stuck clients
            submit(backend)
        started = time.monotonic()
        assert get(backend, "/api/jobs?limit=500", headers=AUTH).status_code == 200
        assert time.monotonic() - started < 3
    finally:
        for s in stuck:
            s.close()
    assert get(backend, "/health").status_code == 200


@pytest.mark.parametrize("name", ["..%2fstore.py", "%2e%2e/%2e%2e/etc/passwd", "jobs.js%00.txt", "x" * 5000,
                                  "JOBS.JS", "index.html"])  # fmt: skip
def test_static_serves_its_files_only(backend: Backend, name: str) -> None:
    response = get(backend, f"/static/{name}")
    assert response.status_code in (404, 414), (name, response.status_code)
    assert "import " not in response.text and "root:" not in response.text


def test_static_with_a_trailing_slash_redirects_to_the_file_itself(backend: Backend) -> None:
    response = get(backend, "/static/jobs.js/")
    assert response.status_code == 307 and response.headers["location"].endswith("/static/jobs.js")


def test_job_and_compare_urls_never_echo_the_address(backend: Backend) -> None:
    hostile = "%3Cscript%3Ealert(1)%3C%2Fscript%3E"
    paths = (f"/jobs/{hostile}", "/jobs/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E",
             f"/compare?a={hostile}&b=x", f"/jobs?q={hostile}")  # fmt: skip
    for path in paths:
        response = get(backend, path)
        if response.status_code == 404:  # the encoded "/" makes another path: a JSON answer
            assert response.headers["content-type"].startswith("application/json")
            continue
        assert response.status_code == 200
        assert "alert(1)" not in response.text and "<script>" not in response.text
    assert get(backend, paths[1]).status_code == 200  # a job id that is markup: the page, inert


def test_seeds_needs_the_key_and_a_job(backend: Backend) -> None:
    assert get(backend, "/api/jobs/pl_nope/seeds").status_code == 401
    missing = get(backend, "/api/jobs/pl_nope/seeds", headers=AUTH)
    assert missing.status_code == 404 and "pl_nope" in missing.json()["error"]["message"]
    job_id = submit(backend)
    empty = get(backend, f"/api/jobs/{job_id}/seeds", headers=AUTH).json()
    assert empty["seeds"] == [] and empty["best_idx"] is None  # queued: nothing scored yet
