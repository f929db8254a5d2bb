"""``taskapp relay serve`` / ``taskapp relay token`` as a user runs them: child processes,
signals, and a task app whose process is SIGKILLed."""

from __future__ import annotations

import concurrent.futures
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx

from taskapp import InProcessTaskApp
from tests.helpers import free_port, port_is_free, run_child, start_child
from tests.helpers import wait_until as wait_for
from tests.relay._relay_helpers import (
    ADMIN,
    RelayProcess,
    TaskAppProbe,
    token_file,
)

ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_child(
        [sys.executable, "-m", "taskapp", *args],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_relay_token_prints_a_fresh_token() -> None:
    first, second = run_cli("relay", "token"), run_cli("relay", "token", "--name", "ops")
    assert first.returncode == 0
    token = first.stdout.strip()
    assert len(token) >= 43 and ":" not in token
    assert second.stdout.startswith("ops:") and second.stdout.strip() != f"ops:{token}"
    assert run_cli("relay").returncode == 2


def test_serve_refuses_a_token_file_others_can_read(tmp_path: Path) -> None:
    path = token_file(tmp_path, mode=0o644)
    result = run_cli("relay", "serve", "--port", "0", "--admin-token-file", str(path))
    assert result.returncode == 2
    assert "chmod 600" in result.stderr
    assert ADMIN not in result.stderr + result.stdout


def test_serve_then_sigterm_drains_in_flight_requests(tmp_path: Path) -> None:
    with RelayProcess(token_file(tmp_path), "--drain-timeout", "5") as relay:
        url = relay.wait_url()
        assert httpx.get(url + "/healthz").json()["ok"] is True
        assert ADMIN not in "".join(relay.lines) + relay.stderr
        probe = TaskAppProbe()
        app = InProcessTaskApp(
            app=probe,
            port=free_port(),
            tunnel_mode="synthtunnel",
            tunnel_options={"relay_url": url, "admin_token": ADMIN, "delete_timeout": 1.0},
        )
        with app, concurrent.futures.ThreadPoolExecutor(1) as pool:
            assert app.url is not None
            headers = {"X-SynthTunnel-Worker-Token": str(app.task_app_worker_token)}
            slow = pool.submit(httpx.get, f"{app.url}/slow?s=2", headers=headers, timeout=10)
            # SIGTERM only once the request is in the app: the drain must wait for it (a
            # fixed sleep here raced the request on a busy machine).
            assert probe.slow_started.wait(5)
            relay.proc.send_signal(signal.SIGTERM)
            assert wait_for(
                lambda: httpx.get(f"{app.url}/health", headers=headers).status_code == 503, 3
            )
            assert slow.result(10).status_code == 200  # finished during the drain
            assert relay.proc.wait(10) == 0
        assert "drain" not in relay.stderr or "still running" not in relay.stderr


def test_a_sigkilled_task_app_leaves_nothing_behind(tmp_path: Path) -> None:
    with RelayProcess(token_file(tmp_path), "--reattach-grace", "0.5") as relay:
        url = relay.wait_url()
        port = free_port()
        script = tmp_path / "child.py"
        script.write_text(
            textwrap.dedent(
                f"""
                import sys, time
                sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
                from taskapp import InProcessTaskApp
                from tests.relay._relay_helpers import TaskAppProbe
                app = InProcessTaskApp(app=TaskAppProbe(), port={port}, tunnel_mode="synthtunnel",
                                       tunnel_options={{"relay_url": {url!r}, "admin_token": {ADMIN!r}}})
                app.start()
                print("URL", app.url, app.task_app_worker_token, flush=True)
                time.sleep(60)
                """
            )
        )
        child = start_child(
            [sys.executable, str(script)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=str(Path(__file__).resolve().parents[2]),
        )
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line.startswith("URL "), (
                child.stderr.read() if child.stderr and child.poll() is not None else line
            )
            _, public_url, worker = line.split()
            headers = {"X-SynthTunnel-Worker-Token": worker}
            assert httpx.get(public_url + "/health", headers=headers).status_code == 200
            child.send_signal(signal.SIGKILL)
            child.wait(5)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(5)
            for stream in (child.stdout, child.stderr):
                if stream is not None:
                    stream.close()
        # The relay notices at once (503), then forgets the lease after the grace period.
        assert wait_for(lambda: httpx.get(public_url, headers=headers).status_code == 404, 5)
        leases = httpx.get(url + "/api/v1/synthtunnel/leases", headers=ADMIN_AUTH).json()
        assert leases == {"leases": []}
        assert port_is_free(port)


def _serve_parser() -> Any:
    import argparse

    from taskapp.cli import relay as relay_cli

    top = argparse.ArgumentParser()
    relay_cli.add_parser(top.add_subparsers())
    relay_parser = top._subparsers._group_actions[0].choices["relay"]  # type: ignore[union-attr,index]
    return relay_parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[index]


def test_relay_serve_help_gives_every_limit_flag_a_default_and_a_unit() -> None:
    import re

    from taskapp.cli._common import parse_size

    serve = _serve_parser()
    groups = {group.title: group for group in serve._action_groups}
    limit_actions = groups["limits"]._group_actions
    flags = {action.option_strings[0] for action in limit_actions}
    # every --max-*, window, ttl, timeout and budget flag is in the limits group
    every = {a.option_strings[0] for a in serve._actions if a.option_strings}
    expected = {
        f
        for f in every
        if f.startswith("--max-")
        or f.endswith(("-window", "-ttl", "-timeout", "-budget", "-grace", "-deadline"))
    }
    assert expected <= flags, expected - flags
    for action in limit_actions:
        flag, text = action.option_strings[0], action.help or ""
        match = re.search(r"default (\S+?)[;)]", text)
        assert match, f"{flag}: no default in {text!r}"
        shown = match.group(1)
        if action.metavar == "SIZE":
            assert parse_size(shown) == action.default, (flag, shown, action.default)
            assert re.search(r"[KMG]i?B$", shown), f"{flag}: default {shown} without a unit"
        elif action.metavar == "SECONDS":
            assert float(shown) == action.default, (flag, shown, action.default)
            assert "seconds" in text, f"{flag}: no unit"
        else:
            assert action.metavar == "N", flag
            assert int(shown) == action.default, (flag, shown, action.default)
    rendered = run_cli("relay", "serve", "--help")
    assert rendered.returncode == 0
    for flag in flags:
        assert flag in rendered.stdout
    assert "sizes take bytes or a unit" in rendered.stdout


def test_serve_refuses_a_state_file_it_cannot_write_naming_it(tmp_path: Path) -> None:
    import os

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    command = [sys.executable, "-m", "taskapp", "relay", "serve", "--port", "0"]
    result = run_child(
        [*command, "--state-file", str(blocker / "state.json")],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "TASKAPP_RELAY_ADMIN_TOKEN": ADMIN},
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert f"{blocker / 'state.json'}" in result.stderr
    assert "is a file, not a directory" in result.stderr
    assert "listening" not in result.stdout
