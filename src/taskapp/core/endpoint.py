"""Which task app, with which key: the one way in for every verb.

``evaluate``, ``optimize``, the job client, the testing kit and the CLI all ask the same
question before their first request: *where does the task app answer, and as whom do I
call it?* :func:`open_endpoint` (and :func:`aopen_endpoint` for async code) answers it
once, for every kind of target:

* an ``http://`` / ``https://`` URL of a running task app (``host:port`` of a loopback
  name or an IP address means ``http://``): used as it runs;
* a running :class:`~taskapp.InProcessTaskApp`: used as is (not stopped afterwards);
* an :class:`~taskapp.InProcessTaskApp` that is not running: started, then stopped;
* anything :func:`taskapp.core.loading.target_kwargs` takes (a ``.py`` path, a
  ``"module:attr"`` import string, a name in ``aliases``, a
  :class:`~taskapp.TaskAppConfig`, an ASGI app, or a zero-argument factory of either):
  started with ``start=`` options, then stopped.

The key, read once, here (first found wins):

=====================  ===============================================================
target                 key
=====================  ===============================================================
URL                    ``api_key=``, else the user's ``$ENVIRONMENT_API_KEY``, else none
app started here       ``api_key=``, else the user's ``$ENVIRONMENT_API_KEY``, else a
                       freshly generated one (the app's)
InProcessTaskApp       ``api_key=``, else the key the app was built with
=====================  ===============================================================

"The user's ``$ENVIRONMENT_API_KEY``" is :func:`taskapp.core.env_keys.environment_api_key`:
a key *lent* to a running synth-ai app (:mod:`taskapp.core.env_keys`) is never taken for
the user's, so it never leaks to another app or URL.

``start=`` holds :class:`~taskapp.InProcessTaskApp` keyword arguments (``host``,
``port`` (default: any free port), ``tunnel_mode``, ``tunnel_options``, ``server``,
``server_options``, ``health_check_timeout``, ...) for a target started here; it is
refused for a URL or an ``InProcessTaskApp`` (already built). ``aliases`` maps short
names to import strings: the bundled examples come in from the caller (the CLI,
``taskapp.evaluate``), so ``core`` never imports ``taskapp.examples``.

Everything started is stopped when the ``with`` block ends, also on errors. A started
app was health-checked by its start; a URL is checked by the caller's first request, or
by :meth:`Endpoint.wait_healthy`.

>>> with open_endpoint("http://127.0.0.1:9", api_key="k-0123456789ab") as endpoint:
...     endpoint.url, endpoint.started_here
('http://127.0.0.1:9', False)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from taskapp.core.env_keys import environment_api_key
from taskapp.core.errors import ConfigurationError
from taskapp.core.secrets import register_secret

if TYPE_CHECKING:
    from taskapp.core.client import AsyncTaskAppClient, TaskAppClient
    from taskapp.core.lifecycle import InProcessTaskApp

__all__ = [
    "START_OPTIONS",
    "Endpoint",
    "aopen_endpoint",
    "endpoint_of",
    "free_app_port",
    "is_url",
    "open_endpoint",
]

#: The ``start=`` keys: InProcessTaskApp's keyword arguments other than the target and key.
START_OPTIONS = frozenset(
    {
        "host",
        "port",
        "tunnel_mode",
        "tunnel_backend",
        "tunnel_options",
        "preconfigured_url",
        "preconfigured_auth_header",
        "preconfigured_auth_token",
        "server",
        "server_options",
        "health_check_timeout",
        "auto_find_port",
        "skip_tunnel_verification",
        "force_new_tunnel",
        "on_start",
        "on_stop",
        "on_url_change",
    }
)

_HOST_PORT = re.compile(r"^(localhost|\d{1,3}(\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]):\d+(/.*)?$")


def is_url(value: Any) -> bool:
    """``http(s)://...``, or ``host:port`` of a loopback name or an IP address (http).

    >>> is_url("http://x"), is_url("127.0.0.1:8114"), is_url("app.py"), is_url(None)
    (True, True, False, False)
    """
    if not isinstance(value, str):
        return False
    text = value.strip()
    return text.lower().startswith(("http://", "https://")) or bool(_HOST_PORT.match(text))


def free_app_port() -> int:
    """A port for an app that is only ours for this run (the one free-port helper of the
    CLI and :func:`open_endpoint`; the lifecycle pre-binds it and moves to the next one
    when it was taken meanwhile)."""
    from taskapp.core.ports import free_loopback_port

    port = free_loopback_port()
    return port if 1024 <= port <= 65000 else 8114


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where a task app answers and as whom to call it: the URL, the key it accepts, the
    relay worker token, extra headers (a tunnel's), and a label for messages."""

    url: str
    api_key: str | None
    worker_token: str | None = None
    #: what the user gave ("examples/app.py", "pkg.mod:attr", a URL), for messages
    label: str = ""
    #: True when :func:`open_endpoint` started the app (and stops it at the end)
    started_here: bool = False
    #: headers every request carries (a tunnel's own, e.g. its access token)
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: the InProcessTaskApp behind the endpoint, when there is one
    task_app: InProcessTaskApp | None = dataclasses.field(default=None, repr=False)

    def __repr__(self) -> str:  # never the key or the token
        return f"Endpoint(url={self.url!r}, label={self.label!r}, started_here={self.started_here})"

    def client(self, *, timeout: float = 10.0, limit: int = 16) -> TaskAppClient:
        """A :class:`~taskapp.TaskAppClient` for this endpoint (close it, or use ``with``)."""
        from taskapp.core.client import TaskAppClient

        return TaskAppClient(
            self.url,
            self.api_key,
            worker_token=self.worker_token,
            timeout=timeout,
            headers=self.headers,
            limit=limit,
        )

    def async_client(self, *, timeout: float = 10.0, limit: int = 16) -> AsyncTaskAppClient:
        """An :class:`~taskapp.core.client.AsyncTaskAppClient` for this endpoint."""
        from taskapp.core.client import AsyncTaskAppClient

        return AsyncTaskAppClient(
            self.url,
            self.api_key,
            worker_token=self.worker_token,
            timeout=timeout,
            headers=self.headers,
            limit=limit,
        )

    def wait_healthy(self, timeout: float, **options: Any) -> float:
        """Wait until ``GET /health`` answers 200 (see :func:`taskapp.core.health.wait_healthy`;
        ``options`` pass through); return the seconds it took."""
        from taskapp.core.client import WORKER_TOKEN_HEADER
        from taskapp.core.health import wait_healthy

        headers = dict(self.headers)
        if self.worker_token:
            headers.setdefault(WORKER_TOKEN_HEADER, self.worker_token)
        return wait_healthy(
            self.url, api_key=self.api_key, headers=headers or None, timeout=timeout, **options
        )


