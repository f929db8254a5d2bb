"""Every builtin backend passes the conformance suite plugin authors use
(taskapp.testing.TunnelBackendConformance / ServerRunnerConformance), with the real thing
where it runs here: the test sshd, a relay in a thread, the cloudflared STAND-IN (the real
cloudflared cannot run offline), thread, subprocess and Ray servers."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import httpx
import pytest

from taskapp import InProcessTaskApp
from taskapp.core.backends import Tunnel
from taskapp.relay.protocol import LEASES_PATH
from taskapp.relay.server.run import RunningRelay
from taskapp.testing import ServerRunnerConformance, TunnelBackendConformance, free_port
from taskapp.testing.conformance import KEY
from tests.relay._relay_helpers import ADMIN, running_relay
from tests.tunnels._cloudflare_helpers import Standin, via_edge
from tests.tunnels._cloudflare_helpers import standin as standin  # the fixture
from tests.tunnels._ssh_helpers import SSHServer


class TestLocalTunnel(TunnelBackendConformance):
    backend = "local"


class TestPreconfiguredTunnel(TunnelBackendConformance):
    backend = "preconfigured"

    def tunnel_options(self, port: int) -> dict[str, Any]:
        return {"url": f"http://127.0.0.1:{port}"}

    def failing_tunnel_options(self, port: int) -> dict[str, Any]:
        # nothing listens there: verification of the public URL fails
        return {"url": f"http://127.0.0.1:{free_port()}"}

    failure_timeout = 1.5


class TestThreadServer(ServerRunnerConformance):
    backend = "thread"


class TestSubprocessServer(ServerRunnerConformance):
    backend = "subprocess"
    cycles = 2
    options: ClassVar[Mapping[str, Any]] = {"workers": 2}


# -- ssh: the test sshd (a real OpenSSH server on loopback) ------------------------------


@pytest.fixture(scope="module")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    server = SSHServer(tmp_path_factory.mktemp("sshd")).start()
    try:
        yield server
    finally:
        server.stop()


class TestSSHTunnel(TunnelBackendConformance):
    backend = "ssh"

    @pytest.fixture(autouse=True)
    def _server(self, sshd_server: SSHServer) -> None:
        self.sshd = sshd_server

    def tunnel_options(self, port: int) -> dict[str, Any]:
        return self.sshd.tunnel_options()

    def failing_tunnel_options(self, port: int) -> dict[str, Any]:
        return self.sshd.tunnel_options(port=free_port())  # no sshd listens there


# -- relay: `taskapp relay serve` in a thread ------------------------------------------


@pytest.fixture(scope="module")
def relay() -> Iterator[RunningRelay]:
    with running_relay() as server:
        yield server


class TestRelayTunnel(TunnelBackendConformance):
    backend = "relay"

    @pytest.fixture(autouse=True)
    def _relay(self, relay: RunningRelay) -> None:
        self.relay = relay
        self.relay_url = relay.url

    def tunnel_options(self, port: int) -> dict[str, Any]:
        return {"relay_url": self.relay_url, "admin_token": ADMIN}

    def failing_tunnel_options(self, port: int) -> dict[str, Any]:
        return {"relay_url": self.relay_url, "admin_token": "wrong-admin-token-0123456789"}

    def drop(self, task_app: InProcessTaskApp) -> bool:
        # The relay forgets the lease (an operator deletes it): the agent is told, the
        # backend reports a drop, the supervisor rents a new lease (a new URL).
        assert task_app.url is not None
        route = task_app.url.rsplit("/s/rt_", 1)[1]
        lease = self.relay.app.store.by_route[route]
        response = httpx.delete(
            f"{self.relay_url}{LEASES_PATH}/{lease.lease_id}",
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=10,
        )
        assert response.status_code in (200, 204), response.text
        return True


# -- cloudflare-quick: the cloudflared STAND-IN (the real one needs the internet) --------


class TestCloudflareQuickTunnel(TunnelBackendConformance):
    backend = "cloudflare-quick"

    @pytest.fixture(autouse=True)
    def _standin(self, standin: Standin) -> None:
        self.standin = standin

    def tunnel_options(self, port: int) -> dict[str, Any]:
        return {"resolve": self.standin.resolve}

    def failing_tunnel_options(self, port: int) -> dict[str, Any]:
        self.standin.mode("rate_limit")
        return {"resolve": self.standin.resolve}

    def fetch_url(self, url: str, path: str, tunnel: Tunnel | None) -> tuple[int, Any]:
        # through the stand-in's edge, as DNS would route the *.trycloudflare.com name
        status, body = via_edge(self.standin.edge_port, url, path, headers={"X-API-Key": KEY})
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")


# -- ray: a private local Ray instance (skipped when the ray extra is not installed) -----


# Ray Serve declares pydantic fields the deprecated way (warned at import).
@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20")
class TestRayServer(ServerRunnerConformance):
    backend = "ray"
    start_timeout = 120.0
    failure_timeout = 60.0
    cycles = 2

    @pytest.fixture(autouse=True)
    def _ray(self) -> None:
        pytest.importorskip("ray", reason="the ray extra is not installed")
