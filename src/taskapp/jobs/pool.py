"""Workers: run the store's queued jobs with taskapp's GEPA engine, on any host.

A :class:`JobPool` runs up to ``workers`` jobs at once, each on its own thread (GEPA is
synchronous), in a local scratch directory ``<runs_dir>/<job id>/``. It is what
``taskapp backend serve`` runs in-process and what ``taskapp backend worker`` runs alone;
any number of pools on any number of hosts can share one PostgreSQL store.

* **Claims and leases**: a pool claims the oldest queued job in one transaction
  (:meth:`JobStore.claim`) and renews its lease every ``lease_seconds / 3``. A pool that
  dies (SIGKILL, host gone) stops renewing; once the lease has run out another pool
  claims the job and resumes it. A pool that finds its lease taken stops the run and
  writes nothing more for it (the store fences its writes).
* **Checkpoints in the database**: after the baseline and after every iteration the run
  directory's changed files (GEPA's state, ``run.json`` with the baseline scores,
  ``history.jsonl``) are stored with the job; a pool that takes a job over writes them
  into its own scratch directory and resumes there: the baseline is not scored again and
  the budget stays a total.
* **Controls** (pause, stop, cancel) are requests in the store, seen at the next lease
  renewal or progress event: the run stops after its current step; pause leaves it
  ``paused`` (resume queues it again), stop ends it ``succeeded`` with the best so far,
  cancel ends it ``cancelled`` without a result.
* **The database going away** pauses claims (one log line when it goes, one when it is
  back); a running job keeps running, its events wait in memory and are written when the
  database returns. No job is failed because the store blinked.
* **A full disk** (or another storage error: a quota, an I/O error, a read-only
  filesystem) while a job writes its scratch run directory does not fail the job: it is
  queued again with the reason (``disk full at PATH ...``) and a ``storage_error`` event,
  its last checkpoint in the store is kept as it was, and the pool stops claiming until a
  test write in the run directory succeeds (retried with backoff, 1 s to 30 s); then the
  job resumes from that checkpoint (here, or on another pool with room). A job that
  meets a storage error ``MAX_STORAGE_FAULTS`` times in a row on one pool without a new
  checkpoint in between (room for the test write, not for the run) fails saying so; its
  checkpoint stays, and ``retry`` resumes from it.
* ``stop()`` (shutdown) stops running jobs after their current step and queues them
  again, for this or another pool.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskapp.core.errors import ConfigurationError, TaskAppError
from taskapp.core.logs import get_logger
from taskapp.core.secrets import redact, register_secret
from taskapp.jobs.llm import LlmEndpoint, build_reflection_lm
from taskapp.jobs.store import JobStore, LeaseLostError, StoreError, secret_values

__all__ = ["JobPool", "new_worker_id"]

logger = get_logger("taskapp.jobs")

#: progress events after which the run directory is checkpointed into the store
CHECKPOINT_EVENTS = ("baseline", "iteration")

#: errno values that say the storage under the run directory failed, not the job
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG})

#: what a test write in the run directory writes before claims resume after a disk fault
PROBE_BYTES = 1 << 20

#: storage errors in a row (no checkpoint between them) after which a job fails
MAX_STORAGE_FAULTS = 5


def storage_error(exc: BaseException) -> OSError | None:
    """The storage ``OSError`` behind ``exc`` (its cause chain included: gepa re-raises a
    failed state save as a new ``OSError`` without the errno), or None."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno in STORAGE_ERRNOS:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def describe_storage_error(exc: OSError, where: Path, *, times: int = 0) -> str:
    """``disk full at PATH (No space left on device): ...`` -- what happened and what to do
    (``times``: the job's storage errors in a row, when it fails because of them)."""
    path = exc.filename or where
    what = {
        errno.ENOSPC: "disk full",
        errno.EDQUOT: "disk quota exceeded",
        errno.EFBIG: "file too large",
        errno.EROFS: "read-only filesystem",
    }.get(exc.errno or 0, "storage error")
    if times:
        return (
            f"{what} at {path} ({exc.strerror or exc}), {times} times in a row with no "
            "checkpoint in between: free space there (or fix the disk), then retry the job "
            "(taskapp jobs retry ID): it resumes from its last checkpoint"
        )
    return (
        f"{what} at {path} ({exc.strerror or exc}): free space there (or fix the disk); the "
        "job waits, queued, and resumes from its last checkpoint by itself"
    )


