"""Meta-tests: every hook is documented with its exact signature and exercised by a test."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

from taskapp.core import hookspecs

ROOT = Path(__file__).resolve().parents[2]
HOOKS = sorted(
    name
    for name, value in vars(hookspecs).items()
    if callable(value) and hasattr(value, "taskapp_spec")
)


def test_hooks_found() -> None:
    assert (
        sorted(
            [
                "app_loaded",
                "before_shutdown",
                "load_app",
                "register_commands",
                "register_servers",
                "register_tunnels",
                "server_started",
                "task_app_started",
                "tunnel_opened",
                "url_changed",
            ]
        )
        == HOOKS
    )


@pytest.mark.parametrize("hook", HOOKS)
def test_plugin_hooks_are_documented(hook: str) -> None:
    text = (ROOT / "docs" / "plugin_hooks.md").read_text()
    params = list(inspect.signature(getattr(hookspecs, hook)).parameters)
    heading = f"### {hook}({', '.join(params)})"
    assert heading in text, f"docs/plugin_hooks.md lacks the heading {heading!r}"
    section = text.split(heading, 1)[1].split("\n### ", 1)[0]
    signature_line = re.search(rf"`{hook}\(([^`]*)\) -> ([^`]*)`", section)
    assert signature_line, f"no signature line for {hook}"
    documented = re.findall(r"(\w+):", signature_line.group(1))
    assert documented == params, f"{hook}: documented {documented}, real {params}"


@pytest.mark.parametrize("hook", HOOKS)
def test_plugin_hooks_have_tests(hook: str) -> None:
    implemented = re.compile(rf"def {hook}\(")
    sources = [p for p in (ROOT / "tests").rglob("*.py") if p.name != "test_docs.py"]
    assert any(implemented.search(p.read_text()) for p in sources), (
        f"no test implements the hook {hook}"
    )


def test_docs_name_real_modules() -> None:
    """Modules named in docs/architecture.md exist (the doc stays true to the code)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    for dotted in sorted(set(re.findall(r"`(taskapp(?:\.\w+)+)`", text))):
        try:
            importlib.import_module(dotted)
        except ModuleNotFoundError:
            module, _, attr = dotted.rpartition(".")
            assert hasattr(importlib.import_module(module), attr), dotted
