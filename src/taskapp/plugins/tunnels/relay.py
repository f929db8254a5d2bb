"""Tunnel backend ``relay`` (the seed's ``tunnel_mode="synthtunnel"``): a public URL through a
self-hosted relay (``taskapp relay serve``).

::

    async with InProcessTaskApp(app=app, tunnel_mode="synthtunnel", tunnel_options={
            "relay_url": "https://relay.example.com",
            "admin_token_file": "~/.config/taskapp/relay.token"}) as task_app:
        task_app.url                     # https://relay.example.com/s/rt_<route>
        task_app.task_app_worker_token   # callers send it as X-SynthTunnel-Worker-Token

Opening rents a lease over REST, starts the agent in its own thread and event loop, and
returns once the relay acknowledged the agent. The agent renews the lease and reconnects
with backoff by itself; when the relay no longer knows the lease the backend reports a
drop and the tunnel supervisor rents a new one (the URL changes, ``on_url_change`` fires).
Closing sends GOAWAY, lets in-flight requests finish briefly and deletes the lease
(synchronously, bounded).

Credentials, explicit options first: ``relay_url`` else ``TASKAPP_RELAY_URL`` (else the
seed's ``SYNTH_BACKEND_URL``); ``admin_token`` else ``admin_token_file`` else
``TASKAPP_RELAY_TOKEN`` else ``TASKAPP_RELAY_TOKEN_FILE`` (else ``SYNTH_API_KEY``, only
together with ``SYNTH_BACKEND_URL``).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from taskapp.core.backends import Tunnel, TunnelBackend, TunnelContext
from taskapp.core.errors import ConfigurationError, TunnelError
from taskapp.core.health import is_loopback_url
from taskapp.core.hookspecs import RegisterTunnel, hookimpl
from taskapp.core.importing import install_command
from taskapp.core.logs import get_logger
from taskapp.core.secrets import fingerprint, read_secret_file, register_secret

__all__ = ["RelayOptions", "RelayTunnel", "SynthTunnel", "resolve_relay_credentials"]

logger = get_logger("taskapp.tunnel.relay")

WORKER_TOKEN_HEADER = "X-SynthTunnel-Worker-Token"  # noqa: S105 - a header name

_HINT = (
    "run 'taskapp relay serve' on a host the job can reach (the hosted SynthTunnel service "
    "is retired) and pass tunnel_options={'relay_url': ..., 'admin_token_file': ...}"
)


@dataclasses.dataclass(frozen=True)
class RelayOptions:
    relay_url: str | None = None
    """Base URL of the relay (``https://relay.example.com``); env ``TASKAPP_RELAY_URL``."""
    admin_token: str | None = dataclasses.field(default=None, repr=False)
    """Admin token of the relay; prefer ``admin_token_file``. Env ``TASKAPP_RELAY_TOKEN``."""
    admin_token_file: Path | None = None
    """File holding the admin token (first line); env ``TASKAPP_RELAY_TOKEN_FILE``."""
    ttl_seconds: int = 3600
    renew: bool = True
    protocol: Literal["auto", "v1", "v2"] = "auto"
    max_inflight: int = 64
    stream_window: int = 2 * 1024 * 1024
    conn_window: int = 32 * 1024 * 1024
    ready_timeout: float = 10.0
    ca_file: Path | None = None
    allow_insecure: bool = False
    """Allow ``http://`` to a relay that is not on loopback (tokens travel in clear text)."""
    inject_api_key: bool = True
    """Add the task app's ``X-API-Key`` to forwarded requests that carry none (as the
    original agents did), so callers need only the worker token."""
    reconnect_max_delay: float = 30.0
    delete_timeout: float = 5.0
    drain_timeout: float = 3.0
    in_process: bool = True
    """When the task app is served in this process (the ``thread`` server), call it
    directly on its server's event loop instead of over its loopback port (False: always
    loopback HTTP, through the server's limits and middleware)."""

    def __post_init__(self) -> None:
        if self.ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        if self.max_inflight <= 0:
            raise ValueError("max_inflight must be positive")
        if not 64 * 1024 <= self.stream_window <= self.conn_window:
            raise ValueError("need 65536 <= stream_window <= conn_window")
        if self.ready_timeout <= 0 or self.delete_timeout <= 0:
            raise ValueError("timeouts must be positive")
        resolve_relay_credentials(self, os.environ, read_file=False)


def _read_token_file(path: Path) -> str:
    text = read_secret_file(path, what="the relay admin token file")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, rest = line.partition(":")
        token = rest.strip() if sep and name.isidentifier() else line
        register_secret(token)
        return token
    raise ConfigurationError(
        f"the relay admin token file {str(path.expanduser())!r} holds no token"
    )


def resolve_relay_credentials(
    options: RelayOptions, environ: Mapping[str, str], *, read_file: bool = True
) -> tuple[str, str]:
    """The relay URL and admin token, explicit options first, then the environment.

    With ``read_file=False`` token files are only checked for existence (used while
    validating options, before anything starts).
    """
    legacy = False
    url = options.relay_url or environ.get("TASKAPP_RELAY_URL") or ""
    if not url and environ.get("SYNTH_BACKEND_URL"):
        url, legacy = environ["SYNTH_BACKEND_URL"], True
    if not url:
        raise ValueError(f"tunnel 'relay' needs relay_url; {_HINT}")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"relay_url must be an absolute http(s) URL, got {url!r}")
    if parts.scheme == "http" and not is_loopback_url(url) and not options.allow_insecure:
        raise ValueError(
            f"relay_url {url!r} is plain http on a non-loopback host: tokens would travel in "
            "clear text; use https (see docs/relay.md for TLS) or pass allow_insecure=True"
        )
    token = options.admin_token or ""
    file: Path | None = options.admin_token_file
    if not token and file is None:
        token = environ.get("TASKAPP_RELAY_TOKEN", "")
        if not token and environ.get("TASKAPP_RELAY_TOKEN_FILE"):
            file = Path(environ["TASKAPP_RELAY_TOKEN_FILE"])
        if not token and file is None and legacy:
            token = environ.get("SYNTH_API_KEY", "")
    if not token and file is not None:
        if not read_file:
            if not file.expanduser().is_file():
                raise ValueError(f"relay admin token file {str(file)!r} does not exist")
            return url.rstrip("/"), ""
        token = _read_token_file(file)
    if not token:
        raise ValueError(f"tunnel 'relay' needs an admin token; {_HINT}")
    register_secret(token)
    return url.rstrip("/"), token


