"""``taskapp serve --tunnel synthtunnel`` gives the user the relay's worker token safely:
``--worker-token-file F`` (mode 0600, removed on stop) or ``--show-key``; otherwise only its
fingerprint, and the token appears in no output."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx

from taskapp.core.secrets import fingerprint
from tests.cli._cli_helpers import KEY, Served
from tests.relay._relay_helpers import ADMIN, running_relay


def _public(url: str, path: str, headers: dict[str, str]) -> int:
    return httpx.get(url + path, headers=headers, timeout=10, trust_env=False).status_code


def test_worker_token_file_is_0600_works_and_is_removed_on_stop(tmp_path: Path) -> None:
    token_path = tmp_path / "worker.token"
    with running_relay() as relay:
        server = Served(
            "support-intents",
            "--tunnel",
            "synthtunnel",
            "--tunnel-option",
            f"relay_url={relay.url}",
            "--worker-token-file",
            str(token_path),
            ENVIRONMENT_API_KEY=KEY,
            TASKAPP_RELAY_TOKEN=ADMIN,
        )
        with server:
            url = server.wait_url(60)
            assert "/s/rt_" in url
            assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
            token = token_path.read_text().strip()
            assert len(token) >= 32
            assert f"worker token: {fingerprint(token)}" in server.stdout
            assert f"written to {token_path}" in server.stdout
            key = {"X-API-Key": KEY}
            assert _public(url, "/health", {**key, "X-SynthTunnel-Worker-Token": token}) == 200
            assert _public(url, "/health", key) == 401
            code, _, stderr = server.stop()
        assert code == 0, stderr
    assert not token_path.exists()
    output = server.stdout + server.stderr
    assert token not in output
    assert KEY not in output


def test_show_key_prints_the_worker_token_and_without_it_only_a_fingerprint() -> None:
    with running_relay() as relay:
        common = ("support-intents", "--tunnel", "synthtunnel", "--tunnel-option")
        with Served(
            *common,
            f"relay_url={relay.url}",
            "--show-key",
            ENVIRONMENT_API_KEY=KEY,
            TASKAPP_RELAY_TOKEN=ADMIN,
        ) as shown:
            url = shown.wait_url(60)
            line = next(x for x in shown.stdout.splitlines() if "worker token value:" in x)
            token = line.split()[-1]
            headers = {"X-API-Key": KEY, "X-SynthTunnel-Worker-Token": token}
            assert _public(url, "/health", headers) == 200
            shown.stop()
        with Served(
            *common, f"relay_url={relay.url}", ENVIRONMENT_API_KEY=KEY, TASKAPP_RELAY_TOKEN=ADMIN
        ) as quiet:
            quiet.wait_url(60)
            assert "worker token value:" not in quiet.stdout
            assert "--worker-token-file FILE writes it" in quiet.stdout
            quiet.stop()


def test_worker_token_file_in_a_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    from tests.cli._cli_helpers import taskapp

    result = taskapp(
        "serve", "support-intents", "--worker-token-file", str(tmp_path / "nope" / "token")
    )
    assert result.returncode == 2, result.stderr
    assert "--worker-token-file" in result.stderr and "does not exist" in result.stderr
