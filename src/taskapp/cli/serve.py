"""``taskapp serve TARGET``: run a task app in this process until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
from pathlib import Path
from typing import Any

from taskapp.cli._common import (
    DEFAULT_PORT,
    TARGET_HELP,
    SignalFlag,
    UsageError,
    add_key_arguments,
    add_start_arguments,
    resolve_api_key,
    resolve_target,
    start_kwargs,
    stderr,
)

EPILOG = """examples:
  taskapp serve support-intents                  the bundled example on http://127.0.0.1:8114
  taskapp serve my_task_app.py --port 9000       a file defining app or build_config()
  taskapp serve mypkg.tasks:build_config --tunnel cloudflare-quick
  taskapp serve support-intents --server subprocess --workers 2
  taskapp serve my_task_app.py --server ray --replicas 4   Ray Serve (pip install '.[ray]')
  ENVIRONMENT_API_KEY=... taskapp serve support-intents --host 0.0.0.0

The API key is --api-key-env NAME, else ENVIRONMENT_API_KEY, else a fresh random key.
Only its fingerprint is printed; --show-key prints the key itself.

Through a relay (--tunnel synthtunnel), callers also need the lease's worker token:
  taskapp serve support-intents --tunnel synthtunnel \
      --tunnel-option relay_url=https://relay.example.com --worker-token-file ~/.taskapp/worker
