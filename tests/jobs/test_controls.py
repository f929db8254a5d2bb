"""The job lifecycle over HTTP on a real ``taskapp backend serve`` (both stores):
Idempotency-Key, pause/resume/stop/cancel/retry/delete on running jobs, listing with a
cursor, and a submit whose reply is lost (PromptLearningJob sends it again: one job)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskapp import InProcessTaskApp, PromptLearningJob
from tests.jobs._procs import KEY, Proc, toy_toml
from tests.optimize._optimize_helpers import ToyTask


@pytest.fixture
def toy_app() -> Iterator[InProcessTaskApp]:
    task = ToyTask(latency=0.05)
    with InProcessTaskApp(config=task.config(), port=0, api_key="toy-key-123456") as app:
        yield app


@pytest.fixture
def serve(db: str, tmp_path: Path) -> Iterator[Proc]:
    proc = Proc("serve", db, "--workers", "2", cwd=tmp_path)
    try:
        yield proc
    finally:
        proc.stop()


def _body(app: InProcessTaskApp, budget: int) -> dict[str, Any]:
    return {"config_toml": toy_toml(budget), "task_app_url": app.url,
            "task_app_api_key": app.api_key}  # fmt: skip


def test_idempotency_key_gives_the_same_job_and_409_for_another_body(
    serve: Proc, toy_app: InProcessTaskApp
) -> None:
    headers = {"Idempotency-Key": "nightly-2026-12-07"}
    first = serve.api("POST", "/api/jobs", json=_body(toy_app, 40), headers=headers, expect=201)
    again = serve.api("POST", "/api/jobs", json=_body(toy_app, 40), headers=headers, expect=200)
    assert again["id"] == first["id"]
    other = serve.api("POST", "/api/jobs", json=_body(toy_app, 41), headers=headers, expect=409)
    assert other["error"]["type"] == "conflict" and first["id"] in other["error"]["message"]
    bad = serve.api("POST", "/api/jobs", json=_body(toy_app, 40),
                    headers={"Idempotency-Key": "x" * 201}, expect=400)  # fmt: skip
    assert "Idempotency-Key" in bad["error"]["message"]
    assert serve.api("GET", "/api/jobs")["total"] == 1


def test_pause_resume_stop_cancel_retry_delete(serve: Proc, toy_app: InProcessTaskApp) -> None:
    job = serve.api("POST", "/api/jobs", json=_body(toy_app, 3000), expect=201)
    job_id = job["id"]
    serve.wait_for(job_id, lambda j: j["status"] == "running" and j["baseline_score"] is not None)
    serve.api("POST", f"/api/jobs/{job_id}/pause")
    paused = serve.wait_for(job_id, lambda j: j["status"] == "paused", timeout=30)
    assert paused["status_reason"] == "paused on request" and paused["lease_owner"] is None
    calls = paused["metric_calls"]
    resumed = serve.api("POST", f"/api/jobs/{job_id}/resume")
    assert resumed["status"] in ("queued", "running")
    serve.wait_for(job_id, lambda j: j["status"] == "running" and j["metric_calls"] > calls)
    serve.api("POST", f"/api/jobs/{job_id}/stop")
    done = serve.wait_for(job_id, lambda j: j["status"] != "running", timeout=30)
    assert done["status"] == "succeeded", done
    assert done["status_reason"] == "stopped on request: the best found so far"
    assert done["has_result"] and done["best_score"] >= done["baseline_score"]
    events = serve.api("GET", f"/api/jobs/{job_id}/events?limit=5000")["events"]
    assert [e["kind"] for e in events].count("baseline") == 1  # the pause did not re-score
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))

    # cancel: no result
    other = serve.api("POST", "/api/jobs", json=_body(toy_app, 3000), expect=201)["id"]
    serve.wait_for(other, lambda j: j["metric_calls"] > 0)
    serve.api("POST", f"/api/jobs/{other}/cancel")
    cancelled = serve.wait_for(other, lambda j: j["status"] == "cancelled", timeout=30)
    assert not cancelled["has_result"] and cancelled["error"] is None  # a cancel is no error
    assert cancelled["status_reason"] == "cancelled on request while running"
    # not allowed in these states: 409 with the envelope
    refused = serve.api("POST", f"/api/jobs/{job_id}/pause", expect=409)
    assert refused["error"]["type"] == "conflict"
    # retry the cancelled one; delete the finished one; a running job is not deleted
    assert serve.api("POST", f"/api/jobs/{other}/retry")["status"] in ("queued", "running")
    serve.wait_for(other, lambda j: j["status"] == "running")
    serve.api("DELETE", f"/api/jobs/{other}", expect=409)
    serve.api("POST", f"/api/jobs/{other}/cancel")
    serve.wait_for(other, lambda j: j["status"] == "cancelled", timeout=30)
    assert serve.api("DELETE", f"/api/jobs/{job_id}") == {"id": job_id, "deleted": True}
    serve.api("GET", f"/api/jobs/{job_id}", expect=404)
    serve.api("DELETE", f"/api/jobs/{job_id}", expect=404)


def test_listing_pages_with_a_cursor_and_filters(serve: Proc, toy_app: InProcessTaskApp) -> None:
    ids = []
    for _ in range(5):
        job = serve.api("POST", "/api/jobs", json=_body(toy_app, 5000), expect=201)
        ids.append(job["id"])
        serve.api("POST", f"/api/jobs/{job['id']}/cancel")
    for job_id in ids:  # a job already claimed is cancelled after its current step
        serve.wait_for(job_id, lambda j: j["status"] == "cancelled", timeout=30)
    seen, cursor = [], None
    while True:
        page = serve.api(
            "GET", "/api/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})}
        )
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    assert serve.api("GET", "/api/jobs?status=cancelled,failed")["total"] == 5
    assert serve.api("GET", "/api/jobs?status=succeeded")["jobs"] == []
    assert serve.api("GET", "/api/jobs?since=2999-01-01T00:00:00Z")["total"] == 0
    assert serve.api("GET", "/api/jobs?until=2999-01-01")["total"] == 5
    for bad in ("status=nope", "since=yesterday", "cursor=%21%21"):
        assert serve.api("GET", f"/api/jobs?{bad}", expect=400)["error"]["type"] == "bad_request"


class _DropFirstReply:
    """A TCP proxy to the backend that forwards the first request but closes the
    connection instead of passing its reply back (a reply lost on the way)."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").rsplit(":", 1)
        self.target = (host, int(port))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.dropped = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.target)
        drop = self.dropped == 0
        self.dropped += 1 if drop else 0

        def forward(src: socket.socket, dst: socket.socket, swallow: bool) -> None:
            try:
                while data := src.recv(65536):
                    if not swallow:
                        dst.sendall(data)
                    else:  # the backend answered: the client never sees it
                        client.shutdown(socket.SHUT_RDWR)
                        return
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    with contextlib.suppress(OSError):
                        s.close()

        threading.Thread(target=forward, args=(client, upstream, False), daemon=True).start()
        forward(upstream, client, drop)

    def close(self) -> None:
        self.sock.close()


def test_a_submit_whose_reply_is_lost_makes_one_job(
    serve: Proc, toy_app: InProcessTaskApp, tmp_path: Path
) -> None:
    config = tmp_path / "job.toml"
    config.write_text(toy_toml(40))
    proxy = _DropFirstReply(serve.url)
    try:
        client = PromptLearningJob(proxy.url, KEY)
        job_id = client.submit_sync(config, task_app_url=toy_app.url,
                                    task_app_api_key=toy_app.api_key)  # fmt: skip
    finally:
        proxy.close()
    assert proxy.dropped == 1
    listed = serve.api("GET", "/api/jobs")
    assert [j["id"] for j in listed["jobs"]] == [job_id]
