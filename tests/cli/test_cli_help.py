"""Every ``--help`` has examples, and every example is a command line the parser accepts."""

from __future__ import annotations

import re
import shlex

import pytest

from taskapp.cli import COMMANDS, build_parser
from tests.cli._cli_helpers import taskapp

_EXAMPLE_START = re.compile(r"^\s+(?:[A-Z_]+=\S+\s+)?taskapp\b")


def examples(help_text: str) -> list[str]:
    """The example command lines of a help text (continuation lines joined)."""
    assert "examples:" in help_text, help_text
    found: list[str] = []
    current = ""
    for line in help_text.split("examples:", 1)[1].splitlines():
        if current:
            current += " " + line.strip()
        elif _EXAMPLE_START.match(line):
            current = line.strip()
        else:
            continue
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        found.append(current)
        current = ""
    return found


def argv(example: str) -> list[str]:
    """The arguments of an example: no description, no shell redirection, no VAR=..."""
    command = re.split(r"\s{2,}", example)[0]  # a description follows after 2+ spaces
    command = re.split(r"\s(?:>|&&|\|)\s", command)[0]
    words = shlex.split(command)
    while "=" in words[0]:
        words.pop(0)
    assert words[0] == "taskapp", example
    return words[1:]


CHECKED = list(COMMANDS)


@pytest.mark.parametrize("command", ["", *CHECKED])
def test_help_has_examples_that_parse(command: str) -> None:
    result = taskapp(*([command] if command else []), "--help")
    assert result.returncode == 0, result.stderr
    lines = [line for line in examples(result.stdout) if "COMMAND" not in line]
    assert lines, f"no examples in taskapp {command} --help"
    for line in lines:
        args = argv(line)
        if command:
            assert args[0] == command, line
        try:
            parsed = build_parser().parse_args(args)
        except SystemExit as exc:  # argparse rejected the example
            pytest.fail(f"the example {line!r} does not parse (exit {exc.code})")
        assert parsed.command is not None, line


def test_no_command_prints_help_and_exits_2() -> None:
    result = taskapp()
    assert result.returncode == 2
    assert "examples:" in result.stdout


def test_version() -> None:
    from taskapp import __version__

    result = taskapp("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"taskapp {__version__}"
