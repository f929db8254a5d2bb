"""Tunnel backends ``cloudflare-quick`` and ``cloudflare-named``: Cloudflare Tunnel through
the ``cloudflared`` program (the seed's ``tunnel_mode="quick"`` and ``"named"``).

``cloudflared`` is looked up in this order: the ``cloudflared_path`` option, the
``TASKAPP_CLOUDFLARED`` environment variable, ``PATH``. It is never downloaded; when it
is missing, :class:`~taskapp.core.errors.TunnelBinaryMissingError` says how to install it.

Quick tunnel (``tunnel_mode="quick"``), no account needed::

    cloudflared tunnel --url http://127.0.0.1:PORT --metrics 127.0.0.1:M --no-autoupdate
                       --config EMPTY_FILE

The URL comes from the boxed log line ``|  https://<words>.trycloudflare.com  |`` only
(never from an error line naming ``api.trycloudflare.com``) and is confirmed by the
metrics server's ``GET /quicktunnel``; the tunnel is ready when a connection registered
(log line, then ``GET /ready`` answers 200). Verification of the public URL (unless
``skip_tunnel_verification``) polls ``/health`` with backoff up to ``verify_timeout``.

Named tunnel (``tunnel_mode="named"``), a tunnel created in the Cloudflare dashboard::

    cloudflared tunnel --metrics 127.0.0.1:M --no-autoupdate --config EMPTY_FILE
                       run --url http://127.0.0.1:PORT            (token in TUNNEL_TOKEN)

The token (option ``token``, option ``token_file`` or env ``TUNNEL_TOKEN``) travels in the
child's environment (``token_transport="env"``, default) or a 0600 file passed with
``--token-file`` (``token_transport="file"``, cloudflared 2025.4 or later), never in argv.
The public ``hostname`` is the user's: a named tunnel cannot reveal it.

Both are supervised: when cloudflared dies, the core's TunnelSupervisor closes and reopens
the tunnel with backoff; a quick tunnel then has a new URL (``url_changed`` fires).

Both are :class:`~taskapp.core.process_tunnel.ProcessTunnel` subclasses (spawn, typed
start errors, close, pid). This module stays over ~800 lines on purpose: what is left is
cloudflared's own story (its log patterns, the metrics server's ``/ready`` and
``/quicktunnel``, classifying its failures, the named tunnel's token handling and
connector sharing), which reads best in one place.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from taskapp.core.backends import Tunnel, TunnelContext
from taskapp.core.errors import (
    ConfigurationError,
    ProcessError,
    TunnelAuthError,
    TunnelBinaryMissingError,
    TunnelError,
    TunnelProtocolError,
    TunnelRateLimitedError,
    TunnelTimeoutError,
    TunnelVerificationError,
)
from taskapp.core.hookspecs import RegisterTunnel, hookimpl
from taskapp.core.ports import free_loopback_port
from taskapp.core.process_tunnel import ProcessTunnel
from taskapp.core.secrets import fingerprint, read_secret_file, redact, register_secret

if TYPE_CHECKING:
    from taskapp.core.processes import ManagedProcess

__all__ = [
    "INSTALL_HELP",
    "CloudflaredExitedError",
    "CloudflaredNetworkError",
    "NamedOptions",
    "NamedTunnel",
    "QuickOptions",
    "QuickTunnel",
    "find_cloudflared",
]

QUICK = "cloudflare-quick"
NAMED = "cloudflare-named"

INSTALL_HELP = (
    "Install cloudflared (taskapp never downloads it):\n"
    "  Linux:   the .deb/.rpm package or the static binary from "
    "https://github.com/cloudflare/cloudflared/releases (compare its SHA-256 with the one "
    "listed there), or Cloudflare's apt/yum repository: `apt install cloudflared` / "
    "`dnf install cloudflared` once the repository is added "
    "(https://developers.cloudflare.com/cloudflare-one/connections/connect-networks/downloads/)\n"
    "  macOS:   brew install cloudflared\n"
    "  Windows: winget install --id Cloudflare.cloudflared\n"
    "Then put it on PATH, or set TASKAPP_CLOUDFLARED=/full/path/to/cloudflared, or pass "
    "tunnel_options={'cloudflared_path': '/full/path/to/cloudflared'}."
)

_ADVICE_QUICK = (
    "retry in a few minutes, use a named tunnel (tunnel_mode='named' with a token and your "
    "hostname), or an ssh tunnel (tunnel_backend='ssh')"
)


class CloudflaredNetworkError(TunnelError):
    """cloudflared could not reach Cloudflare (DNS lookup failed, no route, proxy/firewall)."""


class CloudflaredExitedError(TunnelError):
    """cloudflared exited (crashed) before the tunnel was ready."""


# -- finding the program ---------------------------------------------------------------


def find_cloudflared(option: str | os.PathLike[str] | None = None) -> str:
    """The absolute path of the cloudflared to run.

    ``option`` (the ``cloudflared_path`` option) beats ``TASKAPP_CLOUDFLARED``, which beats
    ``PATH``. Raises :class:`TunnelBinaryMissingError` with install instructions.
    """
    for value, source in (
        (option, "the cloudflared_path option"),
        (os.environ.get("TASKAPP_CLOUDFLARED") or None, "TASKAPP_CLOUDFLARED"),
    ):
        if value is None:
            continue
        raw = os.fspath(value)
        expanded = os.path.expanduser(raw)
        found = shutil.which(expanded) if os.sep not in expanded else None
        if found is None and os.path.isfile(expanded) and os.access(expanded, os.X_OK):
            found = os.path.abspath(expanded)
        if found is None:
            raise TunnelBinaryMissingError(
                f"{source} points to {raw!r}, which is not an executable file.\n{INSTALL_HELP}"
            )
        return found
    found = shutil.which("cloudflared")
    if found is None:
        raise TunnelBinaryMissingError(
            f"cloudflared was not found on PATH ({os.environ.get('PATH', '')}).\n{INSTALL_HELP}"
        )
    return os.path.abspath(found)


# -- options ---------------------------------------------------------------------------


def _check_positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


def _parse_target(value: str) -> tuple[str, int, str]:
    """``"127.0.0.1:8443"`` or ``"http://127.0.0.1:8443"`` -> (host, port, scheme)."""
    text = value if "://" in value else f"http://{value}"
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"resolve target must be 'HOST:PORT' or 'http://HOST:PORT', got {value!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname, port, parts.scheme


@dataclasses.dataclass(frozen=True)
class _CommonOptions:
    #: Path of the cloudflared program (beats TASKAPP_CLOUDFLARED, which beats PATH).
    cloudflared_path: str | None = None
    #: Seconds for the URL and the first registered connection (default: the task app's
    #: health_check_timeout).
    start_timeout: float | None = None
    #: Seconds to poll the public URL's /health (default: health_check_timeout).
    verify_timeout: float | None = None
    #: Where to connect for a public hostname during verification, e.g.
    #: ``{"*.trycloudflare.com": "127.0.0.1:8443"}``: plain HTTP to that address with the
    #: tunnel's Host header. For tests and for pinning an edge; normally empty (system DNS).
    resolve: dict[str, str] = dataclasses.field(default_factory=dict)
    #: Seconds between SIGTERM and SIGKILL when closing.
    close_grace: float = 1.0
    #: Extra cloudflared arguments, inserted after ``tunnel`` (e.g. ``["--protocol",
    #: "http2"]``). Never put a token here: argv is readable by every local user.
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_positive("start_timeout", self.start_timeout)
        _check_positive("verify_timeout", self.verify_timeout)
        if not 0 <= self.close_grace <= 10:
            raise ValueError(f"close_grace must be within [0, 10] seconds, got {self.close_grace}")
        for pattern, target in self.resolve.items():
            if not isinstance(pattern, str) or not isinstance(target, str) or not pattern:
                raise ValueError("resolve maps hostnames (or '*.suffix') to 'HOST:PORT' strings")
            _parse_target(target)
        for arg in self.extra_args:
            if not isinstance(arg, str):
                raise ValueError(f"extra_args must be strings, got {arg!r}")

    def resolve_target(self, hostname: str) -> tuple[str, int, str] | None:
        host = hostname.lower()
        for pattern, target in self.resolve.items():
            if fnmatch.fnmatchcase(host, pattern.lower()):
                return _parse_target(target)
        return None


@dataclasses.dataclass(frozen=True)
class QuickOptions(_CommonOptions):
    """Options of ``cloudflare-quick`` (all optional)."""


@dataclasses.dataclass(frozen=True)
class NamedOptions(_CommonOptions):
    """Options of ``cloudflare-named``: ``hostname`` and a token source are required."""

    #: The public hostname routed to this tunnel in the Cloudflare dashboard
    #: (``app.example.com`` or ``https://app.example.com``).
    hostname: str | None = None
    #: The tunnel token (``eyJ...``). Or ``token_file``, or env ``TUNNEL_TOKEN``.
    token: str | None = dataclasses.field(default=None, repr=False)
    #: A file holding the token.
    token_file: Path | None = None
    #: How cloudflared receives the token: ``env`` (TUNNEL_TOKEN in its environment; every
    #: version) or ``file`` (``--token-file`` with a 0600 file; cloudflared 2025.4+).
    token_transport: Literal["env", "file"] = "env"  # noqa: S105 - a mode, not a secret

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.hostname:
            raise ValueError(
                "tunnel 'cloudflare-named' needs the public hostname routed to your tunnel: "
                "tunnel_options={'hostname': 'app.example.com', ...}"
            )
        _normalize_hostname(self.hostname)
        if self.token and self.token_file:
            raise ValueError("pass either token or token_file, not both")
        if not (self.token or self.token_file or os.environ.get("TUNNEL_TOKEN")):
            raise ValueError(
                "tunnel 'cloudflare-named' needs a tunnel token: tunnel_options={'token': ...} "
                "or {'token_file': PATH}, or the TUNNEL_TOKEN environment variable (copy it "
                "from the dashboard: Networks > Tunnels > your tunnel > install command)"
            )
        register_secret(self.token)


def _normalize_hostname(value: str) -> str:
    text = value.strip()
    parts = urllib.parse.urlsplit(text if "://" in text else f"https://{text}")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"hostname must be a bare hostname like 'app.example.com', got {value!r}")
    return parts.hostname.lower()


# -- log patterns ----------------------------------------------------------------------

_URL_BOX = re.compile(r"\|\s+(https://((?:[a-z0-9-]+\.)+trycloudflare\.com))/?\s+\|")
_REGISTERED = re.compile(r"Registered tunnel connection connIndex=(\d+)")
_METRICS = re.compile(r"Starting metrics server on ([^\s/]+)/metrics")
_RATE_LIMIT = re.compile(
    r"429 Too Many Requests|error code: 1015|failed to unmarshal quick Tunnel|Too Many Requests",
    re.IGNORECASE,
)
_NETWORK = re.compile(
    r"no such host|dial tcp|i/o timeout|network is unreachable|connection refused|"
    r"failed to request quick Tunnel|server misbehaving|TLS handshake timeout|"
    r"failed to dial to edge|no recent network activity",
    re.IGNORECASE,
)
_AUTH = re.compile(
    r"Provided Tunnel token is not valid|Unauthorized|Invalid tunnel secret|"
    r"tunnel not found|Failed to get tunnel",
    re.IGNORECASE,
)
_UNKNOWN_FLAG = re.compile(r"flag provided but not defined: -+([\w-]+)")
_PORT_BUSY = re.compile(r"bind: address already in use", re.IGNORECASE)
_SLICE = 0.05  # how often a wait re-checks that the child lives and nobody asked to stop


class _Watcher:
    """Collects what cloudflared reports, fed line by line from the process manager's reader
    thread (``on_line``), so no line is missed however much it prints."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.url: str | None = None
        self.metrics: str | None = None
        self.registered = 0
        self.rate_limited: str | None = None
        self.auth: str | None = None
        self.network: str | None = None
        self.unknown_flag: str | None = None
        self.port_busy = False

    def on_line(self, stream: str, line: str) -> None:
        with self.cond:  # both reader threads (stdout, stderr) report here
            if self._scan(line):
                self.cond.notify_all()

    def _scan(self, line: str) -> bool:
        """Record what ``line`` says; True when a waited-for fact changed."""
        changed = False
        if self.url is None and "trycloudflare.com" in line:
            match = _URL_BOX.search(line)
            if match is not None and not match.group(2).startswith("api."):
                self.url = match.group(1)
                changed = True
        if "Registered tunnel connection" in line and _REGISTERED.search(line):
            self.registered += 1
            changed = True
        elif "metrics server" in line:
            match = _METRICS.search(line)
            if match is not None:
                self.metrics = match.group(1)
                changed = True
        if self.rate_limited is None and _RATE_LIMIT.search(line):
            self.rate_limited = line
        if self.auth is None and _AUTH.search(line):
            self.auth = line
        if self.network is None and _NETWORK.search(line) and "origin service" not in line:
            self.network = line
        if self.unknown_flag is None:
            match = _UNKNOWN_FLAG.search(line)
            if match is not None:
                self.unknown_flag = match.group(1)
        if _PORT_BUSY.search(line):
            self.port_busy = True
        return changed


