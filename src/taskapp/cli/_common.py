"""Helpers shared by ``taskapp serve``, ``eval``, ``check`` and ``optimize``.

Kept import-light: nothing here imports fastapi, uvicorn or httpx at module level, so
``taskapp --help`` stays fast. The exit codes and :class:`UsageError` live here (and are
re-exported by :mod:`taskapp.cli`), so the command modules import this module, never the
package that imports them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from taskapp.core.secrets import fingerprint, register_secret
from taskapp.core.signals import capture_signals

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "ApiKey",
    "SignalFlag",
    "Target",
    "UsageError",
    "add_dataclass_options",
    "add_key_arguments",
    "add_start_arguments",
    "cli_words",
    "dataclass_kwargs",
    "load_json_argument",
    "parse_key_values",
    "parse_size",
    "print_error",
    "resolve_api_key",
    "resolve_target",
    "start_kwargs",
    "stderr",
    "user_traceback",
    "worker_token",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


TARGET_HELP = (
    "a .py file (or another file an installed loader plugin takes, e.g. x.qa.json), a "
    "'package.module:attr' import string, or a bundled example name (support-intents)"
)


def print_error(text: str, log_json: bool, *, traceback: str | None = None) -> None:
    """An error on stderr: plain text, or one JSON log object under ``--log-json``."""
    import logging

    from taskapp.core.logs import JsonFormatter
    from taskapp.core.secrets import redact

    text = redact(text)
    traceback = redact(traceback) if traceback else None
    if not log_json:
        if traceback:
            print(traceback, file=sys.stderr)
        print(text, file=sys.stderr, flush=True)
        return
    record = logging.LogRecord("taskapp.cli", logging.ERROR, "", 0, text, None, None)
    line = JsonFormatter().format(record)
    if traceback:
        line = json.dumps({**json.loads(line), "exception": traceback}, ensure_ascii=False)
    print(line, file=sys.stderr, flush=True)


def stderr(message: str) -> None:
    """A progress or status line on stderr; a JSON log object under ``--log-json``."""
    import logging

    from taskapp.core.logs import JsonFormatter

    for handler in logging.getLogger("taskapp").handlers:
        if isinstance(handler.formatter, JsonFormatter):
            record = logging.LogRecord("taskapp.cli", logging.INFO, "", 0, message, None, None)
            print(handler.formatter.format(record), file=sys.stderr, flush=True)
            return
    print(message, file=sys.stderr, flush=True)


# -- targets -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    """What the user asked to run, as InProcessTaskApp keyword arguments."""

    kwargs: dict[str, Any]
    label: str


def resolve_target(target: str) -> Target:
    """Turn TARGET into InProcessTaskApp arguments, or raise UsageError saying why not.

    The CLI is where the bundled example names come in (``aliases``): the library below
    (:mod:`taskapp.core.endpoint`, ``evaluate``, ``optimize.run``) takes them from its
    caller and never imports :mod:`taskapp.examples`.
    """
    from taskapp.core.errors import ConfigurationError, TaskAppFileNotFoundError
    from taskapp.core.loading import target_kwargs

    try:
        return Target(target_kwargs(target, aliases=bundled_aliases()), target)
    except (ConfigurationError, TaskAppFileNotFoundError) as exc:
        raise UsageError(str(exc)) from None


def bundled_aliases() -> dict[str, str]:
    """The bundled example names (``support-intents``) -> their import strings."""
    from taskapp.examples import BUNDLED

    return dict(BUNDLED)


# -- start options (serve, eval, optimize) ------------------------------------------------

#: --health-timeout's default: the same for every command (Ray starts a cluster first).
HEALTH_TIMEOUT = 30.0
HEALTH_TIMEOUT_RAY = 120.0
DEFAULT_PORT = 8114


def add_start_arguments(parser: Any) -> None:
    """The options that start a task app, with the same names, defaults and help in
    ``serve``, ``eval`` and ``optimize``."""
    group = parser.add_argument_group("starting the app (not with a URL)")
    group.add_argument(
        "--tunnel",
        default=None,
        metavar="MODE",
        help="tunnel backend: local (default, nothing exposed; $SYNTH_TUNNEL_MODE when set), "
        "preconfigured (URL from --tunnel-option url=... or $SYNTH_TASK_APP_URL), or any "
        "installed tunnel plugin (see taskapp plugins --all)",
    )
    group.add_argument(
        "--tunnel-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the tunnel backend (repeatable), e.g. url=https://app.example.com",
    )
    group.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on: 127.0.0.1 (default), localhost, ::1 or 0.0.0.0",
    )
    group.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"port to listen on (default: {DEFAULT_PORT} for serve, any free port for eval "
        "and optimize); when it is busy, the next free port is used",
    )
    group.add_argument(
        "--server",
        default="thread",
        metavar="NAME",
        help="server runner: thread (default, uvicorn in a thread), subprocess (uvicorn in a "
        "child process), ray (Ray Serve), or a plugin's",
    )
    group.add_argument(
        "--server-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the server runner (repeatable), e.g. workers=2 or graceful_timeout=5",
    )
    group.add_argument(
        "--health-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"how long the app may take to start answering /health, in seconds (default "
        f"{HEALTH_TIMEOUT:g}; {HEALTH_TIMEOUT_RAY:g} with --server ray, which starts a Ray "
        "instance first)",
    )


def start_kwargs(args: Any, *, default_port: int | None = None) -> dict[str, Any]:
    """InProcessTaskApp keyword arguments from the start options (UsageError naming the
    flag for a bad value). ``default_port`` None: any free port."""
    if args.health_timeout is None:
        args.health_timeout = HEALTH_TIMEOUT_RAY if args.server == "ray" else HEALTH_TIMEOUT
    if not (args.health_timeout > 0 and args.health_timeout != float("inf")):
        raise UsageError(
            f"--health-timeout must be positive and finite (seconds), got {args.health_timeout}"
        )
    if args.port is not None and not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be from 0 to 65535, got {args.port}")
    port = args.port if args.port is not None else default_port
    if port is None or port == 0:
        from taskapp.core.endpoint import free_app_port

        port = free_app_port()
    tunnel_options = parse_key_values(args.tunnel_option, option="--tunnel-option")
    server_options = parse_key_values(args.server_option, option="--server-option")
    return {
        "host": args.host,
        "port": port,
        "tunnel_mode": args.tunnel,
        "tunnel_options": tunnel_options or None,
        "server": args.server,
        "server_options": server_options or None,
        "health_check_timeout": args.health_timeout,
    }


def started_with_options(args: Any, *, allowed: Sequence[str] = ()) -> list[str]:
    """The start options given explicitly (refused with a URL, which is not started),
    except those in ``allowed``."""
    given = []
    if args.tunnel is not None:
        given.append("--tunnel")
    for flag, value in (
        ("--tunnel-option", args.tunnel_option),
        ("--server-option", args.server_option),
        ("--port", args.port),
        ("--health-timeout", args.health_timeout),
    ):
        if value:
            given.append(flag)
    if args.server != "thread":
        given.append("--server")
    if args.host != "127.0.0.1":
        given.append("--host")
    return [flag for flag in given if flag not in allowed]


def _option_flags(match: re.Match[str]) -> str:
    """``tunnel_options={'a': 'x', 'b': ...}`` -> ``--tunnel-option a=x --tunnel-option b=...``."""
    flag = "--tunnel-option" if match.group(1) == "tunnel" else "--server-option"
    entries = _DICT_ENTRY.findall(match.group(2))
    if not entries:
        return flag
    parts = []
    for key, quoted, bare in entries:
        value = quoted if quoted or not bare else bare
        parts.append(f"{flag} {key}={value}")
    return " ".join(parts)


_DICT_ENTRY = re.compile(r"'(\w+)':\s*(?:'([^']*)'|(\.\.\.|[\w.+-]+))")

#: Python spellings in library errors -> the command-line options that set the same thing.
_CLI_WORDS = (
    (re.compile(r"\bhealth_check_timeout=?(?:\.\.\.)?"), "--health-timeout"),
    (re.compile(r"\b(tunnel|server)_options=\{([^{}]*)\}"), _option_flags),
    (re.compile(r"\btunnel_options=?"), "--tunnel-option"),
    (re.compile(r"\bserver_options=?"), "--server-option"),
    (re.compile(r"\bapi_key=\.\.\."), "--api-key-env NAME"),
    (re.compile(r"\btunnel_(?:mode|backend)='([\w-]+)'"), r"--tunnel \1"),
    (re.compile(r"\btunnel_(?:mode|backend)=?"), "--tunnel"),
)
_DURATION = re.compile(r"\b(\d+(?:\.\d+)?) ?s\b")


def cli_words(text: str) -> str:
    """A library message as a command-line user needs it: option names instead of Python
    keywords, durations as ``35 s`` (three significant digits at most).

    >>> cli_words("not ready within 29.99871s; raise health_check_timeout=")
    'not ready within 30 s; raise --health-timeout'
    >>> cli_words("or pass tunnel_options={'cloudflared_path': '/opt/cloudflared'}.")
    'or pass --tunnel-option cloudflared_path=/opt/cloudflared.'
    >>> cli_words("pass tunnel_options={'host': 'my.server', 'user': ...}")
    'pass --tunnel-option host=my.server --tunnel-option user=...'
    >>> cli_words("or an ssh tunnel (tunnel_backend='ssh')")
    'or an ssh tunnel (--tunnel ssh)'
    """
    for pattern, replacement in _CLI_WORDS:
        text = pattern.sub(replacement, text)
    return _DURATION.sub(lambda m: f"{float(m.group(1)):.3g} s", text)


# -- API keys ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ApiKey:
    value: str | None
    source: str  # "--api-key", "$NAME", "ENVIRONMENT_API_KEY" or "none"

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.value) if self.value else "no key"


def add_key_arguments(parser: Any, *, what: str) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--api-key-env",
        metavar="NAME",
        help=f"read {what} from environment variable NAME (default: ENVIRONMENT_API_KEY)",
    )
    group.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"{what} itself (visible in the process list: prefer --api-key-env)",
    )


def add_worker_token_argument(parser: Any) -> None:
    parser.add_argument(
        "--worker-token-env",
        metavar="NAME",
        help=(
            "for a URL behind a taskapp relay: read the lease's worker token from "
            "environment variable NAME (default: TASKAPP_WORKER_TOKEN when set) and send it "
            "as the relay's worker-token header"
        ),
    )


def worker_token(args: Any) -> str | None:
    """The relay worker token, from --worker-token-env NAME or TASKAPP_WORKER_TOKEN."""
    env_name = getattr(args, "worker_token_env", None)
    if env_name:
        value = os.environ.get(env_name, "")
        if not value:
            raise UsageError(
                f"--worker-token-env {env_name}: environment variable {env_name} is not set"
            )
    else:
        value = os.environ.get("TASKAPP_WORKER_TOKEN", "")
    if not value:
        return None
    register_secret(value)
    return value


def worker_token_headers(args: Any) -> dict[str, str]:
    """The relay worker-token header, from --worker-token-env NAME or TASKAPP_WORKER_TOKEN."""
    from taskapp.core.client import WORKER_TOKEN_HEADER

    value = worker_token(args)
    return {WORKER_TOKEN_HEADER: value} if value else {}


def resolve_api_key(args: Any, *, warn_argv: bool = True) -> ApiKey:
    """The key from --api-key, --api-key-env NAME, or the user's ENVIRONMENT_API_KEY (in
    that order; a key lent to a running app is never the user's, see
    :func:`taskapp.core.env_keys.environment_api_key`). What the command does without
    one is :func:`taskapp.core.endpoint.open_endpoint`'s: a URL gets no key, an app started
    here a fresh one."""
    if getattr(args, "api_key", None):
        register_secret(args.api_key)
        if warn_argv:
            stderr(
                "taskapp: warning: a key given with --api-key is visible to other users in "
                "the process list; prefer --api-key-env NAME"
            )
        return ApiKey(args.api_key, "--api-key")
    env_name = getattr(args, "api_key_env", None)
    if env_name:
        value = os.environ.get(env_name, "")
        if not value:
            raise UsageError(
                f"--api-key-env {env_name}: environment variable {env_name} is not set"
            )
        register_secret(value)
        return ApiKey(value, f"${env_name}")
    from taskapp.core.env_keys import environment_api_key

    env_value = environment_api_key()
    if env_value:
        register_secret(env_value)
        return ApiKey(env_value, "$ENVIRONMENT_API_KEY")
    return ApiKey(None, "none")


# -- argument parsing --------------------------------------------------------------------


def parse_key_values(items: Sequence[str], *, option: str) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``; values that parse as JSON are JSON."""
    result: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{option} {item!r}: expected KEY=VALUE")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        result[key.strip().replace("-", "_")] = value
    return result


