"""What one relay agent needs: the lease, where the task app listens, and tuning."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from taskapp.core.backends import InProcessApp
from taskapp.relay import protocol as p

__all__ = ["AgentConfig"]


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """What one agent needs: the lease, where the app listens, and tuning."""

    lease_id: str
    agent_url: str
    agent_token: str = dataclasses.field(repr=False)
    local_host: str
    local_port: int
    expires_at: float
    ttl_seconds: int = 3600
    protocol: str = "auto"  # "auto" | "v1" | "v2"
    max_inflight: int = 64
    stream_window: int = p.DEFAULT_STREAM_WINDOW
    conn_window: int = p.DEFAULT_CONN_WINDOW
    max_frame: int = p.DEFAULT_FRAME_BYTES
    api_key: str | None = dataclasses.field(default=None, repr=False)
    ca_file: Path | None = None
    renew: bool = True
    reconnect_first: float = 0.5
    reconnect_max: float = 30.0
    open_timeout: float = 10.0
    drain_timeout: float = 3.0
    agent_id: str = "taskapp-agent"
    use_proxy: bool = True
    #: Renew over REST when the WebSocket cannot (v1, or while reconnecting).
    renew_rest: Callable[[], float] | None = dataclasses.field(default=None, repr=False)
    #: The task app served in this process: the agent runs on its server's loop and calls
    #: it directly (relay/agent/in_process.py) instead of over ``local_host:local_port``.
    in_process: InProcessApp | None = dataclasses.field(default=None, repr=False)
