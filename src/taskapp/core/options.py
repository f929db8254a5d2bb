"""Validation of backend options (``server_options`` / ``tunnel_options``).

A backend declares its options as a frozen dataclass; :func:`parse_options` turns the
user's plain dict into it, rejecting unknown keys (listing the known ones) and values of
the wrong type. Kept to the standard library so that validating options never imports
pydantic.

:func:`setting` declares a settings field once, with its default and the help text (and
the option's name and kind) that ``taskapp``'s command line builds its options from
(``cli/_common.add_dataclass_options``), as tox's ``add_config(keys, default, desc)`` and
datasette's ``Setting(name, default, help)`` do.

>>> @dataclasses.dataclass(frozen=True)
... class Options:
...     workers: int = 1
>>> parse_options(Options, {"workers": 2}, owner="server 'subprocess'")
Options(workers=2)
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from taskapp.core.errors import ConfigurationError

__all__ = ["NoOptions", "SettingKind", "parse_options", "setting"]

T = TypeVar("T")

#: How a command line reads a setting's value: ``size`` (bytes or 64KiB, 100MB...),
#: ``seconds`` (a positive number), ``count`` (a positive whole number); None: by the type
#: of the default (int, float, str, bool as a switch).
SettingKind = Literal["size", "seconds", "count"] | None


def setting(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    group: str | None = None,
    kind: SettingKind = None,
    metavar: str | None = None,
    choices: tuple[str, ...] | None = None,
    show_default: bool = True,
    custom: bool = False,
) -> Any:
    """A dataclass field described once: ``default``, ``help`` and its command-line option.

    ``flag`` (default ``--field-name``), ``group`` (the option group's title), ``kind``,
    ``metavar`` and ``choices`` shape the option; ``custom=True`` means the command adds
    that option itself (a value it parses in its own way) and only its name is declared
    here. The default is not written in ``help``: the command line appends it.
    """
    return dataclasses.field(
        default=default,
        metadata={
            "help": help,
            "flag": flag,
            "group": group,
            "kind": kind,
            "metavar": metavar,
            "choices": choices,
            "show_default": show_default,
            "custom": custom,
        },
    )


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """Options of a backend that takes none."""


def parse_options(cls: type[T], raw: Mapping[str, Any] | None, *, owner: str) -> T:
    """Build the options dataclass ``cls`` from ``raw``; raise ConfigurationError on bad input."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    raw = dict(raw or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields)) or "(none)"
        raise ConfigurationError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for {owner}; known options: {known}"
        )
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, value in raw.items():
        values[name] = _coerce(value, hints[name], f"{owner} option {name!r}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"invalid options for {owner}: {exc}") from None


def _coerce(value: Any, hint: Any, what: str) -> Any:
    ok, converted = _check(value, hint)
    if not ok:
        raise ConfigurationError(f"{what} must be {_describe(hint)}, got {value!r}")
    return converted


def _check(value: Any, hint: Any) -> tuple[bool, Any]:  # noqa: C901 -- complexity 17 at most (issue 21 ratchet); split when next changed
    from pathlib import Path  # here: parsing runs at enter, not at `import taskapp`

    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, converted = _check(value, arg)
            if ok:
                return True, converted
        return False, value
    if origin is Literal:
        return (value in args), value
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    if hint is Path:
        if isinstance(value, str | Path):
            return True, Path(value)
        return False, value
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return isinstance(value, Mapping), dict(value) if isinstance(value, Mapping) else value
    if origin in (tuple, list) or hint in (tuple, list):
        if isinstance(value, list | tuple):
            return True, tuple(value) if (origin or hint) is tuple else list(value)
        return False, value
    if isinstance(hint, type):
        return isinstance(value, hint), value
    return True, value  # an annotation we do not understand: accept rather than refuse


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint))
