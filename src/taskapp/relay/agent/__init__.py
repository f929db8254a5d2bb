"""The relay agent: dials out to the relay over a WebSocket and forwards requests locally.

The package, by concern (imports run down this list, never up):

=================  ============================================================
``thread``         :class:`AgentThread`: the agent in its own thread and loop
``connection``     :class:`RelayAgent`: connect, ATTACH, frames, renew, reconnect
``forward``        one relayed request to the local app and back, flow control
``local_http``     :class:`LocalHttp`: the pooled keep-alive HTTP/1.1 local leg
``config``         :class:`AgentConfig`
=================  ============================================================

``taskapp.relay.agent`` re-exports the public names, so imports from before the split work.
"""

from __future__ import annotations

from taskapp.relay.agent.config import AgentConfig
from taskapp.relay.agent.connection import RelayAgent
from taskapp.relay.agent.local_http import LocalHttp, LocalResponseError
from taskapp.relay.agent.thread import AgentThread

__all__ = ["AgentConfig", "AgentThread", "LocalHttp", "LocalResponseError", "RelayAgent"]
