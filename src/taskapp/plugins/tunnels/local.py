"""Tunnel backend ``local``: no tunnel; the URL is the local server's.

For a server bound to 0.0.0.0 the URL uses 127.0.0.1. Nothing is exposed to the internet
(this is taskapp's default ``tunnel_mode``).
"""

from __future__ import annotations

from taskapp.core.backends import Tunnel, TunnelBackend, TunnelContext
from taskapp.core.hookspecs import RegisterTunnel, hookimpl

__all__ = ["LocalTunnel"]


class LocalTunnel(TunnelBackend):
    name = "local"

    def open(self, ctx: TunnelContext) -> Tunnel:
        return Tunnel(url=ctx.local_url)

    def verify(self, tunnel: Tunnel, ctx: TunnelContext, timeout: float) -> None:
        """Nothing to verify: the lifecycle already checked the local URL."""


@hookimpl
def register_tunnels(register: RegisterTunnel) -> None:
    register(LocalTunnel)
