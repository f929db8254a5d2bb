"""Server runner ``ray``: the task app as a Ray Serve deployment (extra ``taskapp[ray]``).

::

    with InProcessTaskApp(task_app_path="my_app.py", server="ray",
                          server_options={"num_replicas": 4},
                          health_check_timeout=120) as task_app:
        ...   # task_app.url is Serve's HTTP proxy, which spreads requests over 4 replicas

By default taskapp starts a **private local Ray instance** (``address="local"``, so
``RAY_ADDRESS`` is ignored and no stranger's cluster is ever joined by accident), deploys
the app on it, and shuts it down on stop. ``address="auto"``, ``"host:port"`` or
``"ray://..."`` deploy on an existing cluster instead; stop then deletes only taskapp's
own Serve application. Everything measured about this runner is in ``docs/ray.md``.

* **Nothing imports ray** until :meth:`RayServer.start`; the options check only that the
  ``ray`` package is installed (a :class:`~taskapp.core.errors.ConfigurationError`
  naming ``pip install '.[ray]'`` when it is not).
* **The app travels as an import target**: ``LoadedApp.reimport_target()`` (a ``.py``
  path or ``"module:attr"``) plus a builder that runs on each replica
  (:mod:`taskapp.plugins.servers._ray_app`), never a pickled app or TaskAppConfig. Each
  replica runs the app's lifespan itself. An app that has no import target is refused.
* **The API key** travels inside that builder (Ray's control plane): never in argv,
  environment variables, ``serve.status()``, Serve's config or logs.
* **Ray runs on a long-lived thread** (``taskapp-ray-driver``): Ray kills the processes of
  a local instance when the *thread* that called ``ray.init()`` ends (the parent-death
  signal is per thread), so every Ray call of this runner goes through that one thread.
  It also keeps Ray from replacing the process's SIGTERM handler.
* **A local instance is loopback-only** (Ray's "cluster mode" off for it, dashboard off,
  Serve's proxy on the lifecycle's host), with usage statistics off unless
  ``usage_stats=True``. Ray 2.60's token authentication stays on (Ray's default).
* **Port**: Serve's proxy cannot serve on the lifecycle's pre-bound socket. For a fresh
  local instance the runner closes that socket right before Serve starts and has the
  proxy bind the same port, then checks that the listener there is one of this
  instance's processes. When Serve already runs (an existing cluster, or a local
  instance kept by ``stop_policy="delete_app"``) its port is fixed cluster-wide: the
  runner reads it back and reports it through :attr:`RayServer.port`, which the
  lifecycle uses for ``task_app.port`` and the health check.
* **Readiness**: start waits (bounded by the start timeout) until Serve reports the
  application RUNNING, failing at once with the replica's own error when the deployment
  fails; then the lifecycle's usual ``/health`` check goes through Serve's proxy.
* **Stop** (``stop_policy``): ``"auto"`` deletes taskapp's application and, for a local
  instance taskapp started, shuts Serve and Ray down and waits until every process of
  that instance is gone (SIGKILL by recorded pid for stragglers; Ray processes are never
  looked up by name). ``"delete_app"`` keeps a local instance running for the next task
  app in this process (about 3 s to redeploy instead of about 10 s to start Ray); it
  ends at exit or with :func:`stop_local_ray`. ``"keep_app"`` (existing clusters only)
  leaves the application serving after this process exits.
"""

from __future__ import annotations

from taskapp.core.hookspecs import RegisterServer, hookimpl
from taskapp.plugins.servers.ray._connection import stop_local_ray
from taskapp.plugins.servers.ray._options import INSTALL_HINT, MIN_RAY_VERSION, RayOptions
from taskapp.plugins.servers.ray._runner import RayServer

__all__ = ["INSTALL_HINT", "MIN_RAY_VERSION", "RayOptions", "RayServer", "stop_local_ray"]


@hookimpl
def register_servers(register: RegisterServer) -> None:
    register(RayServer)
