"""``taskapp backend serve``: the self-hosted prompt-learning job backend."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

EPILOG = """examples:
  umask 077; openssl rand -hex 24 > backend.key      # a key file, mode 0600
  taskapp backend serve --api-key-file backend.key   # http://127.0.0.1:8000, ./taskapp-jobs.sqlite3
  TASKAPP_BACKEND_API_KEY=... taskapp backend serve --port 0 --db jobs.sqlite3 --workers 4
  # several hosts: one PostgreSQL database, API processes with no workers, workers anywhere
  taskapp backend serve --db postgresql://taskapp@db-host/taskapp --workers 0 \\
      --api-key-file backend.key
  taskapp backend worker --db postgresql://taskapp@db-host/taskapp --workers 2
  # the reflection model jobs may use with this host's own key (llm_provider = "openai")
  taskapp backend serve --api-key-file backend.key \\
      --llm-endpoint openai=https://api.openai.com/v1 --llm-key-env openai=OPENAI_API_KEY

The backend never expands its own environment into a job: ${VAR} in a config is resolved
by the client, and the backend's own model keys go only to the --llm-endpoint URLs.

Jobs are submitted with PromptLearningJob (Python) or `taskapp jobs submit` and watched
with `taskapp jobs` or the web page at the printed URL. A job running when its worker
stops or dies resumes from its last checkpoint (stored in the database). A SQLite file
belongs to one backend at a time. Put a PostgreSQL password in ~/.pgpass, not in the URL.
See docs/jobs.md.
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "backend",
        help="run the prompt-learning job backend (PromptLearningJob, taskapp jobs)",
        description="The self-hosted job backend for [prompt_learning] jobs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="backend_command", metavar="SUBCOMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve the job API and web page",
        description=(
            "Accept [prompt_learning] jobs over HTTP, run them with taskapp's GEPA engine "
            "against each job's task app URL, and record everything in SQLite."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface (127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (8000; 0: any free port)")
    serve.add_argument(
        "--api-key-file",
        type=Path,
        metavar="F",
        help="file holding the key clients send as Authorization: Bearer (mode 0600; "
        "default: $TASKAPP_BACKEND_API_KEY)",
    )
    _db_options(serve)
    serve.add_argument(
        "--workers", type=int, default=2, help="jobs run at once here (2; 0: the API only)"
    )
    _llm_options(serve)
    serve.add_argument(
        "--max-streams",
        type=int,
        default=1024,
        metavar="N",
        help="open event streams and long polls in all (1024; 503 past it)",
    )
    serve.add_argument(
        "--max-streams-per-key",
        type=int,
        default=512,
        metavar="N",
        help="open event streams and long polls per key (512; 429 past it)",
    )
    serve.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds a client has to send its request headers (10)",
    )
    serve.set_defaults(run=run_serve)
    worker = commands.add_parser(
        "worker",
        help="run jobs from a shared job database (no API)",
        description=(
            "Claim queued jobs from the job database with a lease and run them; any number "
            "of workers on any host may share one PostgreSQL database."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _db_options(worker)
    worker.add_argument("--workers", type=int, default=2, help="jobs run at once here (2)")
    _llm_options(worker)
    worker.add_argument(
        "--worker-id", help="this worker's name in leases and events (default: host:pid:random)"
    )
    worker.set_defaults(run=run_worker)
    parser.set_defaults(run=lambda args: _no_subcommand(parser))


def _db_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        default="taskapp-jobs.sqlite3",
        metavar="PATH|URL",
        help="the job database: a SQLite file (./taskapp-jobs.sqlite3; scratch run "
        "directories beside it in DB.runs/) or postgresql://USER@HOST:PORT/DB",
    )
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=30.0,
        metavar="S",
        help="a worker holds a job this long without renewing (30); after that another "
        "worker takes it over",
    )
    parser.add_argument("--runs-dir", type=Path, help="scratch run directories (default: see --db)")


def _llm_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--llm-endpoint",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="an OpenAI-compatible endpoint jobs may use as their reflection model, by "
        'llm_provider = "NAME" or llm_inference_url = URL (repeatable)',
    )
    parser.add_argument(
        "--llm-key-env",
        action="append",
        default=[],
        metavar="NAME=VAR",
        help="the environment variable holding this host's own key for endpoint NAME "
        "(read once at start; sent only to that endpoint's URL)",
    )


def _no_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_serve(args: argparse.Namespace) -> int:
    from taskapp.cli._common import UsageError, stderr
    from taskapp.jobs.backend import read_api_key, serve
    from taskapp.jobs.llm import parse_llm_endpoints

    if args.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {args.workers}")
    if args.lease_seconds < 1:
        raise UsageError(f"--lease-seconds must be >= 1, got {args.lease_seconds}")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {args.port}")
    if not 0 < args.header_timeout <= 3600:
        raise UsageError(f"--header-timeout must be 0..3600 seconds, got {args.header_timeout}")
    for name in ("max_streams", "max_streams_per_key"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    key = read_api_key(args.api_key_file)
    endpoints = parse_llm_endpoints(args.llm_endpoint, args.llm_key_env, environ=os.environ)

    from taskapp.jobs.store import public_db_name

    def ready(url: str) -> None:
        stderr(
            f"taskapp backend: serving on {url} (page: {url}/, jobs in "
            f"{public_db_name(args.db)}, {args.workers} local worker(s))"
        )

    serve(
        host=args.host,
        port=args.port,
        db=args.db,
        api_key=key,
        workers=args.workers,
        on_ready=ready,
        lease_seconds=args.lease_seconds,
        runs_dir=args.runs_dir,
        llm_endpoints=endpoints,
        max_streams=args.max_streams,
        max_streams_per_key=args.max_streams_per_key,
        header_timeout=args.header_timeout,
    )
    stderr("taskapp backend: stopped (running jobs resume at the next start)")
    return 0


def run_worker(args: argparse.Namespace) -> int:
    from taskapp.cli._common import UsageError, stderr
    from taskapp.jobs.llm import parse_llm_endpoints
    from taskapp.jobs.store import public_db_name
    from taskapp.jobs.worker import run_worker as work

    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if args.lease_seconds < 1:
        raise UsageError(f"--lease-seconds must be >= 1, got {args.lease_seconds}")
    endpoints = parse_llm_endpoints(args.llm_endpoint, args.llm_key_env, environ=os.environ)

    def ready(worker_id: str) -> None:
        stderr(
            f"taskapp backend worker {worker_id}: claiming jobs from "
            f"{public_db_name(args.db)} ({args.workers} at a time)"
        )

    work(
        db=args.db,
        workers=args.workers,
        lease_seconds=args.lease_seconds,
        worker_id=args.worker_id,
        runs_dir=args.runs_dir,
        on_ready=ready,
        llm_endpoints=endpoints,
    )
    stderr("taskapp backend worker: stopped (its running jobs are queued for another worker)")
    return 0
