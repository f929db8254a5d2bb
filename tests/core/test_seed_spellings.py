"""The seed's spellings and environment variables (issue 16 item 8, design/COMPAT.md).

Backend aliases in any case and with surrounding whitespace, ``SYNTH_TUNNEL_MODE`` as the
default mode, ``SYNTH_TASK_APP_URL`` for the preconfigured URL; explicit arguments win.
Backends that need a program or a network (cloudflared, a relay) are only resolved here,
not started: construction resolves the name and fails fast on what is missing.
"""

from __future__ import annotations

import sys

import httpx
import pytest

from taskapp import InProcessTaskApp
from taskapp.core.errors import TaskAppError
from taskapp.core.lifecycle import MODE_ALIASES, resolve_tunnel_name
from taskapp.core.plugins import get_registry
from tests.helpers import REPO, demo_config, run_child


@pytest.fixture(autouse=True)
def _no_seed_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYNTH_TUNNEL_MODE", raising=False)
    monkeypatch.delenv("SYNTH_TASK_APP_URL", raising=False)


@pytest.mark.parametrize(
    ("spelling", "backend"),
    [
        ("quick", "cloudflare-quick"),
        ("cloudflare_quick", "cloudflare-quick"),
        (" Cloudflare-Quick ", "cloudflare-quick"),
        ("named", "cloudflare-named"),
        ("synthtunnel", "relay"),
        ("synth_tunnel", "relay"),
        ("synth-tunnel", "relay"),
        ("SynthTunnel", "relay"),
        ("localhost", "local"),
        ("LOCAL", "local"),
        ("\tpreconfigured\n", "preconfigured"),
    ],
)
def test_seed_spellings_name_the_same_backend(spelling: str, backend: str) -> None:
    registry = get_registry()
    resolved = resolve_tunnel_name(spelling, list(registry.tunnels))
    # "synthtunnel" is also registered, as the relay backend under the seed's name
    assert issubclass(registry.tunnel(resolved), registry.tunnel(backend))


def test_every_alias_names_a_registered_backend() -> None:
    registered = set(get_registry().tunnels)
    assert set(MODE_ALIASES.values()) <= registered


def test_an_unknown_spelling_is_still_refused_with_the_list() -> None:
    with pytest.raises(TaskAppError) as caught:
        InProcessTaskApp(config=demo_config(), tunnel_mode="carrier_pigeon")
    assert "'carrier_pigeon'" in str(caught.value) and "available:" in str(caught.value)


def test_localhost_spelling_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    with InProcessTaskApp(config=demo_config(), port=0, tunnel_mode=" LocalHost ") as app:
        assert app.tunnel_backend == "local"
        assert app.url is not None and httpx.get(f"{app.url}/").status_code == 200


def test_synth_tunnel_mode_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTH_TUNNEL_MODE", "PreConfigured")
    monkeypatch.setenv("SYNTH_TASK_APP_URL", "https://tasks.example.test/")
    app = InProcessTaskApp(config=demo_config(), port=0)
    assert app.tunnel_backend == "preconfigured"
    # the URL the preconfigured tunnel will report, from SYNTH_TASK_APP_URL
    assert app._tunnel_options.url == "https://tasks.example.test/"


def test_explicit_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTH_TUNNEL_MODE", "synth_tunnel")
    monkeypatch.setenv("SYNTH_TASK_APP_URL", "https://from-env.example.test")
    with InProcessTaskApp(config=demo_config(), port=0, tunnel_mode="local") as app:
        assert app.tunnel_backend == "local" and app.url is not None
        assert app.url.startswith("http://127.0.0.1:")
    explicit = InProcessTaskApp(
        config=demo_config(),
        port=0,
        tunnel_mode="preconfigured",
        preconfigured_url="https://explicit.example.test",
    )
    assert explicit._tunnel_options.url == "https://explicit.example.test"
    backend = InProcessTaskApp(config=demo_config(), port=0, tunnel_backend="local")
    assert backend.tunnel_backend == "local"


def test_preconfigured_starts_with_the_environment_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTH_TASK_APP_URL", "https://tasks.example.test")
    with InProcessTaskApp(config=demo_config(), port=0, tunnel_mode="preconfigured") as app:
        assert app.url == "https://tasks.example.test"


def test_cli_serve_reads_synth_tunnel_mode() -> None:
    """``taskapp serve`` without --tunnel takes SYNTH_TUNNEL_MODE; an unknown one is named."""
    env = {"SYNTH_TUNNEL_MODE": "no_such_tunnel", "PATH": "/usr/bin:/bin"}
    result = run_child(
        [sys.executable, "-m", "taskapp", "serve", "support-intents", "--port", "0"],
        cwd=REPO,
        env={**env, "HOME": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "no_such_tunnel" in result.stderr