class RelayTunnel(TunnelBackend):
    """A lease on a taskapp relay plus an agent thread that serves it."""

    name = "relay"
    Options = RelayOptions
    supervised = True

    def __init__(self, options: RelayOptions) -> None:
        super().__init__(options)
        self.options: RelayOptions = options
        self._client: Any = None
        self._agent_client: Any = None
        self._agent: Any = None
        self._lease: Any = None
        self._tunnel: Tunnel | None = None
        self._ctx: TunnelContext | None = None
        self._lock = threading.Lock()

    @property
    def lease(self) -> Any:
        """The current :class:`~taskapp.relay.client.LeaseInfo` (None when closed)."""
        return self._lease

    def open(self, ctx: TunnelContext) -> Tunnel:
        try:
            import websockets  # noqa: F401
        except ImportError:
            raise ConfigurationError(
                "tunnel 'relay' needs the 'websockets' package: " + install_command("relay")
            ) from None
        from taskapp.relay.agent.config import AgentConfig
        from taskapp.relay.agent.thread import AgentThread
        from taskapp.relay.client import LeaseClient

        try:
            url, token = resolve_relay_credentials(self.options, os.environ)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        opts = self.options
        local_host = urllib.parse.urlsplit(ctx.local_url).hostname or "127.0.0.1"
        client = LeaseClient(url, token, ca_file=opts.ca_file, timeout=opts.ready_timeout)
        self._client = client
        self._ctx = ctx
        lease = client.create(
            local_host=local_host,
            local_port=ctx.port,
            ttl_seconds=opts.ttl_seconds,
            client_instance_id=f"taskapp-{os.getpid()}",
            metadata={"client": "taskapp"},
            capabilities={"protocol_versions": [2, 1], "binary_frames": True},
        )
        self._lease = lease
        ctx.logger.info(
            "relay lease %s at %s (admin token %s)",
            lease.lease_id,
            lease.public_url,
            fingerprint(token),
        )
        agent_client = LeaseClient(url, lease.agent_token, ca_file=opts.ca_file, timeout=10.0)
        self._agent_client = agent_client

        def renew_rest() -> float:
            expires: float = agent_client.renew(lease.lease_id, opts.ttl_seconds)
            return expires

        config = AgentConfig(
            lease_id=lease.lease_id,
            agent_url=lease.agent_url,
            agent_token=lease.agent_token,
            local_host=local_host,
            local_port=ctx.port,
            expires_at=lease.expires_at,
            ttl_seconds=lease.ttl_seconds or opts.ttl_seconds,
            protocol=opts.protocol,
            max_inflight=opts.max_inflight,
            stream_window=opts.stream_window,
            conn_window=opts.conn_window,
            api_key=ctx.api_key if opts.inject_api_key else None,
            ca_file=opts.ca_file,
            renew=opts.renew,
            reconnect_max=opts.reconnect_max_delay,
            open_timeout=opts.ready_timeout,
            drain_timeout=opts.drain_timeout,
            agent_id=f"taskapp-{os.getpid()}",
            use_proxy=not is_loopback_url(lease.agent_url.replace("ws", "http", 1)),
            renew_rest=renew_rest,
            in_process=ctx.in_process if opts.in_process else None,
        )
        agent = AgentThread(config, name=f"taskapp-relay-agent-{ctx.port}")
        self._agent = agent
        agent.start(opts.ready_timeout)
        tunnel = self._make_tunnel(lease.worker_token)
        return tunnel

    def _make_tunnel(self, worker_token: str) -> Tunnel:
        lease = self._lease
        tunnel = Tunnel(
            url=lease.public_url,
            stable=True,
            expires_at=lease.expires_at,
            headers={WORKER_TOKEN_HEADER: worker_token},
            worker_token=worker_token,
        )
        self._tunnel = tunnel
        return tunnel

    def rotate_worker_token(self) -> Tunnel:
        """Ask the relay for a new worker token (the old one stays valid for a grace
        period) and publish it: ``task_app.task_app_worker_token`` updates."""
        if self._lease is None or self._client is None or self._ctx is None:
            raise TunnelError("the relay tunnel is not open", backend=self.name)
        worker = self._client.rotate_worker_token(self._lease.lease_id)
        tunnel = self._make_tunnel(worker)
        self._ctx.url_changed(tunnel)
        return tunnel

    def wait_dropped(self, stop: threading.Event) -> str | None:
        agent = self._agent
        while not stop.wait(0.05):
            if agent is None:
                return "agent not running"
            if agent.lost.is_set() or not agent.alive:
                return agent.lost_reason or "agent stopped"
        return None

    def close(self) -> None:
        with self._lock:
            agent, self._agent = self._agent, None
            lease, self._lease = self._lease, None
            client, self._client = self._client, None
            agent_client, self._agent_client = self._agent_client, None
            self._tunnel = None
        if agent is not None:
            agent.stop(timeout=self.options.drain_timeout + 2.0)
        if agent_client is not None:
            agent_client.close()
        if client is not None:
            try:
                if lease is not None:
                    client.delete(lease.lease_id, timeout=self.options.delete_timeout)
            except TunnelError as exc:
                logger.warning("could not delete relay lease %s: %s", lease.lease_id, exc.message)
            finally:
                client.close()


class SynthTunnel(RelayTunnel):
    """The same backend under the seed's name (``tunnel_backend="synthtunnel"``)."""

    name = "synthtunnel"


@hookimpl
def register_tunnels(register: RegisterTunnel) -> None:
    register(RelayTunnel)
    register(SynthTunnel)
