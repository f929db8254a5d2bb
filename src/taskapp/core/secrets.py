"""Secret handling shared by every part of taskapp.

Secrets (API keys, tunnel tokens) never appear in argv, logs, error bodies or exception
text. Code that learns a secret registers it once with :func:`register_secret`; from then
on :func:`redact` replaces it with its fingerprint wherever text leaves taskapp (log
records through :class:`RedactingFilter`, child-process output in errors).

>>> fingerprint("sk-test-123")
'sha256:e0dbaa0c'
>>> redact("key=sk-test-123", ["sk-test-123"])
'key=[redacted sha256:e0dbaa0c]'
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets as _stdlib_secrets
import threading
from collections.abc import Iterable

__all__ = [
    "RedactingFilter",
    "constant_time_in",
    "fingerprint",
    "generate_key",
    "redact",
    "register_secret",
]

_MIN_SECRET_LEN = 6
_lock = threading.Lock()
_known: dict[str, str] = {}


def fingerprint(secret: str) -> str:
    """A short, stable, non-reversible name for ``secret``: ``sha256:1a2b3c4d``."""
    digest = hashlib.sha256(secret.encode("utf-8")).hexdigest()
    return f"sha256:{digest[:8]}"


def generate_key() -> str:
    """A fresh random API key (URL-safe, 256 bits)."""
    return "ta_" + _stdlib_secrets.token_urlsafe(32)


def register_secret(secret: str | None) -> None:
    """Remember ``secret`` so :func:`redact` hides it. Short strings are ignored."""
    if not secret or len(secret) < _MIN_SECRET_LEN:
        return
    with _lock:
        _known.setdefault(secret, f"[redacted {fingerprint(secret)}]")


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """Replace every registered secret (and every string in ``extra``) in ``text``."""
    with _lock:
        items = list(_known.items())
    for secret in extra:
        if secret and len(secret) >= _MIN_SECRET_LEN:
            items.append((secret, f"[redacted {fingerprint(secret)}]"))
    # Longest first, so a secret containing another is replaced whole.
    for secret, replacement in sorted(items, key=lambda kv: -len(kv[0])):
        if secret in text:
            text = text.replace(secret, replacement)
    return text


def constant_time_in(candidate: str, keys: Iterable[str]) -> bool:
    """True when ``candidate`` equals one of ``keys``, comparing every key in constant time."""
    found = False
    encoded = candidate.encode("utf-8")
    for key in keys:
        found |= hmac.compare_digest(encoded, key.encode("utf-8"))
    return found


class RedactingFilter(logging.Filter):
    """A logging filter that redacts registered secrets from a record's message."""

    def filter(self, record: logging.LogRecord) -> bool:
        with _lock:
            empty = not _known
        if empty:
            return True
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        if record.exc_info and not record.exc_text:
            # Format the traceback now, redacted; handlers reuse exc_text as it is.
            record.exc_text = redact(_FORMATTER.formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FORMATTER = logging.Formatter()