_WORKDIR_PREFIX = "taskapp-cloudflared-"


def _sweep_stale_workdirs() -> None:
    """Remove work directories of taskapp processes that died without cleaning up
    (SIGKILL): ``taskapp-cloudflared-<pid>-*`` whose pid is gone, owned by this user."""
    root = tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(root) if n.startswith(_WORKDIR_PREFIX)]
    except OSError:
        return
    for name in names:
        pid_text = name[len(_WORKDIR_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        path = os.path.join(root, name)
        try:
            if os.stat(path).st_uid != os.getuid():
                continue
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


class _MetricsPortBusyError(Exception):
    """The chosen metrics port was taken between choosing and cloudflared binding it."""


# Named connectors this process runs, by token fingerprint (see force_new in the docs).
_named_lock = threading.Lock()
_named_connectors: dict[str, NamedTunnel] = {}


# -- the shared machinery --------------------------------------------------------------


class _CloudflaredTunnel(ProcessTunnel):
    """What quick and named tunnels share: spawn, wait, classify failures, verify, close."""

    supervised: ClassVar[bool] = True
    program = "cloudflared"
    options: _CommonOptions

    def __init__(self, options: _CommonOptions) -> None:
        super().__init__(options)
        self._watcher: _Watcher | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._abort = threading.Event()
        self._supervisor_stop: threading.Event | None = None
        #: Set when another task app took this connector over (force_new_tunnel): its
        #: death is then no drop to recover from.
        self._superseded = False
        self.metrics_url: str | None = None

    @classmethod
    def prepare(cls, options: Any) -> None:
        """cloudflared must exist before the server starts (it is never downloaded)."""
        try:
            find_cloudflared(options.cloudflared_path)
        except TunnelBinaryMissingError as exc:
            raise TunnelBinaryMissingError(exc.message, backend=cls.name) from None

    # subclasses --------------------------------------------------------------------

    def _argv(self, program: str, ctx: TunnelContext, config: Path, metrics: str) -> list[str]:
        raise NotImplementedError

    def _child_env(self, workdir: Path) -> tuple[dict[str, str], dict[str, str], list[str]]:
        """(environment, extra_env, secrets) for the child."""
        env = dict(os.environ)
        env.pop("TUNNEL_TOKEN", None)  # a quick tunnel must not pick up a stray token
        return env, {}, []

    def missing_program(self, argv: Sequence[str], error: ProcessError) -> str:
        return f"could not run {argv[0]}: {error.message}\n{INSTALL_HELP}"

    def broken_program(self, argv: Sequence[str], error: ProcessError) -> str:
        return (
            f"could not start {argv[0]}: {error.message}. Check that it is an executable "
            "cloudflared (`cloudflared --version`), or point cloudflared_path / "
            "TASKAPP_CLOUDFLARED at one."
        )

    # lifecycle ---------------------------------------------------------------------

    def _start(self, ctx: TunnelContext) -> tuple[ManagedProcess, _Watcher, float]:
        """Spawn cloudflared and wait for its first registered connection."""
        program = find_cloudflared(self.options.cloudflared_path)
        timeout = self.options.start_timeout or ctx.start_timeout
        deadline = time.monotonic() + timeout
        self._abort.clear()
        _sweep_stale_workdirs()
        workdir = tempfile.TemporaryDirectory(prefix=f"{_WORKDIR_PREFIX}{os.getpid()}-")
        with self._lock:
            self._workdir = workdir
        config = Path(workdir.name) / "config.yml"
        config.write_text("")  # a user's ~/.cloudflared/config.yml must not apply
        env, extra_env, secrets = self._child_env(Path(workdir.name))
        for attempt in range(3):
            metrics = f"127.0.0.1:{free_loopback_port()}"
            watcher = _Watcher()
            argv = self._argv(program, ctx, config, metrics)
            proc = self.spawn_child(
                argv,
                env=env,
                extra_env=extra_env,
                secrets=secrets,
                name="cloudflared",
                on_line=watcher.on_line,
            )
            with self._lock:
                self._watcher = watcher
            ctx.logger.debug("started cloudflared (pid %d): %s", proc.pid, " ".join(proc.argv))
            try:
                self._wait_ready(proc, watcher, ctx, deadline, timeout)
            except _MetricsPortBusyError:
                proc.close(grace=0)
                if attempt == 2:
                    raise self._failure(
                        TunnelError,
                        "cloudflared could not bind a free loopback port for its metrics "
                        "server three times in a row (another program keeps taking the ports "
                        "taskapp picks); retry, and check what binds loopback ports here",
                        proc,
                    ) from None
                continue
            metrics = watcher.metrics or metrics
            self.metrics_url = f"http://{metrics}"
            return proc, watcher, deadline
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait_ready(
        self,
        proc: ManagedProcess,
        watcher: _Watcher,
        ctx: TunnelContext,
        deadline: float,
        timeout: float,
    ) -> None:
        """Return once a connection registered and ``/ready`` says so; raise typed errors."""
        self._wait_for(lambda: watcher.registered > 0, proc, watcher, deadline, timeout)
        if watcher.metrics is None:
            # Registered before the metrics line (never seen, but cheap to tolerate).
            self._wait_for(lambda: watcher.metrics is not None, proc, watcher, deadline, timeout)
        assert watcher.metrics is not None
        self._check_ready(f"http://{watcher.metrics}", proc, deadline)

    def _needs_url(self) -> bool:
        return False

    def _wait_for(
        self,
        condition: Callable[[], bool],
        proc: ManagedProcess,
        watcher: _Watcher,
        deadline: float,
        timeout: float,
    ) -> None:
        # The watcher's lock is never held while checking the child: that may wait for
        # the reader thread, which takes the lock to report a line.
        while True:
            with watcher.cond:
                if condition():
                    return
            self._check_running(proc, watcher)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timeout(proc, watcher, timeout)
            with watcher.cond:
                if condition():
                    return
                watcher.cond.wait(min(remaining, _SLICE))

    def _check_running(self, proc: ManagedProcess, watcher: _Watcher) -> None:
        if self._abort.is_set() or (
            self._supervisor_stop is not None and self._supervisor_stop.is_set()
        ):
            raise TunnelError(
                "cloudflared start abandoned: the tunnel is being closed", backend=self.name
            )
        if proc.alive:
            return
        proc.output_drained(timeout=1.0)
        if watcher.port_busy:
            raise _MetricsPortBusyError
        raise self._exit_error(proc, watcher)

    def _check_ready(self, metrics_url: str, proc: ManagedProcess, deadline: float) -> None:
        from taskapp.core.health import probe, wait_healthy

        # The "Registered" line and /ready flip together; one probe usually settles it.
        try:
            status, _ = probe(metrics_url + "/ready", {}, timeout=2.0)
        except Exception:  # refused, reset, bad status line: fall back to polling
            status = 0
        if status == 200:
            return
        watcher = self._watcher

        def alive() -> None:
            if watcher is not None:
                self._check_running(proc, watcher)

        wait_healthy(
            metrics_url,
            api_key=None,
            path="/ready",
            timeout=max(0.05, deadline - time.monotonic()),
            alive=alive,
            what=f"cloudflared's metrics server ({metrics_url})",
            error=lambda message: TunnelTimeoutError(
                f"{message}. cloudflared logged a registered connection but /ready never "
                "answered 200; retry, and upgrade cloudflared if it keeps happening",
                backend=self.name,
                log_tail=proc.tail(),
            ),
        )

    # errors ------------------------------------------------------------------------

    def _failure(
        self, cls: type[TunnelError], message: str, proc: ManagedProcess | None
    ) -> TunnelError:
        tail = redact(proc.tail(30)) if proc is not None else None
        return cls(message, backend=self.name, log_tail=tail)

    def _classified(self, proc: ManagedProcess, watcher: _Watcher, what: str) -> TunnelError | None:
        """A typed error when the log says why, else None."""
        if watcher.rate_limited is not None:
            return self._failure(
                TunnelRateLimitedError,
                f"{what}: Cloudflare refused a new quick tunnel (rate limited: HTTP 429 / "
                f"error 1015, logged as 'failed to unmarshal quick Tunnel'). Quick tunnels are "
                f"limited per IP address; {_ADVICE_QUICK}.",
                proc,
            )
        if watcher.auth is not None:
            return self._failure(
                TunnelAuthError,
                f"{what}: Cloudflare rejected the tunnel token ({watcher.auth.strip()[-120:]}). "
                "Copy the token again from the dashboard (Networks > Tunnels > your tunnel); "
                "a rotated token invalidates the old one.",
                proc,
            )
        if watcher.unknown_flag is not None:
            hint = (
                " Upgrade cloudflared, or use token_transport='env'."
                if watcher.unknown_flag == "token-file"
                else " Upgrade cloudflared."
            )
            return self._failure(
                TunnelProtocolError,
                f"{what}: this cloudflared does not know the flag --{watcher.unknown_flag}.{hint}",
                proc,
            )
        if watcher.network is not None and watcher.registered == 0:
            return self._failure(
                CloudflaredNetworkError,
                f"{what}: cloudflared could not reach Cloudflare ({watcher.network.strip()}). "
                "Check DNS and outbound network access (HTTPS to api.trycloudflare.com for quick "
                "tunnels, port 7844 UDP/TCP to the edge), proxy and firewall settings; or "
                "use an ssh tunnel (tunnel_backend='ssh').",
                proc,
            )
        return None

    def _exit_error(self, proc: ManagedProcess, watcher: _Watcher) -> TunnelError:
        from taskapp.core.processes import describe_returncode

        status = describe_returncode(proc.returncode)
        stage = (
            "after printing its URL " + watcher.url
            if watcher.url is not None
            else "before printing a URL"
            if self._needs_url()
            else "before registering a connection"
        )
        what = f"cloudflared (pid {proc.pid}) exited ({status}) {stage}"
        classified = self._classified(proc, watcher, what)
        if classified is not None:
            return classified
        fallback = (
            "use a named tunnel (tunnel_mode='named') or an ssh tunnel (tunnel_backend='ssh')"
            if self._needs_url()
            else "check the tunnel's status in the Cloudflare dashboard"
        )
        printed = proc.tail(30).strip()
        said = "Its last output is below" if printed else "It printed nothing"
        return self._failure(
            CloudflaredExitedError,
            f"{what}. {said}. Retry; if it keeps failing, upgrade "
            f"cloudflared (`cloudflared --version`) or {fallback}.",
            proc,
        )

    def _timeout(self, proc: ManagedProcess, watcher: _Watcher, timeout: float) -> TunnelError:
        if self._needs_url() and watcher.url is None:
            waited = "no quick-tunnel URL (the '|  https://....trycloudflare.com  |' box)"
        else:
            waited = "no registered connection ('Registered tunnel connection', /ready 200)"
        what = f"cloudflared printed {waited} within {timeout:g}s"
        if watcher.rate_limited is not None or watcher.auth is not None:
            classified = self._classified(proc, watcher, what)
            if classified is not None:
                return classified
        network = (
            f" It reported network trouble: {watcher.network.strip()[-200:]}."
            if watcher.network is not None
            else ""
        )
        return self._failure(
            TunnelTimeoutError,
            f"{what}.{network} Cloudflare may be slow or unreachable from here; raise "
            "tunnel_options={'start_timeout': ...} or health_check_timeout, check outbound "
            "access to port 7844, or "
            + (_ADVICE_QUICK if self._needs_url() else "check the tunnel in the dashboard")
            + ".",
            proc,
        )

    # supervision, verification, close ---------------------------------------------

    def wait_dropped(self, stop: threading.Event) -> str | None:
        self._supervisor_stop = stop
        with self._lock:
            proc = self._proc
        if proc is None:
            stop.wait()
            return None
        code = proc.wait_exit(stop)
        if code is None or self._superseded:
            return None
        from taskapp.core.processes import describe_returncode

        proc.output_drained(timeout=0.5)
        last = proc.tail(1).strip()
        return f"cloudflared (pid {proc.pid}) exited: {describe_returncode(code)}" + (
            f"; last line: {last}" if last else ""
        )

    def verify(self, tunnel: Tunnel, ctx: TunnelContext, timeout: float) -> None:
        """Poll ``/health`` through the public URL with backoff (taskapp.core.health).

        A new trycloudflare.com hostname appears in DNS seconds after the URL is printed,
        so early failures are expected and retried until ``verify_timeout`` (default: the
        lifecycle's ``timeout``). With the ``resolve`` option the request goes to the given
        address with the tunnel's Host header instead of through DNS.
        """
        from taskapp.core.health import wait_healthy

        limit = self.options.verify_timeout or timeout
        parts = urllib.parse.urlsplit(tunnel.url)
        hostname = parts.hostname or ""
        target = self.options.resolve_target(hostname)
        headers = dict(tunnel.headers)
        if target is not None:
            host, port, scheme = target
            base = f"{scheme}://{host}:{port}"
            headers["Host"] = parts.netloc
            route = f"{base} with 'Host: {parts.netloc}' (from the resolve option)"
        else:
            base = tunnel.url
            route = "the system resolver"
        with self._lock:
            proc, watcher = self._proc, self._watcher

        def alive() -> None:
            if proc is not None and watcher is not None:
                self._check_running(proc, watcher)  # died, or the tunnel is being closed

        def error(message: str) -> Exception:
            return TunnelVerificationError(
                f"the tunnel URL {tunnel.url} did not serve /health: tried GET "
                f"{tunnel.url}/health through {route}, with the API key, polling with "
                f"backoff for {limit:g}s; {message}. " + self._verify_advice(),
                backend=self.name,
                log_tail=redact(proc.tail(15)) if proc is not None else None,
            )

        wait_healthy(
            base,
            api_key=ctx.api_key,
            headers=headers,
            timeout=limit,
            alive=alive,
            what=f"tunnel {self.name!r}",
            error=error,
        )

    def _verify_advice(self) -> str:
        return (
            "A new hostname takes a few seconds to appear in DNS and some resolvers cache the "
            "miss for longer: raise tunnel_options={'verify_timeout': ...}, or pass "
            "skip_tunnel_verification=True and let the caller retry."
        )

    def close(self) -> None:
        """Stop cloudflared (SIGTERM its group, SIGKILL after close_grace) and remove its files."""
        self._abort.set()
        super().close()

    def close_grace(self) -> float:
        return self.options.close_grace

    def release(self) -> None:
        with self._lock:
            workdir, self._workdir = self._workdir, None
        if workdir is not None:
            workdir.cleanup()


def _fetch_json(url: str, timeout: float = 2.0) -> Any:
    from taskapp.core.health import probe

    status, body = probe(url, {}, timeout=timeout)
    if status != 200:
        raise TunnelProtocolError(f"GET {url} answered HTTP {status}", backend=QUICK)
    return json.loads(body)


# -- quick -------------------------------------------------------------------------------


class QuickTunnel(_CloudflaredTunnel):
    """``cloudflare-quick``: a free ``https://<words>.trycloudflare.com`` URL, no account.

    The URL changes whenever cloudflared restarts (``Tunnel.stable`` is False); every
    open is a brand-new quick tunnel, so ``force_new_tunnel`` changes nothing here.
    """

    name = QUICK
    Options = QuickOptions

    def _needs_url(self) -> bool:
        return True

    def _argv(self, program: str, ctx: TunnelContext, config: Path, metrics: str) -> list[str]:
        return [
            program,
            "tunnel",
            *self.options.extra_args,
            "--url",
            ctx.local_url,
            "--metrics",
            metrics,
            "--no-autoupdate",
            "--config",
            str(config),
        ]

    def _wait_ready(
        self,
        proc: ManagedProcess,
        watcher: _Watcher,
        ctx: TunnelContext,
        deadline: float,
        timeout: float,
    ) -> None:
        self._wait_for(lambda: watcher.url is not None, proc, watcher, deadline, timeout)
        super()._wait_ready(proc, watcher, ctx, deadline, timeout)

    def open(self, ctx: TunnelContext) -> Tunnel:
        return self.open_or_cleanup(lambda: self._open(ctx))

    def _open(self, ctx: TunnelContext) -> Tunnel:
        proc, watcher, _ = self._start(ctx)
        assert watcher.url is not None
        assert self.metrics_url is not None
        url = watcher.url
        try:
            answer = _fetch_json(self.metrics_url + "/quicktunnel")
        except (OSError, ValueError, TunnelError) as exc:
            raise self._failure(
                TunnelProtocolError,
                f"cloudflared printed {url} but its metrics server did not confirm it "
                f"(GET {self.metrics_url}/quicktunnel: {exc}). Retry; upgrade cloudflared if "
                f"it keeps happening, or {_ADVICE_QUICK}",
                proc,
            ) from exc
        confirmed = answer.get("hostname") if isinstance(answer, dict) else None
        if not isinstance(confirmed, str) or confirmed.lower() != url[len("https://") :]:
            raise self._failure(
                TunnelProtocolError,
                f"cloudflared printed {url} but /quicktunnel reports {confirmed!r}; refusing "
                "to hand out an unconfirmed URL. Retry; upgrade cloudflared if it keeps "
                f"happening, or {_ADVICE_QUICK}",
                proc,
            )
        ctx.logger.info("cloudflared quick tunnel %s (pid %d) ready", url, proc.pid)
        return Tunnel(url=url, stable=False, pids=(proc.pid,))


# -- named -------------------------------------------------------------------------------


class NamedTunnel(_CloudflaredTunnel):
    """``cloudflare-named``: your own hostname through a tunnel made in the dashboard.

    ``force_new_tunnel=True`` (``ctx.force_new``) restarts the connector: when this process
    already runs a cloudflared for the same token (another task app still open), that
    connector is stopped first and a fresh one started, so requests to the hostname reach
    this task app only. Without it, a second connector for the same token is refused
    (Cloudflare would split traffic between both apps). A new hostname cannot be minted:
    that needs Cloudflare's API and an account credential, which taskapp does not use.
    """

    name = NAMED
    Options = NamedOptions
    options: NamedOptions

    def __init__(self, options: NamedOptions) -> None:
        super().__init__(options)
        self._token_key: str | None = None
        self._token_path: Path | None = None

    def _token(self) -> str:
        if self.options.token:
            return self.options.token.strip()
        if self.options.token_file is not None:
            path = Path(self.options.token_file).expanduser()
            token = read_secret_file(path, what="the tunnel token file").strip()
            if not token:
                raise ConfigurationError(f"the tunnel token file {str(path)!r} is empty")
            return token
        token = os.environ.get("TUNNEL_TOKEN", "").strip()
        if not token:
            raise ConfigurationError(
                "tunnel 'cloudflare-named' needs a tunnel token (token, token_file or TUNNEL_TOKEN)"
            )
        return token

    def _child_env(self, workdir: Path) -> tuple[dict[str, str], dict[str, str], list[str]]:
        token = self._token()
        register_secret(token)
        env = dict(os.environ)
        env.pop("TUNNEL_TOKEN", None)
        env.pop("TUNNEL_TOKEN_FILE", None)
        if self.options.token_transport == "env":  # noqa: S105
            return env, {"TUNNEL_TOKEN": token}, [token]
        token_path = workdir / "token"
        fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(token)
        self._token_path = token_path
        return env, {}, [token]

    def _argv(self, program: str, ctx: TunnelContext, config: Path, metrics: str) -> list[str]:
        argv = [
            program,
            "tunnel",
            *self.options.extra_args,
            "--metrics",
            metrics,
            "--no-autoupdate",
            "--config",
            str(config),
            "run",
            "--url",
            ctx.local_url,
        ]
        if self.options.token_transport == "file":  # noqa: S105
            argv += ["--token-file", str(self._token_path)]
        return argv

    def open(self, ctx: TunnelContext) -> Tunnel:
        return self.open_or_cleanup(lambda: self._open(ctx))

    def _open(self, ctx: TunnelContext) -> Tunnel:
        assert self.options.hostname is not None
        hostname = _normalize_hostname(self.options.hostname)
        key = fingerprint(self._token())
        with _named_lock:
            other = _named_connectors.get(key)
            if other is not None and other is not self and not ctx.force_new:
                raise TunnelError(
                    f"this process already runs a cloudflared connector for the tunnel "
                    f"token {key} (pid {other.pid}); a second connector would split "
                    f"traffic for {hostname} between two task apps. Stop the other task "
                    "app, or pass force_new_tunnel=True to restart the connector here.",
                    backend=self.name,
                )
            self._token_key = key
            _named_connectors[key] = self
        if other is not None and other is not self:
            ctx.logger.info(
                "force_new_tunnel: stopping the connector (pid %s) for token %s", other.pid, key
            )
            other._superseded = True
            other.close()
        proc, _, _ = self._start(ctx)
        if self._token_path is not None:
            # cloudflared read it before it could register; a SIGKILL of this process must
            # not leave the token on disk.
            self._token_path.unlink(missing_ok=True)
        ctx.logger.info(
            "cloudflared named tunnel for %s (pid %d, token %s) ready", hostname, proc.pid, key
        )
        return Tunnel(url=f"https://{hostname}", stable=True, pids=(proc.pid,))

    def _verify_advice(self) -> str:
        return (
            "Check that the hostname is routed to this tunnel in the Cloudflare dashboard "
            "(Networks > Tunnels > Public Hostname) with the service "
            "http://127.0.0.1:<the task app's port> (use a fixed port= with "
            "auto_find_port=False), and that DNS for it exists; raise "
            "tunnel_options={'verify_timeout': ...} if it was just created."
        )

    def close(self) -> None:
        super().close()
        with _named_lock:
            if self._token_key is not None and _named_connectors.get(self._token_key) is self:
                del _named_connectors[self._token_key]


@hookimpl
def register_tunnels(register: RegisterTunnel) -> None:
    register(QuickTunnel)
    register(NamedTunnel)
