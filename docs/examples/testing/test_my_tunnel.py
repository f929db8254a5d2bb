"""Testing a tunnel plugin with the conformance suite (docs/testing.md, "Testing a plugin").

A real plugin is installed as its own distribution (entry point group ``taskapp``) and
needs no fixture; this file defines its plugin inline and registers it for each test
with ``registered_plugin``.
"""

from __future__ import annotations

import dataclasses

import pytest

import taskapp
from taskapp.core.backends import Tunnel, TunnelBackend, TunnelContext
from taskapp.core.errors import TunnelError
from taskapp.testing import TunnelBackendConformance, registered_plugin


class LoopbackTunnel(TunnelBackend):
    """Hands out the local URL under another name; fails when told to (to show the
    failure check)."""

    name = "loopback-example"

    @dataclasses.dataclass(frozen=True)
    class Options:
        host: str = "127.0.0.1"
        refuse: bool = False

    def open(self, ctx: TunnelContext) -> Tunnel:
        if self.options.refuse:
            raise TunnelError("the loopback tunnel was told to refuse", backend=self.name)
        return Tunnel(url=f"http://{self.options.host}:{ctx.port}")


class plugin:  # a plugin object, as a module would be
    @staticmethod
    @taskapp.hookimpl
    def register_tunnels(register):
        register(LoopbackTunnel)


@pytest.fixture(autouse=True)
def _plugin():
    with registered_plugin(plugin, "loopback-example-plugin"):
        yield


class TestLoopbackTunnel(TunnelBackendConformance):
    backend = "loopback-example"
    options = {"host": "127.0.0.1"}  # noqa: RUF012 - read only
    failing_options = {"refuse": True}  # noqa: RUF012


class TestLocalTunnel(TunnelBackendConformance):
    backend = "local"  # a builtin: nothing else to say
