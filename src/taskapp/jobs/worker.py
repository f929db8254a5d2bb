"""``taskapp backend worker``: a worker process with no API, on any host.

:func:`run_worker` opens the store (normally PostgreSQL, shared with the API processes
and other workers), claims queued jobs with a lease and runs up to ``workers`` of them at
once until SIGINT/SIGTERM; then it stops its running jobs after their current step and
queues them again (another worker resumes them from their checkpoint in the store). A
worker killed outright loses its leases when they run out (``lease_seconds``), and another
worker takes its jobs over.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from taskapp.core.logs import get_logger
from taskapp.core.signals import capture_signals

__all__ = ["run_worker"]

logger = get_logger("taskapp.jobs")


def run_worker(
    *,
    db: str | Path,
    workers: int = 2,
    lease_seconds: float = 30.0,
    worker_id: str | None = None,
    runs_dir: str | Path | None = None,
    on_ready: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
    llm_endpoints: Mapping[str, Any] | None = None,
) -> None:
    """Claim and run jobs until SIGINT/SIGTERM (or ``stop`` is set); blocking.
    ``llm_endpoints``: the reflection-model endpoints this host may call with its own
    keys (:func:`taskapp.jobs.llm.parse_llm_endpoints`)."""
    from taskapp.core.errors import ConfigurationError
    from taskapp.jobs.backend import _warm_up, default_runs_dir
    from taskapp.jobs.pool import JobPool
    from taskapp.jobs.store import open_store

    if workers < 1:
        raise ConfigurationError(f"a worker runs at least one job at a time, got {workers}")
    done = stop or threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        done.set()

    os.umask(0o077)  # this process's files (run directories) are private
    store = open_store(db)
    _warm_up()  # import the optimizer (GEPA) before the first claim, not during it
    try:
        pool = JobPool(
            store,
            runs_dir=default_runs_dir(store, runs_dir),
            workers=workers,
            lease_seconds=lease_seconds,
            worker_id=worker_id,
            llm_endpoints=llm_endpoints,
        )
        with capture_signals(handler):
            resumed = pool.start()
            if resumed:
                logger.warning("resuming %d job(s) left by a gone worker", len(resumed))
            if on_ready is not None:
                on_ready(pool.owner)
            try:
                while not done.wait(0.5):
                    pass
            finally:
                pool.stop()
    finally:
        store.close()
