"""Keys lent to apps that read them from ``os.environ`` (synth-ai's task apps).

A synth-ai task app accepts the keys in ``ENVIRONMENT_API_KEY`` and
``ENVIRONMENT_API_KEY_ALIASES``, read from ``os.environ`` on every request, and mints a
key of its own at startup when none is set. To host one, taskapp lends it the
instance's key the way it reads keys: :func:`lend` sets ``ENVIRONMENT_API_KEY`` (or, when
that already holds another key, appends to ``ENVIRONMENT_API_KEY_ALIASES``) and
:func:`give_back` removes exactly what was lent once the app stopped.

While lent, a key is not the user's: :func:`environment_api_key` (what taskapp reads as
the user's ``ENVIRONMENT_API_KEY``) and :func:`without_lent_keys` (the environment of a
child process) leave lent keys out, so no other app picks one up as its own.

>>> lent = lend("key-one-0123456789")
>>> environment_api_key() is None or environment_api_key() != "key-one-0123456789"
True
>>> give_back(lent)
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Mapping

__all__ = [
    "ALIASES_VARIABLE",
    "KEY_VARIABLE",
    "Loan",
    "environment_api_key",
    "environment_api_key_aliases",
    "give_back",
    "lend",
    "lent_keys",
    "without_lent_keys",
]

KEY_VARIABLE = "ENVIRONMENT_API_KEY"
ALIASES_VARIABLE = "ENVIRONMENT_API_KEY_ALIASES"
#: synth-ai copies the key here at startup (``setdefault``)
DEV_VARIABLE = "DEV_ENVIRONMENT_API_KEY"

_lock = threading.Lock()
_lent: dict[str, int] = {}  # key -> how many running apps it is lent to


@dataclasses.dataclass
class Loan:
    """What :func:`lend` changed, for :func:`give_back`."""

    key: str
    as_primary: bool
    as_alias: bool
    counted: bool = False
    returned: bool = False


def _aliases() -> list[str]:
    return [
        part.strip() for part in os.environ.get(ALIASES_VARIABLE, "").split(",") if part.strip()
    ]


def lend(key: str) -> Loan:
    """Make ``key`` accepted by apps reading keys from ``os.environ``; undo with
    :func:`give_back`."""
    with _lock:
        current = os.environ.get(KEY_VARIABLE, "").strip()
        loan = Loan(key, as_primary=False, as_alias=False)
        if not current:
            os.environ[KEY_VARIABLE] = key
            loan.as_primary = True
        elif current != key and key not in _aliases():
            os.environ[ALIASES_VARIABLE] = ",".join([*_aliases(), key])
            loan.as_alias = True
        if loan.as_primary or loan.as_alias or key in _lent:
            loan.counted = True  # lent now, or already lent to another running app
            _lent[key] = _lent.get(key, 0) + 1
        return loan


def give_back(loan: Loan) -> None:
    """Remove what :func:`lend` set (idempotent). Values the app or the user changed since
    are left alone."""
    with _lock:
        if loan.returned:
            return
        loan.returned = True
        if not loan.counted:
            return
        remaining = _lent.get(loan.key, 0) - 1
        if remaining > 0:
            _lent[loan.key] = remaining
            return
        _lent.pop(loan.key, None)
        for variable in (KEY_VARIABLE, DEV_VARIABLE):
            if os.environ.get(variable, "").strip() == loan.key:
                del os.environ[variable]
        aliases = _aliases()
        if loan.key in aliases:
            kept = [alias for alias in aliases if alias != loan.key]
            if kept:
                os.environ[ALIASES_VARIABLE] = ",".join(kept)
            else:
                del os.environ[ALIASES_VARIABLE]


def lent_keys() -> frozenset[str]:
    """The keys lent right now."""
    with _lock:
        return frozenset(_lent)


def environment_api_key() -> str | None:
    """The user's ``ENVIRONMENT_API_KEY`` (None when unset, empty, or a lent key)."""
    value = os.environ.get(KEY_VARIABLE, "").strip()
    if not value or value in lent_keys():
        return None
    return value


def environment_api_key_aliases() -> list[str]:
    """The user's extra keys in the comma-separated ``ENVIRONMENT_API_KEY_ALIASES`` (lent
    keys left out; may be empty)."""
    lent = lent_keys()
    return [alias for alias in _aliases() if alias not in lent]


def without_lent_keys(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without the keys lent in this process (for a child process's
    environment)."""
    lent = lent_keys()
    env = dict(environ)
    if not lent:
        return env
    for variable in (KEY_VARIABLE, DEV_VARIABLE):
        if env.get(variable, "").strip() in lent:
            del env[variable]
    if ALIASES_VARIABLE in env:
        kept = [
            part.strip()
            for part in env[ALIASES_VARIABLE].split(",")
            if part.strip() and part.strip() not in lent
        ]
        if kept:
            env[ALIASES_VARIABLE] = ",".join(kept)
        else:
            del env[ALIASES_VARIABLE]
    return env
