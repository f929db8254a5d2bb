"""Cloudflare quick and named tunnels, end to end against the cloudflared STAND-IN.

Real parts: InProcessTaskApp with uvicorn, the process manager's children, the stand-in's
metrics server and its loopback "edge" that proxies real HTTP to the app. The stand-in
replaces only the cloudflared binary and Cloudflare's network (see tests/standins).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import taskapp
from taskapp import (
    ConfigurationError,
    InProcessTaskApp,
    TunnelAuthError,
    TunnelBinaryMissingError,
    TunnelError,
    TunnelProtocolError,
    TunnelRateLimitedError,
    TunnelTimeoutError,
    TunnelVerificationError,
)
from taskapp.core.backends import Tunnel, TunnelContext
from taskapp.core.plugins import get_registry
from taskapp.core.supervisor import TunnelSupervisor
from taskapp.plugins.tunnels.cloudflare import (
    CloudflaredExitedError,
    CloudflaredNetworkError,
    NamedOptions,
    NamedTunnel,
    QuickOptions,
    QuickTunnel,
    _sweep_stale_workdirs,
    _Watcher,
    find_cloudflared,
)
from tests.helpers import (
    assert_released,
    demo_config,
    free_port,
    port_is_free,
    run_child,
    start_child,
    wait_until,
)
from tests.tunnels._cloudflare_helpers import (
    STANDIN,
    Standin,
    fake_token,
    pid_alive,
    read_cmdline,
    read_environ,
    via_edge,
)
from tests.tunnels._cloudflare_helpers import standin as standin  # the fixture

KEY = "cf-test-key-0123456789"
QUICK_URL = re.compile(r"^https://[a-z0-9]+(-[a-z0-9]+)+\.trycloudflare\.com$")
HOSTNAME = "app.example.test"


def quick_app(standin: Standin, port: int, **options: Any) -> InProcessTaskApp:
    verify = options.pop("verify", True)
    return InProcessTaskApp(
        config=demo_config(),
        api_key=KEY,
        port=port,
        tunnel_mode="quick",
        skip_tunnel_verification=not verify,
        health_check_timeout=options.pop("health_check_timeout", 15.0),
        on_url_change=options.pop("on_url_change", None),
        tunnel_options={"resolve": standin.resolve, **options},
    )


def named_app(standin: Standin, port: int, **options: Any) -> InProcessTaskApp:
    standin.env("STANDIN_NAMED_HOSTNAME", HOSTNAME)
    force_new = options.pop("force_new", False)
    return InProcessTaskApp(
        config=demo_config(),
        api_key=KEY,
        port=port,
        tunnel_mode="named",
        skip_tunnel_verification=False,
        force_new_tunnel=force_new,
        health_check_timeout=15.0,
        tunnel_options={
            "hostname": HOSTNAME,
            "resolve": {HOSTNAME: f"127.0.0.1:{standin.edge_port}"},
            **options,
        },
    )


def edge_get(standin: Standin, url: str, path: str) -> tuple[int, bytes]:
    return via_edge(standin.edge_port, url, path, headers={"X-API-Key": KEY})


# -- registration and import -------------------------------------------------------------


def test_registered_under_the_seed_modes() -> None:
    registry = get_registry()
    assert registry.tunnel("cloudflare-quick") is QuickTunnel
    assert registry.tunnel("cloudflare-named") is NamedTunnel
    assert QuickTunnel.supervised and NamedTunnel.supervised


def test_import_is_cheap() -> None:
    code = (
        "import sys, taskapp.plugins.tunnels.cloudflare\n"
        "heavy = [m for m in ('httpx', 'fastapi', 'uvicorn', 'starlette') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    run_child([sys.executable, "-c", code], check=True, timeout=30)


# -- quick: happy path ---------------------------------------------------------------------


def test_quick_tunnel_serves_the_app_through_the_edge(standin: Standin, port: int) -> None:
    with quick_app(standin, port) as task_app:
        url = task_app.url
        assert url is not None
        assert QUICK_URL.match(url), url
        assert task_app.tunnel is not None
        assert task_app.tunnel.stable is False
        (pid,) = task_app.tunnel.pids
        argv = read_cmdline(pid)
        # the documented command line, with an empty config file
        assert argv[argv.index("--url") + 1] == f"http://127.0.0.1:{port}"
        assert re.fullmatch(r"127\.0\.0\.1:\d+", argv[argv.index("--metrics") + 1])
        assert "--no-autoupdate" in argv
        config = Path(argv[argv.index("--config") + 1])
        assert config.read_text() == ""
        # a real request through the stand-in edge reaches the task app
        status, body = edge_get(standin, url, "/health")
        assert status == 200, body
        status, body = edge_get(standin, url, "/task_info?seed=2")
        assert status == 200, body
        # the edge routes by hostname, like Cloudflare's
        assert via_edge(standin.edge_port, "https://other.trycloudflare.com", "/health")[0] == 404
        started = time.monotonic()
    # cloudflared honoured SIGTERM: well before the 1 s grace that would end in SIGKILL
    assert time.monotonic() - started < 0.9
    assert not pid_alive(pid)
    assert not config.exists(), "the temporary config directory was left behind"
    assert_released(port)
    standin.assert_nothing_left()


def test_ready_waits_for_the_metrics_server(standin: Standin, port: int) -> None:
    # The connection is logged as registered, but /ready says 503 for 0.6 s more.
    standin.env("STANDIN_READY_DELAY", "0.6")
    started = time.monotonic()
    with quick_app(standin, port, verify=False) as task_app:
        assert time.monotonic() - started >= 0.6
        (pid,) = task_app.tunnel.pids if task_app.tunnel else (0,)
        argv = read_cmdline(pid)
        metrics = argv[argv.index("--metrics") + 1]
        assert via_edge(int(metrics.rsplit(":", 1)[1]), "http://x", "/ready")[0] == 200
    standin.assert_nothing_left()


def test_quick_verification_retries_until_the_edge_resolves(standin: Standin, port: int) -> None:
    standin.env("STANDIN_EDGE_DELAY", "0.8")  # "DNS" appears 0.8 s after registration
    started = time.monotonic()
    with quick_app(standin, port) as task_app:
        elapsed = time.monotonic() - started
        assert elapsed >= 0.8
        assert edge_get(standin, task_app.url or "", "/health")[0] == 200
    standin.assert_nothing_left()


def test_quick_verification_failure_says_what_was_tried(standin: Standin, port: int) -> None:
    standin.env("STANDIN_EDGE_DELAY", "30")
    started = time.monotonic()
    with pytest.raises(TunnelVerificationError) as info:
        quick_app(standin, port, verify_timeout=0.6).start()
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert ".trycloudflare.com/health" in message
    assert f"127.0.0.1:{standin.edge_port}" in message and "resolve option" in message
    assert "backoff for 0.6s" in message and "attempt" in message
    assert "verify_timeout" in message
    assert KEY not in message
    assert_released(port)
    standin.assert_nothing_left()


# -- quick: failures -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "error", "needles"),
    [
        ("rate_limit", TunnelRateLimitedError, ["429", "1015", "named", "ssh"]),
        ("dns_failure", CloudflaredNetworkError, ["no such host", "api.trycloudflare.com"]),
        ("crash_after_url", CloudflaredExitedError, ["after printing its URL", "panic:"]),
    ],
)
def test_quick_failures_are_typed_and_fast(
    standin: Standin, port: int, mode: str, error: type[TunnelError], needles: list[str]
) -> None:
    standin.mode(mode)
    started = time.monotonic()
    with pytest.raises(error) as info:
        quick_app(standin, port).start()
    assert time.monotonic() - started < 5, "a failing cloudflared must be reported at once"
    text = str(info.value)
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text}"
    assert info.value.backend == "cloudflare-quick"
    assert info.value.log_tail
    if mode == "dns_failure":
        # the URL inside the error line is never taken for the tunnel's URL
        assert "after printing its URL" not in text
    assert_released(port)
    standin.assert_nothing_left()


@pytest.mark.parametrize(
    ("mode", "needle"),
    [("no_url", "no quick-tunnel URL"), ("slow_register", "no registered connection")],
)
def test_quick_timeouts(standin: Standin, port: int, mode: str, needle: str) -> None:
    standin.mode(mode)
    started = time.monotonic()
    with pytest.raises(TunnelTimeoutError) as info:
        quick_app(standin, port, start_timeout=1.0).start()
    assert 1.0 <= time.monotonic() - started < 4
    assert needle in str(info.value)
    assert "start_timeout" in str(info.value)
    assert "Requesting new quick Tunnel" in (info.value.log_tail or "")
    assert_released(port)
    standin.assert_nothing_left()


def test_unconfirmed_url_is_refused(standin: Standin, port: int) -> None:
    standin.mode("quicktunnel_mismatch")
    with pytest.raises(TunnelProtocolError) as info:
        quick_app(standin, port).start()
    text = str(info.value)
    assert "/quicktunnel reports 'some-other-quick-tunnel.trycloudflare.com'" in text
    assert "unconfirmed URL" in text and "named" in text
    assert info.value.log_tail and "trycloudflare.com" in info.value.log_tail
    assert_released(port)
    standin.assert_nothing_left()


def test_url_only_from_the_box() -> None:
    watcher = _Watcher()
    for line in (
        'failed to request quick Tunnel: Post "https://api.trycloudflare.com/tunnel": dial tcp',
        "INF see https://fake-words-here.trycloudflare.com for details",
        "INF |  https://api.trycloudflare.com  |",
    ):
        watcher.on_line("stderr", line)
    assert watcher.url is None
    watcher.on_line("stderr", "INF |  https://real-quick-tunnel-words.trycloudflare.com    |")
    assert watcher.url == "https://real-quick-tunnel-words.trycloudflare.com"


def test_ten_megabytes_of_logs_do_not_stall(standin: Standin, port: int) -> None:
    standin.mode("flood_logs")
    # A stall would never print the URL; a loaded 2-core machine needs >15 s to drain 10 MB.
    with quick_app(standin, port, health_check_timeout=60.0) as task_app:
        assert edge_get(standin, task_app.url or "", "/health")[0] == 200
    standin.assert_nothing_left()


def test_metrics_port_race_is_retried(standin: Standin, port: int, tmp_path: Path) -> None:
    marker = tmp_path / "busy-once"
    standin.env("STANDIN_METRICS_BUSY_ONCE", str(marker))
    with quick_app(standin, port) as task_app:
        assert marker.exists(), "the first cloudflared did not hit the busy port"
        assert edge_get(standin, task_app.url or "", "/health")[0] == 200
    standin.assert_nothing_left()


def test_ignoring_sigterm_is_killed_after_grace(standin: Standin, port: int) -> None:
    standin.mode("ignore_sigterm")
    with quick_app(standin, port, close_grace=0.5) as task_app:
        (pid,) = task_app.tunnel.pids if task_app.tunnel else (0,)
        started = time.monotonic()
    took = time.monotonic() - started
    assert 0.5 <= took < 2.0, took
    assert not pid_alive(pid)
    standin.assert_nothing_left()


# -- supervision ---------------------------------------------------------------------------


class UrlChanges:
    """A url_changed hook implementation, registered on the live registry for one test."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    @taskapp.hookimpl
    def url_changed(self, task_app: Any, old_url: str, new_url: str) -> None:
        self.seen.append((old_url, new_url))