def _url_endpoint(url: str, api_key: str | None, worker_token: str | None) -> Endpoint:
    from taskapp.core.client import normalize_url

    try:
        base = normalize_url(url)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    key = api_key if api_key is not None else environment_api_key()
    register_secret(key)
    register_secret(worker_token)
    return Endpoint(url=base, api_key=key, worker_token=worker_token or None, label=url.strip())


def _app_endpoint(
    task_app: InProcessTaskApp,
    api_key: str | None,
    worker_token: str | None,
    *,
    label: str,
    started_here: bool,
) -> Endpoint:
    if task_app.url is None or not task_app.running:
        raise ConfigurationError(
            "the InProcessTaskApp is not running: start it first (or use it in a with block)"
        )
    headers = dict(task_app.tunnel.headers) if task_app.tunnel else {}
    token = worker_token if worker_token is not None else task_app.task_app_worker_token
    register_secret(api_key)
    register_secret(token)
    return Endpoint(
        url=task_app.url or task_app.local_url,
        api_key=api_key if api_key is not None else task_app.api_key,
        worker_token=token or None,
        label=label,
        started_here=started_here,
        headers=headers,
        task_app=task_app,
    )


def endpoint_of(
    target: Any, *, api_key: str | None = None, worker_token: str | None = None
) -> Endpoint:
    """The :class:`Endpoint` of a URL (any string is taken for one) or a *running*
    InProcessTaskApp, starting nothing: for callers that only pass an address on (the job
    client) or check what runs (the testing kit). Anything else is a
    :class:`ConfigurationError`."""
    if isinstance(target, str):
        return _url_endpoint(target, api_key, worker_token)
    from taskapp.core.lifecycle import InProcessTaskApp

    if isinstance(target, InProcessTaskApp):
        return _app_endpoint(
            target, api_key, worker_token, label=_describe_running(target), started_here=False
        )
    raise ConfigurationError(
        f"expected a task app URL or a running InProcessTaskApp, got {type(target).__name__}"
    )


