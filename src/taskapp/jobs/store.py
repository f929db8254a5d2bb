"""The job store: one interface (:class:`JobStore`), two databases.

* :class:`SqliteJobStore` — one SQLite file (WAL), the embedded default. ``owner=True``
  (``taskapp backend serve``) takes an exclusive ``flock`` on ``<db>.lock``: a second
  backend on the same file is refused with :class:`StoreLockedError` naming the holder.
  The lock dies with its process (also on SIGKILL). The file and its lock are mode 0600.
* :class:`PostgresJobStore` — a PostgreSQL database (``postgresql://...``) shared by any
  number of API processes and workers on any host (psycopg 3; see docs/architecture.md).

:func:`open_store` picks one from ``--db``. Tables (the same in both)::

    jobs          one row per job: status, the run's OptimizeConfig (JSON), the task app's
                  URL and credentials, scores, progress, the result (JSON), the error; the
                  lease (which worker runs it, until when), the pending control request
                  (pause, stop, cancel), the Idempotency-Key of its submission
    events        the job's history, numbered per job (what ``/events`` pages and streams)
    job_files     the job's checkpoint: the run directory's files (GEPA's state, history,
                  run.json), so a worker on any host resumes it
    taskapp_schema  the schema version; :data:`MIGRATIONS` bring an older database up

Claims: a worker takes the oldest queued job, or a running one whose lease ran out, in one
transaction (PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED``; SQLite: ``BEGIN
IMMEDIATE``), and keeps it by renewing the lease. Writes a worker makes for a job are
*fenced*: they name the lease owner and fail with :class:`LeaseLostError` once another
worker holds the job, so a job never has two writers.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import queue
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from taskapp.core.errors import ConfigurationError, TaskAppError
from taskapp.core.secrets import fingerprint, redact, register_secret
from taskapp.jobs.validation import decode_stored

__all__ = [
    "ACTIVE",
    "STATUSES",
    "TERMINAL",
    "JobStore",
    "LeaseLostError",
    "PostgresJobStore",
    "SqliteJobStore",
    "StoreConflictError",
    "StoreError",
    "StoreLockedError",
    "is_postgres_url",
    "open_store",
    "public_db_name",
    "secret_values",
]

TERMINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running", "paused")
STATUSES = (*ACTIVE, *TERMINAL)
CONTROLS = ("pause", "stop", "cancel")

#: the schema versions, each a list of statements; ``{REAL}``, ``{BLOB}``, ``{BIGINT}`` are
#: the dialect's types. Version 1 is the schema of taskapp before PostgreSQL (no version
#: table); its databases are migrated when opened.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE IF NOT EXISTS jobs (
            id TEXT PRIMARY KEY,
            created_at {REAL} NOT NULL,
            updated_at {REAL} NOT NULL,
            status TEXT NOT NULL,
            config TEXT NOT NULL,
            task_app_url TEXT NOT NULL,
            task_app_key TEXT,
            worker_token TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            best_score {REAL},
            baseline_score {REAL},
            metric_calls INTEGER NOT NULL DEFAULT 0,
            budget INTEGER,
            result TEXT,
            error TEXT,
            started_at {REAL},
            finished_at {REAL},
            first_rollout_at {REAL}
        )""",
        """CREATE TABLE IF NOT EXISTS events (
            job_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            ts {REAL} NOT NULL,
            kind TEXT NOT NULL,
            data TEXT NOT NULL,
            PRIMARY KEY (job_id, seq)
        )""",
        "CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at)",
    ],
    [
        "ALTER TABLE jobs ADD COLUMN event_seq INTEGER NOT NULL DEFAULT 0",
        "UPDATE jobs SET event_seq ="
        " (SELECT COALESCE(MAX(seq), 0) FROM events WHERE events.job_id = jobs.id)",
        "ALTER TABLE jobs ADD COLUMN idempotency_key TEXT",
        "ALTER TABLE jobs ADD COLUMN request_hash TEXT",
        "ALTER TABLE jobs ADD COLUMN lease_owner TEXT",
        "ALTER TABLE jobs ADD COLUMN lease_expires {REAL}",
        "ALTER TABLE jobs ADD COLUMN control TEXT",
        "ALTER TABLE jobs ADD COLUMN status_reason TEXT",
        "CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (idempotency_key)",
        "CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created_at)",
        """CREATE TABLE IF NOT EXISTS job_files (
            job_id TEXT NOT NULL,
            name TEXT NOT NULL,
            data {BLOB} NOT NULL,
            PRIMARY KEY (job_id, name)
        )""",
    ],
    [  # the jobs page: a job's labels (JSON), and changes by time (GET /api/stream)
        "ALTER TABLE jobs ADD COLUMN labels TEXT",
        "CREATE INDEX IF NOT EXISTS jobs_updated ON jobs (updated_at)",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)

