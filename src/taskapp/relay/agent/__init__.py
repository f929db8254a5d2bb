"""The relay agent: dials out to the relay over a WebSocket and forwards requests locally.

The package, by concern (imports run down this list, never up):

=================  ============================================================
``thread``         :class:`AgentThread`: the agent in its own thread and loop
``connection``     :class:`RelayAgent`: connect, ATTACH, frames, renew, reconnect
``forward``        one relayed request to the local app and back, flow control
``local_http``     :class:`LocalHttp`: the pooled keep-alive HTTP/1.1 local leg
``config``         :class:`AgentConfig`
=================  ============================================================

Import each name from its module (``taskapp.relay.agent.thread.AgentThread``, ...); the
package itself exports nothing.
"""
