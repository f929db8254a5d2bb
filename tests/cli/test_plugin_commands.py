"""Hook ``register_commands``: a plugin adds ``taskapp`` commands.

The real partner: ``tests/fixtures/plugins/taskapp-hello-command`` built and installed into
a venv, where ``taskapp hello`` runs. The failure cases (a taken name, a raising hook, a
command without ``run``) run against an in-process registry.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

import taskapp
from taskapp.cli import COMMANDS, build_parser, main, needs_plugin_commands
from taskapp.core.errors import PluginError
from taskapp.core.plugins import PluginRegistry
from tests.helpers import FIXTURES, run_child, venv_with_distributions


@pytest.fixture(scope="module")
def python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with this taskapp and the fixture distribution that adds ``taskapp hello``."""
    return venv_with_distributions(
        tmp_path_factory.mktemp("hello-venv") / "venv",
        FIXTURES / "plugins" / "taskapp-hello-command",
    )


def taskapp_in(
    python: Path, *args: str, code: str | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [str(python), *(["-c", textwrap.dedent(code)] if code else ["-m", "taskapp", *args])]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKAPP_")}
    return run_child(argv, capture_output=True, text=True, timeout=60, env=env, check=False)


def test_installed_plugin_adds_a_command(python: Path) -> None:
    done = taskapp_in(python, "hello", "--name", "Ada")
    assert (done.returncode, done.stdout) == (0, "hello, Ada\n"), done.stderr
    shown = taskapp_in(python, "hello", "--help")
    assert shown.returncode == 0 and "who to greet" in shown.stdout
    listed = taskapp_in(python, "--help")
    assert "say hello (a plugin's command)" in listed.stdout
    plugins = json.loads(taskapp_in(python, "plugins", "--json").stdout)
    hello = next(p for p in plugins if p["name"] == "hello")
    assert "register_commands" in hello["hooks"]


def test_plugin_command_errors_use_the_exit_code_map(python: Path) -> None:
    done = taskapp_in(python, "hello", "--name", "error")
    assert done.returncode == 2
    assert "taskapp hello: error: --name error: pick another name" in done.stderr
    assert "Traceback" not in done.stderr


def test_builtin_commands_do_not_load_plugins(python: Path) -> None:
    """``taskapp serve --help`` parses without importing a plugin; ``taskapp --help`` does."""
    done = taskapp_in(
        python,
        code="""
        import contextlib, io, sys
        from taskapp.cli import main
        for argv in (["serve", "--help"], ["eval", "--help"], ["--version"]):
            with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):
                main(argv)
            assert "taskapp_hello_command.plugin" not in sys.modules, argv
            assert "taskapp.core.plugins" not in sys.modules, argv
        with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):
            main(["--help"])
        assert "taskapp_hello_command.plugin" in sys.modules
        print("ok")
        """,
    )
    assert done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize(
    ("argv", "needed"),
    [
        ([], True),
        (["--help"], True),
        (["-v", "--log-json"], True),
        (["hello"], True),
        (["-v", "hello", "--name", "x"], True),
        (["--version"], False),
        (["-v", "serve", "--help"], False),
        *[([name, "--help"], False) for name in COMMANDS],
    ],
)
def test_which_argv_needs_plugin_commands(argv: list[str], needed: bool) -> None:
    assert needs_plugin_commands(argv) is needed


# -- failures, against an in-process registry ---------------------------------------------


class Commands:
    """A plugin object adding the commands in ``names`` (``run`` set unless told not to)."""

    def __init__(self, *names: str, run: bool = True, error: Exception | None = None) -> None:
        self.names, self.run, self.error = names, run, error

    @taskapp.hookimpl
    def register_commands(self, subparsers: Any) -> None:
        for name in self.names:
            parser = subparsers.add_parser(name, help=f"{name} from a plugin")
            if self.run:
                parser.set_defaults(run=lambda args, name=name: print(f"ran {name}") or 0)
        if self.error is not None:
            raise self.error


def parser_with(registry: PluginRegistry) -> argparse.ArgumentParser:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    registry.add_commands(subparsers)
    return parser


def test_a_taken_name_fails_only_that_plugin(caplog: pytest.LogCaptureFixture) -> None:
    registry = PluginRegistry(builtins=(), load_entry_points=False)
    registry.register(Commands("serve"), "clash")
    registry.register(Commands("greet"), "good")
    with caplog.at_level(logging.WARNING, logger="taskapp.plugins"):
        parser = parser_with(registry)
    assert [f.name for f in registry.failures] == ["clash"]
    assert "conflicting subparser: serve" in registry.failures[0].error
    assert "plugin 'clash' could not add its commands" in caplog.text
    args = parser.parse_args(["serve", "support-intents"])
    assert args.run.__module__ == "taskapp.cli.serve"  # the builtin command is untouched
    greet = parser.parse_args(["greet"])
    assert (greet.run(greet), greet.plugin) == (0, "good")


def test_a_raising_hook_keeps_what_it_added_and_the_others() -> None:
    registry = PluginRegistry(builtins=(), load_entry_points=False)
    registry.register(Commands("half", error=RuntimeError("boom")), "raising")
    registry.register(Commands("whole"), "good")
    parser = parser_with(registry)
    assert registry.failures[0].error == "register_commands: RuntimeError: boom"
    for name in ("half", "whole"):
        args = parser.parse_args([name])
        assert args.run(args) == 0


def test_a_command_without_run_names_its_plugin() -> None:
    registry = PluginRegistry(builtins=(), load_entry_points=False)
    registry.register(Commands("norun", run=False), "lazy")
    args = parser_with(registry).parse_args(["norun"])
    with pytest.raises(PluginError, match="plugin 'lazy' added the command 'norun' without a run"):
        args.run(args)


def test_main_reports_an_unknown_command_after_asking_plugins(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["no-such-command"])
    assert exited.value.code == 2
    assert "invalid choice: 'no-such-command'" in capsys.readouterr().err
