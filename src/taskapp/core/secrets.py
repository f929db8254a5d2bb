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

import logging
import os
import stat
import threading
from collections.abc import Iterable

__all__ = [
    "RedactingFilter",
    "constant_time_in",
    "contains_secret",
    "fingerprint",
    "generate_key",
    "read_secret_file",
    "redact",
    "register_secret",
]

_MIN_SECRET_LEN = 6
_lock = threading.Lock()
_known: dict[str, str] = {}


def fingerprint(secret: str) -> str:
    """A short, stable, non-reversible name for ``secret``: ``sha256:1a2b3c4d``."""
    import hashlib  # here, not at module level: keeps hashlib off `import taskapp`

    digest = hashlib.sha256(secret.encode("utf-8")).hexdigest()
    return f"sha256:{digest[:8]}"


def generate_key() -> str:
    """A fresh random API key (URL-safe, 256 bits)."""
    import secrets  # the standard library's; imported here to keep the import light

    return "ta_" + secrets.token_urlsafe(32)


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


#: Secrets at least this long are found anywhere in a command-line argument.
_ANYWHERE_LEN = 16


def contains_secret(arg: str, secrets: Iterable[str] = ()) -> bool:
    """True when the command-line argument ``arg`` holds one of ``secrets`` or a registered one.

    How a secret is looked for depends on its length, so a short development key such as
    ``"k"`` or ``"dev"`` does not match every path that happens to contain those letters:

    * 16 characters or more (every generated key): anywhere in ``arg``;
    * 6 to 15 characters: only as the whole argument or the whole value of ``--opt=value``;
    * under 6 characters: not checked (too short to tell apart from ordinary text; such
      keys still never go on a command line, because taskapp passes keys by environment).

    >>> contains_secret("--token=ta_abcdefghijklmnopqrstuvwxyz", ["ta_abcdefghijklmnopqrstuvwxyz"])
    True
    >>> contains_secret("/home/kim/app.py", ["k"])
    False
    >>> contains_secret("--key=hunter22", ["hunter22"]), contains_secret("hunter22x", ["hunter22"])
    (True, False)
    """
    with _lock:
        candidates = [*secrets, *_known]
    value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else None
    for secret in candidates:
        if len(secret) >= _ANYWHERE_LEN:
            if secret in arg:
                return True
        elif len(secret) >= _MIN_SECRET_LEN and secret in (arg, value):
            return True
    return False


def constant_time_in(candidate: str, keys: Iterable[str]) -> bool:
    """True when ``candidate`` equals one of ``keys``, comparing every key in constant time."""
    import hmac

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


def read_secret_file(path: str | os.PathLike[str], *, what: str) -> str:
    """The text of the secret file ``path`` (``~`` expanded), read under the one policy
    for every secret taskapp reads from a file (the job backend's key, the relay's admin
    tokens, a relay tunnel's token, a Cloudflare tunnel token): a file that group or others
    may access is refused, with the ``chmod 600`` advice. ``what`` names the file in
    messages ("the key file"). Raises :class:`~taskapp.ConfigurationError`; the contents
    never appear in a message (callers parse and register them).

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".key") as handle:
    ...     _ = handle.write("s3cret-value")
    ...     handle.flush()
    ...     os.chmod(handle.name, 0o600)
    ...     read_secret_file(handle.name, what="the key file")
    's3cret-value'
    """
    from taskapp.core.errors import ConfigurationError

    file = os.path.expanduser(os.fspath(path))
    try:
        with open(file, encoding="utf-8") as handle:
            mode = os.fstat(handle.fileno()).st_mode  # the file read, not a swapped path
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ConfigurationError(
                    f"{what} {file!r} is accessible by other users (mode "
                    f"{stat.S_IMODE(mode):04o}); run 'chmod 600 {file}'"
                )
            return handle.read()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} {file!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"{what} {file!r} is not UTF-8 text") from None
