"""Tunnel backends over SSH remote port forwarding (``ssh -R``), with the system ``ssh``.

No account, no extra binary: the OpenSSH client is everywhere. Four backend names:

``ssh``
    Your own server. ``ssh -N -R 127.0.0.1:0:127.0.0.1:PORT user@host``; the server picks
    a port (``Allocated port N``) unless ``remote_port`` is set, and the URL is
    ``public_base_url.format(host=..., port=N)`` (default ``http://{host}:{port}``).
``localhost.run``, ``pinggy``, ``serveo``
    Presets for the public SSH tunnel services: they fill in host, port, user and the
    forward, and know how each service prints its URL (localhost.run: JSON lines with
    ``--output json``, or its text sentence; pinggy and serveo: text). ``host``/``port``
    stay overridable (the tests point ``localhost.run`` at a local stand-in).

Every ssh runs through :mod:`taskapp.core.processes` (own process group, output drained,
dies with this process) with ``BatchMode=yes`` (never a password or passphrase prompt),
``ExitOnForwardFailure=yes`` (a refused forward ends ssh instead of leaving it up without
a tunnel) and ``ServerAliveInterval``/``ServerAliveCountMax`` (a hung server ends ssh after
about ``interval * (count + 1)`` seconds). The URL is read from stdout and stderr with a
timeout; failures become typed errors with the log tail and advice. The backends are
supervised: when ssh exits, :meth:`SSHTunnel.wait_dropped` returns and the core
supervisor reconnects with backoff (a new URL fires ``url_changed``).

Secrets: nothing secret goes on the command line. A pinggy ``token`` (which the service
takes as the SSH user name) is written to a private temporary ssh_config (mode 0600)
passed with ``-F`` and removed on close.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar, Literal

from taskapp.core.backends import Tunnel, TunnelContext
from taskapp.core.errors import (
    ProcessError,
    TunnelAuthError,
    TunnelBinaryMissingError,
    TunnelError,
    TunnelProtocolError,
    TunnelRateLimitedError,
    TunnelTimeoutError,
)
from taskapp.core.hookspecs import RegisterTunnel, hookimpl
from taskapp.core.process_tunnel import ProcessTunnel
from taskapp.core.secrets import register_secret

if TYPE_CHECKING:
    from taskapp.core.processes import ManagedProcess

__all__ = [
    "LocalhostRunTunnel",
    "PinggyTunnel",
    "SSHForwardRefusedError",
    "SSHHostKeyError",
    "SSHTunnel",
    "ServeoTunnel",
]

HostKeyChecking = Literal["yes", "accept-new", "no"]

#: ssh -o options taskapp sets itself; ``ssh_options`` may not override them.
_RESERVED_OPTIONS = frozenset(
    name.lower()
    for name in (
        "BatchMode",
        "ExitOnForwardFailure",
        "LogLevel",
        "ControlMaster",
        "ControlPath",
        "ControlPersist",
        "RequestTTY",
        "SessionType",
        "RemoteForward",
        "RemoteCommand",
        "ServerAliveInterval",
        "ServerAliveCountMax",
        "ConnectTimeout",
        "StrictHostKeyChecking",
        "UserKnownHostsFile",
        "PasswordAuthentication",
        "KbdInteractiveAuthentication",
        "PermitLocalCommand",
        "LocalCommand",
        "ClearAllForwardings",
        "StdinNull",
        "ForkAfterAuthentication",
    )
)


class SSHHostKeyError(TunnelAuthError):
    """The server's host key is unknown (with strict checking) or has changed."""


class SSHForwardRefusedError(TunnelError):
    """The server refused the remote forward: the port is busy there, or listening on that
    address/port is not permitted (``PermitListen``, ``AllowTcpForwarding``,
    ``GatewayPorts``)."""


# -- options -----------------------------------------------------------------------------


def _check_host(value: str | None, what: str) -> None:
    if value is not None and (
        not value or value.startswith("-") or any(c.isspace() for c in value)
    ):
        raise ValueError(f"{what} must be a host name or address, got {value!r}")