writes it to that file (mode 0600, removed on stop); --show-key prints it too. Otherwise
only its fingerprint is printed.
"""


class _Stopped(BaseException):
    """Raised by the signal handler to unwind the wait (not an Exception: never caught
    by accident)."""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run a task app in this process, print its URL, stop on Ctrl-C/SIGTERM",
        description=(
            "Start a task app in this process (uvicorn on a pre-bound socket), give it a URL "
            "through a tunnel backend, print the URL and the API key's fingerprint, and "
            "serve until Ctrl-C or SIGTERM; then stop everything and exit 0."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", metavar="TARGET", help=TARGET_HELP)
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="uvicorn worker processes (only with --server subprocess)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=None,
        metavar="N",
        help="Ray Serve replicas (only with --server ray; needs the ray extra: pip install "
        "'.[ray]' in your taskapp clone)",
    )
    add_key_arguments(parser, what="the API key clients must present")
    parser.add_argument(
        "--show-key",
        action="store_true",
        help="print the API key (and a relay's worker token) itself, not only its fingerprint",
    )
    parser.add_argument(
        "--worker-token-file",
        type=Path,
        metavar="FILE",
        help="write the relay's worker token (--tunnel synthtunnel), which callers send as "
        "X-SynthTunnel-Worker-Token, to FILE (mode 0600; rewritten if it changes, removed "
        "on stop)",
    )
    add_start_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    target = resolve_target(args.target)
    key = resolve_api_key(args)
    options = start_kwargs(args, default_port=DEFAULT_PORT)
    server_options: dict[str, Any] = dict(options["server_options"] or {})
    if args.workers is not None:
        if args.server != "subprocess":
            raise UsageError("--workers needs --server subprocess (the thread server has one)")
        if args.workers < 1:
            raise UsageError(f"--workers must be at least 1, got {args.workers}")
        server_options["workers"] = args.workers
    if args.replicas is not None:
        if args.server != "ray":
            raise UsageError("--replicas needs --server ray (Ray Serve replicas)")
        if args.replicas < 1:
            raise UsageError(f"--replicas must be at least 1, got {args.replicas}")
        server_options["num_replicas"] = args.replicas
    options["server_options"] = server_options or None

    token_file = _TokenFile(args.worker_token_file) if args.worker_token_file else None
    if token_file is not None:
        token_file.check()

    from taskapp.core.lifecycle import InProcessTaskApp

    def on_signal(signum: int) -> None:
        raise _Stopped

    with SignalFlag(on_signal) as flag:
        try:
            task_app = InProcessTaskApp(
                **target.kwargs,
                **options,
                # Never stop another process to free a port: move to the next free one.
                auto_find_port=True,
                api_key=key.value,
                on_url_change=lambda changed: _print_new_url(changed, token_file),
            )
            task_app.start()
            try:
                if token_file is not None:
                    token_file.publish(task_app.task_app_worker_token)
                _print_banner(task_app, args, key.source)
                _wait(task_app)
            finally:
                task_app.stop()
                if token_file is not None:
                    token_file.remove()
        except _Stopped:
            stderr(f"taskapp serve: {flag.name} received, stopped cleanly")
            return 0
    return 0


class _TokenFile:
    """The worker-token file: written 0600 (never through a symlink), removed on stop."""

    def __init__(self, path: Path) -> None:
        self.path = path.expanduser()
        self.written = False

    def check(self) -> None:
        """Fail before anything starts when the file cannot be written."""
        if not self.path.parent.is_dir():
            raise UsageError(
                f"--worker-token-file: the directory {str(self.path.parent)!r} does not exist"
            )
        if self.path.is_dir():
            raise UsageError(f"--worker-token-file: {str(self.path)!r} is a directory")

    def publish(self, token: str | None) -> None:
        if not token:
            stderr(
                "taskapp serve: --worker-token-file: this tunnel has no worker token "
                "(only --tunnel synthtunnel has one); nothing written"
            )
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(self.path, flags, 0o600)
        try:
            os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
            os.write(fd, token.encode() + b"\n")
        finally:
            os.close(fd)
        self.written = True

    def remove(self) -> None:
        if self.written:
            with contextlib.suppress(OSError):
                self.path.unlink()


def _print_new_url(task_app: Any, token_file: _TokenFile | None = None) -> None:
    """A supervised tunnel reconnected with a new public URL."""
    print(f"  url changed: {task_app.url}", flush=True)
    if token_file is not None and token_file.written:
        token_file.publish(task_app.task_app_worker_token)


def _wait(task_app: Any) -> None:
    """Block until a signal unwinds us; fail if the server dies under us."""
    idle = threading.Event()
    while True:
        idle.wait(1.0)
        server = task_app.server
        if server is not None:
            server.check_alive()


def _print_banner(task_app: Any, args: argparse.Namespace, key_source: str) -> None:
    from taskapp.core.secrets import fingerprint

    config = getattr(task_app.loaded, "config", None)
    title = f"{args.target} ({config.name})" if config is not None else args.target
    source = {
        "none": "generated for this run",
        "--api-key": "from --api-key",
    }.get(key_source, f"from {key_source}")
    lines = [
        f"serving {title}",
        f"  url:     {task_app.url}",
    ]
    requested = args.port if args.port is not None else DEFAULT_PORT
    if requested != 0 and task_app.port != requested:  # --port 0: any free port
        lines.append(f"           (port {requested} is in use; listening on {task_app.port})")
    if task_app.url != task_app.local_url:
        lines.append(f"  local:   {task_app.local_url}")
    lines.append(f"  api key: {fingerprint(task_app.api_key)} ({source})")
    if args.show_key:
        lines.append(f"  key:     {task_app.api_key}")
    elif key_source == "none":
        lines.append("           (--show-key prints it; set ENVIRONMENT_API_KEY to choose it)")
    lines.append(f"  server:  {task_app.server_name}   tunnel: {task_app.tunnel_backend}")
    tunnel = task_app.tunnel
    if tunnel is not None and tunnel.headers:
        lines.append(f"  clients must also send header(s): {', '.join(tunnel.headers)}")
    worker = task_app.task_app_worker_token
    if worker:
        lines.append(f"  worker token: {fingerprint(worker)}")
        if args.show_key:
            lines.append(f"  worker token value: {worker}")
        if args.worker_token_file:
            lines.append(f"           (written to {args.worker_token_file}, mode 0600)")
        elif not args.show_key:
            lines.append(
                "           (--worker-token-file FILE writes it, mode 0600; --show-key prints it)"
            )
    lines.append("press Ctrl-C to stop")
    print("\n".join(lines), flush=True)
    sys.stdout.flush()
