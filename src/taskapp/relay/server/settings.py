"""Relay settings and admin tokens: what ``taskapp relay serve`` configures.

The relay keeps only the SHA-256 of each admin token (:class:`AdminToken`), never the token.
"""

from __future__ import annotations

import dataclasses
import math
import os
import secrets
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from taskapp.core.errors import ConfigurationError
from taskapp.core.options import setting
from taskapp.core.secrets import read_secret_file
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

#: the option group ``taskapp relay serve --help`` shows the limits in
LIMITS = "limits"


@dataclasses.dataclass(frozen=True)
class AdminToken:
    """An admin token as the relay keeps it: a name for logs and the SHA-256, never the token."""

    name: str
    hash: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class RelaySettings:
    """Everything ``taskapp relay serve`` configures. Sizes in bytes, times in seconds.

    Each option of ``taskapp relay serve`` is declared here once, with its default and help
    (:func:`~taskapp.core.options.setting`); the command line is built from it. Fields
    without ``setting(...)`` are tuning knobs for embedding and tests, not options.
    """

    # required; the command line computes them (--public-url's default, --admin-token-file)
    public_url: str = setting(dataclasses.MISSING, "", custom=True)
    admin_tokens: tuple[AdminToken, ...] = setting(
        dataclasses.MISSING, "", flag="--admin-token-file", custom=True
    )
    host: str = setting("127.0.0.1", "bind address")
    port: int = setting(8787, "port; 0: any free port")
    protocols: tuple[int, ...] = setting(p.SUPPORTED_VERSIONS, "", custom=True)
    max_leases: int = setting(
        100,
        "leases alive at once, all admin tokens together; 429 beyond",
        group=LIMITS,
        kind="count",
    )
    max_inflight: int = setting(
        128, "public requests in flight per lease; 503 beyond", group=LIMITS, kind="count"
    )
    max_request_bytes: int = setting(
        100 * 1024 * 1024, "largest public request body; 413 beyond", group=LIMITS, kind="size"
    )
    max_response_bytes: int = setting(
        200_000_000,
        "largest response body relayed (cut off beyond); also bounds one v1 agent message, "
        "up to 64MiB",
        group=LIMITS,
        kind="size",
    )
    max_header_bytes: int = setting(
        64 * 1024, "total size of a public request's headers; 431 beyond", group=LIMITS, kind="size"
    )
    max_headers: int = 100
    default_ttl: int = setting(
        3600,
        "lifetime of a lease whose creator asks for none, seconds",
        group=LIMITS,
        kind="seconds",
    )
    max_ttl: int = setting(
        86400,
        "longest lease lifetime granted, seconds; longer requests are cut to it",
        group=LIMITS,
        kind="seconds",
    )
    max_deadline: float = setting(
        600.0,
        "longest a public request may take, seconds; 504 beyond",
        group=LIMITS,
        kind="seconds",
    )
    stall_timeout: float = setting(
        120.0,
        "longest silence from the task app within one request, seconds; 504 beyond",
        group=LIMITS,
        kind="seconds",
    )
    header_timeout: float = setting(
        10.0,
        "longest a client may take to send a request's head after connecting or after the "
        "previous answer, seconds; 408 beyond (a connection that sent nothing is closed)",
        group=LIMITS,
        kind="seconds",
    )
    memory_budget: int = setting(
        512 * 1024 * 1024,
        "response bytes the relay may buffer for slow callers, all leases together; 503 for "
        "new requests beyond",
        group=LIMITS,
        kind="size",
    )
    stream_window: int = setting(
        p.DEFAULT_STREAM_WINDOW,
        "v2 flow-control window per request: bytes in flight before the receiver "
        "acknowledges; at least 64KiB",
        group=LIMITS,
        kind="size",
    )
    conn_window: int = setting(
        p.DEFAULT_CONN_WINDOW,
        "v2 flow-control window per agent connection, all requests together; at least "
        "--stream-window",
        group=LIMITS,
        kind="size",
    )
    max_frame_bytes: int = setting(
        p.DEFAULT_FRAME_BYTES,
        "largest body chunk per frame: v2 frames above it close the agent (1008); REQ_BODY "
        "to v1 agents is split to it; 1KiB-256KiB",
        group=LIMITS,
        kind="size",
    )
    #: v1 has no flow control: above this many buffered bytes for one stream the relay
    #: stops reading that agent's WebSocket (bounded memory, head-of-line blocking).
    v1_stream_buffer: int = 4 * 1024 * 1024
    reattach_grace: float = setting(
        120.0,
        "how long a lease waits for its agent to reconnect before it is removed, seconds",
        group=LIMITS,
        kind="seconds",
    )
    worker_token_grace: float = 60.0
    attach_timeout: float = 10.0
    drain_timeout: float = setting(
        10.0,
        "on SIGTERM/SIGINT, how long in-flight requests may finish, seconds",
        group=LIMITS,
        kind="seconds",
    )
    sweep_interval: float = 1.0
    state_file: Path | None = setting(None, "", custom=True)
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    trusted_proxies: tuple[str, ...] = setting(
        ("127.0.0.1",), "", flag="--trusted-proxy", custom=True
    )
    ssl_certfile: str | None = setting(None, "serve HTTPS with this certificate (PEM)")
    ssl_keyfile: str | None = setting(None, "the private key of --ssl-certfile (PEM)")
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
        for name in ("max_inflight", "max_leases", "default_ttl", "max_ttl", "header_timeout"):
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
    env: Mapping[str, str] | None = None,
) -> tuple[AdminToken, ...]:
    """Read admin tokens from ``path`` (one per line, optional ``name:`` prefix, ``#``
    comments) or, without a path, from ``TASKAPP_RELAY_ADMIN_TOKEN``.

    The file must not be accessible by group or others (mode 0600): the one secret-file
    policy, :func:`taskapp.core.secrets.read_secret_file`. Only hashes are returned.
    """
    environ = os.environ if env is None else env
    raw_lines: list[str]
    origin: str
    if path is not None:
        raw_lines = read_secret_file(path, what="the admin token file").splitlines()
        origin = f"file {str(path.expanduser())!r}"
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
