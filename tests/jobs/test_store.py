"""The job store behind one interface, on SQLite and on PostgreSQL (the ``db`` fixture runs
each test on both): migrations from the previous taskapp's schema, claims that never give
one job to two workers, leases that run out, fenced writes, the lifecycle controls,
Idempotency-Key, listing with filters and a cursor."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from taskapp.jobs.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    JobStore,
    LeaseLostError,
    StoreConflictError,
    open_store,
)


def _open(db: str) -> JobStore:
    if not db.startswith("postgresql://"):
        Path(db).touch(mode=0o600)
    return open_store(db)


def _new(store: JobStore, n: int = 1, **kw: Any) -> list[str]:
    ids = []
    for _ in range(n):
        job_id, created = store.create({"budget": 10}, task_app_url="http://127.0.0.1:9",
                                       task_app_key="k" * 12, worker_token=None,
                                       warnings=[], **kw)  # fmt: skip
        assert created
        ids.append(job_id)
    return ids


def _old_schema(db: str) -> None:
    """What taskapp wrote before schema versions: the version-1 tables, one job with two
    events, no version table."""
    statements = [s.format(REAL="DOUBLE PRECISION" if db.startswith("postgresql") else "REAL")
                  for s in MIGRATIONS[0]]  # fmt: skip
    job = ("pl_old0000000000", 1.0, 1.0, "succeeded", json.dumps({"budget": 10}),
           "http://127.0.0.1:9", 12)  # fmt: skip
    insert_job = ("INSERT INTO jobs (id, created_at, updated_at, status, config, task_app_url,"
                  " metric_calls) VALUES (?, ?, ?, ?, ?, ?, ?)")  # fmt: skip
    insert_event = "INSERT INTO events (job_id, seq, ts, kind, data) VALUES (?, ?, 1.0, ?, '{}')"
    if db.startswith("postgresql"):
        import psycopg

        with psycopg.connect(db, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)  # type: ignore[arg-type]
            conn.execute(insert_job.replace("?", "%s"), job)
            for seq, kind in ((1, "submitted"), (2, "status")):
                conn.execute(insert_event.replace("?", "%s"), (job[0], seq, kind))
        return
    lite = sqlite3.connect(db)
    with lite:
        for statement in statements:
            lite.execute(statement)
        lite.execute(insert_job, job)
        for seq, kind in ((1, "submitted"), (2, "status")):
            lite.execute(insert_event, (job[0], seq, kind))
    lite.close()


def test_a_database_of_the_previous_taskapp_is_migrated(db: str) -> None:
    _old_schema(db)
    store = _open(db)
    try:
        assert store.schema_version() == SCHEMA_VERSION == 3  # 3: job labels (the jobs page)
        job = store.get("pl_old0000000000")
        assert job is not None and job["status"] == "succeeded" and job["metric_calls"] == 12
        assert job["labels"] == {}
        # its events go on numbering where they were
        assert store.add_event("pl_old0000000000", "note", {}) == 3
        assert [e["seq"] for e in store.events("pl_old0000000000")] == [1, 2, 3]
        _new(store)
        assert store.count() == 2
    finally:
        store.close()
    again = _open(db)  # opening a migrated database changes nothing
    try:
        assert again.schema_version() == SCHEMA_VERSION and again.count() == 2
    finally:
        again.close()


def test_a_database_of_a_newer_taskapp_is_refused(db: str) -> None:
    from taskapp.jobs.store import StoreError

    _open(db).close()
    if db.startswith("postgresql"):
        import psycopg

        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("UPDATE taskapp_schema SET version = 99")
    else:
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE taskapp_schema SET version = 99")
    with pytest.raises(StoreError, match="schema version 99, newer than this taskapp"):
        _open(db)


def test_concurrent_claims_give_every_job_to_exactly_one_worker(db: str) -> None:
    """Six workers (each its own connection) race for 60 jobs."""
    setup = _open(db)
    ids = set(_new(setup, 60))
    claimed: list[tuple[str, str]] = []
    lock = threading.Lock()

    ready = threading.Barrier(6)

    def worker(name: str) -> None:
        store = _open(db)
        try:
            ready.wait(30)
            while (job := store.claim(name, 60)) is not None:
                with lock:
                    claimed.append((job["id"], name))
                time.sleep(0.005)  # a worker runs its job before it claims the next
        finally:
            store.close()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert sorted(j for j, _ in claimed) == sorted(ids)  # 0 twice, 0 lost
        assert len({w for _, w in claimed}) > 1
        assert {setup.get(j)["status"] for j in ids} == {"running"}  # type: ignore[index]
        assert {setup.get(j)["attempts"] for j in ids} == {1}  # type: ignore[index]
    finally:
        setup.close()


def test_a_lease_that_runs_out_passes_the_job_on_and_fences_the_old_worker(db: str) -> None:
    store = _open(db)
    try:
        (job_id,) = _new(store)
        first = store.claim("host-a:1:x", 1.0)
        assert first is not None and first["id"] == job_id
        assert store.claim("host-b:2:y", 30) is None  # held
        store.add_event(job_id, "iteration", {}, owner="host-a:1:x", metric_calls=5)
        time.sleep(1.2)
        second = store.claim("host-b:2:y", 30)
        assert second is not None and second["id"] == job_id and second["attempts"] == 2
        # the first worker can write nothing more for it
        for write in (
            lambda: store.renew(job_id, "host-a:1:x", 30),
            lambda: store.add_event(job_id, "iteration", {}, owner="host-a:1:x"),
            lambda: store.save_files(job_id, {"run.json": b"{}"}, owner="host-a:1:x"),
            lambda: store.set_status(job_id, "succeeded", owner="host-a:1:x"),
        ):
            with pytest.raises(LeaseLostError):
                write()
        store.save_files(job_id, {"state/x.bin": b"\x00\x01"}, owner="host-b:2:y")
        assert store.load_files(job_id) == {"state/x.bin": b"\x00\x01"}
        reasons = [e["data"].get("reason") for e in store.events(job_id) if e["kind"] == "status"]
        assert "the lease of host-a:1:x ran out; taken over" in reasons
    finally:
        store.close()


def test_the_lifecycle_controls(db: str) -> None:
    store = _open(db)
    try:
        running, failed, queued = _new(store, 3)
        assert [store.claim("w:1:a", 60)["id"] for _ in range(2)] == [running, failed]  # type: ignore[index]
        store.set_status(failed, "failed", owner="w:1:a", error="boom", finished_at=time.time())
        # queued: pause at once, resume, stop refused (no result yet), cancel at once
        assert store.control(queued, "pause")["status"] == "paused"  # type: ignore[index]
        assert store.control(queued, "resume")["status"] == "queued"  # type: ignore[index]
        with pytest.raises(StoreConflictError, match="no result yet: cancel it instead"):
            store.control(queued, "stop")
        # running: requests its worker reads with the lease renewal
        for action in ("pause", "stop", "cancel"):
            job = store.control(running, action)
            assert job["status"] == "running" and job["control"] == action  # type: ignore[index]
            assert store.renew(running, "w:1:a", 60) == action
        with pytest.raises(StoreConflictError, match="only a finished job"):
            store.delete(running)
        # failed: retry queues it again without its error
        with pytest.raises(StoreConflictError):
            store.control(failed, "pause")
        job = store.control(failed, "retry")
        assert job["status"] == "queued" and job["error"] is None  # type: ignore[index]
        assert store.control(queued, "cancel")["status"] == "cancelled"  # type: ignore[index]
        with pytest.raises(StoreConflictError, match="only a failed or cancelled job"):
            store.control(running, "retry")
        assert store.delete(queued) is True
        assert store.get(queued) is None and store.events(queued) == []
        assert store.control("pl_nope", "pause") is None and store.delete("pl_nope") is None
    finally:
        store.close()


def test_idempotency_key(db: str) -> None:
    store = _open(db)
    try:
        (job_id,) = _new(store, idempotency_key="k-1", request_hash="h-1")
        again, created = store.create({"budget": 10}, task_app_url="http://x", task_app_key=None,
                                      worker_token=None, warnings=[], idempotency_key="k-1",
                                      request_hash="h-1")  # fmt: skip
        assert (again, created) == (job_id, False)
        with pytest.raises(StoreConflictError, match="used for another request body"):
            store.create({"budget": 11}, task_app_url="http://x", task_app_key=None,
                         worker_token=None, warnings=[], idempotency_key="k-1",
                         request_hash="h-2")  # fmt: skip
        assert store.count() == 1
    finally:
        store.close()


def test_listing_with_filters_and_a_cursor_has_no_cap(db: str) -> None:
    store = _open(db)
    try:
        ids = _new(store, 130)
        store.control(ids[0], "cancel")
        seen: list[str] = []
        cursor = None
        while True:
            page = store.list_jobs(limit=50, cursor=cursor)
            seen += [job["id"] for job in page]
            cursor = store.next_cursor(page, 50)
            if cursor is None:
                break
        assert sorted(seen) == sorted(ids) and len(seen) == 130  # each once, newest first
        assert seen[-1] == ids[0]
        assert [j["id"] for j in store.list_jobs(status=["cancelled"])] == [ids[0]]
        middle = store.get(ids[65])["created_at"]  # type: ignore[index]
        assert store.count(until=middle) == 65
        assert store.count(since=middle) == 65
    finally:
        store.close()
