"""The ``taskapp`` command line: ``serve``, ``eval``, ``check``, ``optimize``, ``relay``,
``plugins``.

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

from taskapp._version import __version__
from taskapp.cli._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    cli_words,
    print_error,
    user_traceback,
)
from taskapp.core.errors import (
    AppLoadError,
    ConfigurationError,
    ServerStartError,
    TaskAppError,
)
from taskapp.core.logs import JsonFormatter

__all__ = [
    "COMMANDS",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "UsageError",
    "build_parser",
    "main",
    "needs_plugin_commands",
]

#: Command modules, in the order ``--help`` lists them.
COMMANDS: tuple[str, ...] = (
    "serve",
    "eval",
    "check",
    "optimize",
    "backend",
    "jobs",
    "relay",
    "plugins",
)

EPILOG = """examples:
  taskapp eval support-intents --split test     evaluate the bundled example, offline
  taskapp serve support-intents                 serve it on http://127.0.0.1:8114
  taskapp check http://127.0.0.1:8114           is a task app answering there?
  taskapp optimize support-intents --stand-in --train-seeds 0-99 --val-seeds 100-139 \\
      --budget 400                              GEPA prompt optimization, offline
  taskapp -v --log-json serve my_task_app.py    INFO logs as one JSON object per line
  taskapp COMMAND --help                        options and examples of one command

exit status: 0 success, 1 the job failed, 2 usage error, 130 interrupted (Ctrl-C),
143 terminated (SIGTERM); optimize adds 3 and 4 (see taskapp optimize --help).
"""


def build_parser(*, plugin_commands: bool = False) -> argparse.ArgumentParser:
    """The ``taskapp`` parser: the builtin commands, then, with ``plugin_commands``, the
    commands plugins add (hook ``register_commands``; loading the plugins for it)."""
    parser = argparse.ArgumentParser(
        prog="taskapp",
        description=(
            "Run a task app in-process, give it a URL through a pluggable tunnel, "
            "evaluate it, and tear everything down cleanly."
        ),
        epilog=EPILOG,
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
    if plugin_commands:
        from taskapp.core.plugins import get_registry

        get_registry().add_commands(subparsers)
    return parser


def needs_plugin_commands(argv: Sequence[str]) -> bool:
    """Whether parsing ``argv`` needs the plugins' commands: for ``taskapp``'s own help and
    usage (which list them) and for a command that is not a builtin one. A builtin
    command never loads a plugin to parse its arguments, so its ``--help`` stays fast."""
    for arg in argv:
        if arg == "--version":
            return False
        if not arg.startswith("-"):
            return arg not in COMMANDS
    return True


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
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(plugin_commands=needs_plugin_commands(argv))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    configure_logging(args.verbose, args.log_json)
    prefix = f"taskapp {args.command}"
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        print_error(f"{prefix}: interrupted", args.log_json)
        return EXIT_INTERRUPTED
    except (UsageError, ConfigurationError, FileNotFoundError) as exc:
        print_error(f"{prefix}: error: {cli_words(str(exc))}", args.log_json)
        return EXIT_USAGE
    except TaskAppError as exc:
        cause = exc.__cause__
        shown: str | None = None
        if cause is not None and isinstance(exc, AppLoadError | ServerStartError):
            # The user's code failed (import, factory, lifespan): show its traceback,
            # without taskapp's own frames.
            shown = user_traceback(cause)
        elif cause is not None and args.verbose:
            import traceback

            shown = "".join(traceback.format_exception(cause)).rstrip()
        print_error(f"{prefix}: error: {cli_words(str(exc))}", args.log_json, traceback=shown)
        return EXIT_FAILED
    except Exception as exc:  # a bug in taskapp: one line, the traceback only with -v
        shown = None
        if args.verbose:
            import traceback

            shown = traceback.format_exc().rstrip()
        print_error(
            f"{prefix}: internal error: {type(exc).__name__}: {exc} "
            "(run with -v for the traceback, and please report it)",
            args.log_json,
            traceback=shown,
        )
        return EXIT_FAILED
