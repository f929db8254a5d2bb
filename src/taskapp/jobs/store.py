"""The job store: one SQLite file (WAL), owned by one backend at a time.

Tables::

    jobs    one row per job: status, the run's OptimizeConfig (JSON), the task app's URL
            and credentials, scores, progress, the result (JSON), the error
    events  the job's history, numbered per job: submitted, warning, baseline, candidate,
            iteration, stopped, status changes (what ``/events`` pages and streams)

Two backends on one file: the first takes an exclusive ``flock`` on ``<db>.lock`` and keeps
it while it runs; a second is refused with :class:`StoreLockedError` naming the holder.
The lock goes away with its process, also on SIGKILL, so a restarted backend takes over
and resumes the jobs that were running. SQLite's own locking (WAL, ``busy_timeout``)
keeps readers such as ``taskapp jobs`` safe at any time.

The database and its lock file are created mode 0600: the task app's key is stored so a
job can resume after a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from taskapp.core.errors import ConfigurationError, TaskAppError
from taskapp.core.secrets import fingerprint, redact

__all__ = ["TERMINAL", "JobStore", "StoreError", "StoreLockedError"]

TERMINAL = ("succeeded", "failed", "cancelled")
STATUSES = ("queued", "running", *TERMINAL)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    status TEXT NOT NULL,
    config TEXT NOT NULL,
    task_app_url TEXT NOT NULL,
    task_app_key TEXT,
    worker_token TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    best_score REAL,
    baseline_score REAL,
    metric_calls INTEGER NOT NULL DEFAULT 0,
    budget INTEGER,
    result TEXT,
    error TEXT,
    started_at REAL,
    finished_at REAL,
    first_rollout_at REAL,
    labels TEXT
);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
"""

#: added after the first release: (column, definition), created on older databases
_MIGRATIONS = (("labels", "TEXT"),)
_INDEXES = "CREATE INDEX IF NOT EXISTS jobs_updated ON jobs (updated_at);"

#: what the list shows beside the id: the config's file name, the task, the models
LABELS = ("config_name", "task", "model", "reflection_model")

PUBLIC_FIELDS = (
    "id",
    "created_at",
    "updated_at",
    "status",
    "task_app_url",
    "attempts",
    "cancel_requested",
    "best_score",
    "baseline_score",
    "metric_calls",
    "budget",
    "error",
    "started_at",
    "finished_at",
    "first_rollout_at",
)


_SECRET_NAME = re.compile(r"api[_-]?key|token|secret|password|authorization", re.I)


def _public(value: Any) -> Any:
    """A job's config as the API shows it: values under secret-looking names (a policy's
    ``api_key``) and registered secrets replaced by fingerprints. The job runs with the
    stored values."""
    if isinstance(value, dict):
        return {
            k: f"[redacted {fingerprint(str(v))}]"
            if _SECRET_NAME.search(str(k))
            and not str(k).endswith("_env")  # the name of a variable, not a secret
            and isinstance(v, str)
            and v
            else _public(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_public(v) for v in value]
    if isinstance(value, str):
        return redact(value)
    return value


def _labels(labels: dict[str, Any]) -> dict[str, str]:
    """The known, non-empty labels as short strings (secrets redacted)."""
    return {
        name: redact(str(value))[:200]
        for name, value in labels.items()
        if name in LABELS and value not in (None, "")
    }


class StoreError(TaskAppError):
    """The job database cannot be opened or written (disk full, not a database, ...)."""


class StoreLockedError(StoreError):
    """Another backend owns this job database."""


def _private_file(path: Path) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)


