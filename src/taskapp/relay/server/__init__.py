"""The relay server: lease REST API, agent WebSocket and public ingress, as one ASGI app.

::

    POST   /api/v1/synthtunnel/leases                      admin   create a lease (201)
    GET    /api/v1/synthtunnel/leases                      admin   list leases
    GET    /api/v1/synthtunnel/leases/{id}                 admin or the lease's agent token
    POST   /api/v1/synthtunnel/leases/{id}/renew           admin or agent token
    POST   /api/v1/synthtunnel/leases/{id}/worker-token    admin or agent token (rotate)
    POST   /api/v1/synthtunnel/leases/{id}/token:refresh   the same, synth-ai's name
    DELETE /api/v1/synthtunnel/leases/{id}                 admin or agent token
    WS     /api/v1/synthtunnel/agent                       the lease's agent token
    *      /s/rt_<route_token>/<path>                      the lease's worker token
    GET    /healthz                                        open
    GET    /metrics                                        admin (Prometheus text)

Tokens are 256-bit random strings; the relay keeps only their SHA-256 and compares in
constant time. :func:`create_relay_app` builds the app, :class:`RelayServer` runs it on
uvicorn with WebSocket compression off and drains gracefully on SIGTERM, and
:func:`start_relay_thread` runs one in a background thread (tests, benchmarks, embedding).

The package, by concern (imports run down this list, never up):

=================  ============================================================
``run``            uvicorn, log redaction, drain on signals, the background thread
``app``            :class:`RelayApp`: ASGI dispatch, lifespan, sweeper, drain
``rest``           the lease REST API, /healthz, /metrics
``agent_socket``   the agent WebSocket endpoint (auth, ATTACH, frame loop)
``ingress``        the public ingress /s/rt_... (limits, deadlines, cancellation)
``session``        :class:`AgentSession` and its streams, flow control
``state``          :class:`RelayState`, the one object all of the above share
``leases``         :class:`Lease`, :class:`LeaseStore` (``--state-file``)
``settings``       :class:`RelaySettings`, admin tokens
=================  ============================================================

Import each name from its module (``taskapp.relay.server.run.start_relay_thread``,
``taskapp.relay.server.settings.RelaySettings``, ...); the package itself exports nothing.
"""
