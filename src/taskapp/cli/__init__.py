"""The ``taskapp`` command line: ``serve``, ``eval``, ``check``, ``plugins``.

Built on :mod:`argparse` (standard library: no dependency, and ``taskapp --help`` starts
in milliseconds because nothing heavy is imported until a command runs). Each command
lives in its own module with ``add_parser(subparsers)`` and ``run(args) -> int``.

Exit codes: 0 success, 1 failures in the job, 2 usage errors (bad arguments, bad input),
130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from taskapp import __version__
from taskapp.core.errors import (
    AppLoadError,
    ConfigurationError,
    ServerStartError,
    TaskAppError,
)
from taskapp.core.logs import JsonFormatter

__all__ = ["COMMANDS", "build_parser", "main"]

#: Command modules, in the order ``--help`` lists them.
COMMANDS: tuple[str, ...] = ("serve", "eval", "check", "optimize", "relay", "plugins")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskapp",
        description=(
            "Run a task app in-process, give it a URL through a pluggable tunnel, "
            "evaluate it, and tear everything down cleanly."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"taskapp {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    parser.add_argument(
        "--log-json", action="store_true", help="log one JSON object per line on stderr"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"taskapp.cli.{name}")
        module.add_parser(subparsers)
    return parser


def configure_logging(verbose: int, log_json: bool) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    if log_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("taskapp")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    uvicorn_logger = logging.getLogger("uvicorn")
    uvicorn_logger.handlers[:] = [handler]
    uvicorn_logger.setLevel(max(level, logging.INFO) if verbose < 2 else logging.DEBUG)
    uvicorn_logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    configure_logging(args.verbose, args.log_json)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UsageError, ConfigurationError, FileNotFoundError) as exc:
        print(f"taskapp {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TaskAppError as exc:
        cause = exc.__cause__
        if cause is not None and isinstance(exc, AppLoadError | ServerStartError):
            # The user's code failed (import, factory, lifespan): show its traceback,
            # without taskapp's own frames.
            from taskapp.cli._common import user_traceback

            shown = user_traceback(cause)
            if shown:
                print(shown, file=sys.stderr)
        elif cause is not None and args.verbose:
            import traceback

            traceback.print_exception(cause, file=sys.stderr)
        print(f"taskapp {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # a bug in taskapp: one line, the traceback only with -v
        if args.verbose:
            import traceback

            traceback.print_exc(file=sys.stderr)
        print(
            f"taskapp {args.command}: internal error: {type(exc).__name__}: {exc} "
            "(run with -v for the traceback, and please report it)",
            file=sys.stderr,
        )
        return EXIT_FAILED
