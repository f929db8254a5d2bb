"""The backend's bounded worker pool: runs queued jobs with taskapp's GEPA engine.

* At most ``workers`` jobs run at once, each on its own thread (GEPA is synchronous),
  each in its own run directory ``<runs_dir>/<job id>/`` (GEPA's checkpoint lives there).
* A job the previous backend left ``running`` (stopped, crashed, SIGKILLed) is queued
  again at start-up and **resumes** from its run directory: the baseline is not scored
  again and the budget stays a total. The store's lock (one backend per database) and
  the dispatcher (one thread per job id) make sure no job runs twice.
* ``cancel(job_id)`` stops a running job after its current step (seconds): its status is
  ``cancelled``, with the best found so far as its result.
* ``stop()`` (backend shutdown) stops running jobs the same way but leaves them
  ``queued``, so the next start resumes them.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from taskapp.core.errors import ConfigurationError, TaskAppError
from taskapp.core.logs import get_logger
from taskapp.core.secrets import redact
from taskapp.jobs.store import JobStore, StoreError

__all__ = ["JobPool"]

logger = get_logger("taskapp.jobs")

PROGRESS_FIELDS = ("event", "iteration", "metric_calls", "score", "best_score", "budget")


class JobPool:
    """Runs the store's queued jobs, ``workers`` at a time."""

    def __init__(self, store: JobStore, *, runs_dir: str | Path, workers: int = 2) -> None:
        if workers < 1:
            raise ConfigurationError(f"workers must be >= 1, got {workers}")
        self.store = store
        self.runs_dir = Path(runs_dir)
        self.workers = workers
        self._lock = threading.Lock()
        self._running: dict[str, tuple[threading.Thread, threading.Event]] = {}
        self._cancelled: set[str] = set()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._dispatcher: threading.Thread | None = None

    # -- control -------------------------------------------------------------------------

    def start(self) -> list[str]:
        """Queue what a previous backend left running, then start dispatching."""
        resumed = self.store.requeue_running()
        if resumed:
            logger.info("resuming %d job(s) left running: %s", len(resumed), ", ".join(resumed))
        self._dispatcher = threading.Thread(
            target=self._dispatch, name="taskapp-jobs-dispatch", daemon=True
        )
        self._dispatcher.start()
        return resumed

    def notify(self) -> None:
        """A job was queued: look at the queue now."""
        self._wake.set()

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        job = self.store.request_cancel(job_id)
        with self._lock:
            running = self._running.get(job_id)
            if running is not None:
                self._cancelled.add(job_id)
                running[1].set()
        return job

    def running(self) -> list[str]:
        with self._lock:
            return list(self._running)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop dispatching; running jobs stop after their current step and stay queued."""
        self._stopping.set()
        self._wake.set()
        with self._lock:
            running = list(self._running.values())
        for _, event in running:
            event.set()
        deadline = time.monotonic() + timeout
        for thread, _ in running:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._dispatcher is not None:
            self._dispatcher.join(max(0.0, deadline - time.monotonic()))

    # -- dispatching ---------------------------------------------------------------------

    def _dispatch(self) -> None:
        while not self._stopping.is_set():
            try:
                self._fill_slots()
            except StoreError as exc:
                logger.error("job dispatch: %s", exc)
            self._wake.wait(0.5)
            self._wake.clear()

    def _fill_slots(self) -> None:
        for job_id in self.store.queued():
            with self._lock:
                if self._stopping.is_set() or len(self._running) >= self.workers:
                    return
                if job_id in self._running:
                    continue
                event = threading.Event()
                thread = threading.Thread(
                    target=self._run_job,
                    args=(job_id, event),
                    name=f"taskapp-job-{job_id}",
                    daemon=True,
                )
                self._running[job_id] = (thread, event)
            thread.start()

    def _run_job(self, job_id: str, stop_event: threading.Event) -> None:
        try:
            self._execute(job_id, stop_event)
        except Exception as exc:
            logger.exception("job %s: internal error", job_id)
            with contextlib.suppress(StoreError):
                self.store.set_status(
                    job_id,
                    "failed",
                    error=redact(f"internal error: {type(exc).__name__}: {exc}"),
                    finished_at=time.time(),
                )
        finally:
            with self._lock:
                self._running.pop(job_id, None)
                self._cancelled.discard(job_id)
            self._wake.set()

    # -- one job -------------------------------------------------------------------------

    def _execute(self, job_id: str, stop_event: threading.Event) -> None:
        from taskapp.optimize.errors import OptimizeError
        from taskapp.optimize.runner import run_config

        started = self._start(job_id)
        if started is None:
            return
        job, config = started
        result: Any = None
        error: str | None = None
        try:
            result = run_config(
                job["task_app_url"],
                config,
                api_key=job["task_app_key"],
                worker_token=job["worker_token"],
                on_progress=lambda event: self._progress(job_id, event),
                stop_event=stop_event,
            )
        except OptimizeError as exc:
            result, error = exc.result, exc.message
        except (ConfigurationError, TaskAppError) as exc:
            error = getattr(exc, "message", None) or str(exc)
        self._conclude(job_id, result, error)

    def _start(self, job_id: str) -> tuple[dict[str, Any], Any] | None:
        """Mark the job running; (job with secrets, its OptimizeConfig for this attempt),
        or None when there is nothing to run (gone, cancelled, or already finished)."""
        from taskapp.optimize.config import OptimizeConfig

        job = self.store.get(job_id, secrets=True)
        if job is None or job["status"] != "queued":
            return None
        if job["cancel_requested"]:
            self.store.set_status(job_id, "cancelled", finished_at=time.time())
            return None
        run_dir = self.runs_dir / job_id
        resume = (run_dir / "run.json").is_file()
        self.store.set_status(
            job_id,
            "running",
            attempts=int(job["attempts"]) + 1,
            started_at=job["started_at"] or time.time(),
        )
        config = OptimizeConfig.from_dict(job["config"])
        done = _finished_before(run_dir, config) if resume else None
        if done is not None:  # the result was saved just before the backend stopped
            self._finish(job_id, "succeeded", done, None)
            return None
        if not resume and run_dir.exists():
            shutil.rmtree(run_dir)  # a start that never reached its baseline
        return job, config.replace(output_dir=run_dir, resume=resume)

    def _progress(self, job_id: str, event: dict[str, Any]) -> None:
        """One progress event of the run: recorded, and the job's scores updated."""
        if event.get("event") == "started" and event.get("task"):
            self.store.set_labels(job_id, {"task": str(event["task"])})
        fields: dict[str, Any] = {}
        if event.get("best_score") is not None:
            fields["best_score"] = event["best_score"]
        if event.get("metric_calls") is not None:
            fields["metric_calls"] = event["metric_calls"]
        if event.get("event") == "baseline" and event.get("score") is not None:
            fields["baseline_score"] = event["score"]
        self.store.add_event(job_id, str(event.get("event")), event, **fields)

    def _conclude(self, job_id: str, result: Any, error: str | None) -> None:
        with self._lock:
            cancelled = job_id in self._cancelled
        if error is not None:
            self._finish(job_id, "failed", result, error)
        elif result is not None and result.status == "interrupted":
            if cancelled:
                self._finish(job_id, "cancelled", result, "cancelled while running")
            else:  # the backend is stopping: the next start resumes it
                self.store.set_status(job_id, "queued", reason="backend stopped")
        elif result is not None:
            self._finish(job_id, result.status, result, result.error)

    def _finish(self, job_id: str, status: str, result: Any, error: str | None) -> None:
        data = result.to_dict(include_raw=False) if result is not None else None
        fields: dict[str, Any] = {"finished_at": time.time(), "error": error, "result": data}
        if result is not None:
            fields.update(
                best_score=result.best_score,
                baseline_score=result.baseline_score,
                metric_calls=result.metric_calls,
            )
        self.store.set_status(job_id, status, **fields)


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