@dataclasses.dataclass(frozen=True)
class SSHOptions:
    """Options of the ``ssh`` backend (your own server)."""

    host: str | None = None
    """The SSH server (name or address; a ``Host`` alias of your ssh_config works too)."""
    port: int = 22
    user: str | None = None
    """Login name; None lets ssh decide (ssh_config ``User``, else your local name)."""
    identity_file: str | None = None
    """Private key to log in with (``-i``, with ``IdentitiesOnly=yes``); None: ssh's
    defaults and ssh-agent. It must not need a passphrase unless it is in ssh-agent."""
    remote_host: str | None = "127.0.0.1"
    """Address the server listens on for the tunnel. None sends none (the server uses
    ``localhost``); ``"*"`` means every interface (needs ``GatewayPorts clientspecified``)."""
    remote_port: int = 0
    """Port the server listens on; 0 lets the server pick (the URL then changes on each
    reconnect)."""
    strict_host_key_checking: HostKeyChecking = "accept-new"
    known_hosts_file: str | None = None
    """Known-hosts file to check the server key against (default: ssh's own)."""
    public_base_url: str | None = None
    """How the outside world reaches the forwarded port, with ``{port}`` (and optionally
    ``{host}``) placeholders, e.g. ``"https://tunnel.example.org:{port}"``. Default
    ``"http://{host}:{port}"``."""
    connect_timeout: float = 10.0
    """Seconds for TCP connect and the SSH banner (``ConnectTimeout``)."""
    server_alive_interval: int = 5
    """Seconds between keepalives (``ServerAliveInterval``); 0 disables them."""
    server_alive_count_max: int = 2
    """Unanswered keepalives before ssh gives up (``ServerAliveCountMax``)."""
    ssh_path: str = "ssh"
    config_file: str | None = None
    """ssh_config to use (``-F``); ``"none"`` ignores ~/.ssh/config; None: ssh's default."""
    ssh_options: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Extra ``-o Key=Value`` options (e.g. ``{"ProxyJump": "bastion"}``)."""

    #: Whether the user may set public_base_url (only the plain ``ssh`` backend prints no URL).
    _builds_url: ClassVar[bool] = True

    def __post_init__(self) -> None:  # noqa: C901 -- complexity 20 at most (issue 21 ratchet); split when next changed
        _check_host(self.host, "host")
        if self.host is None and self._builds_url:
            raise ValueError(
                "tunnel 'ssh' needs a server: pass tunnel_options={'host': 'my.server', "
                "'user': ..., 'identity_file': ...}"
            )
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be in [1, 65535], got {self.port}")
        if not 0 <= self.remote_port <= 65535:
            raise ValueError(f"remote_port must be in [0, 65535], got {self.remote_port}")
        if self.remote_host is not None and self.remote_host not in ("", "*"):
            _check_host(self.remote_host, "remote_host")
        if self.user is not None and (
            not self.user or self.user.startswith("-") or any(c.isspace() for c in self.user)
        ):
            raise ValueError(f"user must be a login name, got {self.user!r}")
        if not self.connect_timeout > 0:
            raise ValueError(f"connect_timeout must be positive, got {self.connect_timeout}")
        if self.server_alive_interval < 0:
            raise ValueError("server_alive_interval must be >= 0 (0 disables keepalives)")
        if self.server_alive_count_max < 1:
            raise ValueError("server_alive_count_max must be >= 1")
        if not self.ssh_path:
            raise ValueError("ssh_path must name the ssh program")
        if self.identity_file is not None:
            # A missing key file is the user's path, not a login the server rejected.
            key_file = os.path.expanduser(self.identity_file)
            if not os.path.exists(key_file):
                raise ValueError(
                    f"identity_file {self.identity_file!r}: no such file. Pass the path of "
                    "your private key (e.g. ~/.ssh/id_ed25519), or leave identity_file out to "
                    "use ssh's default keys and ssh-agent"
                )
            if not os.path.isfile(key_file):
                raise ValueError(
                    f"identity_file {self.identity_file!r} is not a file; pass the path of "
                    "your private key"
                )
        for key, value in self.ssh_options.items():
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", str(key)) or "\n" in str(value):
                raise ValueError(f"ssh_options: invalid option {key!r}={value!r}")
            if str(key).lower() in _RESERVED_OPTIONS:
                raise ValueError(
                    f"ssh_options: {key!r} is set by taskapp itself; use the matching "
                    "tunnel option instead"
                )
        if self.public_base_url is not None:
            if not self._builds_url:
                raise ValueError(
                    "public_base_url applies to tunnel 'ssh' only: this service prints its URL"
                )
            try:
                sample = self.public_base_url.format(host="example.org", port=8080)
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(
                    f"public_base_url may only use the placeholders {{host}} and {{port}}, "
                    f"got {self.public_base_url!r} ({exc})"
                ) from None
            parts = urllib.parse.urlsplit(sample)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(
                    f"public_base_url must be an absolute http(s) URL, got {self.public_base_url!r}"
                )


@dataclasses.dataclass(frozen=True)
class LocalhostRunOptions(SSHOptions):
    """``localhost.run``: ``ssh -R 80:localhost:PORT nokey@localhost.run -- --output json``."""

    host: str | None = "localhost.run"
    user: str | None = "nokey"
    remote_host: str | None = None
    remote_port: int = 80
    output: Literal["json", "text"] = "json"
    """How the service reports the URL: JSON lines (``--output json``) or its text banner."""

    _builds_url: ClassVar[bool] = False


@dataclasses.dataclass(frozen=True)
class PinggyOptions(SSHOptions):
    """``pinggy``: ``ssh -p 443 -R0:localhost:PORT a.pinggy.io`` (free: 60 minutes)."""

    host: str | None = "a.pinggy.io"
    port: int = 443
    remote_host: str | None = None
    remote_port: int = 0
    token: str | None = dataclasses.field(default=None, repr=False)
    """A Pinggy Pro token (sent as the SSH user name through a private ssh_config, never
    on the command line). None: a free, anonymous tunnel that ends after 60 minutes."""

    _builds_url: ClassVar[bool] = False


@dataclasses.dataclass(frozen=True)
class ServeoOptions(SSHOptions):
    """``serveo``: ``ssh -R 80:localhost:PORT serveo.net``."""

    host: str | None = "serveo.net"
    remote_host: str | None = None
    remote_port: int = 80

    _builds_url: ClassVar[bool] = False


# -- output parsing ----------------------------------------------------------------------

_ANSI = r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]"
_URL = r"https?://[^\s\"'<>,|]+"

# What ssh (and the services) print when something fails; searched in the log tail only
# after a failure, with re's own pattern cache (nothing is compiled at import).
_HOST_KEY = (
    r"(?i)Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED|"
    r"host key is known for .* you have requested strict checking|"
    r"Host key for .* has changed"
)
_AUTH = r"(?i)Permission denied \(|Too many authentication failures"
_FORWARD_REFUSED = r"remote port forwarding failed for listen port (\d+)"
_UNREACHABLE = (
    r"(?i)Connection refused|Could not resolve hostname|Name or service not known|"
    r"No route to host|Network is unreachable|Connection timed out|timed out during banner|"
    r"Connection reset|Connection closed by|kex_exchange_identification|"
    r"not responding|Broken pipe|Operation timed out"
)
_RATE_LIMIT = r"(?i)rate.?limit|too many (?:tunnels|connections|requests)"
_AUTHENTICATED = r"(?m)^Authenticated to "


class _Parser:
    """Knows what a successful line looks like and turns it into the public URL."""

    pattern: str

    def url(self, match: re.Match[str], backend: SSHTunnel) -> str:
        raise NotImplementedError


class _AllocatedPort(_Parser):
    """Your own sshd: ``Allocated port N for remote forward to ...`` (port 0), or the
    DEBUG1 line ``remote forward success for: listen H:P`` (fixed port)."""

    pattern = (
        r"Allocated port (?P<port>\d+) for remote forward to|"
        r"remote forward success for: listen (?:\S+:)?(?P<fixed>\d+),"
    )

    def url(self, match: re.Match[str], backend: SSHTunnel) -> str:
        port = int(match.group("port") or match.group("fixed"))
        return backend.build_url(port)


class _LocalhostRunJSON(_Parser):
    pattern = r"\{.*\"event\"\s*:\s*\"tcpip-forward\".*\}"

    def url(self, match: re.Match[str], backend: SSHTunnel) -> str:
        import json

        try:
            event = json.loads(match.group(0))
        except ValueError:
            raise TunnelProtocolError(
                f"localhost.run printed a tunnel event that is not valid JSON: "
                f"{match.group(0)[:200]!r}; its output format may have changed: try "
                "tunnel_options={'output': 'text'}, or another backend",
                backend=backend.name,
                log_tail=backend.log_tail(),
            ) from None
        found = re.search(_URL, str(event.get("message", "")))
        if found:
            return found.group(0)
        address = str(event.get("address", "")).strip()
        if not address:
            raise TunnelProtocolError(
                "localhost.run reported a tunnel without an address; its output format may "
                "have changed: try tunnel_options={'output': 'text'}, or another backend",
                backend=backend.name,
                log_tail=backend.log_tail(),
            )
        return f"https://{address}"


class _Text(_Parser):
    def __init__(self, pattern: str) -> None:
        self.pattern = pattern

    def url(self, match: re.Match[str], backend: SSHTunnel) -> str:
        return re.sub(_ANSI, "", match.group("url")).rstrip(".")


# -- the backends ------------------------------------------------------------------------


def _ssh_missing(backend: str, ssh_path: str) -> str:
    return (
        f"tunnel {backend!r} needs the OpenSSH client, but {ssh_path!r} was not found. Install "
        "it (Debian/Ubuntu: apt-get install openssh-client; macOS ships it) or set "
        "tunnel_options={'ssh_path': '/path/to/ssh'}."
    )


class SSHTunnel(ProcessTunnel):
    """Remote port forwarding to your own SSH server (see the module docstring)."""

    name = "ssh"
    Options = SSHOptions
    supervised = True

    #: Shown in errors: what the server is.
    service = "the SSH server"
    advice = (
        "Check that the server runs sshd with 'AllowTcpForwarding remote' (or yes) and that "
        "your key is in its authorized_keys."
    )

    program = "ssh"

    def __init__(self, options: SSHOptions) -> None:
        super().__init__(options)
        self.options: SSHOptions = options
        self._config_dir: str | None = None
        self.url: str | None = None

    @classmethod
    def prepare(cls, options: SSHOptions) -> None:
        """The OpenSSH client must exist before the server starts."""
        program = os.path.expanduser(options.ssh_path)
        if shutil.which(program) is None:
            raise TunnelBinaryMissingError(
                _ssh_missing(cls.name, options.ssh_path), backend=cls.name
            )

    # -- what differs between the server and the presets ---------------------------------

    def session_command(self) -> tuple[str, ...] | None:
        """None: run ``-N`` (no session); else the remote command (may be empty) for the
        session a service prints its URL on."""
        return None

    def parser(self) -> _Parser:
        return _AllocatedPort()

    def log_level(self) -> str:
        # A fixed port is confirmed only by a DEBUG1 line; INFO prints "Allocated port".
        return "DEBUG1" if self.options.remote_port else "VERBOSE"

    def stable(self) -> bool:
        return self.options.remote_port != 0

    def expires_at(self) -> float | None:
        return None

    def user(self) -> str | None:
        return self.options.user

    def secret_user(self) -> str | None:
        """A user name that is a credential (pinggy token): goes into a private config."""
        return None

    def build_url(self, port: int) -> str:
        template = self.options.public_base_url or "http://{host}:{port}"
        host = self.options.host or ""
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return template.format(host=host, port=port).rstrip("/")

    # -- argv -----------------------------------------------------------------------------

    def forward_spec(self, ctx: TunnelContext) -> str:
        target = urllib.parse.urlsplit(ctx.local_url).hostname or "127.0.0.1"
        if ":" in target:
            target = f"[{target}]"
        spec = f"{self.options.remote_port}:{target}:{ctx.port}"
        remote = self.options.remote_host
        if remote is None:
            return spec
        if remote in ("", "*"):
            return f"*:{spec}"
        if ":" in remote:
            remote = f"[{remote}]"
        return f"{remote}:{spec}"

    def argv(self, ctx: TunnelContext, config_file: str | None) -> list[str]:
        o = self.options
        argv = [o.ssh_path, "-T", "-n"]
        command = self.session_command()
        if command is None:
            argv.append("-N")
        if config_file is not None:
            argv += ["-F", config_file]
        settings = {
            "BatchMode": "yes",
            "ExitOnForwardFailure": "yes",
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "ServerAliveInterval": str(o.server_alive_interval),
            "ServerAliveCountMax": str(o.server_alive_count_max),
            "ConnectTimeout": str(max(1, math.ceil(o.connect_timeout))),
            "ConnectionAttempts": "1",
            "StrictHostKeyChecking": o.strict_host_key_checking,
            "ControlMaster": "no",
            "ControlPath": "none",
            "RequestTTY": "no",
            "ForwardAgent": "no",
            "ForwardX11": "no",
            "PermitLocalCommand": "no",
            "LogLevel": self.log_level(),
        }
        if o.known_hosts_file is not None:
            settings["UserKnownHostsFile"] = o.known_hosts_file
        if o.identity_file is not None:
            settings["IdentitiesOnly"] = "yes"
        for key, value in {**settings, **dict(o.ssh_options)}.items():
            argv += ["-o", f"{key}={value}"]
        if o.identity_file is not None:
            argv += ["-i", os.path.expanduser(o.identity_file)]
        user = self.user()
        if user is not None:
            argv += ["-l", user]
        argv += ["-p", str(o.port), "-R", self.forward_spec(ctx), "--", o.host or ""]
        if command:
            argv += list(command)
        return argv

    def _private_config(self, user: str) -> str:
        """A 0600 ssh_config that sets ``User`` (a credential) and includes the usual ones."""
        import tempfile

        directory = tempfile.mkdtemp(prefix="taskapp-ssh-")
        self._config_dir = directory
        path = os.path.join(directory, "config")
        lines = ["Host *", f"  User {user}"]
        chosen = self.options.config_file
        if chosen is None:
            for candidate in ("/etc/ssh/ssh_config", os.path.expanduser("~/.ssh/config")):
                if os.path.exists(candidate):
                    lines.append(f'  Include "{candidate}"')
        elif chosen.lower() != "none":
            lines.append(f'  Include "{os.path.abspath(os.path.expanduser(chosen))}"')
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        return path

    # -- open / close ----------------------------------------------------------------------

    def missing_program(self, argv: Sequence[str], error: ProcessError) -> str:
        return _ssh_missing(self.name, self.options.ssh_path)

    def broken_program(self, argv: Sequence[str], error: ProcessError) -> str:
        return (
            f"could not start ssh for tunnel {self.name!r}: {error.message}. Check that "
            f"{self.options.ssh_path!r} is the OpenSSH client (ssh -V), or set "
            "tunnel_options={'ssh_path': '/path/to/ssh'}."
        )

    def open(self, ctx: TunnelContext) -> Tunnel:
        self.close()
        started = time.monotonic()
        timeout = max(1.0, ctx.start_timeout)
        secret_user = self.secret_user()
        secrets = [secret_user] if secret_user else []
        with self._lock:
            config_file = (
                self._private_config(secret_user)
                if secret_user is not None
                else self.options.config_file
            )
            argv = self.argv(ctx, config_file)
            try:
                proc = self.spawn_child(
                    argv,
                    extra_env={"SSH_ASKPASS_REQUIRE": "never"},
                    secrets=secrets,
                    name=f"ssh-{self.name}",
                )
            except TunnelError:
                self._remove_config()
                raise
        ctx.logger.debug("started %s", " ".join(proc.argv))
        try:
            url = self._wait_for_url(proc, timeout)
        except BaseException:
            self.close()
            raise
        self.url = url
        ctx.logger.info(
            "ssh tunnel %r open: %s -> %s (%.0f ms)",
            self.name,
            url,
            ctx.local_url,
            (time.monotonic() - started) * 1000,
        )
        return Tunnel(url=url, stable=self.stable(), expires_at=self.expires_at(), pids=(proc.pid,))

    def _wait_for_url(self, proc: ManagedProcess, timeout: float) -> str:
        parser = self.parser()
        return parser.url(self.wait_for_output(parser.pattern, timeout), self)

    def start_failure(self, proc: ManagedProcess, *, timed_out: bool, timeout: float) -> Exception:
        return self._failure(proc, timed_out=timed_out, timeout=timeout)

    def log_tail(self, n: int = 40) -> str:
        proc = self._proc
        return _quiet_tail(proc, n) if proc is not None else ""

    def _failure(self, proc: ManagedProcess, *, timed_out: bool, timeout: float) -> TunnelError:
        """The typed error for an ssh that ended (or hung) without giving a URL."""
        tail = _quiet_tail(proc)
        text = re.sub(_ANSI, "", tail)
        o = self.options
        where = f"{self.service} {o.host}:{o.port}"
        status = "did not finish" if timed_out else _describe_exit(proc.returncode)
        if re.search(_HOST_KEY, text):
            known = o.known_hosts_file or "~/.ssh/known_hosts"
            return SSHHostKeyError(
                f"ssh rejected the host key of {where} ({status}). Either the key is not in "
                f"{known} and strict_host_key_checking is 'yes', or the server's key changed "
                "(a reinstalled server, or someone in the middle). Verify the key, then add it "
                f"(ssh-keyscan -p {o.port} {o.host} >> {known}) or remove the stale entry "
                f"(ssh-keygen -R '[{o.host}]:{o.port}'); strict_host_key_checking='accept-new' "
                "trusts a server seen for the first time.",
                backend=self.name,
                log_tail=tail,
            )
        if re.search(_AUTH, text):
            who = f"user {self.user()!r}" if self.user() else "your user"
            key = (
                f"the key {o.identity_file!r}"
                if o.identity_file
                else "ssh's default keys and ssh-agent"
            )
            return TunnelAuthError(
                f"{where} rejected the login of {who} with {key} ({status}). Check that the "
                "public key is in the server's authorized_keys and that the private key needs "
                "no passphrase (taskapp runs ssh with BatchMode=yes and never prompts: load "
                "an encrypted key into ssh-agent first).",
                backend=self.name,
                log_tail=tail,
            )
        refused = re.search(_FORWARD_REFUSED, text)
        if refused:
            spec = f"{o.remote_host or 'localhost'}:{refused.group(1)}"
            if o.remote_port:
                why = (
                    f"port {o.remote_port} is already in use on the server, or the server "
                    "does not permit listening there"
                )
                fix = (
                    "pick another remote_port (or 0 to let the server choose), stop what "
                    "holds it, or allow it on the server (PermitListen, AllowTcpForwarding)"
                )
            else:
                why = "the server does not permit listening on that address"
                fix = (
                    "use remote_host='127.0.0.1' (or an address the server's PermitListen "
                    "allows; other interfaces need GatewayPorts clientspecified)"
                )
            return SSHForwardRefusedError(
                f"{where} refused the remote forward {spec} ({status}): {why}. Fix: {fix}.",
                backend=self.name,
                log_tail=tail,
            )
        if re.search(_RATE_LIMIT, text):
            return TunnelRateLimitedError(
                f"{where} refused the tunnel for now (rate limited). Retry later or use "
                "another backend.",
                backend=self.name,
                log_tail=tail,
            )
        authenticated = re.search(_AUTHENTICATED, text) is not None
        if timed_out:
            if authenticated:
                what = (
                    f"logged in to {where} but it printed no tunnel URL within {timeout:g}s"
                    if self.session_command() is not None
                    else f"logged in to {where} but the forward was not confirmed within "
                    f"{timeout:g}s"
                )
                return TunnelTimeoutError(
                    f"{what}. {self.advice}", backend=self.name, log_tail=tail
                )
            return TunnelTimeoutError(
                f"ssh could not set up the tunnel through {where} within {timeout:g}s: the "
                "server is unreachable or hung. Check the host and port, your network or "
                "proxy, or raise health_check_timeout / connect_timeout.",
                backend=self.name,
                log_tail=tail,
            )
        if re.search(_UNREACHABLE, text) or not authenticated:
            return TunnelTimeoutError(
                f"ssh could not reach {where} ({status}): the server is down, unreachable or "
                "not answering. Check the host and port and that sshd runs there; from a "
                "restricted network, set ssh_options={'ProxyJump': ...} or ProxyCommand.",
                backend=self.name,
                log_tail=tail,
            )
        return TunnelProtocolError(
            f"ssh logged in to {where} but ended ({status}) without a tunnel URL. {self.advice}",
            backend=self.name,
            log_tail=tail,
        )

    def close_grace(self) -> float:
        # ssh exits at once on SIGTERM; the short grace keeps close() under 2 s even if it
        # does not.
        return 1.0

    def release(self) -> None:
        self._remove_config()

    def _remove_config(self) -> None:
        with self._lock:
            directory, self._config_dir = self._config_dir, None
        if directory is not None:
            import shutil

            shutil.rmtree(directory, ignore_errors=True)

    def describe_drop(self, proc: ManagedProcess, code: int) -> str:
        last = _last_meaningful(proc.lines())
        reason = _describe_exit(code)
        return f"{reason}: {last}" if last else reason


class LocalhostRunTunnel(SSHTunnel):
    """The localhost.run service (free URLs change on every reconnect)."""

    name = "localhost.run"
    Options = LocalhostRunOptions
    service = "localhost.run"
    advice = "The service may be down or have changed its output; try again or another backend."

    def __init__(self, options: LocalhostRunOptions) -> None:
        super().__init__(options)
        self.options: LocalhostRunOptions = options

    def session_command(self) -> tuple[str, ...]:
        return ("--output", "json") if self.options.output == "json" else ()

    def parser(self) -> _Parser:
        if self.options.output == "json":
            return _LocalhostRunJSON()
        return _Text(r"tunneled with tls termination, (?P<url>https?://[^\s,]+)")

    def log_level(self) -> str:
        return "VERBOSE"

    def stable(self) -> bool:
        return False


class PinggyTunnel(SSHTunnel):
    """The pinggy.io service (free tunnels end after 60 minutes)."""

    name = "pinggy"
    Options = PinggyOptions
    service = "pinggy"
    advice = "The service may be down or have changed its output; try again or another backend."

    def __init__(self, options: PinggyOptions) -> None:
        super().__init__(options)
        self.options: PinggyOptions = options
        register_secret(options.token)

    def session_command(self) -> tuple[str, ...]:
        return ()

    def parser(self) -> _Parser:
        return _Text(
            r"(?P<url>https://[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.pinggy\.(?:link|online)\b)"
        )

    def log_level(self) -> str:
        return "VERBOSE"

    def stable(self) -> bool:
        return False

    def expires_at(self) -> float | None:
        return None if self.options.token else time.time() + 3600

    def user(self) -> str | None:
        return None if self.options.token else self.options.user

    def secret_user(self) -> str | None:
        return self.options.token


class ServeoTunnel(SSHTunnel):
    """The serveo.net service (often down)."""

    name = "serveo"
    Options = ServeoOptions
    service = "serveo"
    advice = "serveo.net is often down; try again later or use localhost.run or pinggy."

    def session_command(self) -> tuple[str, ...]:
        return ()

    def parser(self) -> _Parser:
        return _Text(r"Forwarding HTTP traffic from (?P<url>https?://\S+)")

    def log_level(self) -> str:
        return "VERBOSE"

    def stable(self) -> bool:
        return False


def _describe_exit(code: int | None) -> str:
    from taskapp.core.processes import describe_returncode

    return f"ssh {describe_returncode(code)}" if code is not None else "ssh still running"


def _quiet_tail(proc: ManagedProcess, n: int = 40) -> str:
    """The last ``n`` lines without ssh's DEBUG1 chatter (redacted by the process manager)."""
    lines = [line for line in proc.lines() if not line.startswith("debug")]
    return "\n".join(lines[-n:]) if lines else proc.tail(n)


def _last_meaningful(lines: list[str]) -> str:
    for line in reversed(lines):
        text = re.sub(_ANSI, "", line).strip()
        if text and not text.startswith(("debug", "Transferred:", "Bytes per second")):
            return text[:200]
    return ""


@hookimpl
def register_tunnels(register: RegisterTunnel) -> None:
    register(SSHTunnel)
    register(LocalhostRunTunnel)
    register(PinggyTunnel)
    register(ServeoTunnel)
