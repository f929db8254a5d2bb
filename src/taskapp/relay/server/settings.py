"""Relay settings and admin tokens: what ``taskapp relay serve`` configures.

The relay keeps only the SHA-256 of each admin token (:class:`AdminToken`), never the token.
"""

from __future__ import annotations

import dataclasses
import math
import os
import secrets
import stat
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from taskapp.core.errors import ConfigurationError
from taskapp.relay import protocol as p

__all__ = [
    "ADMIN_TOKEN_ENV",
    "V1_MESSAGE_CAP",
    "AdminToken",
    "RelaySettings",
    "load_admin_tokens",
    "new_token",
]

ADMIN_TOKEN_ENV = "TASKAPP_RELAY_ADMIN_TOKEN"  # noqa: S105 - a variable name
_MIN_TOKEN_LEN = 16
#: The largest v1 message accepted from an agent (tungstenite's default limit).
V1_MESSAGE_CAP = 64 * 1024 * 1024


# -- settings and admin tokens -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AdminToken:
    """An admin token as the relay keeps it: a name for logs and the SHA-256, never the token."""

    name: str
    hash: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class RelaySettings:
    """Everything ``taskapp relay serve`` configures. Sizes in bytes, times in seconds."""

    public_url: str
    admin_tokens: tuple[AdminToken, ...]
    host: str = "127.0.0.1"
    port: int = 8787
    protocols: tuple[int, ...] = p.SUPPORTED_VERSIONS
    max_leases: int = 100
    max_inflight: int = 128
    max_request_bytes: int = 100 * 1024 * 1024
    max_response_bytes: int = 200_000_000
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    default_ttl: int = 3600
    max_ttl: int = 86400
    max_deadline: float = 600.0
    stall_timeout: float = 120.0
    memory_budget: int = 512 * 1024 * 1024
    stream_window: int = p.DEFAULT_STREAM_WINDOW
    conn_window: int = p.DEFAULT_CONN_WINDOW
    max_frame_bytes: int = p.DEFAULT_FRAME_BYTES
    #: v1 has no flow control: above this many buffered bytes for one stream the relay
    #: stops reading that agent's WebSocket (bounded memory, head-of-line blocking).
    v1_stream_buffer: int = 4 * 1024 * 1024
    reattach_grace: float = 120.0
    worker_token_grace: float = 60.0
    attach_timeout: float = 10.0
    drain_timeout: float = 10.0
    sweep_interval: float = 1.0
    state_file: Path | None = None
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    trusted_proxies: tuple[str, ...] = ("127.0.0.1",)
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    retry_after: int = 1

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.public_url)
        if self.public_url == "auto":
            pass  # the address the relay binds, filled in once bound
        elif parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigurationError(
                f"--public-url must be an absolute http(s) URL, got {self.public_url!r}"
            )
        if not self.admin_tokens:
            raise ConfigurationError(
                "the relay needs at least one admin token: pass --admin-token-file FILE "
                f"(one token per line, mode 0600) or set {ADMIN_TOKEN_ENV}"
            )
        if not set(self.protocols) <= set(p.SUPPORTED_VERSIONS) or not self.protocols:
            raise ConfigurationError(f"--protocols must be a subset of 1,2, got {self.protocols}")
        if not p.MIN_WINDOW <= self.stream_window <= self.conn_window:
            raise ConfigurationError(
                "need 64 KiB <= stream window <= connection window, got "
                f"{self.stream_window} and {self.conn_window}"
            )
        if not 1024 <= self.max_frame_bytes <= p.MAX_FRAME_BYTES:
            raise ConfigurationError(
                f"max frame bytes must be in [1024, {p.MAX_FRAME_BYTES}], "
                f"got {self.max_frame_bytes}"
            )
        for name in ("max_inflight", "max_leases", "default_ttl", "max_ttl"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{name} must be positive")
        if self.default_ttl > self.max_ttl:
            raise ConfigurationError("--default-ttl cannot exceed --max-ttl")

    @property
    def public_base(self) -> str:
        return self.public_url.rstrip("/")

    @property
    def agent_url(self) -> str:
        parts = urllib.parse.urlsplit(self.public_base)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path + p.AGENT_PATH, "", ""))

    @property
    def ws_max_size(self) -> int:
        """The largest WebSocket message accepted from an agent.

        v1 agents size RESP_BODY chunks freely (the Rust agent sends one per upstream
        chunk: over 1 MiB seen under load), so a v1 message may carry the base64 (4/3) of a
        whole response up to ``max_response_bytes``, capped at 64 MiB (tungstenite's own
        default). v2 frames are held to the negotiated size per session (close 1008).
        """
        v1_body = math.ceil(self.max_response_bytes * 4 / 3) + 64 * 1024
        v2_frame = math.ceil(self.max_frame_bytes * 4 / 3) + 4096
        return max(min(v1_body, V1_MESSAGE_CAP), v2_frame, 1024 * 1024)


def load_admin_tokens(
    path: Path | None,
    *,
    allow_insecure_permissions: bool = False,
    env: Mapping[str, str] | None = None,
) -> tuple[AdminToken, ...]:
    """Read admin tokens from ``path`` (one per line, optional ``name:`` prefix, ``#``
    comments) or, without a path, from ``TASKAPP_RELAY_ADMIN_TOKEN``.

    The file must not be readable by group or others (mode 0600) unless
    ``allow_insecure_permissions``. Only hashes are returned.
    """
    environ = os.environ if env is None else env
    raw_lines: list[str]
    origin: str
    if path is not None:
        path = path.expanduser()
        try:
            st = path.stat()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the admin token file {str(path)!r}: {exc.strerror}"
            ) from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO) and not allow_insecure_permissions:
            raise ConfigurationError(
                f"the admin token file {str(path)!r} is accessible by other users (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); run 'chmod 600 {path}' "
                "(or pass --insecure-permissions)"
            )
        raw_lines = path.read_text(encoding="utf-8").splitlines()
        origin = f"file {str(path)!r}"
    else:
        value = environ.get(ADMIN_TOKEN_ENV, "")
        raw_lines = [value] if value.strip() else []
        origin = ADMIN_TOKEN_ENV
    tokens: list[AdminToken] = []
    for number, line in enumerate(raw_lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.partition(":")
        if not sep or not name.isidentifier():
            name, token = f"token{number}", line
        token = token.strip()
        if len(token) < _MIN_TOKEN_LEN:
            raise ConfigurationError(
                f"admin token on line {number} of {origin} is shorter than {_MIN_TOKEN_LEN} "
                "characters; generate one with 'taskapp relay token'"
            )
        tokens.append(AdminToken(name=name, hash=p.token_hash(token)))
    return tuple(tokens)


def new_token() -> str:
    return secrets.token_urlsafe(32)