def _describe(target: Any, task_app: InProcessTaskApp) -> str:
    """'examples/app.py', 'pkg.mod:attr' or 'config build_config': what the user gave."""
    if isinstance(target, str | os.PathLike):
        return os.fspath(target)
    app_target = getattr(task_app, "_target", None)
    kind, value = getattr(app_target, "kind", None), getattr(app_target, "value", None)
    if kind in ("path", "import_string") and value is not None:
        return str(value)
    app_id = getattr(value, "app_id", None)
    if kind is not None and isinstance(app_id, str) and app_id:
        return f"{kind} {app_id!r}"  # a TaskAppConfig: its app_id, not its type
    describe = getattr(app_target, "describe", None)
    return str(describe()) if callable(describe) else f"task app at {task_app.url}"


def _describe_running(task_app: InProcessTaskApp) -> str:
    """A running app as a summary title: what it hosts and where, never its repr."""
    return f"{_describe(None, task_app)} ({task_app.url})"


def _plan(
    target: Any,
    api_key: str | None,
    worker_token: str | None,
    aliases: Mapping[str, str],
    start: Mapping[str, Any] | None,
) -> tuple[Endpoint | None, InProcessTaskApp | None, str | None]:
    """(endpoint to use as is, or the app to start, and the explicit key for its requests)."""
    from taskapp.core.lifecycle import InProcessTaskApp

    options = dict(start or {})
    unknown = sorted(set(options) - START_OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"unknown start option(s) {', '.join(unknown)}; expected some of "
            f"{', '.join(sorted(START_OPTIONS))}"
        )
    if options and (is_url(target) or isinstance(target, InProcessTaskApp)):
        what = "a URL is used as it runs" if is_url(target) else "the InProcessTaskApp is built"
        raise ConfigurationError(
            f"start options ({', '.join(sorted(options))}) start a target; {what} (drop "
            "them, or pass the target itself)"
        )
    if is_url(target) or (isinstance(target, InProcessTaskApp) and target.running):
        return endpoint_of(target, api_key=api_key, worker_token=worker_token), None, None
    if isinstance(target, InProcessTaskApp):
        return None, target, api_key
    from taskapp.core.loading import target_kwargs

    if options.get("port") is None:
        options["port"] = free_app_port()
    kwargs = target_kwargs(target, aliases=aliases)
    # The key the app is started with: api_key=, else the user's $ENVIRONMENT_API_KEY
    # (never a lent key), else a fresh one -- InProcessTaskApp's own precedence.
    return None, InProcessTaskApp(**kwargs, api_key=api_key, **options), None


@contextlib.contextmanager
def open_endpoint(
    target: Any,
    *,
    api_key: str | None = None,
    worker_token: str | None = None,
    aliases: Mapping[str, str] | None = None,
    start: Mapping[str, Any] | None = None,
) -> Iterator[Endpoint]:
    """Yield the :class:`Endpoint` of ``target`` (see the module docstring), starting it
    first when it is not running and stopping what was started when the block ends.

    Raises :class:`ConfigurationError` for a target it cannot run or a bad option, and
    whatever :meth:`InProcessTaskApp.start` raises when the app does not come up.
    """
    endpoint, task_app, key = _plan(target, api_key, worker_token, aliases or {}, start)
    if endpoint is not None:
        yield endpoint
        return
    assert task_app is not None
    task_app.start()
    try:
        yield _app_endpoint(
            task_app, key, worker_token, label=_describe(target, task_app), started_here=True
        )
    finally:
        task_app.stop()


@contextlib.asynccontextmanager
async def aopen_endpoint(
    target: Any,
    *,
    api_key: str | None = None,
    worker_token: str | None = None,
    aliases: Mapping[str, str] | None = None,
    start: Mapping[str, Any] | None = None,
) -> AsyncIterator[Endpoint]:
    """:func:`open_endpoint` for async code: the app starts and stops off the event loop
    (``async with InProcessTaskApp``), and cancelling the task while it starts stops it."""
    endpoint, task_app, key = _plan(target, api_key, worker_token, aliases or {}, start)
    if endpoint is not None:
        yield endpoint
        return
    assert task_app is not None
    async with task_app:
        yield _app_endpoint(
            task_app, key, worker_token, label=_describe(target, task_app), started_here=True
        )