def test_crash_restarts_with_a_new_url(standin: Standin, port: int) -> None:
    changed = threading.Event()
    hook = UrlChanges()
    registry = get_registry()
    registry.pm.register(hook, name="test-url-changes")
    try:
        with quick_app(standin, port, on_url_change=lambda app: changed.set()) as task_app:
            old_url = task_app.url or ""
            (old_pid,) = task_app.tunnel.pids if task_app.tunnel else (0,)
            os.kill(old_pid, signal.SIGKILL)  # cloudflared crashes while the app runs
            assert changed.wait(15), "on_url_change never fired"
            new_url = task_app.url or ""
            assert new_url != old_url and QUICK_URL.match(new_url)
            assert hook.seen == [(old_url, new_url)]
            (new_pid,) = task_app.tunnel.pids if task_app.tunnel else (0,)
            assert new_pid != old_pid and pid_alive(new_pid)
            assert edge_get(standin, new_url, "/health")[0] == 200
    finally:
        registry.pm.unregister(name="test-url-changes")
    assert not pid_alive(new_pid)
    standin.assert_nothing_left()


def test_failed_restart_is_retried_with_a_warning(
    standin: Standin, port: int, caplog: pytest.LogCaptureFixture
) -> None:
    changed = threading.Event()
    caplog.set_level(logging.WARNING, logger="taskapp.tunnel")
    with quick_app(standin, port, on_url_change=lambda app: changed.set()) as task_app:
        old_url = task_app.url
        (old_pid,) = task_app.tunnel.pids if task_app.tunnel else (0,)
        standin.mode("rate_limit")  # the next start is refused ...
        os.kill(old_pid, signal.SIGKILL)
        assert wait_until(lambda: "failed (1/5)" in caplog.text, 10), caplog.text
        assert "TunnelRateLimited" in caplog.text or "rate limited" in caplog.text
        standin.mode()  # ... the one after that works
        assert changed.wait(15), caplog.text
        assert task_app.url != old_url
        assert edge_get(standin, task_app.url or "", "/health")[0] == 200
    standin.assert_nothing_left()


