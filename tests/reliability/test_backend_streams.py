"""Issue 24 item 4, the benchmark's finding: 500 SSE streams on one job each read the
store (and formatted every event) on every change of that job, so each change cost 500
reads queued on the store's lock ahead of every other client's call (other clients' p95
9.2x idle in ``benchmarks/bench_backend_load.py``). Streams on one job now share one read
per change generation, and nothing is missed."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from taskapp.jobs.service import BackendApi

from ._backend import store_with_a_job


def test_24_4_streams_on_one_job_share_one_store_read_per_change(tmp_path: Path) -> None:
    with store_with_a_job(tmp_path) as (store, job_id):
        reads: list[int] = []
        real_events = store.events

        def counted(job: str, **kw: Any) -> list[dict[str, Any]]:
            reads.append(threading.get_ident())
            time.sleep(0.05)  # a read that takes a while: every stream asks meanwhile
            return real_events(job, **kw)

        store.events = counted  # type: ignore[method-assign,assignment]
        api = BackendApi(store, None, "stream-test-key-0123456789")

        async def main() -> tuple[list[bytes], list[bytes]]:
            streams = [api._sse(job_id, 0) for _ in range(200)]
            first = await asyncio.gather(*(anext(stream) for stream in streams))
            assert len(reads) == 1, f"{len(reads)} store reads for 200 streams"
            store.add_event(job_id, "warning", {"text": "a change"})  # after the read
            second = await asyncio.wait_for(
                asyncio.gather(*(anext(stream) for stream in streams)), 10
            )
            for stream in streams:
                await stream.aclose()  # type: ignore[attr-defined]
            return first, second

        first, second = asyncio.run(main())
        assert len(set(first)) == 1 and b"event: submitted" in first[0]
        assert len(set(second)) == 1 and b"a change" in second[0]  # nothing missed
        assert len(reads) <= 4, f"{len(reads)} store reads for 200 streams and 2 changes"


def test_24_4_a_stream_holds_no_fastapi_state_and_its_client_leaving_frees_its_slot(
    tmp_path: Path,
) -> None:
    """500 open streams kept FastAPI's per-request state alive (exit stacks, exception
    frames: about a third of their memory, kept by the process after they left). A
    stream is now served by a plain-ASGI front; a client leaving ends it at once."""
    import sys

    from taskapp.jobs.service import create_backend_app

    key = "stream-test-key-0123456789"
    with store_with_a_job(tmp_path) as (store, job_id):
        app = create_backend_app(store, None, key)
        held_in: list[str] = []

        async def main() -> list[dict[str, Any]]:
            sent: list[dict[str, Any]] = []
            leave = asyncio.Event()
            messages = [{"type": "http.request", "body": b"", "more_body": False}]

            async def receive() -> dict[str, Any]:
                if messages:
                    return messages.pop()
                await leave.wait()
                return {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                frame = sys._getframe()
                while frame is not None:
                    held_in.append(frame.f_code.co_filename)
                    frame = frame.f_back  # type: ignore[assignment]
                sent.append(message)
                if message.get("body"):
                    assert app.backend.limits.open == 1
                    leave.set()

            scope = {
                "type": "http", "method": "GET", "path": f"/api/jobs/{job_id}/events/stream",
                "query_string": b"after=0", "headers": [(b"authorization", f"Bearer {key}".encode())],
                "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            }  # fmt: skip
            await asyncio.wait_for(app(scope, receive, send), 5)  # not the 1 s fallback
            return sent

        sent = asyncio.run(main())
        assert sent[0]["status"] == 200
        assert b"event: submitted" in sent[1]["body"]
        assert app.backend.limits.open == 0  # the slot came back
        assert not [f for f in held_in if "fastapi" in f or "starlette" in f], held_in
