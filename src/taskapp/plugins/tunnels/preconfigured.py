"""Tunnel backend ``preconfigured``: a public URL the user already has (their own proxy,
ingress or tunnel). taskapp does not open anything; it hands out the URL and, unless
``skip_tunnel_verification``, checks ``/health`` through it with the API key and the
custom auth header.

Options (also settable through the seed's top-level arguments): ``url``
(``preconfigured_url``), ``auth_header`` (``preconfigured_auth_header``) and
``auth_token`` (``preconfigured_auth_token``). The token is sent as ``auth_header:
auth_token`` by every client that must go through the proxy (``Tunnel.headers``).
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Mapping
from typing import ClassVar

from taskapp.core.backends import Tunnel, TunnelBackend, TunnelContext
from taskapp.core.errors import ConfigurationError
from taskapp.core.hookspecs import RegisterTunnel, hookimpl
from taskapp.core.secrets import register_secret

__all__ = ["PreconfiguredTunnel"]


@dataclasses.dataclass(frozen=True)
class PreconfiguredOptions:
    url: str | None = None
    auth_header: str | None = None
    auth_token: str | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.url:
            raise ValueError(
                "tunnel 'preconfigured' needs a URL: pass preconfigured_url='https://...'"
            )
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"preconfigured_url must be an absolute http(s) URL, got {self.url!r}")
        if bool(self.auth_header) != bool(self.auth_token):
            raise ValueError(
                "preconfigured_auth_header and preconfigured_auth_token go together: pass both "
                "or neither"
            )
        # Known as secrets from the constructor on: logs and errors show fingerprints (the
        # URL is logged, and may carry a password: https://user:password@host).
        register_secret(self.auth_token)
        register_secret(parts.password)


class PreconfiguredTunnel(TunnelBackend):
    name = "preconfigured"
    Options = PreconfiguredOptions
    argument_options: ClassVar[Mapping[str, str]] = {
        "preconfigured_url": "url",
        "preconfigured_auth_header": "auth_header",
        "preconfigured_auth_token": "auth_token",
    }

    def __init__(self, options: PreconfiguredOptions) -> None:
        super().__init__(options)
        self.options: PreconfiguredOptions = options
        register_secret(options.auth_token)

    def open(self, ctx: TunnelContext) -> Tunnel:
        url = self.options.url
        if url is None:  # unreachable: Options validates it
            raise ConfigurationError("tunnel 'preconfigured' needs a URL")
        headers: dict[str, str] = {}
        if self.options.auth_header and self.options.auth_token:
            headers[self.options.auth_header] = self.options.auth_token
        return Tunnel(url=url.rstrip("/"), headers=headers)


@hookimpl
def register_tunnels(register: RegisterTunnel) -> None:
    register(PreconfiguredTunnel)