def new_worker_id() -> str:
    """``host:pid:random`` — the lease owner's name (the host and pid say where it ran)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def dead_local_owner(owner: str | None) -> bool:
    """True when ``owner`` is a worker id of this host whose process is gone."""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return True  # an earlier pool of this process (it ended without releasing)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass
class _Run:
    """One job this pool runs."""

    job_id: str
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    action: str | None = None  # the control request that stopped it (pause, stop, cancel)
    lost: bool = False  # another worker holds the job now
    pending: list[tuple[str, dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict)  # checkpointed files


class _Outage:
    """Says once that the database went away, and once that it is back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.down_since: float | None = None

    def failed(self, what: str, exc: StoreError) -> None:
        with self._lock:
            if self.down_since is None:
                self.down_since = time.monotonic()
                logger.warning(
                    "job database unreachable (%s: %s): claims paused, running jobs go on; "
                    "retrying",
                    what,
                    exc.message,
                )

    def ok(self) -> None:
        with self._lock:
            if self.down_since is not None:
                logger.warning(
                    "job database reachable again after %.1f s: claims resume",
                    time.monotonic() - self.down_since,
                )
                self.down_since = None


class _DiskWait:
    """After a storage error in the run directory: no claims until a test write there
    succeeds, tried with backoff (1 s, doubling, at most 30 s); one log line each way."""

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = runs_dir
        self._lock = threading.Lock()
        self.down_since: float | None = None
        self._delay = 1.0
        self._next_probe = 0.0

    def failed(self, message: str) -> None:
        with self._lock:
            now = time.monotonic()
            if self.down_since is None:
                self.down_since = now
                logger.warning(
                    "%s: claims paused until a test write there succeeds; retrying", message
                )
            self._next_probe = now + self._delay
            self._delay = min(self._delay * 2, 30.0)

    def progressed(self) -> None:
        """A job wrote a checkpoint: the next fault starts the backoff again."""
        with self._lock:
            if self.down_since is None:
                self._delay = 1.0

    def ready(self) -> bool:
        """True when claims may go on (a due test write succeeded, or no fault)."""
        with self._lock:
            if self.down_since is None:
                return True
            now = time.monotonic()
            if now < self._next_probe:
                return False
            if not self._probe():
                self._next_probe = now + self._delay
                self._delay = min(self._delay * 2, 30.0)
                return False
            logger.warning(
                "disk space back in %s after %.1f s: claims resume",
                self.runs_dir,
                now - self.down_since,
            )
            self.down_since = None
            return True

    def _probe(self) -> bool:
        path = self.runs_dir / ".taskapp-space-probe"
        try:
            with open(path, "wb") as probe:
                probe.write(bytes(PROBE_BYTES))
                probe.flush()
                os.fsync(probe.fileno())
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
        return True


