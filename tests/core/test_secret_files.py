"""One policy for secret files (``taskapp.core.secrets.read_secret_file``), applied by every
reader: the job backend's key file, the relay's admin token file, the relay tunnel's token
file and a Cloudflare tunnel token file all refuse a file others can access."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from taskapp import ConfigurationError
from taskapp.core.secrets import read_secret_file

SECRET = "secret-file-value-0123456789"


def _write(tmp_path: Path, mode: int, text: str = SECRET + "\n") -> Path:
    path = tmp_path / "secret"
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o601])
def test_a_file_others_can_access_is_refused_with_the_chmod_advice(
    tmp_path: Path, mode: int
) -> None:
    path = _write(tmp_path, mode)
    with pytest.raises(ConfigurationError) as caught:
        read_secret_file(path, what="the key file")
    message = str(caught.value)
    assert f"the key file {str(path)!r} is accessible by other users (mode {mode:04o})" in message
    assert f"chmod 600 {path}" in message and SECRET not in message


def test_a_private_file_is_read_as_is(tmp_path: Path) -> None:
    assert read_secret_file(_write(tmp_path, 0o600), what="x") == SECRET + "\n"
    assert read_secret_file(_write(tmp_path, 0o400), what="x") == SECRET + "\n"


def test_missing_unreadable_and_binary_files_say_what_happened(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"cannot read the key file .*No such file"):
        read_secret_file(tmp_path / "absent", what="the key file")
    with pytest.raises(ConfigurationError, match="cannot read the key file"):
        read_secret_file(tmp_path, what="the key file")  # a directory
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    binary.chmod(0o600)
    with pytest.raises(ConfigurationError, match="is not UTF-8 text"):
        read_secret_file(binary, what="the key file")


def test_home_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    _write(tmp_path, 0o600)
    assert read_secret_file("~/secret", what="x").strip() == SECRET


def _backend(path: Path) -> Any:
    from taskapp.jobs.backend import read_api_key

    return read_api_key(path, env={})


def _relay_server(path: Path) -> Any:
    from taskapp.relay.server.settings import load_admin_tokens

    return load_admin_tokens(path, env={})


def _relay_tunnel(path: Path) -> Any:
    from taskapp.plugins.tunnels.relay import RelayOptions, resolve_relay_credentials

    options = RelayOptions(relay_url="http://127.0.0.1:9", admin_token_file=path)
    return resolve_relay_credentials(options, {})


def _cloudflare(path: Path) -> Any:
    from taskapp.plugins.tunnels.cloudflare import NamedOptions, NamedTunnel

    options = NamedOptions(token_file=path, hostname="app.example.com")
    return NamedTunnel(options)._token()


READERS: dict[str, Callable[[Path], Any]] = {
    "backend key": _backend,
    "relay admin tokens": _relay_server,
    "relay tunnel token": _relay_tunnel,
    "cloudflare token": _cloudflare,
}


@pytest.mark.parametrize("reader", READERS.values(), ids=list(READERS))
def test_every_secret_file_reader_applies_the_one_policy(
    tmp_path: Path, reader: Callable[[Path], Any]
) -> None:
    path = _write(tmp_path, 0o644)
    with pytest.raises(ConfigurationError, match="chmod 600") as caught:
        reader(path)
    assert SECRET not in str(caught.value)
    os.chmod(path, 0o600)
    assert reader(path)  # the same file, private now, is read
