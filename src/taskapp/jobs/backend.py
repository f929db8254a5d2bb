"""``taskapp backend serve``: the job store, the worker pool and the HTTP API, together.

:func:`serve` opens the store (taking its lock: one backend per database), resumes the
jobs a previous backend left running, serves the API on ``host:port`` (port 0: any free
port) until SIGINT/SIGTERM, then stops the running jobs after their current step (they
stay queued and resume at the next start) and releases everything.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from taskapp.core.errors import ConfigurationError
from taskapp.core.logs import get_logger
from taskapp.core.secrets import read_secret_file, register_secret

__all__ = ["API_KEY_ENV", "DEFAULT_DB", "default_runs_dir", "read_api_key", "serve"]

logger = get_logger("taskapp.jobs")

API_KEY_ENV = "TASKAPP_BACKEND_API_KEY"
DEFAULT_DB = "taskapp-jobs.sqlite3"


def read_api_key(path: Path | None, *, env: Mapping[str, str] | None = None) -> str:
    """The backend key from ``path`` (mode 0600 required) or ``$TASKAPP_BACKEND_API_KEY``."""
    environ = os.environ if env is None else env
    if path is not None:
        key = read_secret_file(path, what="the key file").strip()
        origin = f"the key file {str(path.expanduser())!r}"
    else:
        key = environ.get(API_KEY_ENV, "").strip()
        origin = f"${API_KEY_ENV}"
        if not key:
            raise ConfigurationError(
                f"no backend key: pass --api-key-file F (mode 0600) or set {API_KEY_ENV}"
            )
    if len(key) < 8 or any(c.isspace() for c in key):
        raise ConfigurationError(f"{origin}: the key must be one word of 8 characters or more")
    register_secret(key)
    return key


def default_runs_dir(store: Any, runs_dir: str | Path | None) -> Path:
    """Where a pool's scratch run directories go: ``runs_dir``, else beside a SQLite file
    (``DB.runs/``), else a per-user temporary folder (the checkpoints live in the store)."""
    import tempfile

    if runs_dir is not None:
        return Path(runs_dir)
    path = getattr(store, "path", None)
    if isinstance(path, Path):
        return path.with_name(path.name + ".runs")
    return Path(tempfile.gettempdir()) / f"taskapp-runs-{os.getuid()}"


def _warm_up() -> None:
    with contextlib.suppress(Exception):
        import taskapp.optimize.runner

        taskapp.optimize.runner.import_gepa()


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    db: str | Path = DEFAULT_DB,
    api_key: str,
    workers: int = 2,
    runs_dir: str | Path | None = None,
    on_ready: Callable[[str], None] | None = None,
    lease_seconds: float = 30.0,
    llm_endpoints: Mapping[str, Any] | None = None,
    max_streams: int = 1024,
    max_streams_per_key: int = 512,
    header_timeout: float = 10.0,
    max_connections: int = 4096,
) -> None:
    """Run the backend until SIGINT/SIGTERM (blocking). ``db``: a SQLite path or a
    ``postgresql://`` URL; ``workers=0``: the API only (``taskapp backend worker``
    processes run the jobs).

    ``llm_endpoints`` (from :func:`taskapp.jobs.llm.parse_llm_endpoints`): the reflection
    model endpoints the backend may call with its own keys. ``max_streams`` /
    ``max_streams_per_key``: open SSE streams and long polls (503 / 429 past them).
    ``header_timeout``: seconds a client has to send its request headers.
    ``max_connections``: connections and requests at once (uvicorn answers 503 past it).
    """
    from taskapp.core.header_timeout import header_timeout_protocol
    from taskapp.core.ports import listen_tcp, url_host
    from taskapp.core.serving import fast_exit_server_class, uvicorn_config
    from taskapp.jobs.pool import JobPool
    from taskapp.jobs.service import create_backend_app
    from taskapp.jobs.store import open_store
    from taskapp.jobs.streams import HoldLimits

    os.umask(0o077)  # this process's files (run directories, the database) are private
    store = open_store(db, owner=True)
    try:
        sock = listen_tcp(host, port)
    except OSError as exc:
        store.close()
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    url = f"http://{url_host(host)}:{sock.getsockname()[1]}"
    store.describe_owner(f"serving on {url}")
    pool = JobPool(
        store, runs_dir=default_runs_dir(store, runs_dir), workers=workers,
        lease_seconds=lease_seconds, llm_endpoints=llm_endpoints,
    )  # fmt: skip
    try:
        limits = HoldLimits(total=max_streams, per_key=max_streams_per_key)
        app = create_backend_app(store, pool, api_key, limits=limits, llm_endpoints=llm_endpoints)
        config = uvicorn_config(
            app,
            log_level="warning",
            lifespan="off",
            http=header_timeout_protocol(header_timeout),
            limit_concurrency=max_connections,
            timeout_graceful_shutdown=2,
        )
        server = fast_exit_server_class()(config)
        # SIGINT/SIGTERM end the server loop (a second one: at once); the backend then
        # stops its jobs cleanly below (uvicorn's own handling would re-raise the signal
        # afterwards and end the process before the jobs are stopped).
        server.on_signal = lambda signum: server.request_exit()
        if on_ready is not None:
            server.on_started = lambda: on_ready(url)
        # Import the optimizer (GEPA, the runner) now, not when the first job arrives.
        threading.Thread(target=_warm_up, name="taskapp-jobs-warm-up", daemon=True).start()
        resumed = pool.start()
        if resumed:
            print(
                f"taskapp backend: resuming {len(resumed)} job(s): {', '.join(resumed)}",
                file=sys.stderr,
                flush=True,
            )
        server.run(sockets=[sock])
    finally:
        pool.stop()
        sock.close()
        store.close()
