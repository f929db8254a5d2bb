"""Bounds on what the job backend accepts, checked before anything is parsed deeply or
stored, and the one place stored JSON is read back.

Every limit is a named constant (docs/jobs.md lists them). A value outside them is a
:class:`BadInput` (status 400, or 413 for size) saying which limit and where; the API
answers it in the documented error envelope.

>>> check_json({"a": [1, 2, {"b": "c"}]}, what="body")
>>> scan_nesting("x = [[[1]]]", what="config_toml")
3
>>> decode_stored('{"a": 1}', what="config")
({'a': 1}, None)
>>> decode_stored('{"a": ', what="config")[1]
'config: stored JSON cannot be read (JSONDecodeError)'
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from taskapp.core.errors import TaskAppError

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "MAX_INT",
    "MAX_KEY_CHARS",
    "MAX_NODES",
    "MAX_STRING_CHARS",
    "MAX_TOML_CHARS",
    "BadInput",
    "bounded_int",
    "check_json",
    "check_toml_text",
    "decode_stored",
    "scan_nesting",
]

#: a request body (the submit's JSON) larger than this is refused unread (413)
MAX_BODY_BYTES = 2 * 1024 * 1024
#: the ``config_toml`` text
MAX_TOML_CHARS = 1024 * 1024
#: nesting of arrays/tables (JSON body, TOML document, overrides)
MAX_DEPTH = 32
#: values (keys, items, scalars) in one body or document
MAX_NODES = 20_000
#: one string value (a prompt is well below this)
MAX_STRING_CHARS = 256 * 1024
#: one key (a name, not a value)
MAX_KEY_CHARS = 256
#: integers stored in SQLite are signed 64-bit; query integers stay well inside
MAX_INT = 2**62


class BadInput(TaskAppError):
    """Input outside the backend's bounds (``status``: 400 or 413)."""

    def __init__(self, message: str, *, status: int = 400, code: str = "bad_request") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


# Tokens that matter for nesting, with strings and comments skipped whole.
_TOKENS = re.compile(
    r'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|#[^\n]*|[\[\]{}]'
)

_OPEN, _CLOSE = frozenset("[{"), frozenset("]}")


def scan_nesting(text: str, *, what: str) -> int:
    """The deepest ``[``/``{`` nesting of JSON or TOML ``text`` (strings and comments
    skipped), refused past :data:`MAX_DEPTH` before a recursive parser sees it."""
    depth = deepest = 0
    for match in _TOKENS.finditer(text):
        found = match.group()
        if found in _OPEN:
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    raise BadInput(f"{what}: nested deeper than {MAX_DEPTH} levels")
        elif found in _CLOSE:
            depth = max(0, depth - 1)
    return deepest


def check_toml_text(text: str, *, what: str = "config_toml") -> None:
    """Size and nesting of TOML text, before ``tomllib`` reads it."""
    if len(text) > MAX_TOML_CHARS:
        raise BadInput(
            f"{what}: {len(text)} characters, more than the {MAX_TOML_CHARS} accepted",
            status=413,
            code="too_large",
        )
    scan_nesting(text, what=what)
    if text.count("=") > MAX_NODES:
        raise BadInput(f"{what}: more than {MAX_NODES} keys")


def _check_scalar(value: Any, where: str) -> None:
    if isinstance(value, str):
        if len(value) > MAX_STRING_CHARS:
            raise BadInput(f"{where}: a string longer than {MAX_STRING_CHARS} characters")
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if not -MAX_INT <= value <= MAX_INT:
            raise BadInput(f"{where}: the integer {value} is outside +-2**62")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise BadInput(f"{where}: {value} is not a finite number")
    elif not hasattr(value, "isoformat"):  # TOML dates and times are fine
        raise BadInput(f"{where}: a value of type {type(value).__name__} is not accepted")


def check_json(value: Any, *, what: str) -> None:
    """Depth, size, key types and scalar ranges of a decoded JSON/TOML value, iteratively
    (a value nested past Python's recursion limit is refused, not crashed on)."""
    stack: list[tuple[Any, int, str]] = [(value, 0, what)]
    nodes = 0
    while stack:
        item, depth, where = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise BadInput(f"{what}: more than {MAX_NODES} values")
        if isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise BadInput(f"{where}: nested deeper than {MAX_DEPTH} levels")
            if isinstance(item, list):
                stack.extend((v, depth + 1, f"{where}[{i}]") for i, v in enumerate(item))
                continue
            for key, child in item.items():
                if not isinstance(key, str):
                    raise BadInput(
                        f"{where}: keys must be strings, got {type(key).__name__} {key!r:.40}"
                    )
                if len(key) > MAX_KEY_CHARS:
                    raise BadInput(f"{where}: a key longer than {MAX_KEY_CHARS} characters")
                stack.append((child, depth + 1, f"{where}.{key}"))
        else:
            _check_scalar(item, where)


def bounded_int(value: Any, *, name: str, minimum: int = 0, maximum: int = MAX_INT) -> int:
    """A query integer within ``minimum..maximum`` (else :class:`BadInput` naming it)."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value).strip())
        except ValueError:
            raise BadInput(f"{name} must be an integer, got {str(value)[:40]!r}") from None
    if not minimum <= value <= maximum:
        raise BadInput(f"{name} must be {minimum}..{maximum}, got {str(value)[:40]}")
    return int(value)


def decode_stored(text: Any, *, what: str) -> tuple[Any, str | None]:
    """(value, None) for stored JSON that decodes within the bounds; (None, problem)
    for anything else: a row written by an older backend, by hand, or by a bug shows as
    an error in that row, never as a failed list."""
    if text is None:
        return None, None
    try:
        value = json.loads(text)
        check_json(value, what=what)
    except BadInput as exc:
        return None, f"{what}: stored value outside the accepted bounds ({exc.message})"
    except (ValueError, TypeError, RecursionError) as exc:
        return None, f"{what}: stored JSON cannot be read ({type(exc).__name__})"
    return value, None
