"""Every builtin backend passes the conformance suite plugin authors use
(taskapp.testing.TunnelBackendConformance / ServerRunnerConformance), with the real thing
where it runs here: the test sshd, a relay in a thread, the cloudflared STAND-IN (the real
cloudflared cannot run offline), thread, subprocess and Ray servers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from taskapp.testing import ServerRunnerConformance, TunnelBackendConformance, free_port


class TestLocalTunnel(TunnelBackendConformance):
    backend = "local"


class TestPreconfiguredTunnel(TunnelBackendConformance):
    backend = "preconfigured"

    def tunnel_options(self, port: int) -> dict[str, Any]:
        return {"url": f"http://127.0.0.1:{port}"}

    def failing_tunnel_options(self, port: int) -> dict[str, Any]:
        # nothing listens there: verification of the public URL fails
        return {"url": f"http://127.0.0.1:{free_port()}"}

    failure_timeout = 3.0


class TestThreadServer(ServerRunnerConformance):
    backend = "thread"


class TestSubprocessServer(ServerRunnerConformance):
    backend = "subprocess"
    options: ClassVar[Mapping[str, Any]] = {"workers": 2}