def test_supervisor_gives_up_with_a_warning(
    standin: Standin, caplog: pytest.LogCaptureFixture
) -> None:
    # The core supervisor with short delays (the lifecycle's take 15 s to give up), driving
    # the real backend: every restart is refused by the rate limit.
    caplog.set_level(logging.WARNING, logger="taskapp.tunnel")
    changed: list[Tunnel] = []
    backend = QuickTunnel(QuickOptions())
    ctx = TunnelContext(
        local_url=f"http://127.0.0.1:{free_port()}",
        host="127.0.0.1",
        port=1,
        api_key=KEY,
        force_new=False,
        start_timeout=10.0,
        logger=logging.getLogger("taskapp.tunnel.cloudflare-quick"),
        url_changed=changed.append,
    )
    supervisor = TunnelSupervisor(backend, ctx, max_restarts=3, first_delay=0.05, max_delay=0.1)
    try:
        (pid,) = backend.open(ctx).pids
        supervisor.start()
        standin.mode("rate_limit")
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: supervisor.gave_up, 15), caplog.text
        assert "giving up on tunnel 'cloudflare-quick' after 3 attempts" in caplog.text
        assert "(3/3)" in caplog.text and not changed
        warnings = [r for r in caplog.records if "giving up" in r.getMessage()]
        assert [r.levelno for r in warnings] == [logging.WARNING]
    finally:
        supervisor.stop()
        backend.close()
    standin.assert_nothing_left()


