"""Every Python snippet in README.md and docs/*.md runs as written (imports included).

Each ```python block runs in a fresh interpreter, in a scratch folder that has the
repository's ``examples/`` (so ``examples/support_intents_app.py`` resolves), with no
inherited task-app key. An HTML
comment right above a block changes that:

``<!-- snippet: continues -->``
    the block runs after the previous block of the same page (a walk-through in steps);
``<!-- snippet: excerpt PATH -->``
    the block is an excerpt of the file PATH: its lines must appear in that file in order
    (lines the page leaves out may sit in between), and the file itself must run;
``<!-- snippet: pytest FOLDER -->``
    the block is a pytest test module: it runs under pytest, with FOLDER (relative to
    the repository) importable;
``<!-- snippet: skip REASON -->``
    the block needs what a test machine does not have (cloudflared, a server on the
    internet, Ray); REASON says what, and these stay few.

docs/python_api.md is run by tests/docs/test_python_api_docs.py and skipped here. Also: the
library's loggers are all listed in docs/logging.md, every ``--tunnel-option KEY=`` in the
docs names a real option, and the docs install extras the way that works from a clone.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import run_child

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIPPED_PAGES = {"python_api.md"}  # tests/docs/test_python_api_docs.py runs those
MARKER = re.compile(r"<!--\s*snippet:\s*(continues|excerpt|skip|pytest)\s*(.*?)\s*-->\s*\n\s*$")
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
MAX_SKIPPED = 12


@dataclasses.dataclass(frozen=True)
class Snippet:
    page: Path
    line: int
    code: str
    mode: str  # "run", "continues", "excerpt", "skip"
    argument: str
    previous: str  # the code of the blocks this one continues

    @property
    def id(self) -> str:
        return f"{self.page.name}:{self.line}"


def collect() -> list[Snippet]:
    snippets: list[Snippet] = []
    for page in PAGES:
        if page.name in SKIPPED_PAGES:
            continue
        text = page.read_text(encoding="utf-8")
        chain = ""
        for match in BLOCK.finditer(text):
            before = text[: match.start()]
            marker = MARKER.search(before[-300:])
            mode, argument = (marker.group(1), marker.group(2)) if marker else ("run", "")
            code = match.group(1)
            previous = chain if mode == "continues" else ""
            snippets.append(Snippet(page, before.count("\n") + 1, code, mode, argument, previous))
            if mode == "run":
                chain = code
            elif mode == "continues":
                chain = previous + code
    return snippets


SNIPPETS = collect()


def child_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ENVIRONMENT_API_KEY", "ENVIRONMENT_API_KEY_ALIASES")
        and not k.startswith("TASKAPP_")
        and not k.lower().endswith("_proxy")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def test_snippets_found_and_few_skipped() -> None:
    assert len(SNIPPETS) >= 25
    skipped = [s for s in SNIPPETS if s.mode == "skip"]
    assert len(skipped) <= MAX_SKIPPED, [s.id for s in skipped]
    for snippet in skipped:
        assert len(snippet.argument) > 10, f"{snippet.id}: say why it cannot run here"


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.id for s in SNIPPETS])
def test_snippet(snippet: Snippet, tmp_path: Path) -> None:
    if snippet.mode == "skip":
        # Still valid Python (top-level await allowed, as in a notebook or asyncio REPL).
        compile(snippet.code, snippet.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        pytest.skip(snippet.argument)
    if snippet.mode == "excerpt":
        check_excerpt(snippet)
        return
    if snippet.mode == "pytest":
        run_under_pytest(snippet, tmp_path)
        return
    # Run in a scratch folder (snippets may write files) that sees the repository's
    # examples/ under the same relative path.
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    result = run_child(
        [sys.executable, "-c", snippet.previous + snippet.code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, f"{snippet.id}:\n{snippet.code}\n{result.stderr[-3000:]}"


def run_under_pytest(snippet: Snippet, tmp_path: Path) -> None:
    (tmp_path / "test_snippet.py").write_text(snippet.code, encoding="utf-8")
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / snippet.argument), env["PYTHONPATH"]])
    result = run_child(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_snippet.py"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, f"{snippet.id}:\n{snippet.code}\n{result.stdout[-3000:]}"


def _code(line: str) -> str:
    return line.split("  #", 1)[0].strip()


def check_excerpt(snippet: Snippet) -> None:
    """Every code line of the excerpt is a line of the file, in the same order (the file
    may have more lines in between: docstrings, the parts the page leaves out)."""
    source = ROOT / snippet.argument
    assert source.is_file(), f"{snippet.id}: excerpt of missing file {snippet.argument}"
    lines = [_code(line) for line in source.read_text(encoding="utf-8").splitlines()]
    position = 0
    for wanted in (_code(line) for line in snippet.code.splitlines()):
        if not wanted or wanted == "...":
            continue
        try:
            position = lines.index(wanted, position) + 1
        except ValueError:
            pytest.fail(
                f"{snippet.id}: {wanted!r} is not in {snippet.argument} after line {position}"
            )


# Excerpted task apps must run; excerpted test modules are run by their own tests.
EXCERPTED = sorted(
    {s.argument for s in SNIPPETS if s.mode == "excerpt" and s.argument.startswith("examples/")}
)


@pytest.mark.parametrize("path", EXCERPTED)
def test_excerpted_files_run(path: str) -> None:
    code = (
        "import runpy, httpx\n"
        "from taskapp import InProcessTaskApp\n"
        f"with InProcessTaskApp(task_app_path={path!r}, port=0) as t:\n"
        "    r = httpx.get(t.url + '/task_info', headers={'X-API-Key': t.api_key})\n"
        "    assert r.status_code == 200, r.text\n"
    )
    result = run_child(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=child_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]


# -- docs and help say what is true ---------------------------------------------------------


def test_every_logger_is_listed_in_docs_logging() -> None:
    listed = (ROOT / "docs" / "logging.md").read_text(encoding="utf-8")
    names = set()
    for path in (ROOT / "src" / "taskapp").rglob("*.py"):
        names.update(re.findall(r'get_logger\(\s*"([\w.]+)"\s*\)', path.read_text()))
    assert "taskapp.tunnel.relay" in names and "taskapp.plugins" in names
    missing = sorted(name for name in names if f"`{name}`" not in listed)
    assert not missing, f"loggers missing from docs/logging.md: {missing}"


def test_documented_tunnel_options_exist() -> None:
    from taskapp.core.plugins import get_registry

    registry = get_registry()
    known: set[str] = set()
    for provided in registry.tunnels.values():
        options = provided.cls.Options
        if dataclasses.is_dataclass(options):
            known.update(field.name for field in dataclasses.fields(options))
    used: dict[str, str] = {}
    for page in PAGES:
        for key in re.findall(r"--tunnel-option[ =]([a-z_][a-z0-9_-]*)=", page.read_text()):
            used.setdefault(key.replace("-", "_"), page.name)
    assert used, "the docs show --tunnel-option somewhere"
    unknown = {key: page for key, page in used.items() if key not in known}
    assert not unknown, f"--tunnel-option keys no tunnel backend has: {unknown}"


def test_docs_install_extras_the_way_that_works_from_a_clone() -> None:
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        assert not re.search(
            r"pip install ['\"]?taskapp\[",
            text.replace("`pip install 'taskapp[relay]'` will work", ""),
        ), f"{page.name}: use pip install '.[extra]' (taskapp is not on the package index yet)"


def test_timeout_help_says_per_rollout_or_whole_run() -> None:
    def help_of(command: str) -> str:
        return run_child(
            [sys.executable, "-m", "taskapp", command, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**child_env(), "COLUMNS": "200"},
            check=True,
        ).stdout

    evaluation, optimize = help_of("eval"), help_of("optimize")
    assert "time limit of one rollout request" in evaluation
    assert "--timeout limits the whole run" in evaluation
    assert "time limit of the whole run" in optimize
    assert "time limit of one rollout request" in optimize


def test_health_timeout_defaults_agree() -> None:
    import inspect

    from taskapp import InProcessTaskApp
    from taskapp.cli._common import HEALTH_TIMEOUT
    from taskapp.optimize import run
    from taskapp.optimize.config import OptimizeConfig

    defaults = {
        "InProcessTaskApp": inspect.signature(InProcessTaskApp)
        .parameters["health_check_timeout"]
        .default,
        "optimize.run": inspect.signature(run).parameters["health_timeout"].default,
        "OptimizeConfig": OptimizeConfig.__dataclass_fields__["health_timeout"].default,
        "--health-timeout": HEALTH_TIMEOUT,
    }
    assert set(defaults.values()) == {30.0}, defaults
