"""``docs/cli-reference.md`` is generated from the real parser and checked in: it must be
current, and it must document every flag of every builtin command (sub-commands too)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskapp.cli import _reference, build_parser

PAGE = Path(__file__).resolve().parents[2] / "docs" / "cli-reference.md"


def test_reference_is_current() -> None:
    assert PAGE.read_text(encoding="utf-8") == _reference.render(), (
        "docs/cli-reference.md is stale: run `python -m taskapp.cli._reference` and commit it"
    )


def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from parsers(sub)


def test_every_flag_of_every_command_is_documented() -> None:
    text = PAGE.read_text(encoding="utf-8")
    sections = dict(
        re.findall(r"^#+ `(taskapp[^`]*)`\n(.*?)(?=^#+ `taskapp|\Z)", text, re.S | re.M)
    )
    seen = 0
    for parser in parsers(build_parser()):
        assert parser.prog in sections, f"no section for {parser.prog}"
        for action in parser._actions:
            for flag in action.option_strings:
                assert f"`{flag}`" in sections[parser.prog], f"{parser.prog} {flag}"
                seen += 1
    assert seen > 150  # every command's options, not a few


def test_check_mode_fails_on_a_stale_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "cli-reference.md"
    monkeypatch.setattr(_reference, "DEFAULT_PATH", page)
    assert _reference.main(["--check"]) == 1
    assert "is stale" in capsys.readouterr().err
    assert _reference.main([]) == 0
    assert _reference.main(["--check"]) == 0
    page.write_text(page.read_text() + "edited by hand\n")
    assert _reference.main(["--check"]) == 1