def load_json_argument(value: str, *, option: str) -> Any:
    """Parse ``value`` as JSON, or ``@path`` as the JSON in that file."""
    source = "it"
    text = value
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"{option} {value}: cannot read {path}: {exc.strerror}") from None
        source = str(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{option}: {source} is not valid JSON: {exc.msg} at line {exc.lineno} column "
            f"{exc.colno}"
        ) from None


# -- errors ------------------------------------------------------------------------------

_OWN_DIR = str(Path(__file__).resolve().parent.parent)
_EXAMPLES_DIR = str(Path(_OWN_DIR) / "examples")


def _is_user_frame(filename: str) -> bool:
    if filename.startswith("<frozen "):
        return False
    try:
        resolved = str(Path(filename).resolve())
    except OSError:
        return True
    return not resolved.startswith(_OWN_DIR + os.sep) or resolved.startswith(_EXAMPLES_DIR)


def user_traceback(exc: BaseException) -> str | None:
    """The traceback of ``exc`` without taskapp's own frames, or None when none are left."""
    frames = [
        frame for frame in traceback.extract_tb(exc.__traceback__) if _is_user_frame(frame.filename)
    ]
    if not frames and not isinstance(exc, SyntaxError):
        return None
    lines = ["Traceback (most recent call last):\n"]
    lines.extend(traceback.format_list(frames))
    lines.extend(traceback.format_exception_only(type(exc), exc))
    from taskapp.core.secrets import redact

    return redact("".join(lines).rstrip())