PUBLIC_FIELDS = (
    "id",
    "created_at",
    "updated_at",
    "status",
    "status_reason",
    "task_app_url",
    "attempts",
    "cancel_requested",
    "control",
    "lease_owner",
    "lease_expires",
    "best_score",
    "baseline_score",
    "metric_calls",
    "budget",
    "error",
    "started_at",
    "finished_at",
    "first_rollout_at",
)
#: what the list shows beside the id: the config's file name, the task, the models
LABELS = ("config_name", "task", "model", "reflection_model")

_WRITABLE = frozenset(PUBLIC_FIELDS) - {"id", "created_at"} | {"result"}

_SECRET_NAME = re.compile(
    r"api[_-]?key|token|secret|passw(or)?d|auth|cookie|credential|private[_-]?key|signature",
    re.I,
)
_HEADERS = re.compile(r"headers?$", re.I)  # every value under a headers table is secret


def _secret_name(key: Any) -> bool:
    name = str(key)
    return bool(_SECRET_NAME.search(name)) and not name.endswith("_env")  # a variable's name


def secret_values(value: Any, *, under_secret: bool = False) -> list[str]:
    """The string values of a stored config that are secrets by their name (a policy's
    ``api_key``, any value of a ``headers`` table): registered with
    :func:`~taskapp.core.secrets.register_secret` so they are redacted by value wherever
    they appear (results, errors, logs), not only where the name is seen."""
    found: list[str] = []
    stack: list[tuple[Any, bool]] = [(value, under_secret)]
    while stack:
        item, secret = stack.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                stack.append((v, secret or _secret_name(k) or bool(_HEADERS.search(str(k)))))
        elif isinstance(item, list):
            stack.extend((v, secret) for v in item)
        elif secret and isinstance(item, str) and item:
            found.append(item)
    return found


def _public(value: Any) -> Any:
    """A job's config or result as the API shows it: values under secret-looking names
    (a policy's ``api_key``, a custom auth header) and registered secrets (by value,
    wherever they appear) replaced by fingerprints. The job runs with the stored values."""
    if isinstance(value, dict):
        shown: dict[Any, Any] = {}
        for k, v in value.items():
            if _HEADERS.search(str(k)):
                shown[k] = _public_headers(v)
            elif _secret_name(k) and isinstance(v, str) and v:
                shown[k] = f"[redacted {fingerprint(v)}]"
            else:
                shown[k] = _public(v)
        return shown
    if isinstance(value, list):
        return [_public(v) for v in value]
    if isinstance(value, str):
        return redact(value)
    return value


def _public_headers(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _public_headers(v) for k, v in value.items()}
    if isinstance(value, str) and value:
        return f"[redacted {fingerprint(value)}]"
    return _public(value)


def _labels(labels: dict[str, Any]) -> dict[str, str]:
    """The known, non-empty labels as short strings (secrets redacted)."""
    return {
        name: redact(str(value))[:200]
        for name, value in labels.items()
        if name in LABELS and value not in (None, "")
    }


class StoreError(TaskAppError):
    """The job database cannot be opened or written (disk full, not a database, the
    PostgreSQL server unreachable, ...)."""


class StoreLockedError(StoreError):
    """Another backend owns this SQLite job database."""


class StoreConflictError(TaskAppError):
    """A request the job's state does not allow (pause a finished job, delete a running
    one, an Idempotency-Key reused with another body)."""


class LeaseLostError(TaskAppError):
    """Another worker holds the job now (this worker's lease ran out)."""


def is_postgres_url(db: str | Path) -> bool:
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


def public_db_name(db: str | Path) -> str:
    """``db`` as it may be printed: a PostgreSQL URL without its password."""
    if not is_postgres_url(db):
        return str(db)
    return re.sub(r"^(\w+://[^:/@]*):[^@]*@", r"\1:***@", str(db))


def open_store(db: str | Path, *, owner: bool = False) -> JobStore:
    """The store of ``--db``: a ``postgresql://`` URL or a SQLite file path."""
    if is_postgres_url(db):
        return PostgresJobStore(str(db))
    return SqliteJobStore(db, owner=owner)


def _private_file(path: Path) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)


def _now() -> float:
    return time.time()


