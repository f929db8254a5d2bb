"""A self-hostable HTTP-over-WebSocket relay: both ends of the SynthTunnel-style protocol.

* :mod:`taskapp.relay.protocol` - the one protocol module (v1 JSON frames exactly as the
  original service spoke them, v2 binary frames with credit flow control), shared by both
  ends; standard library only.
* :mod:`taskapp.relay.server` - the relay (``taskapp relay serve``): lease REST API, the
  agent WebSocket and the public ingress ``/s/rt_<route>/...``.
* :mod:`taskapp.relay.agent` - the agent that dials out from the user's process and
  forwards requests to the local task app.
* :mod:`taskapp.relay.client` - the lease REST client the tunnel backend uses.

The tunnel backend itself is :mod:`taskapp.plugins.tunnels.relay` (``tunnel_mode=
"synthtunnel"`` or ``tunnel_backend="relay"``). Nothing is imported here, so importing the
package costs nothing; the WebSocket library (``pip install '.[relay]'`` in a clone) is only
needed once a relay or an agent actually runs. The wire protocol is documented in
``docs/relay-protocol.md``, operations in ``docs/relay.md``.
"""

from __future__ import annotations

__all__: list[str] = []
