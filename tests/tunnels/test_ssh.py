"""SSH reverse tunnels against a real OpenSSH server (and a localhost.run stand-in).

Every test starts its own ``sshd -D -e`` on 127.0.0.1 (tests/tunnels/_ssh_helpers.py) and drives
the real ``ssh`` client through taskapp's process manager. The public services
(localhost.run, pinggy, serveo) are on the internet, so their presets run against
:class:`LocalhostRunStandIn`, an asyncssh server that imitates their output and, for the
localhost.run style, really forwards connections to the app.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskapp import InProcessTaskApp
from taskapp.core.errors import (
    ConfigurationError,
    TunnelAuthError,
    TunnelBinaryMissingError,
    TunnelTimeoutError,
)
from taskapp.core.processes import live_processes
from taskapp.plugins.tunnels.ssh import SSHForwardRefusedError, SSHHostKeyError
from tests.helpers import assert_released, free_port, minimal_app, read_line_with, start_script
from tests.tunnels._ssh_helpers import (
    LocalhostRunStandIn,
    SSHServer,
    is_listening,
    keygen,
    pid_alive,
    processes_with,
    wait_until,
)

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="checks /proc"),
    pytest.mark.skipif(
        shutil.which("ssh") is None or not Path("/usr/sbin/sshd").exists(),
        reason="needs openssh-client and openssh-server (.ci/run installs them)",
    ),
    pytest.mark.timeout(60),
]


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SSHServer]:
    server = SSHServer(tmp_path / "sshd").start()
    try:
        yield server
    finally:
        server.stop()
        # Nothing of ours may survive a test: no ssh to this server, no managed child.
        marker = str(server.known_hosts)
        assert wait_until(lambda: not processes_with(marker), 5), processes_with(marker)
        assert not [p for p in live_processes() if p.name.startswith("ssh-")]


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[LocalhostRunStandIn]:
    with LocalhostRunStandIn(tmp_path) as server:
        yield server
    assert not [p for p in live_processes() if p.name.startswith("ssh-")]


def get(url: str, path: str = "/pid", key: str | None = None) -> dict[str, Any]:
    request = urllib.request.Request(url + path, headers={"X-API-Key": key} if key else {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=5) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def remote_port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def ssh_app(sshd: SSHServer, port: int, **kwargs: Any) -> InProcessTaskApp:
    options = sshd.tunnel_options(**kwargs.pop("tunnel_options", {}))
    return InProcessTaskApp(
        app=minimal_app(),
        port=port,
        tunnel_mode="ssh",
        tunnel_options=options,
        health_check_timeout=kwargs.pop("health_check_timeout", 15.0),
        **kwargs,
    )


# -- the tunnel works ----------------------------------------------------------------------


def test_reverse_tunnel_reaches_the_app_and_close_leaves_nothing(
    sshd: SSHServer, port: int
) -> None:
    with ssh_app(sshd, port, skip_tunnel_verification=False) as task_app:
        url = task_app.url
        assert url is not None
        assert url.startswith("http://127.0.0.1:")
        forwarded = remote_port(url)
        assert forwarded != port  # really the server's listener, not the app's port
        assert is_listening(forwarded)
        assert get(url)["pid"] == os.getpid()  # through sshd, back to this process's app
        assert get(url, "/health", task_app.api_key) == {"healthy": True}
        tunnel = task_app.tunnel
        assert tunnel is not None
        assert tunnel.stable is False  # port 0: the server picks a new port on reconnect
        (ssh_pid,) = tunnel.pids
        assert pid_alive(ssh_pid)
        assert len(sshd.session_pids()) >= 1
    assert wait_until(lambda: not pid_alive(ssh_pid), 5), "ssh survived close"
    assert wait_until(lambda: not is_listening(forwarded), 5), "remote listener left behind"
    assert_released(port)


def test_fixed_remote_port_and_public_base_url(sshd: SSHServer, port: int) -> None:
    wanted = free_port()
    options = {"remote_port": wanted, "public_base_url": "http://localhost:{port}/"}
    with ssh_app(sshd, port, tunnel_options=options) as task_app:
        assert task_app.url == f"http://localhost:{wanted}"
        assert task_app.tunnel is not None and task_app.tunnel.stable is True
        assert get(f"http://127.0.0.1:{wanted}")["pid"] == os.getpid()
    assert wait_until(lambda: not is_listening(wanted), 5)


def test_accept_new_records_the_host_key(sshd: SSHServer, port: int, tmp_path: Path) -> None:
    known = tmp_path / "fresh_known_hosts"
    options = {"known_hosts_file": str(known), "strict_host_key_checking": "accept-new"}
    with ssh_app(sshd, port, tunnel_options=options) as task_app:
        assert task_app.url is not None
    host_key = (sshd.host_key.parent / "host_ed25519.pub").read_text().split()[1]
    assert host_key in known.read_text()


# -- presets against the stand-in ----------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "url_stream"), [("json", "stdout"), ("text", "stdout"), ("text", "stderr")]
)
def test_localhost_run_preset_against_standin(
    tmp_path: Path, port: int, output: str, url_stream: str
) -> None:
    with LocalhostRunStandIn(tmp_path, url_stream=url_stream) as standin:
        with InProcessTaskApp(
            app=minimal_app(),
            port=port,
            tunnel_mode="localhost.run",
            tunnel_options=standin.preset_options(output=output),
            skip_tunnel_verification=False,
            health_check_timeout=15,
        ) as task_app:
            assert task_app.url == standin.printed_urls[-1]
            assert task_app.url == f"http://127.0.0.1:{standin.forward_ports[-1]}"
            assert get(task_app.url)["pid"] == os.getpid()
            (ssh_pid,) = task_app.tunnel.pids if task_app.tunnel else (0,)
        assert standin.commands == (["--output json"] if output == "json" else [None])
        assert standin.usernames == ["nokey"]
        assert wait_until(lambda: not pid_alive(ssh_pid), 5)


@pytest.mark.parametrize("style", ["pinggy", "serveo"])
def test_pinggy_and_serveo_output_parsing(tmp_path: Path, port: int, style: str) -> None:
    token = "pinggy-secret-token-1234"
    with LocalhostRunStandIn(tmp_path, style=style) as standin:
        options = standin.preset_options()
        if style == "pinggy":
            options["token"] = token
        # Their URLs are on the internet: parse only (skip_tunnel_verification).
        with InProcessTaskApp(
            app=minimal_app(), port=port, tunnel_mode=style, tunnel_options=options
        ) as task_app:
            assert task_app.url == standin.printed_urls[-1]
            assert task_app.tunnel is not None
            (ssh_pid,) = task_app.tunnel.pids
            argv = Path(f"/proc/{ssh_pid}/cmdline").read_bytes()
            assert token.encode() not in argv  # the token travels in a 0600 ssh_config
            config_dirs = [a for a in argv.split(b"\0") if b"taskapp-ssh-" in a]
        if style == "pinggy":
            assert standin.usernames == [token]
            assert task_app.tunnel.expires_at is None  # a token: no 60-minute limit
            assert config_dirs and not Path(config_dirs[0].decode()).exists()  # removed
        else:
            assert not config_dirs


def test_preset_reconnects_with_a_new_url(
    standin: LocalhostRunStandIn, port: int, tmp_path: Path
) -> None:
    changed = threading.Event()
    seen: list[str] = []

    def on_change(task_app: InProcessTaskApp) -> None:
        seen.append(task_app.url or "")
        changed.set()

    with InProcessTaskApp(
        app=minimal_app(),
        port=port,
        tunnel_mode="localhost.run",
        tunnel_options=standin.preset_options(),
        on_url_change=on_change,
    ) as task_app:
        first = task_app.url
        standin.drop_connections()  # the service hangs up
        assert changed.wait(15), "no reconnect"
        assert task_app.url == seen[-1] != first
        assert get(task_app.url)["pid"] == os.getpid()
    assert standin.connections == 2


def test_preset_that_prints_no_url(tmp_path: Path, port: int) -> None:
    with LocalhostRunStandIn(tmp_path, print_url=False) as standin:
        started = time.monotonic()
        with pytest.raises(TunnelTimeoutError) as info:
            InProcessTaskApp(
                app=minimal_app(),
                port=port,
                tunnel_mode="localhost.run",
                tunnel_options=standin.preset_options(),
                health_check_timeout=2,
            ).start()
        assert time.monotonic() - started < 8
    assert "printed no tunnel URL" in str(info.value)
    assert "Authenticated to" in (info.value.log_tail or "")
    assert info.value.backend == "localhost.run"
    assert_released(port)


# -- failures, for real ---------------------------------------------------------------------


def test_busy_remote_port(sshd: SSHServer, port: int) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(SSHForwardRefusedError) as info:
            ssh_app(sshd, port, tunnel_options={"remote_port": busy}).start()
        # ExitOnForwardFailure: ssh exits at once instead of running on without a tunnel
        # until the 15 s timeout.
        assert time.monotonic() - started < 8
    message = str(info.value)
    assert f"port {busy} is already in use on the server" in message
    assert f"remote port forwarding failed for listen port {busy}" in (info.value.log_tail or "")
    assert_released(port)


def test_forbidden_listen_address(sshd: SSHServer, port: int) -> None:
    # The server's PermitListen allows 127.0.0.1 only.
    with pytest.raises(SSHForwardRefusedError) as info:
        ssh_app(sshd, port, tunnel_options={"remote_host": "0.0.0.0"}).start()
    assert "does not permit listening" in str(info.value)
    assert any("but the request was denied" in line for line in sshd.log)
    assert_released(port)


def test_wrong_key(sshd: SSHServer, port: int, tmp_path: Path) -> None:
    wrong = keygen(tmp_path / "wrong_key")
    started = time.monotonic()
    with pytest.raises(TunnelAuthError) as info:
        ssh_app(sshd, port, tunnel_options={"identity_file": str(wrong)}).start()
    assert time.monotonic() - started < 10
    assert not isinstance(info.value, SSHHostKeyError)
    assert "authorized_keys" in str(info.value)
    assert "Permission denied (publickey)" in (info.value.log_tail or "")
    assert_released(port)


def test_changed_host_key_is_rejected(sshd: SSHServer, port: int, tmp_path: Path) -> None:
    keygen(tmp_path / "impostor")
    impostor = tmp_path / "impostor.pub"
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} " + " ".join(impostor.read_text().split()[:2]))
    with pytest.raises(SSHHostKeyError) as info:
        ssh_app(sshd, port, tunnel_options={"known_hosts_file": str(known)}).start()
    assert "host key" in str(info.value)
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in (info.value.log_tail or "")


def test_unknown_host_key_with_strict_checking(sshd: SSHServer, port: int, tmp_path: Path) -> None:
    options = {"known_hosts_file": str(tmp_path / "empty"), "strict_host_key_checking": "yes"}
    with pytest.raises(SSHHostKeyError, match="accept-new"):
        ssh_app(sshd, port, tunnel_options=options).start()


def test_server_unreachable(sshd: SSHServer, port: int) -> None:
    started = time.monotonic()
    with pytest.raises(TunnelTimeoutError) as info:
        ssh_app(sshd, port, tunnel_options={"port": free_port()}).start()
    assert time.monotonic() - started < 10
    assert "Connection refused" in (info.value.log_tail or "")
    assert "unreachable" in str(info.value)


def test_server_hung_before_the_banner(sshd: SSHServer, port: int) -> None:
    sshd.freeze()  # SIGSTOP: the kernel still accepts the TCP connection, nothing answers
    try:
        started = time.monotonic()
        with pytest.raises(TunnelTimeoutError) as info:
            ssh_app(sshd, port, tunnel_options={"connect_timeout": 1.0}).start()
        took = time.monotonic() - started
    finally:
        sshd.thaw()
    assert took < 8, f"took {took:.1f}s: ConnectTimeout must bound the banner exchange"
    assert "banner exchange" in (info.value.log_tail or "")
    assert "could not reach" in str(info.value) and "ProxyJump" in str(info.value)
    assert_released(port)


def test_ssh_missing(sshd: SSHServer, port: int, tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-ssh")
    with pytest.raises(TunnelBinaryMissingError, match="openssh-client"):
        ssh_app(sshd, port, tunnel_options={"ssh_path": missing}).start()
    assert_released(port)


def test_sshd_stopped_mid_session_reconnects_with_new_url(sshd: SSHServer, port: int) -> None:
    changed = threading.Event()
    calls: list[str] = []

    def on_change(task_app: InProcessTaskApp) -> None:
        calls.append(task_app.url or "")
        changed.set()

    with ssh_app(sshd, port, on_url_change=on_change) as task_app:
        first = task_app.url or ""
        assert task_app.tunnel is not None
        (old_pid,) = task_app.tunnel.pids
        sshd.stop()  # listener and every session: the connection drops
        assert wait_until(lambda: not pid_alive(old_pid), 5), "ssh did not notice the drop"
        with socket.socket() as squatter:  # the old port stays taken: the URL must change
            squatter.bind(("127.0.0.1", remote_port(first)))
            squatter.listen()
            sshd.start()
            assert changed.wait(20), "the supervisor did not reconnect"
        assert calls == [task_app.url]
        assert task_app.url != first
        assert get(task_app.url or "")["pid"] == os.getpid()
        assert task_app.tunnel is not None
        (new_pid,) = task_app.tunnel.pids
        assert new_pid != old_pid and pid_alive(new_pid)


def test_hung_sshd_is_detected_within_seconds(sshd: SSHServer, port: int) -> None:
    changed = threading.Event()
    options = {"server_alive_interval": 1, "server_alive_count_max": 2, "connect_timeout": 2.0}
    with ssh_app(
        sshd, port, tunnel_options=options, on_url_change=lambda _app: changed.set()
    ) as task_app:
        first = task_app.url
        assert task_app.tunnel is not None
        (old_pid,) = task_app.tunnel.pids
        sshd.freeze()  # SIGSTOP: TCP stays up, nothing answers
        frozen_at = time.monotonic()
        try:
            assert wait_until(lambda: not pid_alive(old_pid), 8), "hung server not detected"
            detected = time.monotonic() - frozen_at
        finally:
            sshd.thaw()
        assert detected < 5, f"took {detected:.1f}s"
        assert changed.wait(20), "no reconnect after the server came back"
        assert task_app.url != first
        assert get(task_app.url or "")["pid"] == os.getpid()


CHILD = """
import json, time
from taskapp import InProcessTaskApp

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