def encode_cursor(created_at: float, job_id: str) -> str:
    raw = json.dumps([created_at, job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, job_id = json.loads(raw)
        return float(created_at), str(job_id)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError("cursor: not a cursor this backend gave out") from exc


class _Tx:
    """One transaction's connection: ``execute`` returns the rows as dicts."""

    def __init__(self, store: JobStore, conn: Any) -> None:
        self.store, self.conn = store, conn
        self.rowcount = 0

    def execute(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cursor = self.conn.execute(self.store._sql(sql), tuple(args))
        self.rowcount = cursor.rowcount
        if cursor.description is None:
            return []
        return [dict(row) for row in cursor.fetchall()]


class JobStore:
    """The interface of the job store; the SQL is shared, the dialects differ in how they
    connect, lock and claim. Everything above (API, pool, workers) sees only this."""

    #: the dialect's types in :data:`MIGRATIONS`
    TYPES: ClassVar[dict[str, str]] = {"REAL": "REAL", "BLOB": "BLOB", "BIGINT": "INTEGER"}
    kind = "abstract"
    name = ""

    def __init__(self) -> None:
        self._changed = threading.Condition()  # a job's status changed here (long polls)
        #: called with a job id after each change to it is committed here (the API's
        #: ChangeHub); changes by other processes are seen by polling
        self.listeners: list[Callable[[str], None]] = []

    # -- what a dialect provides ---------------------------------------------------------

    def _sql(self, sql: str) -> str:
        return sql

    @contextlib.contextmanager
    def _tx(self) -> Iterator[_Tx]:  # pragma: no cover - abstract
        raise NotImplementedError
        yield

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._tx() as tx:
            return tx.execute(sql, args)

    def _claim_candidates(self, tx: _Tx, now: float) -> list[dict[str, Any]]:
        return tx.execute(
            "SELECT id, status, lease_owner FROM jobs WHERE status = 'queued'"
            " OR (status = 'running' AND (lease_expires IS NULL OR lease_expires < ?))"
            " ORDER BY created_at LIMIT 1",
            (now,),
        )

    def close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe_owner(self, text: str) -> None:
        """Say who runs on this store (SQLite: in the lock file)."""

    # -- schema --------------------------------------------------------------------------

    def _migrate(self, tx: _Tx, version: int) -> int:
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the job database {self.name} has schema version {version}, newer than "
                f"this taskapp knows ({SCHEMA_VERSION}): upgrade taskapp"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[number - 1]:
                tx.execute(statement.format(**self.TYPES))
        if version < SCHEMA_VERSION:
            tx.execute("DELETE FROM taskapp_schema")
            tx.execute("INSERT INTO taskapp_schema (version) VALUES (?)", (SCHEMA_VERSION,))
        return SCHEMA_VERSION

    def schema_version(self) -> int:
        rows = self._query("SELECT version FROM taskapp_schema")
        return int(rows[0]["version"]) if rows else 0

    # -- jobs ----------------------------------------------------------------------------

    def create(
        self,
        config: dict[str, Any],
        *,
        task_app_url: str,
        task_app_key: str | None,
        worker_token: str | None,
        warnings: list[str],
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> tuple[str, bool]:
        """(job id, created): with an ``idempotency_key`` already used for the same
        ``request_hash``, the earlier job and False; for another body,
        :class:`StoreConflictError`. ``labels``: names in :data:`LABELS` (the list's)."""
        try:
            return self._create(config, task_app_url, task_app_key, worker_token, warnings,
                                idempotency_key, request_hash, labels)  # fmt: skip
        except StoreError:
            if idempotency_key is None:
                raise
            # two submissions with one key at once: the second insert breaks the unique
            # index; the first one's job is the answer
            return self._create(config, task_app_url, task_app_key, worker_token, warnings,
                                idempotency_key, request_hash, labels)  # fmt: skip

    def _create(
        self,
        config: dict[str, Any],
        task_app_url: str,
        task_app_key: str | None,
        worker_token: str | None,
        warnings: list[str],
        idempotency_key: str | None,
        request_hash: str | None,
        labels: dict[str, str] | None = None,
    ) -> tuple[str, bool]:
        job_id = "pl_" + uuid.uuid4().hex[:16]
        shown = _labels(labels or {})
        now = _now()
        with self._tx() as tx:
            if idempotency_key is not None:
                rows = tx.execute(
                    "SELECT id, request_hash FROM jobs WHERE idempotency_key = ?",
                    (idempotency_key,),
                )
                if rows:
                    if rows[0]["request_hash"] != request_hash:
                        raise StoreConflictError(
                            "this Idempotency-Key was used for another request body (job "
                            f"{rows[0]['id']}); use a new key for a new job"
                        )
                    return str(rows[0]["id"]), False
            tx.execute(
                "INSERT INTO jobs (id, created_at, updated_at, status, config, task_app_url,"
                " task_app_key, worker_token, budget, idempotency_key, request_hash, labels)"
                " VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    now,
                    now,
                    json.dumps(config),
                    task_app_url,
                    task_app_key,
                    worker_token,
                    config.get("budget"),
                    idempotency_key,
                    request_hash,
                    json.dumps(shown),
                ),
            )
            self._add_event(tx, job_id, "submitted", {"task_app_url": task_app_url, **shown})
            for warning in warnings:
                self._add_event(tx, job_id, "warning", {"message": warning})
        self._notify(job_id)
        return job_id, True

    def get(self, job_id: str, *, secrets: bool = False) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return self._row(rows[0], secrets=secrets) if rows else None

    def list_jobs(
        self,
        *,
        limit: int = 50,
        offset: int = 0,
        status: str | Sequence[str] | None = None,
        since: float | None = None,
        until: float | None = None,
        cursor: str | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first. ``cursor`` (from :meth:`next_cursor`) continues a listing."""
        where, args = self._filters(status, since, until)
        if cursor:
            created_at, job_id = decode_cursor(cursor)
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            args += [created_at, created_at, job_id]
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        rows = self._query(
            f"SELECT * FROM jobs {clause} ORDER BY created_at DESC, id DESC"  # noqa: S608
            " LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        return [self._row(row) for row in rows]

    @staticmethod
    def _filters(
        status: str | Sequence[str] | None, since: float | None, until: float | None
    ) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        args: list[Any] = []
        if status:
            wanted = [status] if isinstance(status, str) else list(status)
            bad = [s for s in wanted if s not in STATUSES]
            if bad:
                raise ConfigurationError(f"status {bad[0]!r}: must be one of {', '.join(STATUSES)}")
            where.append(f"status IN ({', '.join('?' for _ in wanted)})")
            args += wanted
        if since is not None:
            where.append("created_at >= ?")
            args.append(since)
        if until is not None:
            where.append("created_at < ?")
            args.append(until)
        return where, args

    @staticmethod
    def next_cursor(page: list[dict[str, Any]], limit: int) -> str | None:
        if len(page) < limit or not page:
            return None
        return encode_cursor(page[-1]["created_at"], page[-1]["id"])

    def count(
        self,
        *,
        status: str | Sequence[str] | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> int:
        where, args = self._filters(status, since, until)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        rows = self._query(f"SELECT COUNT(*) AS n FROM jobs {clause}", args)  # noqa: S608
        return int(rows[0]["n"])

    def _row(self, row: dict[str, Any], *, secrets: bool = False) -> dict[str, Any]:
        """A job row as the API shows it (``secrets``: as a worker runs it). Whatever is
        stored, this returns: a column that cannot be read becomes ``config: null`` and
        a ``row_error`` saying so, never an exception for the whole list."""
        job: dict[str, Any] = {}
        problems: list[str] = []
        for name in PUBLIC_FIELDS:
            value = row.get(name)
            if not (value is None or isinstance(value, str | int | float)):
                problems.append(f"{name}: stored value of type {type(value).__name__}")
                value = None
            job[name] = value
        job["cancel_requested"] = bool(job["cancel_requested"])
        config, problem = decode_stored(row["config"], what="config")
        if problem or not isinstance(config, dict):
            problems.append(problem or "config: not an object")
            config = None
        # the job runs with the stored values; the API shows them redacted
        job["config"] = config if secrets or config is None else _public(config)
        job["has_result"] = row["result"] is not None
        labels, problem = decode_stored(row.get("labels") or "{}", what="labels")
        if problem or not isinstance(labels, dict):
            problems.append(problem or "labels: not an object")
            labels = {}
        job["labels"] = labels
        if problems:
            job["row_error"] = "; ".join(problems)
            job["error"] = job["error"] or f"this job's stored record is damaged ({problems[0]})"
        if secrets:
            job["task_app_key"] = row["task_app_key"]
            job["worker_token"] = row["worker_token"]
            register_secret(row["task_app_key"])
            register_secret(row["worker_token"])
        return job

    def set_labels(self, job_id: str, labels: dict[str, str]) -> None:
        """Merge ``labels`` (names in :data:`LABELS`) into the job's labels."""
        with self._tx() as tx:
            rows = tx.execute("SELECT labels FROM jobs WHERE id = ?", (job_id,))
            if not rows:
                return
            stored, _ = decode_stored(rows[0]["labels"] or "{}", what="labels")
            merged = {**(stored if isinstance(stored, dict) else {}), **_labels(labels)}
            tx.execute(
                "UPDATE jobs SET labels = ?, updated_at = ? WHERE id = ?",
                (json.dumps(merged), _now(), job_id),
            )

    def changed_since(self, since: float, *, limit: int = 500) -> list[dict[str, Any]]:
        """Jobs updated after ``since`` (an ``updated_at`` value), oldest change first."""
        rows = self._query(
            "SELECT * FROM jobs WHERE updated_at > ? ORDER BY updated_at, id LIMIT ?",
            (since, limit),
        )
        return [self._row(row) for row in rows]

    def result(self, job_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT result FROM jobs WHERE id = ?", (job_id,))
        if not rows or rows[0]["result"] is None:
            return None
        value, problem = decode_stored(rows[0]["result"], what="result")
        if problem:
            return {"error": f"this job's stored result is damaged ({problem})"}
        return _public(value) if isinstance(value, dict) else None  # the run's config: secrets

    @staticmethod
    def _assignments(fields: dict[str, Any]) -> tuple[str, list[Any]]:
        bad = set(fields) - _WRITABLE
        if bad:
            raise ValueError(f"unknown job field(s) {sorted(bad)}")
        if fields.get("result") is not None:
            fields["result"] = json.dumps(fields["result"], default=str)
        fields["updated_at"] = _now()
        return ", ".join(f"{name} = ?" for name in fields), list(fields.values())

    def update(self, job_id: str, *, owner: str | None = None, **fields: Any) -> None:
        if not fields:
            return
        names, values = self._assignments(fields)
        with self._tx() as tx:
            self._fenced(tx, f"UPDATE jobs SET {names} WHERE id = ?", [*values, job_id], owner)  # noqa: S608

    def _fenced(self, tx: _Tx, sql: str, args: list[Any], owner: str | None) -> None:
        """Run an ``UPDATE ... WHERE id = ?``; with ``owner``, only while that worker
        holds the job's lease (else :class:`LeaseLostError`)."""
        if owner is not None:
            sql += " AND lease_owner = ?"
            args = [*args, owner]
        tx.execute(sql, args)
        if owner is not None and tx.rowcount == 0:
            raise LeaseLostError("another worker holds the job now")

    def set_status(
        self,
        job_id: str,
        status: str,
        *,
        reason: str | None = None,
        owner: str | None = None,
        **fields: Any,
    ) -> None:
        """Change a job's status and record it as an event, in one transaction. Leaving
        ``running`` releases the lease."""
        assert status in STATUSES
        fields["status"] = status
        if reason is not None:
            fields["status_reason"] = reason
        if status != "running":
            fields.setdefault("lease_owner", None)
            fields.setdefault("lease_expires", None)
        names, values = self._assignments(fields)
        with self._tx() as tx:
            self._fenced(tx, f"UPDATE jobs SET {names} WHERE id = ?", [*values, job_id], owner)  # noqa: S608
            data: dict[str, Any] = {"status": status}
            if reason:
                data["reason"] = reason
            if fields.get("error"):
                data["error"] = fields["error"]
            self._add_event(tx, job_id, "status", data)
        self._notify(job_id)

    def _notify(self, job_id: str | None = None) -> None:
        with self._changed:
            self._changed.notify_all()
        if job_id is not None:
            for listener in list(self.listeners):
                listener(job_id)

    def wait_for_change(self, job_id: str, status: str, timeout: float) -> dict[str, Any] | None:
        """The job once its status is no longer ``status``, or after ``timeout`` seconds
        (a long poll). A change made by another process is seen within half a second."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                job = self.get(job_id)
                remaining = deadline - time.monotonic()
                if job is None or job["status"] != status or remaining <= 0:
                    return job
                self._changed.wait(min(remaining, 0.5))

    # -- the lifecycle controls ----------------------------------------------------------

    def control(self, job_id: str, action: str) -> dict[str, Any] | None:
        """Apply ``pause``, ``resume``, ``stop``, ``cancel`` or ``retry``: at once when the
        job is not running, else as a request its worker acts on at the next step. The job
        afterwards; None when there is no such job; :class:`StoreConflictError` when the
        action does not apply to the job's status."""
        with self._tx() as tx:
            rows = tx.execute(
                self._lock_row("SELECT status, control, event_seq FROM jobs WHERE id = ?"),
                (job_id,),
            )
            if not rows:
                return None
            _Control(self, tx, job_id, action, rows[0]).apply()
        self._notify(job_id)
        return self.get(job_id)

    def _lock_row(self, sql: str) -> str:
        return sql

    def request_cancel(self, job_id: str) -> dict[str, Any] | None:
        """Cancel (kept for callers of the single-machine store)."""
        try:
            return self.control(job_id, "cancel")
        except StoreConflictError:
            return self.get(job_id)

    def delete(self, job_id: str) -> bool | None:
        """Delete a finished job with its events and checkpoint. None: no such job;
        :class:`StoreConflictError` while it is not finished."""
        with self._tx() as tx:
            rows = tx.execute(self._lock_row("SELECT status FROM jobs WHERE id = ?"), (job_id,))
            if not rows:
                return None
            if rows[0]["status"] not in TERMINAL:
                raise StoreConflictError(
                    f"job {job_id} is {rows[0]['status']}: only a finished job (succeeded, "
                    "failed, cancelled) can be deleted; cancel it first"
                )
            for table, column in (("events", "job_id"), ("job_files", "job_id"), ("jobs", "id")):
                tx.execute(f"DELETE FROM {table} WHERE {column} = ?", (job_id,))  # noqa: S608
        return True

    # -- workers: claims and leases ------------------------------------------------------

    def claim(self, owner: str, lease_seconds: float) -> dict[str, Any] | None:
        """Take the oldest queued job (or a running one whose lease ran out) for
        ``owner``: the job with its secrets, marked running, ``attempts`` counted. None
        when there is nothing to run."""
        now = _now()
        with self._tx() as tx:
            rows = self._claim_candidates(tx, now)
            if not rows:
                return None
            row = rows[0]
            job_id = row["id"]
            tx.execute(
                "UPDATE jobs SET status = 'running', lease_owner = ?, lease_expires = ?,"
                " attempts = attempts + 1, started_at = COALESCE(started_at, ?),"
                " updated_at = ? WHERE id = ?",
                (owner, now + lease_seconds, now, now, job_id),
            )
            data: dict[str, Any] = {"status": "running", "worker": owner}
            if row["status"] == "running":
                data["reason"] = f"the lease of {row['lease_owner']} ran out; taken over"
            self._add_event(tx, job_id, "status", data)
            job = tx.execute("SELECT * FROM jobs WHERE id = ?", (job_id,))[0]
        self._notify(job_id)
        return self._row(job, secrets=True) | {"_control": job["control"]}

    def renew(self, job_id: str, owner: str, lease_seconds: float) -> str | None:
        """Extend ``owner``'s lease; the job's pending control request (pause, stop,
        cancel) or None. :class:`LeaseLostError` when another worker holds the job."""
        with self._tx() as tx:
            self._fenced(
                tx,
                "UPDATE jobs SET lease_expires = ? WHERE id = ?",
                [_now() + lease_seconds, job_id],
                owner,
            )
            rows = tx.execute("SELECT control FROM jobs WHERE id = ?", (job_id,))
        return str(rows[0]["control"]) if rows and rows[0]["control"] else None

    def requeue_running(
        self, *, dead_owner: Any = None, reason: str = "backend restarted"
    ) -> list[str]:
        """Jobs left ``running`` by a worker that is gone go back to the queue at once
        (instead of waiting for their lease to run out). ``dead_owner(lease_owner)``
        says which are gone; without it, every running job (one backend per database)."""
        with self._tx() as tx:
            rows = tx.execute(
                "SELECT id, lease_owner FROM jobs WHERE status = 'running' ORDER BY created_at"
            )
            gone = [r["id"] for r in rows if dead_owner is None or dead_owner(r["lease_owner"])]
            for job_id in gone:
                tx.execute(
                    "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires = NULL,"
                    " updated_at = ? WHERE id = ?",
                    (_now(), job_id),
                )
                self._add_event(tx, job_id, "status", {"status": "queued", "reason": reason})
        return gone

    def queued(self) -> list[str]:
        rows = self._query("SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at")
        return [row["id"] for row in rows]

    # -- the checkpoint ------------------------------------------------------------------

    def save_files(self, job_id: str, files: dict[str, bytes], *, owner: str | None = None) -> None:
        """Store (replace) these files of the job's checkpoint, fenced by the lease."""
        if not files:
            return
        with self._tx() as tx:
            self._fenced(tx, "UPDATE jobs SET updated_at = ? WHERE id = ?", [_now(), job_id], owner)
            for name, data in files.items():
                tx.execute("DELETE FROM job_files WHERE job_id = ? AND name = ?", (job_id, name))
                tx.execute(
                    "INSERT INTO job_files (job_id, name, data) VALUES (?, ?, ?)",
                    (job_id, name, data),
                )

    def load_files(self, job_id: str) -> dict[str, bytes]:
        rows = self._query("SELECT name, data FROM job_files WHERE job_id = ?", (job_id,))
        return {row["name"]: bytes(row["data"]) for row in rows}

    # -- events --------------------------------------------------------------------------

    def _add_event(self, tx: _Tx, job_id: str, kind: str, data: Any) -> int:
        # The next number after both the job's counter and its highest stored event: a
        # row whose counter fell behind (edited by hand, restored from an older copy)
        # goes on after its events instead of failing this write -- which, in a claim,
        # failed every claim of every job, the damaged one being the oldest queued.
        rows = tx.execute(
            "UPDATE jobs SET event_seq = 1 + CASE"
            " WHEN CAST(event_seq AS INTEGER) >= (SELECT COALESCE(MAX(seq), 0) FROM events"
            "  WHERE job_id = ?) THEN CAST(event_seq AS INTEGER)"
            " ELSE (SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?) END"
            " WHERE id = ? RETURNING event_seq",
            (job_id, job_id, job_id),
        )
        seq = int(rows[0]["event_seq"])
        tx.execute(
            "INSERT INTO events (job_id, seq, ts, kind, data) VALUES (?, ?, ?, ?, ?)",
            (job_id, seq, _now(), kind, json.dumps(data, default=str)),
        )
        return seq

    def add_event(self, job_id: str, kind: str, data: Any, *, owner: str | None = None,
                  **job_fields: Any) -> int:  # fmt: skip
        """Append an event (and update job fields in the same transaction); with
        ``owner``, only while that worker holds the lease."""
        with self._tx() as tx:
            if job_fields or owner is not None:
                names, values = self._assignments(job_fields)
                self._fenced(tx, f"UPDATE jobs SET {names} WHERE id = ?", [*values, job_id], owner)  # noqa: S608
            seq = self._add_event(tx, job_id, kind, data)
        self._notify(job_id)
        return seq

    def events(self, job_id: str, *, after: int = 0, limit: int = 500) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT seq, ts, kind, data FROM events WHERE job_id = ? AND seq > ?"
            " ORDER BY seq LIMIT ?",
            (job_id, after, limit),
        )
        page = []
        for row in rows:
            data, problem = decode_stored(row["data"], what="event data")
            event = {"seq": row["seq"], "ts": row["ts"], "kind": str(row["kind"]), "data": data}
            if problem:
                event["row_error"] = problem
            page.append(event)
        return page


class _Control:
    """One control request applied to one job row, inside the caller's transaction."""

    def __init__(self, store: JobStore, tx: _Tx, job_id: str, action: str, row: dict[str, Any]):
        self.store, self.tx, self.job_id, self.action = store, tx, job_id, action
        self.status, self.control = row["status"], row["control"]

    def apply(self) -> None:
        handler = getattr(self, f"_{self.action}", None)
        if self.action not in (*CONTROLS, "resume", "retry") or handler is None:
            raise ConfigurationError(f"unknown action {self.action!r}")
        handler()

    def become(self, new: str, reason: str, **extra: Any) -> None:
        fields = {"status": new, "status_reason": reason, "control": None, **extra}
        if new != "running":
            fields.update(lease_owner=None, lease_expires=None)
        names, values = self.store._assignments(fields)
        self.tx.execute(f"UPDATE jobs SET {names} WHERE id = ?", [*values, self.job_id])  # noqa: S608
        self.store._add_event(self.tx, self.job_id, "status", {"status": new, "reason": reason})

    def request(self, control: str | None) -> None:
        """Leave the request for the job's worker (None: withdraw a pause)."""
        extra = ", cancel_requested = 1" if control == "cancel" else ""
        self.tx.execute(
            f"UPDATE jobs SET control = ?, updated_at = ?{extra} WHERE id = ?",  # noqa: S608
            (control, _now(), self.job_id),
        )
        self.store._add_event(self.tx, self.job_id, f"{control or 'resume'}_requested", {})

    def refuse(self, why: str = "") -> None:
        raise StoreConflictError(
            f"cannot {self.action} job {self.job_id}: it is {self.status}{why}"
        )

    def _cancel(self) -> None:
        if self.status in ("queued", "paused"):
            # A cancel is the user's decision, not an error: the reason says when it came.
            reason = (
                "cancelled on request before it started"
                if self.status == "queued"
                else "cancelled on request while paused"
            )
            self.become("cancelled", reason, finished_at=_now(), cancel_requested=1,
                        error=None)  # fmt: skip
        elif self.status == "running":
            self.request("cancel")
        # a finished job stays as it is: cancelling it again is no error

    def _pause(self) -> None:
        if self.status == "queued":
            self.become("paused", "paused on request")
        elif self.status == "running":
            self.request("pause")
        elif self.status != "paused":
            self.refuse()

    def _resume(self) -> None:
        if self.status == "paused":
            self.become("queued", "resumed on request")
        elif self.status == "running" and self.control == "pause":
            self.request(None)
        elif self.status not in ("queued", "running"):
            self.refuse()

    def _stop(self) -> None:
        if self.status == "running":
            self.request("stop")
        elif self.status == "paused":  # a worker takes it and ends it at once with its best
            self.become("queued", "stop requested while paused")
            self.tx.execute("UPDATE jobs SET control = 'stop' WHERE id = ?", (self.job_id,))
        elif self.status == "queued":
            self.refuse(" and has no result yet: cancel it instead")
        else:
            self.refuse()

    def _retry(self) -> None:
        if self.status not in ("failed", "cancelled"):
            self.refuse(": only a failed or cancelled job can be retried")
        self.become("queued", f"retry of a {self.status} job", error=None, result=None,
                    finished_at=None, cancel_requested=0)  # fmt: skip


# -- SQLite ------------------------------------------------------------------------------


class SqliteJobStore(JobStore):
    """The SQLite job store (one file, WAL). ``owner=True`` takes the backend's lock."""

    kind = "sqlite"

    def __init__(self, path: str | Path, *, owner: bool = False) -> None:
        super().__init__()
        self.path = Path(path).expanduser().resolve()
        self.name = repr(str(self.path))
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        self._db_lock_fd: int | None = None
        if owner:
            self._take_lock()
        elif not self.path.exists():
            raise StoreError(f"no job database at {str(self.path)!r}")
        try:
            _private_file(self.path)
            self._db = sqlite3.connect(
                str(self.path), timeout=10.0, check_same_thread=False, isolation_level=None
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA busy_timeout = 10000")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            with self._tx() as tx:
                tx.execute("CREATE TABLE IF NOT EXISTS taskapp_schema (version INTEGER NOT NULL)")
                rows = tx.execute("SELECT version FROM taskapp_schema")
                old = tx.execute("SELECT name FROM sqlite_master WHERE name = 'jobs'")
                version = int(rows[0]["version"]) if rows else (1 if old else 0)
                self._migrate(tx, version)
        except (sqlite3.Error, StoreError) as exc:
            self._release_lock()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(
                f"cannot open the job database {str(self.path)!r}: {exc} (is it a taskapp "
                "job database, on a local disk with free space?)"
            ) from exc

    # -- the backend's lock --------------------------------------------------------------

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def _take_lock(self) -> None:
        """Two locks: ``<db>.lock`` (by path; it says who holds it) and the database
        file itself (by identity: a hard link or another path to the same file is the
        same database, and two backends on it would each keep their own WAL)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _private_file(self.lock_path)
            fd = os.open(self.lock_path, os.O_RDWR)
        except OSError as exc:
            raise StoreError(
                f"cannot create the job database's files in {str(self.path.parent)!r}: "
                f"{exc.strerror} (a read-only or missing directory? pass --db PATH in a "
                "directory this user can write)"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise StoreLockedError(
                f"another taskapp backend uses the job database {str(self.path)!r} "
                f"({holder}); stop it first, or pass another --db"
            ) from None
        self._lock_fd = fd
        try:
            db_fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            self._release_lock()
            raise StoreError(
                f"cannot open the job database {str(self.path)!r}: {exc.strerror} (a "
                "read-only directory or file? pass --db PATH this user can write)"
            ) from None
        try:
            fcntl.flock(db_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(db_fd)
            self._release_lock()
            raise StoreLockedError(
                f"another taskapp backend uses the job database {str(self.path)!r} under "
                "another name (a hard link or another path to the same file); stop it first"
            ) from None
        self._db_lock_fd = db_fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)

    @property
    def owns_lock(self) -> bool:
        return self._lock_fd is not None

    def describe_owner(self, text: str) -> None:
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)
            os.pwrite(self._lock_fd, f"pid {os.getpid()}, {text}".encode(), 0)

    def _release_lock(self) -> None:
        if self._db_lock_fd is not None:  # after SQLite closed the file (POSIX locks)
            with contextlib.suppress(OSError):
                os.close(self._db_lock_fd)
            self._db_lock_fd = None
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

    @contextlib.contextmanager
    def _tx(self) -> Iterator[_Tx]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield _Tx(self, self._db)
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

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            try:
                return [dict(row) for row in self._db.execute(sql, tuple(args))]
            except sqlite3.Error as exc:
                raise StoreError(f"the job database {str(self.path)!r}: {exc}") from exc


# -- PostgreSQL --------------------------------------------------------------------------

#: the advisory lock that serialises schema migrations of concurrent starts
_MIGRATION_LOCK = 0x7461736B  # "task"


class PostgresJobStore(JobStore):
    """The PostgreSQL job store (psycopg 3): any number of API processes and workers on
    any host share it. Connections come from a small pool; one that breaks (the server
    restarted) is dropped and the next call connects again, so a store that blinks only
    fails the calls made while it is away (as :class:`StoreError`)."""

    kind = "postgresql"
    TYPES: ClassVar[dict[str, str]] = {
        "REAL": "DOUBLE PRECISION",
        "BLOB": "BYTEA",
        "BIGINT": "BIGINT",
    }

    def __init__(self, url: str, *, pool_size: int = 8, connect_timeout: float = 5.0) -> None:
        super().__init__()
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise ConfigurationError(
                "a postgresql:// job database needs psycopg 3: pip install 'taskapp[postgres]'"
            ) from None
        password = re.match(r"^\w+://[^:/@]*:([^@]*)@", url)
        if password:
            register_secret(password.group(1))
        self.url = url
        self.name = repr(public_db_name(url))
        self._connect_timeout = connect_timeout
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._closed = False
        with self._tx() as tx:
            tx.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            tx.execute("CREATE TABLE IF NOT EXISTS taskapp_schema (version INTEGER NOT NULL)")
            rows = tx.execute("SELECT version FROM taskapp_schema")
            old = tx.execute("SELECT to_regclass('jobs') IS NOT NULL AS present")
            version = int(rows[0]["version"]) if rows else (1 if old[0]["present"] else 0)
            self._migrate(tx, version)

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _lock_row(self, sql: str) -> str:
        return sql + " FOR UPDATE"

    def _claim_candidates(self, tx: _Tx, now: float) -> list[dict[str, Any]]:
        return tx.execute(
            "SELECT id, status, lease_owner FROM jobs WHERE status = 'queued'"
            " OR (status = 'running' AND (lease_expires IS NULL OR lease_expires < ?))"
            " ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED",
            (now,),
        )

    def _connect(self) -> Any:
        import psycopg
        from psycopg.rows import dict_row

        try:
            return psycopg.connect(
                self.url,
                connect_timeout=max(1, round(self._connect_timeout)),
                row_factory=dict_row,
                application_name="taskapp",
                autocommit=True,  # transactions are explicit (conn.transaction())
            )
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot reach the job database {self.name}: {_pg_message(exc)} (is the "
                "PostgreSQL server running, and the URL's host, port, user and database right?)"
            ) from None

    @contextlib.contextmanager
    def _tx(self) -> Iterator[_Tx]:
        import psycopg

        if self._closed:
            raise StoreError(f"the job database {self.name} is closed")
        self._slots.acquire()
        conn: Any = None
        try:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = self._connect()
            try:
                with conn.transaction():
                    yield _Tx(self, conn)
            except psycopg.Error as exc:
                if conn.closed or isinstance(exc, psycopg.OperationalError):
                    with contextlib.suppress(Exception):
                        conn.close()
                    conn = None
                raise StoreError(f"the job database {self.name}: {_pg_message(exc)}") from None
        finally:
            if conn is not None and not conn.closed and not self._closed:
                self._idle.put(conn)
            elif conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            self._slots.release()

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                return
            with contextlib.suppress(Exception):
                conn.close()


def _pg_message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return redact(text[0] if text else type(exc).__name__)


def request_hash(body: Any) -> str:
    """The fingerprint of a submission (what an Idempotency-Key is bound to)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()
