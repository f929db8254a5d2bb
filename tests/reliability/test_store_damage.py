"""A damaged row in the job store harms only its own job (issue 24, noticed while fixing
item 2): a job whose ``event_seq`` counter fell behind its stored events (edited by
hand, restored from an older copy) made every claim fail -- the claim's ``status`` event
took a number already used, the transaction failed, and the pool, taking that for the
database being away, tried the same oldest job again forever: no job ran."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from taskapp.jobs.store import SqliteJobStore


def new_job(store: SqliteJobStore) -> str:
    job_id, created = store.create(
        {"budget": 10}, task_app_url="http://127.0.0.1:9", task_app_key=None,
        worker_token=None, warnings=[],
    )  # fmt: skip
    assert created
    return job_id


def test_24_a_job_whose_event_counter_fell_behind_blocks_no_claim(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    store = SqliteJobStore(db, owner=True)
    try:
        damaged, other = new_job(store), new_job(store)
        for kind in ("warning", "warning"):
            store.add_event(damaged, kind, {"n": 1})
        with sqlite3.connect(db) as conn:  # the counter behind its 3 events, or not a number
            conn.execute("UPDATE jobs SET event_seq = 0 WHERE id = ?", (damaged,))
        before = store.events(damaged)
        first = store.claim("worker-a", 30)  # was: StoreError (UNIQUE constraint failed)
        second = store.claim("worker-a", 30)
        assert first is not None and first["id"] == damaged
        assert second is not None and second["id"] == other
        after = store.events(damaged)
        assert after[: len(before)] == before  # nothing stored is lost or overwritten
        seqs = [event["seq"] for event in after]
        assert seqs == sorted(set(seqs)) and len(after) == len(before) + 1
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE jobs SET event_seq = 'junk' WHERE id = ?", (other,))
        seq = store.add_event(other, "warning", {"n": 2})
        assert seq == max(event["seq"] for event in store.events(other))
        assert len({event["seq"] for event in store.events(other)}) == len(store.events(other))
    finally:
        store.close()