# -- signals -----------------------------------------------------------------------------


class SignalFlag:
    """SIGINT/SIGTERM handlers for a command's duration; previous handlers restored on exit.

    The first signal calls ``on_signal(signum)`` (which may raise to unwind); a second one
    raises KeyboardInterrupt. InProcessTaskApp chains to these handlers after it has
    stopped the app, so cleanup happens first.
    """

    def __init__(self, on_signal: Any) -> None:
        self.on_signal = on_signal
        self.signum: int | None = None
        self._capture: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        self.on_signal(signum)

    def __enter__(self) -> SignalFlag:
        self._capture = capture_signals(self._handle)
        self._capture.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._capture.__exit__(exc_type, exc, tb)


# -- options built from a settings dataclass --------------------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``512MiB`` -> 536870912, ``200MB`` -> 200000000, ``65536`` -> 65536."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 65536, 64KiB, 100MB)")
    number, unit, binary = match.groups()
    power = "kmgt".find(unit.lower()) + 1 if unit else 0
    base = 1024 if binary else 1000
    return int(float(number) * base**power)


def format_size(size: int) -> str:
    """The inverse of :func:`parse_size` for a round size: 104857600 -> ``100MiB``."""
    for base, suffix in ((1024, "iB"), (1000, "B")):
        for power in (4, 3, 2, 1):
            if size and size % base**power == 0:
                return f"{size // base**power}{'KMGT'[power - 1]}{suffix}"
    return str(size)


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def option_fields(cls: type[Any]) -> list[dataclasses.Field[Any]]:
    """The fields of a settings dataclass that are command-line options (declared with
    :func:`taskapp.core.options.setting`)."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def option_flag(field: dataclasses.Field[Any]) -> str:
    return str(field.metadata.get("flag") or "--" + field.name.replace("_", "-"))


def _dest(field: dataclasses.Field[Any]) -> str:
    return option_flag(field).lstrip("-").replace("-", "_")


def _converter(field: dataclasses.Field[Any]) -> tuple[Callable[[str], Any], str | None]:
    kind, default = field.metadata.get("kind"), field.default
    if kind == "size":
        return parse_size, "SIZE"
    if kind == "seconds":
        return (positive_int if isinstance(default, int) else positive_seconds), "SECONDS"
    if kind == "count":
        return positive_int, "N"
    if isinstance(default, int | float) and not isinstance(default, bool):
        return type(default), None
    return str, None


def _shown_default(field: dataclasses.Field[Any]) -> str | None:
    default = field.default
    if default is dataclasses.MISSING or not field.metadata.get("show_default", True):
        return None
    if default is None or default is False or default in ((), ""):
        return None
    if field.metadata.get("kind") == "size":
        return format_size(default)
    if isinstance(default, float):
        return f"{default:g}"
    if isinstance(default, tuple | list):
        return ",".join(map(str, default))
    return str(default)


def add_dataclass_options(
    containers: Mapping[str | None, Any], cls: type[Any], *, defaults: bool = True
) -> None:
    """Add an option for every field of ``cls`` declared with ``setting(...)`` (but the
    ``custom`` ones, which the command adds itself) to the container of its ``group``
    (``containers[None]``: the parser itself). The help text is the field's, with its
    default appended. ``defaults=False``: an option not given is None, so values from
    another layer (a TOML file) survive; :func:`dataclass_kwargs` leaves it out."""
    for field in option_fields(cls):
        meta = field.metadata
        if meta["custom"]:
            continue
        container = containers[meta["group"]]
        help_text = meta["help"]
        shown = _shown_default(field)
        if shown is not None:
            help_text += f" (default {shown})"
        if isinstance(field.default, bool):
            container.add_argument(
                option_flag(field), action="store_true", default=field.default, help=help_text
            )
            continue
        convert, metavar = _converter(field)
        container.add_argument(
            option_flag(field),
            type=convert,
            default=field.default if defaults else None,
            metavar=meta["metavar"] or metavar,
            choices=meta["choices"],
            help=help_text,
        )


def dataclass_kwargs(args: argparse.Namespace, cls: type[Any]) -> dict[str, Any]:
    """The values of ``cls``'s generated options that ``args`` holds (None: not given), by
    field name, ready for ``cls(**...)`` or ``config.replace(**...)``."""
    values = {}
    for field in option_fields(cls):
        if field.metadata["custom"]:
            continue
        value = getattr(args, _dest(field))
        if value is not None:
            values[field.name] = value
    return values
