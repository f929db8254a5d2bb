"""``serve``, ``eval`` and ``optimize`` start an app with one set of options: the same
names, defaults and help (issue 14 item 2), and errors in the CLI's words."""

from __future__ import annotations

import argparse

import pytest

from taskapp.cli import build_parser
from taskapp.cli._common import cli_words

START_OPTIONS = {
    "--tunnel",
    "--tunnel-option",
    "--host",
    "--port",
    "--server",
    "--server-option",
    "--health-timeout",
}


def _actions(command: str) -> dict[str, argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found: dict[str, argparse.Action] = {}
    for action in sub.choices[command]._actions:
        for flag in action.option_strings:
            found[flag] = action
    return found


@pytest.mark.parametrize("option", sorted(START_OPTIONS))
def test_same_name_default_and_help_everywhere(option: str) -> None:
    actions = [_actions(command)[option] for command in ("serve", "eval", "optimize")]
    assert len({(a.default if not isinstance(a.default, list) else ()) for a in actions}) == 1
    assert len({a.help for a in actions}) == 1
    assert len({a.dest for a in actions}) == 1


def test_health_timeout_default_is_30_seconds_everywhere() -> None:
    for command in ("serve", "eval", "optimize"):
        assert "(default 30;" in str(_actions(command)["--health-timeout"].help)


def test_eval_rollout_timeout_keeps_the_old_spelling() -> None:
    actions = _actions("eval")
    assert actions["--timeout"] is actions["--rollout-timeout"]
    assert actions["--timeout"].dest == "rollout_timeout"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "did not answer 200 within 34.999871s; raise health_check_timeout=",
            "did not answer 200 within 35 s; raise --health-timeout",
        ),
        (
            "or pass tunnel_options={'start_timeout': ...} or health_check_timeout",
            "or pass --tunnel-option start_timeout=... or --health-timeout",
        ),
        ("took 120s", "took 120 s"),
        ("HTTP 401 (key sha256:1a2b3c4d)", "HTTP 401 (key sha256:1a2b3c4d)"),
    ],
)
def test_errors_name_flags_and_seconds(text: str, expected: str) -> None:
    assert cli_words(text) == expected
