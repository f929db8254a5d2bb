"""``taskapp check URL``: is a task app answering there, and does it keep the contract?

A thin front end over :func:`taskapp.check` (``taskapp.core.check``): the same checks
and the same report, printed.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from taskapp.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    add_key_arguments,
    add_worker_token_argument,
    resolve_api_key,
    worker_token,
)

EPILOG = """examples:
  taskapp check http://127.0.0.1:8114                   key from ENVIRONMENT_API_KEY
  taskapp check 127.0.0.1:8114                          http:// is assumed
  taskapp check https://tasks.example.com --api-key-env TASK_APP_KEY
  taskapp check http://127.0.0.1:8114 --seeds 0-2       also run three rollouts
  taskapp check http://127.0.0.1:8114 --json            machine-readable

Checks GET / (no key), then /health with the key and without it, /info, /task_info, a
rollout per seed (--seeds), that a malformed rollout gets an error envelope, and that the
key is echoed in no answer. Says what works and what does not: connection refused,
timeout, TLS, not a task app, key rejected, no key configured on the app. The same checks
from Python: taskapp.check(url, api_key=...). Exit status 0 when every check passes, 1
otherwise.
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check",
        help="check that a running task app keeps the contract (/health, /info, ...)",
        description=(
            "Call /, /health, /info, /task_info (and /rollout with --seeds) of a running "
            "task app (local or remote) and report what works and what does not, with "
            "reasons."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "url", metavar="URL", help="base URL of the task app (http:// assumed without a scheme)"
    )
    add_key_arguments(parser, what="the task app's API key")
    add_worker_token_argument(parser)
    parser.add_argument(
        "--seeds",
        metavar="SPEC",
        help="also run one rollout per seed: 0-2, 7, or 1,5,10-12 (default: none)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="time limit of each request, in seconds (default 10)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from taskapp.core.check import check
    from taskapp.core.client import normalize_url
    from taskapp.core.seeds import parse_seeds

    try:
        url = normalize_url(args.url)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not math.isfinite(args.timeout) or args.timeout <= 0:
        raise UsageError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    seeds = parse_seeds(args.seeds, what="--seeds") if args.seeds else None
    key = resolve_api_key(args)
    report = check(
        url,
        api_key=key.value,
        worker_token=worker_token(args),
        seeds=seeds,
        timeout=args.timeout,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        described = f"key {key.fingerprint} from {key.source}" if key.value else "no API key"
        print(f"checking {url} ({described})")
        print(report.format())
    return EXIT_OK if report.ok else EXIT_FAILED
