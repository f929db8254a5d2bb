"""Errors that point at the right thing (issue 14, item 9).

* ``--tunnel quick`` without cloudflared fails before the app is even loaded, and the CLI
  hint is a ``--tunnel-option``, not Python syntax;
* a cloudflared that exits without printing says so, instead of "its last output is below";
* a missing SSH ``identity_file`` is a missing file, not a rejected login, and a missing
  ``ssh`` program fails before the server starts.

The "cloudflared" programs here are two-line shell scripts: **stand-ins** for a crashing
cloudflared (the real program is not installed on the test machine).
"""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from taskapp import ConfigurationError, InProcessTaskApp, TunnelBinaryMissingError
from taskapp.cli._common import cli_words
from taskapp.plugins.tunnels.cloudflare import CloudflaredExitedError
from tests.cli._cli_helpers import TASKAPP, env
from tests.helpers import free_port, minimal_app, port_is_free, run_child

MARKED_APP = """\
from pathlib import Path
Path({marker!r}).write_text("loaded")
from taskapp import TaskAppConfig
def build_config():
    return TaskAppConfig(app_id="x", name="x", description="x", describe_taskset=dict,
                         provide_task_instances=lambda seeds: [], rollout=lambda r, h: {{}})
"""


def test_cli_quick_tunnel_without_cloudflared_fails_before_loading_the_app(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "loaded.txt"
    app = tmp_path / "marked_app.py"
    app.write_text(MARKED_APP.format(marker=str(marker)))
    empty = tmp_path / "bin"
    empty.mkdir()
    child_env = env(PATH=str(empty))
    child_env.pop("TASKAPP_CLOUDFLARED", None)
    result = run_child(
        [TASKAPP, "-v", "serve", str(app), "--tunnel", "quick", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1, result.stderr
    assert "cloudflared was not found on PATH" in result.stderr
    assert "--tunnel-option cloudflared_path=/full/path/to/cloudflared" in result.stderr
    assert "tunnel_options" not in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists(), "the app was loaded (and a server started) before the check"


def test_quick_tunnel_without_cloudflared_fails_in_the_constructor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("TASKAPP_CLOUDFLARED", raising=False)
    port = free_port()
    with pytest.raises(TunnelBinaryMissingError, match="not found on PATH") as info:
        InProcessTaskApp(app=minimal_app(), port=port, tunnel_mode="quick")
    assert info.value.backend == "cloudflare-quick"
    assert port_is_free(port)


def _program(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ("exit 3\n", "It printed nothing."),
        ("echo 'ERR failed to start: stand-in crash' >&2\nexit 3\n", "Its last output is below."),
    ],
)
def test_a_cloudflared_that_exits_says_whether_it_printed_anything(
    tmp_path: Path, body: str, said: str
) -> None:
    program = _program(tmp_path / "cloudflared", body)
    port = free_port()
    app = InProcessTaskApp(
        app=minimal_app(),
        port=port,
        tunnel_mode="quick",
        tunnel_options={"cloudflared_path": program},
    )
    with pytest.raises(CloudflaredExitedError) as info:
        app.start()
    message = str(info.value)
    assert said in message
    if said.startswith("Its last output"):
        assert "stand-in crash" in message.split(said, 1)[1]
    else:
        assert "below" not in message and info.value.log_tail is None
    assert port_is_free(port)


def test_missing_ssh_identity_file_is_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "id_missing"
    with pytest.raises(ConfigurationError, match=r"identity_file .*id_missing.*no such file"):
        InProcessTaskApp(
            app=minimal_app(),
            tunnel_backend="ssh",
            tunnel_options={"host": "127.0.0.1", "identity_file": str(missing)},
        )


def test_missing_ssh_program_fails_before_the_server_starts(tmp_path: Path) -> None:
    port = free_port()
    with pytest.raises(TunnelBinaryMissingError, match="openssh-client"):
        InProcessTaskApp(
            app=minimal_app(),
            port=port,
            tunnel_backend="ssh",
            tunnel_options={"host": "127.0.0.1", "ssh_path": str(tmp_path / "no-ssh")},
        )
    assert port_is_free(port)


@pytest.mark.parametrize(
    ("library", "cli"),
    [
        (
            "or pass tunnel_options={'cloudflared_path': '/full/path/to/cloudflared'}.",
            "or pass --tunnel-option cloudflared_path=/full/path/to/cloudflared.",
        ),
        (
            "pass tunnel_options={'host': 'my.server', 'user': ..., 'identity_file': ...}",
            "pass --tunnel-option host=my.server --tunnel-option user=... "
            "--tunnel-option identity_file=...",
        ),
        ("raise tunnel_options={'start_timeout': ...}", "raise --tunnel-option start_timeout=..."),
        ("set server_options={'workers': 2}", "set --server-option workers=2"),
        ("or an ssh tunnel (tunnel_backend='ssh')", "or an ssh tunnel (--tunnel ssh)"),
        ("a named tunnel (tunnel_mode='named' with a token", "a named tunnel (--tunnel named with"),
    ],
)
def test_cli_hints_use_command_line_options(library: str, cli: str) -> None:
    assert cli_words(library).startswith(cli)


def test_no_python_dict_syntax_survives_in_cli_words() -> None:
    for text in ("tunnel_options={'a': 1, 'b': 'x'}", "server_options={'graceful_timeout': 5}"):
        assert "{" not in cli_words(text) and "_options" not in cli_words(text)