class JobStore:
    """The SQLite job store. ``owner=True`` takes the backend's exclusive lock."""

    def __init__(self, path: str | Path, *, owner: bool = False) -> None:
        self.path = Path(path).expanduser().resolve()
        self._lock = threading.RLock()
        self._changed = threading.Condition()  # a job's status changed (long polls wait)
        self._lock_fd: int | None = None
        if owner:
            self._take_lock()
        elif not self.path.exists():
            raise StoreError(f"no job database at {str(self.path)!r}")
        try:
            if owner:
                _private_file(self.path)
            self._db = sqlite3.connect(
                str(self.path), timeout=10.0, check_same_thread=False, isolation_level=None
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA busy_timeout = 10000")
            if owner:
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.executescript(_SCHEMA)
                self._migrate()
            self._db.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            self._release_lock()
            raise StoreError(
                f"cannot open the job database {str(self.path)!r}: {exc} (is it a taskapp "
                "job database, on a local disk with free space?)"
            ) from exc

    def _migrate(self) -> None:
        have = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for column, definition in _MIGRATIONS:
            if column not in have:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {definition}")
        self._db.executescript(_INDEXES)

    # -- the backend's lock --------------------------------------------------------------

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def _take_lock(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _private_file(self.lock_path)
        fd = os.open(self.lock_path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise StoreLockedError(
                f"another taskapp backend uses the job database {str(self.path)!r} "
                f"({holder}); stop it first, or pass another --db"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        self._lock_fd = fd

    def describe_owner(self, text: str) -> None:
        """Say in the lock file who holds it (shown to a second backend)."""
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)
            os.pwrite(self._lock_fd, f"pid {os.getpid()}, {text}".encode(), 0)

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
            self._lock_fd = None

    def close(self) -> None:
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._release_lock()

    # -- low level -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                except BaseException:
                    # SQLite has already rolled back after some errors (a full disk)
                    if self._db.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                hint = (
                    "; free some disk space (what was recorded before is intact, and a job "
                    "that could not record its end resumes at the next start)"
                    if "full" in str(exc)
                    else ""
                )
                raise StoreError(f"the job database {str(self.path)!r}: {exc}{hint}") from exc

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return list(self._db.execute(sql, args))
            except sqlite3.Error as exc:
                raise StoreError(f"the job database {str(self.path)!r}: {exc}") from exc

    # -- jobs ----------------------------------------------------------------------------

    def create(
        self,
        config: dict[str, Any],
        *,
        task_app_url: str,
        task_app_key: str | None,
        worker_token: str | None,
        warnings: list[str],
        labels: dict[str, str] | None = None,
    ) -> str:
        job_id = "pl_" + uuid.uuid4().hex[:16]
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs (id, created_at, updated_at, status, config, task_app_url,"
                " task_app_key, worker_token, budget, labels)"
                " VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    now,
                    now,
                    json.dumps(config),
                    task_app_url,
                    task_app_key,
                    worker_token,
                    config.get("budget"),
                    json.dumps(_labels(labels or {})),
                ),
            )
            submitted = {"task_app_url": task_app_url, **_labels(labels or {})}
            self._add_event(db, job_id, "submitted", submitted)
            for warning in warnings:
                self._add_event(db, job_id, "warning", {"message": warning})
        return job_id

    def get(self, job_id: str, *, secrets: bool = False) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return self._row(rows[0], secrets=secrets) if rows else None

    def list_jobs(
        self, *, limit: int = 50, offset: int = 0, status: str | None = None
    ) -> list[Any]:
        if status is not None and status not in STATUSES:
            raise ConfigurationError(f"status must be one of {', '.join(STATUSES)}")
        where, args = ("WHERE status = ?", (status,)) if status else ("", ())
        rows = self._query(
            f"SELECT * FROM jobs {where} ORDER BY created_at DESC, id LIMIT ? OFFSET ?",  # noqa: S608
            (*args, limit, offset),
        )
        return [self._row(row) for row in rows]

    def count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM jobs")[0][0])

    def _row(self, row: sqlite3.Row, *, secrets: bool = False) -> dict[str, Any]:
        job = {name: row[name] for name in PUBLIC_FIELDS}
        job["cancel_requested"] = bool(job["cancel_requested"])
        job["config"] = _public(json.loads(row["config"]))
        job["has_result"] = row["result"] is not None
        # a reader opening an older database (not migrated yet) sees no labels
        has_labels = "labels" in row.keys()  # noqa: SIM118 - `in row` looks at the values
        job["labels"] = json.loads(row["labels"] or "{}") if has_labels else {}
        if secrets:
            job["task_app_key"] = row["task_app_key"]
            job["worker_token"] = row["worker_token"]
        return job

    def result(self, job_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT result FROM jobs WHERE id = ?", (job_id,))
        if not rows or rows[0]["result"] is None:
            return None
        value = json.loads(rows[0]["result"])
        return value if isinstance(value, dict) else None

    def set_labels(self, job_id: str, labels: dict[str, str]) -> None:
        """Merge ``labels`` (names in :data:`LABELS`) into the job's labels."""
        with self._tx() as db:
            rows = list(db.execute("SELECT labels FROM jobs WHERE id = ?", (job_id,)))
            if not rows:
                return
            merged = {**json.loads(rows[0]["labels"] or "{}"), **_labels(labels)}
            db.execute(
                "UPDATE jobs SET labels = ?, updated_at = ? WHERE id = ?",
                (json.dumps(merged), time.time(), job_id),
            )

    def changed_since(self, since: float, *, limit: int = 500) -> list[dict[str, Any]]:
        """Jobs updated after ``since`` (a ``updated_at`` value), oldest change first."""
        rows = self._query(
            "SELECT * FROM jobs WHERE updated_at > ? ORDER BY updated_at, id LIMIT ?",
            (since, limit),
        )
        return [self._row(row) for row in rows]

    def update(self, job_id: str, **fields: Any) -> None:
        if not fields:
            return
        allowed = set(PUBLIC_FIELDS) | {"result"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"unknown job field(s) {sorted(bad)}")
        if "result" in fields and fields["result"] is not None:
            fields["result"] = json.dumps(fields["result"], default=str)
        fields["updated_at"] = time.time()
        names = ", ".join(f"{name} = ?" for name in fields)
        with self._tx() as db:
            db.execute(
                f"UPDATE jobs SET {names} WHERE id = ?",  # noqa: S608 - names are checked
                (*fields.values(), job_id),
            )

    def set_status(
        self, job_id: str, status: str, *, reason: str | None = None, **fields: Any
    ) -> None:
        """Change a job's status and record it as an event, in one transaction."""
        assert status in STATUSES
        fields["status"] = status
        fields["updated_at"] = time.time()
        if "result" in fields and fields["result"] is not None:
            fields["result"] = json.dumps(fields["result"], default=str)
        names = ", ".join(f"{name} = ?" for name in fields)
        with self._tx() as db:
            db.execute(
                f"UPDATE jobs SET {names} WHERE id = ?",  # noqa: S608 - names are ours
                (*fields.values(), job_id),
            )
            data: dict[str, Any] = {"status": status}
            if reason:
                data["reason"] = reason
            if fields.get("error"):
                data["error"] = fields["error"]
            self._add_event(db, job_id, "status", data)
        self._notify()

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def wait_for_change(self, job_id: str, status: str, timeout: float) -> dict[str, Any] | None:
        """The job once its status is no longer ``status``, or after ``timeout`` seconds
        (a long poll: the backend answers the moment a job ends)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                job = self.get(job_id)
                remaining = deadline - time.monotonic()
                if job is None or job["status"] != status or remaining <= 0:
                    return job
                self._changed.wait(min(remaining, 1.0))

    def request_cancel(self, job_id: str) -> dict[str, Any] | None:
        """Mark a job cancelled (queued: at once; running: the pool stops it)."""
        with self._tx() as db:
            rows = list(db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)))
            if not rows:
                return None
            status = rows[0]["status"]
            if status == "queued":
                db.execute(
                    "UPDATE jobs SET status = 'cancelled', cancel_requested = 1,"
                    " finished_at = ?, updated_at = ?, error = ? WHERE id = ?",
                    (time.time(), time.time(), "cancelled before it started", job_id),
                )
                self._add_event(db, job_id, "status", {"status": "cancelled"})
            elif status == "running":
                db.execute(
                    "UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE id = ?",
                    (time.time(), job_id),
                )
                self._add_event(db, job_id, "cancel_requested", {})
        self._notify()
        return self.get(job_id)

    def queued(self) -> list[str]:
        rows = self._query("SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at")
        return [row["id"] for row in rows]

    def requeue_running(self) -> list[str]:
        """At start-up: jobs a stopped backend left running go back to the queue."""
        with self._tx() as db:
            rows = [
                row["id"]
                for row in db.execute(
                    "SELECT id FROM jobs WHERE status = 'running' ORDER BY created_at"
                )
            ]
            for job_id in rows:
                db.execute(
                    "UPDATE jobs SET status = 'queued', updated_at = ? WHERE id = ?",
                    (time.time(), job_id),
                )
                self._add_event(
                    db, job_id, "status", {"status": "queued", "reason": "backend restarted"}
                )
        return rows

    # -- events --------------------------------------------------------------------------

    def _add_event(self, db: sqlite3.Connection, job_id: str, kind: str, data: Any) -> int:
        row = db.execute(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job_id = ?", (job_id,)
        ).fetchone()
        seq = int(row[0])
        db.execute(
            "INSERT INTO events (job_id, seq, ts, kind, data) VALUES (?, ?, ?, ?, ?)",
            (job_id, seq, time.time(), kind, json.dumps(data, default=str)),
        )
        return seq

    def add_event(self, job_id: str, kind: str, data: Any, **job_fields: Any) -> int:
        """Append an event (and update job fields in the same transaction)."""
        with self._tx() as db:
            if job_fields:
                job_fields["updated_at"] = time.time()
                names = ", ".join(f"{name} = ?" for name in job_fields)
                db.execute(
                    f"UPDATE jobs SET {names} WHERE id = ?",  # noqa: S608 - names are ours
                    (*job_fields.values(), job_id),
                )
            return self._add_event(db, job_id, kind, data)

    def events(self, job_id: str, *, after: int = 0, limit: int = 500) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT seq, ts, kind, data FROM events WHERE job_id = ? AND seq > ?"
            " ORDER BY seq LIMIT ?",
            (job_id, after, limit),
        )
        return [
            {
                "seq": row["seq"],
                "ts": row["ts"],
                "kind": row["kind"],
                "data": json.loads(row["data"]),
            }
            for row in rows
        ]
