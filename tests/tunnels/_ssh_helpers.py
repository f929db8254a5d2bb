"""Test helpers for the SSH tunnel backend: a real OpenSSH server, and a stand-in for
localhost.run built with asyncssh.

* :class:`SSHServer` runs the Debian ``sshd -D -e -f CONFIG`` on a free 127.0.0.1 port
  with a temporary host key and an authorized client key (the configuration from
  TUNNELS.md: ``AllowTcpForwarding remote``, ``PermitListen 127.0.0.1:*``, ``UsePAM no``,
  ``StrictModes no``). It can stop, restart on the same port, kill its sessions, and
  freeze/thaw itself (SIGSTOP/SIGCONT) to simulate a hung server.
* :class:`LocalhostRunStandIn` is a STAND-IN for the localhost.run service (which is on
  the internet, unreachable here): an asyncssh server that accepts any user without
  authentication, accepts a reverse forward of port 80, prints the URL like localhost.run
  (text sentence, or JSON lines with ``--output json``) and really forwards connections
  arriving on its loopback listener back through the SSH connection, so a request to the
  printed URL reaches the app.

Processes started here are stopped by the helpers themselves (``stop()``), including the
per-connection children sshd forks (they run in their own session, so killing sshd's
process group would miss them).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import getpass
import json
import os
import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from taskapp.testing.helpers import pid_alive
from tests.helpers import free_port, run_child, start_child, wait_until

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"


# -- small process / socket utilities ----------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of ``pid`` from /proc, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rindex(")") + 2 :].split()
    return rest[0], int(rest[1])


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children first found through /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _stat(int(entry))
        if stat is not None and stat[0] not in ("Z", "X"):
            parents.setdefault(stat[1], []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def processes_with(marker: str, program: str = "ssh") -> list[int]:
    """Live processes whose argv[0] ends with ``program`` and whose argv contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0]:
            continue
        if os.path.basename(argv[0].decode(errors="replace")) != program:
            continue
        if any(marker.encode() in arg for arg in argv) and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def is_listening(port: int) -> bool:
    """True when some socket LISTENs on TCP ``port`` (IPv4 or IPv6), read from /proc."""
    wanted = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[1].endswith(wanted) and fields[3] == "0A":
                return True
    return False