def test_parent_sigkill_leaves_no_cloudflared(standin: Standin, tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
        "from taskapp import InProcessTaskApp\n"
        "from tests.helpers import demo_config\n"
        "app = InProcessTaskApp(config=demo_config(), tunnel_mode='quick', port=%d)\n"
        "app.start()\n"
        "print('PID', app.tunnel.pids[0], flush=True)\n"
        "time.sleep(60)\n" % free_port()
    )
    parent = start_child(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line.startswith("PID "), parent.stderr.read() if parent.stderr else line
        child = int(line.split()[1])
        assert pid_alive(child)
        argv = read_cmdline(child)
        workdir = Path(argv[argv.index("--config") + 1]).parent
        parent.kill()
        parent.wait(5)
        assert wait_until(lambda: not pid_alive(child), 5), "cloudflared outlived its parent"
        # the dead parent could not remove its work directory; the next start sweeps it
        assert workdir.exists()
        _sweep_stale_workdirs()
        assert not workdir.exists()
    finally:
        parent.kill()
        parent.wait(5)
        for stream in (parent.stdout, parent.stderr):
            if stream is not None:
                stream.close()
    standin.assert_nothing_left()


# -- finding the binary --------------------------------------------------------------------


def test_missing_binary_explains_how_to_install(
    standin: Standin, port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    started = time.monotonic()
    with pytest.raises(TunnelBinaryMissingError) as info:
        quick_app(standin, port).start()
    assert time.monotonic() - started < 5
    text = str(info.value)
    for needle in (
        "not found on PATH",
        "Linux",
        "macOS",
        "brew install cloudflared",
        "Windows",
        "winget",
        "TASKAPP_CLOUDFLARED",
        "cloudflared_path",
    ):
        assert needle in text, needle
    assert_released(port)


def test_binary_precedence_option_env_path(
    standin: Standin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copies = {}
    for name in ("option", "env", "path"):
        directory = tmp_path / name
        directory.mkdir()
        (directory / "cloudflared").symlink_to(STANDIN)
        copies[name] = str(directory / "cloudflared")
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    assert find_cloudflared() == copies["path"]
    monkeypatch.setenv("TASKAPP_CLOUDFLARED", copies["env"])
    assert find_cloudflared() == copies["env"]
    assert find_cloudflared(copies["option"]) == copies["option"]
    monkeypatch.setenv("TASKAPP_CLOUDFLARED", str(tmp_path / "nope"))
    with pytest.raises(TunnelBinaryMissingError, match="TASKAPP_CLOUDFLARED points to"):
        find_cloudflared()
    with pytest.raises(TunnelBinaryMissingError, match="cloudflared_path option"):
        find_cloudflared(str(tmp_path / "missing"))


def test_binary_from_option_is_used(standin: Standin, port: int, tmp_path: Path) -> None:
    (tmp_path / "cloudflared-2025").symlink_to(STANDIN)
    path = str(tmp_path / "cloudflared-2025")
    with quick_app(standin, port, cloudflared_path=path, verify=False) as task_app:
        (pid,) = task_app.tunnel.pids if task_app.tunnel else (0,)
        # the stand-in is a script: its interpreter's argv names the program it runs
        assert path in read_cmdline(pid)
    standin.assert_nothing_left()


# -- named ---------------------------------------------------------------------------------


def no_process_has(token: str) -> bool:
    """True when no process on the machine has ``token`` in its argv."""
    for name in os.listdir("/proc"):
        if name.isdigit() and any(token in arg for arg in read_cmdline(int(name))):
            return False
    return True


def test_named_token_in_environment_never_argv(standin: Standin, port: int) -> None:
    token = fake_token()
    with named_app(standin, port, token=token) as task_app:
        assert task_app.url == f"https://{HOSTNAME}"
        assert task_app.tunnel is not None and task_app.tunnel.stable
        (pid,) = task_app.tunnel.pids
        argv = read_cmdline(pid)
        assert "run" in argv and argv[argv.index("--url") + 1] == f"http://127.0.0.1:{port}"
        assert no_process_has(token)
        assert read_environ(pid).get("TUNNEL_TOKEN") == token
        assert edge_get(standin, task_app.url, "/health")[0] == 200
    standin.assert_nothing_left()


def test_named_token_file_transport(standin: Standin, port: int, tmp_path: Path) -> None:
    token = fake_token()
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)  # a secret file others can read is refused
    with named_app(standin, port, token_file=str(token_file), token_transport="file") as app:
        (pid,) = app.tunnel.pids if app.tunnel else (0,)
        argv = read_cmdline(pid)
        passed = Path(argv[argv.index("--token-file") + 1])
        assert passed != token_file  # a private copy, not the user's file
        # cloudflared read it before registering; it is deleted at once (a SIGKILL of this
        # process could not delete it later)
        assert not passed.exists(), "the token copy stays on disk while the tunnel runs"
        assert "TUNNEL_TOKEN" not in read_environ(pid)
        assert no_process_has(token)
        assert edge_get(standin, app.url or "", "/health")[0] == 200
    assert token_file.read_text().strip() == token  # the user's file is untouched
    standin.assert_nothing_left()


def test_token_file_copy_is_private(tmp_path: Path) -> None:
    token = fake_token()
    options = NamedOptions(hostname=HOSTNAME, token=token, token_transport="file")
    backend = NamedTunnel(options)
    env, extra_env, secrets = backend._child_env(tmp_path)
    assert backend._token_path is not None
    assert stat.S_IMODE(backend._token_path.stat().st_mode) == 0o600
    assert backend._token_path.read_text() == token
    assert "TUNNEL_TOKEN" not in env and not extra_env and secrets == [token]


def test_named_token_file_with_an_old_cloudflared(
    standin: Standin, port: int, tmp_path: Path
) -> None:
    standin.mode("old_version")
    with pytest.raises(TunnelProtocolError, match="token_transport='env'"):
        named_app(standin, port, token=fake_token(), token_transport="file").start()
    assert_released(port)
    standin.assert_nothing_left()


def test_named_token_from_environment_variable(
    standin: Standin, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = fake_token()
    monkeypatch.setenv("TUNNEL_TOKEN", token)
    with named_app(standin, port) as task_app:
        (pid,) = task_app.tunnel.pids if task_app.tunnel else (0,)
        assert no_process_has(token)
        assert read_environ(pid).get("TUNNEL_TOKEN") == token
    standin.assert_nothing_left()


@pytest.mark.parametrize(
    ("mode", "token", "needle"),
    [
        ("", "not-a-token-at-all", "Provided Tunnel token is not valid"),
        ("unauthorized", None, "Invalid tunnel secret"),
    ],
)
def test_named_rejected_token(
    standin: Standin, port: int, mode: str, token: str | None, needle: str
) -> None:
    if mode:
        standin.mode(mode)
    secret = token or fake_token()
    with pytest.raises(TunnelAuthError) as info:
        named_app(standin, port, token=secret).start()
    assert needle in str(info.value)
    assert secret not in str(info.value) and secret not in (info.value.log_tail or "")
    assert_released(port)
    standin.assert_nothing_left()


def test_named_requires_hostname_and_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNNEL_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="hostname"):
        InProcessTaskApp(config=demo_config(), tunnel_mode="named", tunnel_options={"token": "x"})
    with pytest.raises(ConfigurationError, match="TUNNEL_TOKEN"):
        InProcessTaskApp(
            config=demo_config(), tunnel_mode="named", tunnel_options={"hostname": HOSTNAME}
        )
    with pytest.raises(ConfigurationError, match="resolve"):
        InProcessTaskApp(
            config=demo_config(), tunnel_mode="quick", tunnel_options={"resolve": {"a": "b/c"}}
        )


def test_named_force_new_restarts_the_connector(standin: Standin) -> None:
    token = fake_token()
    with named_app(standin, free_port(), token=token) as first:
        (first_pid,) = first.tunnel.pids if first.tunnel else (0,)
        # a second connector for the same token is refused without force_new ...
        second_port = free_port()
        with pytest.raises(TunnelError, match="force_new_tunnel=True"):
            named_app(standin, second_port, token=token).start()
        assert pid_alive(first_pid)
        assert port_is_free(second_port)
        # ... and with it, the first connector is stopped and a fresh one serves this app
        with named_app(standin, second_port, token=token, force_new=True) as second:
            (second_pid,) = second.tunnel.pids if second.tunnel else (0,)
            assert not pid_alive(first_pid)
            assert edge_get(standin, second.url or "", "/health")[0] == 200
            time.sleep(1.0)  # the first app's supervisor must not start it again
            assert len(standin.leftovers()) == 1
        assert not pid_alive(second_pid)
    standin.assert_nothing_left()
