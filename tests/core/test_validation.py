"""Every constructor validation rule: raised before anything starts, with the seed's types."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from taskapp import (
    ConfigurationError,
    InProcessTaskApp,
    TaskAppFileNotFoundError,
    UnknownBackendError,
)
from tests.helpers import demo_config, minimal_app, port_is_free


def test_requires_exactly_one_input() -> None:
    with pytest.raises(ValueError, match="exactly one of app=, config=, config_factory="):
        InProcessTaskApp()
    with pytest.raises(ValueError, match=r"got app, config"):
        InProcessTaskApp(app=minimal_app(), config=demo_config())


@pytest.mark.parametrize("port", [80, 1023, 65536, -1, "8114", 8114.0, True])
def test_port_range(port: Any) -> None:
    with pytest.raises(ValueError, match=r"port must be an integer in \[1024, 65535\], or 0"):
        InProcessTaskApp(app=minimal_app(), port=port)


def test_port_zero_means_any_free_port() -> None:
    with InProcessTaskApp(app=minimal_app(), port=0) as ta:
        assert ta.requested_port == 0
        assert 1024 <= ta.port <= 65535
        assert ta.url == f"http://127.0.0.1:{ta.port}"
        assert httpx.get(f"{ta.url}/health").status_code == 200


@pytest.mark.parametrize("port", [1024, 65535])
def test_port_bounds_accepted(port: int) -> None:
    assert InProcessTaskApp(app=minimal_app(), port=port).port == port


@pytest.mark.parametrize("host", ["example.com", "192.168.1.10", "", "127.0.0.2"])
def test_host_must_be_known(host: str) -> None:
    with pytest.raises(ValueError, match="host must be one of 127.0.0.1, localhost, 0.0.0.0, ::1"):
        InProcessTaskApp(app=minimal_app(), host=host)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "0.0.0.0", "::1"])
def test_allowed_hosts(host: str) -> None:
    assert InProcessTaskApp(app=minimal_app(), host=host).host == host


def test_unknown_tunnel_mode_lists_available() -> None:
    with pytest.raises(UnknownBackendError, match=r"unknown tunnel 'carrier-pigeon'.*local"):
        InProcessTaskApp(app=minimal_app(), tunnel_mode="carrier-pigeon")


def test_unknown_tunnel_backend_overrides_mode() -> None:
    with pytest.raises(UnknownBackendError, match="unknown tunnel 'nope'"):
        InProcessTaskApp(app=minimal_app(), tunnel_mode="local", tunnel_backend="nope")


def test_unknown_server() -> None:
    with pytest.raises(UnknownBackendError, match=r"unknown server 'gunicorn'.*thread"):
        InProcessTaskApp(app=minimal_app(), server="gunicorn")


def test_path_must_exist(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        InProcessTaskApp(task_app_path=tmp_path / "missing.py")
    with pytest.raises(TaskAppFileNotFoundError):
        InProcessTaskApp(task_app_path=str(tmp_path / "missing.py"))


def test_path_must_be_python_unless_a_loader_plugin_claims_it(tmp_path: Path) -> None:
    other = tmp_path / "app.txt"
    other.write_text("app = None\n")
    with pytest.raises(ValueError, match=r"no loader claims the file .*runs \.py files"):
        InProcessTaskApp(task_app_path=other)
    with pytest.raises(ValueError, match=r"no loader claims the folder"):
        InProcessTaskApp(task_app_path=tmp_path)


def test_validation_order_inputs_before_port(tmp_path: Path) -> None:
    # The seed validates inputs, then port, host, tunnel mode, path.
    with pytest.raises(ValueError, match="exactly one"):
        InProcessTaskApp(port=1)
    with pytest.raises(ValueError, match="port"):
        InProcessTaskApp(app=minimal_app(), port=1, host="nope")
    with pytest.raises(ValueError, match="host"):
        InProcessTaskApp(task_app_path=tmp_path / "missing.py", host="nope")
    # ... the tunnel mode before the path.
    with pytest.raises(UnknownBackendError, match="unknown tunnel 'nope'"):
        InProcessTaskApp(task_app_path=tmp_path / "missing.py", tunnel_mode="nope")


def test_preconfigured_without_url_rejected_in_constructor(port: int) -> None:
    with pytest.raises(ValueError, match="needs a URL"):
        InProcessTaskApp(app=minimal_app(), tunnel_mode="preconfigured", port=port)
    assert port_is_free(port)


def test_preconfigured_url_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="absolute http"):
        InProcessTaskApp(
            app=minimal_app(), tunnel_mode="preconfigured", preconfigured_url="example.org"
        )


def test_preconfigured_header_and_token_go_together() -> None:
    with pytest.raises(ValueError, match="go together"):
        InProcessTaskApp(
            app=minimal_app(),
            tunnel_mode="preconfigured",
            preconfigured_url="https://example.org",
            preconfigured_auth_header="X-Token",
        )


def test_preconfigured_arguments_rejected_for_other_tunnels() -> None:
    with pytest.raises(ValueError, match="applies to tunnel_mode='preconfigured'"):
        InProcessTaskApp(app=minimal_app(), preconfigured_url="https://example.org")


def test_unknown_option_lists_known_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown option\(s\) 'wokers'.*known options:"):
        InProcessTaskApp(app=minimal_app(), server_options={"wokers": 2})
    with pytest.raises(ConfigurationError, match=r"unknown option\(s\) 'x' for tunnel 'local'"):
        InProcessTaskApp(app=minimal_app(), tunnel_options={"x": 1})


def test_option_types_checked() -> None:
    with pytest.raises(ConfigurationError, match="graceful_timeout' must be float"):
        InProcessTaskApp(app=minimal_app(), server_options={"graceful_timeout": "soon"})


def test_tunnel_options_and_arguments_must_agree() -> None:
    with pytest.raises(ConfigurationError, match="disagree"):
        InProcessTaskApp(
            app=minimal_app(),
            tunnel_mode="preconfigured",
            preconfigured_url="https://a.example",
            tunnel_options={"url": "https://b.example"},
        )


@pytest.mark.parametrize("timeout", [0, -1, "30"])
def test_health_check_timeout_positive(timeout: Any) -> None:
    with pytest.raises(ValueError, match="health_check_timeout"):
        InProcessTaskApp(app=minimal_app(), health_check_timeout=timeout)


def test_callbacks_must_be_callable() -> None:
    with pytest.raises(ValueError, match="on_start must be callable"):
        InProcessTaskApp(app=minimal_app(), on_start="print")  # type: ignore[arg-type]


def test_api_key_explicit_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT_API_KEY", "from-the-environment")
    assert InProcessTaskApp(app=minimal_app(), api_key="explicit-key").api_key == "explicit-key"
    assert InProcessTaskApp(app=minimal_app()).api_key == "from-the-environment"


def test_api_key_generated_when_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENVIRONMENT_API_KEY", raising=False)
    first = InProcessTaskApp(app=minimal_app()).api_key
    second = InProcessTaskApp(app=minimal_app()).api_key
    assert first != second
    assert len(first) >= 32


def test_empty_api_key_rejected() -> None:
    with pytest.raises(ValueError, match="api_key must be a non-empty string"):
        InProcessTaskApp(app=minimal_app(), api_key="")


def test_constructor_does_no_io(port: int) -> None:
    # Nothing is bound, loaded or started until the context is entered.
    task_app = InProcessTaskApp(app=minimal_app(), port=port)
    assert port_is_free(port)
    assert task_app.url is None
    assert not task_app.running


def test_repr_shows_fingerprint_not_key() -> None:
    task_app = InProcessTaskApp(app=minimal_app(), api_key="super-secret-key-123")
    assert "super-secret-key-123" not in repr(task_app)
    assert "sha256:" in repr(task_app)


def test_seed_mode_names_map_to_backends() -> None:
    from taskapp.core.lifecycle import MODE_ALIASES

    assert MODE_ALIASES == {
        "quick": "cloudflare-quick",
        "named": "cloudflare-named",
        "synthtunnel": "relay",
        "synth-tunnel": "relay",
        "localhost": "local",
    }