def keygen(path: Path, comment: str = "taskapp-test") -> Path:
    run_child(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    return path


# -- the real OpenSSH server ----------------------------------------------------------------


class SSHServer:
    """A real ``sshd -D -e`` on 127.0.0.1, owned by one test::

    server = SSHServer(tmp_path).start()
    server.tunnel_options()   # what tunnel_mode="ssh" needs to reach it
    server.stop()
    """

    def __init__(self, directory: Path, *, extra_config: str = "") -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host_key = keygen(self.dir / "host_ed25519", "host")
        self.client_key = keygen(self.dir / "client_ed25519", "client")
        self.authorized_keys = self.dir / "authorized_keys"
        self.authorized_keys.write_text(Path(f"{self.client_key}.pub").read_text())
        self.known_hosts = self.dir / "known_hosts"
        self.config = self.dir / "sshd_config"
        self.extra_config = extra_config
        self.user = getpass.getuser()
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: list[str] = []
        self._drain: threading.Thread | None = None
        self._frozen: list[int] = []

    # configuration

    def _write_config(self) -> None:
        self.config.write_text(
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",
                    f"Port {self.port}",
                    f"HostKey {self.host_key}",
                    "PidFile none",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    "AuthenticationMethods publickey",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "HostbasedAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "AllowTcpForwarding remote",
                    "PermitListen 127.0.0.1:*",
                    "GatewayPorts no",
                    "X11Forwarding no",
                    "PermitTTY no",
                    "PrintMotd no",
                    "MaxStartups 100",
                    "LoginGraceTime 20",
                    "LogLevel VERBOSE",
                    self.extra_config,
                    "",
                ]
            )
        )
        public = Path(f"{self.host_key}.pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {public[0]} {public[1]}\n")

    # start / stop

    def start(self, port: int | None = None, timeout: float = 10.0) -> SSHServer:
        """Start sshd (on ``port``, else the previous port, else a free one); wait until ready."""
        if self.proc is not None:
            raise RuntimeError("sshd already running")
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation dir
        fixed = port or self.port or None
        for _attempt in range(5):
            self.port = fixed or free_port()
            self._write_config()
            if self._spawn(timeout):
                return self
            if fixed is not None:
                break
        raise RuntimeError(f"sshd did not start on port {self.port}:\n" + "\n".join(self.log))

    def _spawn(self, timeout: float) -> bool:
        self.log = []
        ready = threading.Event()
        proc = start_child(
            [SSHD, "-D", "-e", "-f", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        stderr = proc.stderr
        assert stderr is not None

        def drain() -> None:
            for raw in stderr:
                line = raw.decode(errors="replace").rstrip()
                self.log.append(line)
                if "Server listening on" in line:
                    ready.set()
            ready.set()

        thread = threading.Thread(target=drain, name="sshd-log", daemon=True)
        thread.start()
        ready.wait(timeout)
        if proc.poll() is None and any("Server listening on" in line for line in self.log):
            self.proc = proc
            self._drain = thread
            return True
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)
        thread.join(5)
        return False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def session_pids(self) -> list[int]:
        """The per-connection sshd processes (forked children, in their own sessions)."""
        return descendants(self.pid) if self.proc is not None else []

    def kill_sessions(self) -> None:
        """Kill every connection's sshd process (clients see the connection drop)."""
        for pid in self.session_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        """Stop sshd and every session it forked. Idempotent."""
        if self.proc is None:
            return
        self.thaw()
        children = self.session_pids()
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        for pid in children:  # reap what we can (they are not our children: just wait)
            wait_until(functools.partial(_gone, pid), 5)
        if self._drain is not None:
            self._drain.join(5)
        self.proc = None
        self._drain = None

    def freeze(self) -> None:
        """SIGSTOP sshd and its sessions: a hung server (TCP stays up, nothing answers)."""
        self._frozen = [self.pid, *self.session_pids()]
        for pid in self._frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self._frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._frozen = []

    # what a client needs

    def tunnel_options(self, **overrides: Any) -> dict[str, Any]:
        """``tunnel_options`` for tunnel_mode="ssh" pointing at this server, isolated from
        the user's ~/.ssh (no config file, our own known_hosts and key)."""
        options: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "user": self.user,
            "identity_file": str(self.client_key),
            "known_hosts_file": str(self.known_hosts),
            "strict_host_key_checking": "yes",
            "config_file": "none",
            "connect_timeout": 5.0,
            "server_alive_interval": 1,
            "server_alive_count_max": 2,
        }
        options.update(overrides)
        return options

    def ssh_argv(self, *extra: str) -> list[str]:
        """A bare ``ssh`` command line to this server (for benchmarks / comparisons)."""
        return [
            shutil.which("ssh") or "ssh",
            "-F",
            "none",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-i",
            str(self.client_key),
            "-o",
            "IdentitiesOnly=yes",
            "-p",
            str(self.port),
            "-l",
            self.user,
            *extra,
            "127.0.0.1",
        ]

    def __enter__(self) -> SSHServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def sshd(directory: Path, **kwargs: Any) -> Iterator[SSHServer]:
    server = SSHServer(directory, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- the localhost.run stand-in --------------------------------------------------------------

_BANNER = [
    "",
    "===============================================================================",
    "Welcome to localhost.run (TEST STAND-IN)!",
    "",
    "Follow your favourite reverse tunnel at [https://twitter.com/localhost_run].",
    "",
    "To set up and manage custom domains go to https://admin.localhost.run/",
    "",
    "More details on custom domains (and how to enable subdomains of your custom",
    "domain) at https://localhost.run/docs/custom-domains",
    "",
    "To explore using localhost.run visit the documentation site:",
    "https://localhost.run/docs/",
    "",
    "===============================================================================",
    "",
]


class LocalhostRunStandIn:
    """STAND-IN for localhost.run: an asyncssh server on 127.0.0.1 (see the module doc).

    ``style`` selects whose output to imitate: ``"localhost.run"`` (text sentence, or JSON
    lines when the command is ``--output json``; the URL is ``http://127.0.0.1:PORT`` so it
    really reaches the app), ``"pinggy"`` or ``"serveo"`` (their text, with an https URL on
    their domains that cannot resolve here: for parsing only). ``usernames`` records the
    SSH user names clients logged in with. ``url_stream``: ``"stdout"`` or ``"stderr"`` (the SSH channel's extended data), where
    the URL line goes. ``print_url=False`` never prints one (the "no URL" failure).
    ``connections`` counts accepted SSH connections; every connection gets a fresh
    listener port, so a reconnect yields a new URL, like the real free tier.
    """

    def __init__(
        self,
        directory: Path,
        *,
        url_stream: str = "stdout",
        print_url: bool = True,
        style: str = "localhost.run",
    ) -> None:
        import asyncssh

        self._asyncssh = asyncssh
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.dir = directory
        self.url_stream = url_stream
        self.print_url = print_url
        self.style = style
        self.usernames: list[str] = []
        self.printed_urls: list[str] = []
        self.port = 0
        self.connections = 0
        self.commands: list[str | None] = []
        self.forward_ports: list[int] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._conns: list[Any] = []
        self._listeners: list[Any] = []

    # lifecycle (the asyncssh loop runs in its own thread)

    def start(self) -> LocalhostRunStandIn:
        loop = asyncio.new_event_loop()
        self._loop = loop
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(started.set)
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="lhr-standin", daemon=True)
        self._thread.start()
        started.wait(5)
        asyncio.run_coroutine_threadsafe(self._listen(), loop).result(10)
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        loop.close()
        self._loop = None

    def drop_connections(self) -> None:
        """Close every client connection (a service-side disconnect)."""
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._drop(), self._loop).result(10)

    def __enter__(self) -> LocalhostRunStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def known_hosts_line(self) -> str:
        public = self.host_key.export_public_key().decode().split()
        return f"[127.0.0.1]:{self.port} {public[0]} {public[1]}\n"

    def preset_options(self, **overrides: Any) -> dict[str, Any]:
        """``tunnel_options`` pointing the ``localhost.run`` preset at this stand-in."""
        known_hosts = self.dir / "lhr_known_hosts"
        known_hosts.write_text(self.known_hosts_line)
        options: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "known_hosts_file": str(known_hosts),
            "strict_host_key_checking": "yes",
            "config_file": "none",
            "connect_timeout": 5.0,
            "server_alive_interval": 1,
            "server_alive_count_max": 2,
        }
        options.update(overrides)
        return options

    # asyncssh side

    async def _listen(self) -> None:
        asyncssh = self._asyncssh
        standin = self

        class Server(asyncssh.SSHServer):  # type: ignore[misc,name-defined]
            def __init__(self) -> None:
                self.conn: Any = None
                self.forwarded: asyncio.Future[int] = asyncio.get_running_loop().create_future()

            def connection_made(self, conn: Any) -> None:
                self.conn = conn
                standin.connections += 1
                standin._conns.append(conn)
                conn.set_extra_info(standin_server=self)

            def begin_auth(self, username: str) -> bool:
                standin.usernames.append(username)
                return False  # like localhost.run's "nokey@": no authentication

            def server_requested(self, listen_host: str, listen_port: int) -> Any:
                return self._forward(listen_host, listen_port)

            async def _forward(self, listen_host: str, listen_port: int) -> Any:
                # Listen on a loopback port of our choosing; each connection arriving
                # there is opened back to the client as forwarded-tcpip for the address it
                # asked for (e.g. localhost:80), which is what the real service does.
                listener = await self.conn.forward_local_port(
                    "127.0.0.1", 0, listen_host, listen_port
                )
                standin._listeners.append(listener)
                standin.forward_ports.append(listener.get_port())
                if not self.forwarded.done():
                    self.forwarded.set_result(listener.get_port())
                return listener

        async def session(process: Any) -> None:
            command = process.command
            self.commands.append(command)
            json_mode = bool(command) and "--output json" in command
            server = process.get_extra_info("connection").get_extra_info("standin_server")
            connection_id = str(uuid.uuid4())
            out = process.stderr if self.url_stream == "stderr" else process.stdout

            def emit(stream: Any, text: str) -> None:
                stream.write(text.replace("\n", "\r\n") if not json_mode else text)

            if self.style == "pinggy":
                emit(process.stdout, "You are not authenticated.\n")
                emit(
                    process.stdout,
                    "Your tunnel will expire in 60 minutes. Upgrade to Pinggy Pro to get "
                    "unrestricted tunnels. https://dashboard.pinggy.io\n\n",
                )
            elif self.style == "serveo":
                pass
            elif json_mode:
                emit(
                    process.stdout,
                    json.dumps(
                        {
                            "connection_id": connection_id,
                            "event": "authn",
                            "message": "authenticated as anonymous user",
                            "status": "success",
                        }
                    )
                    + "\n",
                )
            else:
                emit(process.stdout, "\n".join(_BANNER) + "\n")
                emit(
                    process.stdout,
                    f"** your connection id is {connection_id}, please mention it if you "
                    "send me a message about an issue. **\n\n",
                )
            try:
                port = await asyncio.wait_for(asyncio.shield(server.forwarded), 10)
            except TimeoutError:
                emit(process.stderr, "no tunnel requested: use ssh -R 80:localhost:PORT\n")
                process.exit(1)
                return
            if self.print_url and self.style == "pinggy":
                name = f"rn{port}-{connection_id[:4]}"
                url = f"https://{name}.a.free.pinggy.link"
                self.printed_urls.append(url)
                emit(out, f"http://{name}.a.free.pinggy.link\n{url}\n")
            elif self.print_url and self.style == "serveo":
                url = f"https://{connection_id[:8]}{port}.serveo.net"
                self.printed_urls.append(url)
                emit(out, f"\x1b[32mForwarding HTTP traffic from {url}\x1b[0m\n")
            elif self.print_url:
                address = f"127.0.0.1:{port}"
                url = f"http://{address}"
                self.printed_urls.append(url)
                sentence = f"{address} tunneled with tls termination, {url}"
                if json_mode:
                    line = json.dumps(
                        {
                            "address": address,
                            "connection_id": connection_id,
                            "event": "tcpip-forward",
                            "listen_host": "localhost",
                            "listen_port": 80,
                            "message": sentence,
                            "status": "success",
                        }
                    )
                    emit(out, line + "\n")
                else:
                    emit(out, sentence + "\n")
            # Keep the session open until the client goes away.
            with contextlib.suppress(Exception):
                await process.wait_closed()
            await process.channel.get_connection().wait_closed()

        self._server = await asyncssh.create_server(
            Server,
            "127.0.0.1",
            0,
            server_host_keys=[self.host_key],
            process_factory=session,
            allow_pty=False,
            x11_forwarding=False,
            agent_forwarding=False,
            encoding="utf-8",
            keepalive_interval=0,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _drop(self) -> None:
        conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.wait_closed()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        await self._drop()
        for listener in self._listeners:
            listener.close()


def _gone(pid: int) -> bool:
    return not pid_alive(pid)
