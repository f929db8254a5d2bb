"""The long option groups of ``taskapp optimize`` and ``taskapp relay serve`` are built
from the settings dataclasses (``setting(default, help, ...)`` on each field), so each
setting is described once. These tests hold the layers together: every field has its
flag, a generated option's default is the field's (never restated in the CLI module),
and the parsed flags become the dataclass's keyword arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from taskapp.cli import build_parser
from taskapp.cli._common import dataclass_kwargs, format_size, option_fields, option_flag
from taskapp.optimize.config import OptimizeConfig
from taskapp.relay.server.settings import AdminToken, RelaySettings

CLI = Path(__file__).resolve().parents[2] / "src" / "taskapp" / "cli"

#: RelaySettings fields that are tuning knobs for embedding and tests, not options.
RELAY_INTERNAL = {
    "max_headers",
    "v1_stream_buffer",
    "worker_token_grace",
    "attach_timeout",
    "sweep_interval",
    "ping_interval",
    "ping_timeout",
    "retry_after",
}


def subparser(*path: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = build_parser()
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def actions_by_flag(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: a for a in parser._actions for flag in a.option_strings}


CASES = [
    (OptimizeConfig, ("optimize",), "optimize.py", set()),
    (RelaySettings, ("relay", "serve"), "relay.py", RELAY_INTERNAL),
]


@pytest.mark.parametrize(("cls", "path", "module", "internal"), CASES)
def test_every_setting_has_its_flag(
    cls: type[Any], path: tuple[str, ...], module: str, internal: set[str]
) -> None:
    flags = actions_by_flag(subparser(*path))
    declared = {f.name for f in option_fields(cls)}
    assert {f.name for f in dataclasses.fields(cls)} - declared == internal
    for field in option_fields(cls):
        assert option_flag(field) in flags, f"{cls.__name__}.{field.name}: no {option_flag(field)}"


@pytest.mark.parametrize(("cls", "path", "module", "internal"), CASES)
def test_generated_options_are_not_restated(
    cls: type[Any], path: tuple[str, ...], module: str, internal: set[str]
) -> None:
    """A generated option's help and default come from the field; the CLI module does not
    add its flag itself (so it cannot give it a second default or help text)."""
    flags = actions_by_flag(subparser(*path))
    source = (CLI / module).read_text(encoding="utf-8")
    generated = [f for f in option_fields(cls) if not f.metadata["custom"]]
    assert generated
    for field in generated:
        flag = option_flag(field)
        action = flags[flag]
        declared_again = re.search(rf'add_argument\(\s*"{flag}"', source)
        assert declared_again is None, f"{module} adds {flag} itself"
        assert field.metadata["help"] in (action.help or "")
        if cls is OptimizeConfig and not isinstance(field.default, bool):
            # None: a flag not given leaves the --config TOML's value alone
            assert action.default is None, flag
        else:
            assert action.default == field.default, flag
        shown = re.search(r"\(default (\S+?)\)$", action.help or "")
        if shown is not None:
            expected: Any = field.default
            if field.metadata["kind"] == "size":
                expected = format_size(expected)
            elif isinstance(expected, float):
                expected = f"{expected:g}"
            assert shown.group(1) == str(expected), flag


def test_relay_flags_become_relay_settings() -> None:
    args = build_parser().parse_args(
        ["relay", "serve", "--max-leases", "5", "--stream-window", "128KiB", "--port", "0"]
    )
    kwargs = dataclass_kwargs(args, RelaySettings)
    settings = RelaySettings(
        public_url="http://127.0.0.1:1", admin_tokens=(AdminToken("a", "0" * 64),), **kwargs
    )
    assert (settings.max_leases, settings.stream_window, settings.port) == (5, 128 * 1024, 0)
    assert settings.max_inflight == RelaySettings.__dataclass_fields__["max_inflight"].default


@pytest.mark.parametrize("bad", [["--max-leases", "0"], ["--stall-timeout", "nan"]])
def test_relay_refuses_bad_values_at_the_flag(bad: list[str], capsys: Any) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["relay", "serve", *bad])
    assert exited.value.code == 2
    assert bad[0] in capsys.readouterr().err


def test_optimize_flags_override_only_what_is_given() -> None:
    from taskapp.cli.optimize import _config

    args = build_parser().parse_args(
        ["optimize", "x.py", "--stand-in", "--train-seeds", "0-9", "--val-seeds", "10-14",
         "--budget", "60", "--minibatch", "4", "--concurrency", "2", "--timeout", "5",
         "--patience", "0", "--env-name", "e", "--max-reflection-failures", "7"]
    )  # fmt: skip
    config, spec = _config(args)
    assert spec is None
    assert (config.minibatch_size, config.max_concurrency, config.timeout_s) == (4, 2, 5.0)
    assert (config.patience, config.env_name, config.max_reflection_failures) == (None, "e", 7)
    assert config.rollout_timeout == OptimizeConfig().rollout_timeout  # not given: the default
    untouched = build_parser().parse_args(["optimize", "x.py"])
    assert dataclass_kwargs(untouched, OptimizeConfig) == {"resume": False}