options = json.loads(OPTIONS_JSON)
task_app = InProcessTaskApp(app=app, port=APP_PORT, tunnel_mode="ssh", tunnel_options=options)
task_app.start()
print("READY " + json.dumps({"url": task_app.url, "pids": list(task_app.tunnel.pids)}),
      flush=True)
time.sleep(60)
"""


def test_parent_sigkill_leaves_no_ssh(sshd: SSHServer, tmp_path: Path) -> None:
    code = CHILD.replace("OPTIONS_JSON", repr(json.dumps(sshd.tunnel_options()))).replace(
        "APP_PORT", str(free_port())
    )
    child = start_script(code, tmp_path)
    try:
        ready = json.loads(read_line_with(child, "READY ", timeout=30))
        (ssh_pid,) = ready["pids"]
        forwarded = remote_port(ready["url"])
        assert pid_alive(ssh_pid) and is_listening(forwarded)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert wait_until(lambda: not pid_alive(ssh_pid), 5), "ssh outlived its parent"
        assert wait_until(lambda: not is_listening(forwarded), 5), "remote listener left"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        child.communicate()


# -- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "options", "message"),
    [
        ("ssh", {}, "needs a server"),
        ("ssh", {"host": "-oProxyCommand=x"}, "host name"),
        ("ssh", {"host": "h", "public_base_url": "http://h:{prot}"}, "placeholders"),
        ("ssh", {"host": "h", "public_base_url": "h:{port}"}, "absolute http"),
        ("ssh", {"host": "h", "ssh_options": {"BatchMode": "no"}}, "set by taskapp"),
        ("ssh", {"host": "h", "remote_port": 70000}, "remote_port"),
        ("ssh", {"host": "h", "strict_host_key_checking": "ask"}, "one of"),
        ("localhost.run", {"public_base_url": "http://x:{port}"}, "prints its URL"),
        ("pinggy", {"nope": 1}, "unknown option"),
    ],
)
def test_invalid_options(mode: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        InProcessTaskApp(app=minimal_app(), tunnel_mode=mode, tunnel_options=options)
