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
  taskapp backend serve --api-key-file backend.key \
      --llm-endpoint openai=https://api.openai.com/v1 --llm-key-env openai=OPENAI_API_KEY
                                                     # jobs may use llm_provider = "openai"

The backend never expands its own environment into a job: ${VAR} in a config is resolved
by the client, and the backend's own model keys go only to the --llm-endpoint URLs.

Jobs are submitted with PromptLearningJob (Python) and watched with `taskapp jobs` or the
web page at the printed URL. A job running when the backend stops resumes at the next
start; one database belongs to one backend at a time. See docs/jobs.md.
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
    serve.add_argument(
        "--db",
        type=Path,
        default=Path("taskapp-jobs.sqlite3"),
        help="the SQLite job database (./taskapp-jobs.sqlite3); run directories go "
        "beside it in DB.runs/",
    )
    serve.add_argument("--workers", type=int, default=2, help="jobs run at once (2)")
    serve.add_argument(
        "--llm-endpoint",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="an OpenAI-compatible endpoint jobs may use as their reflection model, by "
        'llm_provider = "NAME" or llm_inference_url = URL (repeatable)',
    )
    serve.add_argument(
        "--llm-key-env",
        action="append",
        default=[],
        metavar="NAME=VAR",
        help="the environment variable holding the backend's own key for endpoint NAME "
        "(read once at start; sent only to that endpoint's URL)",
    )
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
    parser.set_defaults(run=lambda args: _no_subcommand(parser))


def _no_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_serve(args: argparse.Namespace) -> int:
    from taskapp.cli._common import UsageError, stderr
    from taskapp.jobs.backend import read_api_key, serve
    from taskapp.jobs.llm import parse_llm_endpoints

    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {args.port}")
    if not 0 < args.header_timeout <= 3600:
        raise UsageError(f"--header-timeout must be 0..3600 seconds, got {args.header_timeout}")
    for name in ("max_streams", "max_streams_per_key"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    key = read_api_key(args.api_key_file)
    endpoints = parse_llm_endpoints(args.llm_endpoint, args.llm_key_env, environ=os.environ)

    def ready(url: str) -> None:
        stderr(f"taskapp backend: serving on {url} (page: {url}/, jobs in {args.db})")

    serve(
        host=args.host,
        port=args.port,
        db=args.db,
        api_key=key,
        workers=args.workers,
        on_ready=ready,
        llm_endpoints=endpoints,
        max_streams=args.max_streams,
        max_streams_per_key=args.max_streams_per_key,
        header_timeout=args.header_timeout,
    )
    stderr("taskapp backend: stopped (running jobs resume at the next start)")
    return 0