class JobPool:
    """Claims and runs the store's queued jobs, ``workers`` at a time."""

    def __init__(
        self,
        store: JobStore,
        *,
        runs_dir: str | Path,
        workers: int = 2,
        lease_seconds: float = 30.0,
        worker_id: str | None = None,
        poll_seconds: float = 0.5,
        llm_endpoints: Mapping[str, LlmEndpoint] | None = None,
    ) -> None:
        if workers < 0:
            raise ConfigurationError(f"workers must be >= 0, got {workers}")
        if lease_seconds < 1:
            raise ConfigurationError(f"lease_seconds must be >= 1, got {lease_seconds}")
        self.store = store
        #: the reflection-model endpoints this host's operator configured (with keys)
        self.llm_endpoints = dict(llm_endpoints or {})
        self.runs_dir = Path(runs_dir)
        self.workers = workers
        self.lease_seconds = float(lease_seconds)
        self.owner = worker_id or new_worker_id()
        self.poll_seconds = poll_seconds
        self.outage = _Outage()
        self.disk = _DiskWait(self.runs_dir)
        self._storage_faults: dict[str, int] = {}  # job id -> storage errors in a row
        self._lock = threading.Lock()
        self._running: dict[str, _Run] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- control -------------------------------------------------------------------------

    def start(self, *, requeue_all: bool = False) -> list[str]:
        """Queue what a gone worker of this host left running (``requeue_all``: every
        running job, for the one backend that owns a SQLite file), then start."""
        resumed: list[str] = []
        if self.workers == 0:
            return resumed
        try:  # scratch run directories hold the job's config: this user's only
            self.runs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.runs_dir, 0o700)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot create the run directory {str(self.runs_dir)!r}: {exc.strerror} "
                "(a read-only directory? pass --db PATH in a directory this user can write)"
            ) from None
        try:
            resumed = self.store.requeue_running(
                dead_owner=None if requeue_all else dead_local_owner
            )
        except StoreError as exc:
            self.outage.failed("requeue", exc)
        if resumed:
            logger.info("resuming %d job(s) left running: %s", len(resumed), ", ".join(resumed))
        for target, name in ((self._dispatch, "dispatch"), (self._heartbeat, "heartbeat")):
            thread = threading.Thread(target=target, name=f"taskapp-jobs-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return resumed

    def notify(self) -> None:
        """A job was queued or changed: look at the queue now."""
        self._wake.set()

    def running(self) -> list[str]:
        with self._lock:
            return list(self._running)

    def signal(self, job_id: str, action: str) -> None:
        """A control request was stored for a job: if it runs here, act at once."""
        with self._lock:
            run = self._running.get(job_id)
        if run is not None and action in ("pause", "stop", "cancel"):
            run.action = action
            run.stop.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming; running jobs stop after their current step and are queued."""
        self._stopping.set()
        self._wake.set()
        with self._lock:
            runs = list(self._running.values())
        for run in runs:
            run.stop.set()
        deadline = time.monotonic() + timeout
        for run in runs:
            if run.thread is not None:
                run.thread.join(max(0.0, deadline - time.monotonic()))
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- claiming ------------------------------------------------------------------------

    def _dispatch(self) -> None:
        while not self._stopping.is_set():
            claimed = False
            try:
                claimed = self.disk.ready() and self._claim_one()
                self.outage.ok()
            except StoreError as exc:
                self.outage.failed("claim", exc)
            if claimed:
                continue
            self._wake.wait(self.poll_seconds if self.outage.down_since is None else 1.0)
            self._wake.clear()

    def _claim_one(self) -> bool:
        with self._lock:
            if self._stopping.is_set() or len(self._running) >= self.workers:
                return False
        job = self.store.claim(self.owner, self.lease_seconds)
        if job is None:
            return False
        run = _Run(job["id"])
        if job.get("_control") in ("pause", "stop", "cancel"):
            run.action = job["_control"]
            run.stop.set()
        run.thread = threading.Thread(
            target=self._run_job, args=(job, run), name=f"taskapp-job-{job['id']}", daemon=True
        )
        with self._lock:
            self._running[job["id"]] = run
        run.thread.start()
        return True

    def _heartbeat(self) -> None:
        interval = self.lease_seconds / 3
        while not self._stopping.wait(interval):
            with self._lock:
                runs = list(self._running.values())
            for run in runs:
                self._renew(run)

    def _renew(self, run: _Run) -> None:
        try:
            action = self.store.renew(run.job_id, self.owner, self.lease_seconds)
            self.outage.ok()
        except LeaseLostError:
            if not run.lost:
                logger.warning("job %s: another worker holds it now; stopping here", run.job_id)
            run.lost = True
            run.stop.set()
            return
        except StoreError as exc:
            self.outage.failed("lease renewal", exc)
            return
        if action is not None and run.action is None:
            run.action = action
            run.stop.set()

    # -- one job -------------------------------------------------------------------------

    def _run_job(self, job: dict[str, Any], run: _Run) -> None:
        try:
            self._execute(job, run)
        except LeaseLostError:
            logger.warning("job %s: another worker holds it now; left to it", run.job_id)
        except Exception as exc:
            logger.exception("job %s: internal error", run.job_id)
            with contextlib.suppress(StoreError, LeaseLostError):
                self.store.set_status(
                    run.job_id,
                    "failed",
                    owner=self.owner,
                    error=redact(f"internal error: {type(exc).__name__}: {exc}"),
                    finished_at=time.time(),
                )
        finally:
            with self._lock:
                self._running.pop(run.job_id, None)
            with contextlib.suppress(OSError):
                shutil.rmtree(self.runs_dir / run.job_id)
            self._wake.set()

    def _execute(self, job: dict[str, Any], run: _Run) -> None:
        job_id = run.job_id
        if job.get("row_error"):  # a damaged record fails once, saying what is wrong
            self._set(run, "failed", error=str(job["error"]), finished_at=time.time())
            return
        # a restarted worker learns the job's secrets again: redacted by value in
        # whatever the run reports
        for value in (job["task_app_key"], job["worker_token"], *secret_values(job["config"])):
            register_secret(value)
        run_dir = self.runs_dir / job_id
        try:
            self._run_in(job, run, run_dir)
        except Exception as exc:
            fault = storage_error(exc)
            if fault is None:
                raise
            self._storage_fault(run, fault, run_dir)

    def _run_in(self, job: dict[str, Any], run: _Run, run_dir: Path) -> None:
        from taskapp.optimize.config import OptimizeConfig
        from taskapp.optimize.errors import OptimizeError
        from taskapp.optimize.runner import run_config

        job_id = run.job_id
        resume = self._restore(job_id, run_dir, run)
        config = OptimizeConfig.from_dict(job["config"])
        done = _finished_before(run_dir, config) if resume else None
        if done is not None:  # the result was saved just before the last worker stopped
            self._finish(run, "succeeded", done, None)
            return
        result: Any = None
        error: str | None = None
        try:
            # the reflection model with the operator's or the client's key, never one
            # read from this process's environment
            lm = build_reflection_lm(config.reflection_lm, self.llm_endpoints)
            result = run_config(
                job["task_app_url"],
                config.replace(output_dir=run_dir, resume=resume, reflection_lm=lm),
                # "" (not None): no key rather than this process's $ENVIRONMENT_API_KEY
                api_key=job["task_app_key"] or "",
                worker_token=job["worker_token"],
                on_progress=lambda event: self._progress(run, run_dir, event),
                stop_event=run.stop,
            )
        except (ConfigurationError, TaskAppError) as exc:
            if storage_error(exc) is not None:
                raise  # the disk, not the job: see _storage_fault
            if isinstance(exc, OptimizeError):
                result = exc.result
            error = getattr(exc, "message", None) or str(exc)
        self._conclude(run, result, error)

    def _storage_fault(self, run: _Run, exc: OSError, run_dir: Path) -> None:
        """A storage error in the run directory: the job is queued again saying so, its
        events are kept, its checkpoint in the store stays the last one taken at an
        iteration boundary (not what the failed write left), and claims wait for room."""
        with self._lock:
            times = self._storage_faults.get(run.job_id, 0) + 1
            self._storage_faults[run.job_id] = times
        message = describe_storage_error(exc, run_dir)
        logger.warning("job %s: %s", run.job_id, message)
        self.disk.failed(f"storage error in the run directory {self.runs_dir}")
        if run.lost:
            return  # another worker holds the job: it goes on there
        data = {"error": message, "path": str(exc.filename or run_dir), "errno": exc.errno}
        run.pending.append(("storage_error", data, {}))
        self._retry(lambda: self._flush(run), run)
        if times < MAX_STORAGE_FAULTS:
            self._set(run, "queued", reason=message)
            return
        with self._lock:
            self._storage_faults.pop(run.job_id, None)
        error = describe_storage_error(exc, run_dir, times=times)
        self._set(run, "failed", error=error, finished_at=time.time())

    def _restore(self, job_id: str, run_dir: Path, run: _Run) -> bool:
        """Write the job's checkpoint from the store into ``run_dir``; True when there is
        one to resume from."""
        files = self._retry(lambda: self.store.load_files(job_id), run)
        if run_dir.exists():
            shutil.rmtree(run_dir)
        for name, data in files.items():
            path = (run_dir / name).resolve()
            if run_dir.resolve() not in path.parents:
                continue  # never outside the run directory
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            run.hashes[name] = hashlib.sha256(data).hexdigest()
        return (run_dir / "run.json").is_file()

    def _retry(self, call: Any, run: _Run) -> Any:
        """``call()``, retried while the database is away (until this pool stops or the
        job is lost)."""
        while True:
            try:
                value = call()
                self.outage.ok()
                return value
            except StoreError as exc:
                self.outage.failed(f"job {run.job_id}", exc)
                if self._stopping.is_set() or run.lost:
                    raise
                time.sleep(1.0)

    def _progress(self, run: _Run, run_dir: Path, event: dict[str, Any]) -> None:
        """One progress event of the run: recorded with the job's scores (and, at an
        iteration boundary, the checkpoint). Never raises: a database that is away
        keeps the event for later, a lost lease stops the run."""
        if event.get("event") == "started" and event.get("task"):
            with contextlib.suppress(StoreError):  # a label for the list
                self.store.set_labels(run.job_id, {"task": str(event["task"])})
        fields: dict[str, Any] = {}
        if event.get("best_score") is not None:
            fields["best_score"] = event["best_score"]
        if event.get("metric_calls") is not None:
            fields["metric_calls"] = event["metric_calls"]
        if event.get("event") == "baseline" and event.get("score") is not None:
            fields["baseline_score"] = event["score"]
        run.pending.append((str(event.get("event")), dict(event), fields))
        try:
            while run.pending:
                kind, data, job_fields = run.pending[0]
                self.store.add_event(run.job_id, kind, data, owner=self.owner, **job_fields)
                run.pending.pop(0)
            if event.get("event") in CHECKPOINT_EVENTS:
                self._checkpoint(run, run_dir)
                self.disk.progressed()
                with self._lock:
                    self._storage_faults.pop(run.job_id, None)
            self.outage.ok()
        except LeaseLostError:
            run.lost = True
            run.stop.set()
        except StoreError as exc:
            self.outage.failed(f"job {run.job_id}", exc)

    def _checkpoint(self, run: _Run, run_dir: Path) -> None:
        changed: dict[str, bytes] = {}
        hashes: dict[str, str] = {}
        for path in sorted(run_dir.rglob("*")):
            if not path.is_file() or path.name.endswith(".tmp"):
                continue
            name = path.relative_to(run_dir).as_posix()
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if run.hashes.get(name) != digest:
                changed[name] = data
                hashes[name] = digest
        self.store.save_files(run.job_id, changed, owner=self.owner)
        run.hashes.update(hashes)

    def _conclude(self, run: _Run, result: Any, error: str | None) -> None:
        if run.lost:
            return  # another worker holds the job: it ends it
        run_dir = self.runs_dir / run.job_id
        with contextlib.suppress(OSError, StoreError, LeaseLostError):
            self._retry(lambda: self._flush(run), run)
            if run_dir.is_dir():
                self._checkpoint(run, run_dir)
        if error is not None:
            self._finish(run, "failed", result, error)
        elif result is not None and result.status == "interrupted":
            self._interrupted(run, result)
        elif result is not None:
            self._finish(run, result.status, result, result.error,
                         reason=_stop_reason(result))  # fmt: skip

    def _flush(self, run: _Run) -> None:
        while run.pending:
            kind, data, job_fields = run.pending[0]
            self.store.add_event(run.job_id, kind, data, owner=self.owner, **job_fields)
            run.pending.pop(0)

    def _interrupted(self, run: _Run, result: Any) -> None:
        action = run.action
        if action == "cancel":
            self._finish(run, "cancelled", None, None,  # a cancel is no error
                         reason="cancelled on request while running")  # fmt: skip
        elif action == "stop":
            result.status = "succeeded"
            self._finish(run, "succeeded", result, None,
                         reason="stopped on request: the best found so far")  # fmt: skip
        elif action == "pause":
            self._set(run, "paused", reason="paused on request", control=None)
        else:  # this worker is stopping: another one (or the next start) resumes it
            self._set(run, "queued", reason="backend stopped")

    def _finish(self, run: _Run, status: str, result: Any, error: str | None,
                reason: str | None = None) -> None:  # fmt: skip
        data = result.to_dict(include_raw=False) if result is not None else None
        fields: dict[str, Any] = {"finished_at": time.time(), "error": error, "result": data,
                                  "control": None}  # fmt: skip
        if result is not None:
            fields.update(
                best_score=result.best_score,
                baseline_score=result.baseline_score,
                metric_calls=result.metric_calls,
            )
        self._set(run, status, reason=reason, **fields)

    def _set(self, run: _Run, status: str, *, reason: str | None = None, **fields: Any) -> None:
        """The job's new status, retried while the database is away (a job's end is not
        lost because the store blinked)."""
        self._retry(
            lambda: self.store.set_status(
                run.job_id, status, reason=reason, owner=self.owner, **fields
            ),
            run,
        )


def _stop_reason(result: Any) -> str | None:
    reason = getattr(result, "stopped_by", None)
    return f"finished: {reason}" if reason else None


def _finished_before(run_dir: Path, config: Any) -> Any:
    """The saved result when the run in ``run_dir`` has nothing left to do, else None."""
    from taskapp.optimize.result import OptimizeResult

    try:
        data = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
        run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    result = OptimizeResult.from_dict(data)
    iteration = 2 * int(config.minibatch_size) + len(result.val_seeds)
    if run.get("status") == "succeeded" or result.budget - result.metric_calls < iteration:
        result.status = "succeeded"
        return result
    return None
