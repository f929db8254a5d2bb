"""The ``ray`` runner's options (``server_options``) and the constants the other parts share."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from typing import Any, Literal, TypeVar

from taskapp.core.errors import ConfigurationError
from taskapp.core.importing import install_command
from taskapp.core.logs import get_logger

logger = get_logger("taskapp.server.ray")

T = TypeVar("T")

INSTALL_HINT = install_command("ray")
#: Serve calls builder functions given to ``serve.ingress`` on each replica since 2.47.
MIN_RAY_VERSION = (2, 47)
DEPLOYMENT_NAME = "TaskApp"
LOCAL_ADDRESSES = (None, "local")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DRIVER_THREAD = "taskapp-ray-driver"
#: How long after ``ray.shutdown()`` processes of a local instance may take to exit
#: before the runner SIGKILLs them (by recorded pid).
EXIT_GRACE = 5.0
#: Bound on every Ray call made while stopping.
STOP_CALL_TIMEOUT = 30.0

StopPolicy = Literal["auto", "delete_app", "keep_app"]


def ray_installed() -> bool:
    """True when the ``ray`` package can be imported (without importing it)."""
    if "ray" in sys.modules:
        return sys.modules["ray"] is not None
    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        return False


@dataclasses.dataclass(frozen=True)
class RayOptions:
    address: str | None = None
    """None or ``"local"``: a private local Ray instance taskapp starts and stops
    (``RAY_ADDRESS`` is ignored). ``"auto"`` (honours ``RAY_ADDRESS``), ``"host:port"``
    or ``"ray://host:port"``: an existing cluster; taskapp deploys and deletes only its
    own application there."""
    num_replicas: int | str | None = None
    """Replicas (default 1), or ``"auto"``. Not together with ``autoscaling_config``."""
    autoscaling_config: dict[str, Any] | None = None
    """Serve's autoscaling config (``min_replicas``, ``max_replicas``,
    ``target_ongoing_requests``, ...), passed through."""
    max_ongoing_requests: int = 256
    """Concurrent requests per replica. Serve's default (5) starves rollouts that wait on
    a model or simulator: at concurrency 64 on a 50 ms route it gives 3-5x fewer
    requests/s than 200 (docs/ray.md)."""
    max_queued_requests: int = -1
    """Requests queued per caller before Serve answers 503; -1: unbounded."""
    ray_actor_options: dict[str, Any] | None = None
    """Per-replica resources etc.; default ``{"num_cpus": 0.5}`` (rollouts wait on I/O)."""
    runtime_env: dict[str, Any] | None = None
    """Given to ``ray.init``: ``working_dir`` / ``py_modules`` bring the app's code to
    remote nodes, ``pip``, ``env_vars``, ..."""
    http_host: str | None = None
    """Host of Serve's proxy when taskapp starts Serve; default: the task app's host."""
    http_port: int | None = None
    """Port of Serve's proxy when taskapp starts Serve; default: the task app's port."""
    app_name: str = "taskapp"
    """Name of the Serve application (unique on a shared cluster)."""
    stop_policy: StopPolicy = "auto"
    """``"auto"``, ``"delete_app"`` or ``"keep_app"`` (see the module docs)."""
    num_cpus: int | None = None
    """CPUs of a local instance (default: all)."""
    object_store_memory: int | None = None
    """Object store bytes of a local instance (default: Ray's, 30% of RAM)."""
    include_dashboard: bool = False
    """Start Ray's dashboard (127.0.0.1 only) with a local instance."""
    log_to_driver: bool = True
    """Show the replicas' stdout/stderr in this process."""
    access_log: bool = False
    """Serve's per-request access log on the replicas."""
    log_level: str = "WARNING"
    """Level of Serve's own logs (controller, proxy, replicas)."""
    usage_stats: bool = False
    """Allow Ray's usage statistics (off unless True)."""
    graceful_shutdown_timeout_s: float = 5.0
    """Seconds in-flight requests get when a replica stops."""
    max_constructor_retry_count: int | None = None
    """How often Serve retries a replica whose builder raised (Serve's default: 20,
    capped at 3 per replica) before the deployment fails."""
    request_timeout_s: float | None = None
    """Serve's end-to-end HTTP timeout when taskapp starts Serve (default: none)."""
    ship_taskapp: bool | None = None
    """Add taskapp's own package to ``runtime_env["py_modules"]`` so replicas can import
    the builder; default: True for existing clusters, False for a local instance."""
    init_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Extra keyword arguments for ``ray.init`` (for example ``_temp_dir``)."""

    def __post_init__(self) -> None:  # noqa: C901 -- complexity 15 at most (issue 21 ratchet); split when next changed
        if self.address is not None and (not isinstance(self.address, str) or not self.address):
            raise ValueError("address must be a non-empty string or None")
        replicas = self.num_replicas
        if (
            replicas is not None
            and replicas != "auto"
            and (isinstance(replicas, str | bool) or replicas < 1)
        ):
            raise ValueError(f"num_replicas must be at least 1 or 'auto', got {replicas!r}")
        if replicas is not None and self.autoscaling_config is not None:
            raise ValueError("pass num_replicas or autoscaling_config, not both")
        if self.max_ongoing_requests < 1:
            raise ValueError(
                f"max_ongoing_requests must be at least 1, got {self.max_ongoing_requests}"
            )
        if self.max_queued_requests != -1 and self.max_queued_requests < 1:
            raise ValueError(
                f"max_queued_requests must be -1 (unbounded) or at least 1, "
                f"got {self.max_queued_requests}"
            )
        if self.http_port is not None and not 1 <= self.http_port <= 65535:
            raise ValueError(f"http_port must be in [1, 65535], got {self.http_port}")
        if not self.app_name or not isinstance(self.app_name, str):
            raise ValueError("app_name must be a non-empty string")
        if self.stop_policy == "keep_app" and self.address in LOCAL_ADDRESSES:
            raise ValueError(
                "stop_policy='keep_app' needs an existing cluster (address='auto', "
                "'host:port' or 'ray://...'): a local instance ends with this process"
            )
        if self.log_level.upper() not in LOG_LEVELS:
            raise ValueError(
                f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}"
            )
        if self.graceful_shutdown_timeout_s < 0:
            raise ValueError("graceful_shutdown_timeout_s must be >= 0")
        if self.max_constructor_retry_count is not None and self.max_constructor_retry_count < 1:
            raise ValueError("max_constructor_retry_count must be at least 1")
        for key in ("address", "runtime_env"):
            if key in self.init_kwargs:
                raise ValueError(f"pass {key} as its own option, not in init_kwargs")
        if not ray_installed():
            raise ConfigurationError(
                "server='ray' runs the task app on Ray Serve, which is not installed. "
                f"Install it with: {INSTALL_HINT}"
            )

    @property
    def local(self) -> bool:
        return self.address in LOCAL_ADDRESSES

    def session_key(self) -> tuple[Any, ...]:
        """What a kept Ray connection must have been started with to be reused."""
        return (
            "local" if self.local else self.address,
            repr(self.runtime_env),
            repr(sorted(self.init_kwargs.items())),
            self.num_cpus,
            self.object_store_memory,
            self.include_dashboard,
            self.log_to_driver,
            self.usage_stats,
            self.ship_taskapp,
        )


_ANSI = re.compile(r"\x1b\[[0-9;]*m")

_SLOW_HINT = (
    "Ray needs about 8-15 s to start a local instance and deploy on a 2-core machine; raise "
    "health_check_timeout (e.g. 120)"
)
