"""A killed test run leaves nothing behind (issue 21 item 1).

A ``taskapp serve support-intents`` started by a test in its own session once kept serving
50 minutes after its test run was killed. Every child a test starts now goes through
``tests.helpers.start_child`` / ``run_child`` (taskapp's own orphan guard,
``taskapp.core.processes.guarded_popen``): here a real pytest run is SIGKILLed while its
test holds a real ``taskapp serve``, and the serve process must be gone within seconds. A
second test keeps every test module on those two helpers.
"""

from __future__ import annotations

import ast
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from taskapp.core.processes import guarded_popen
from taskapp.testing.helpers import pid_alive
from tests.helpers import REPO, TESTS, start_child, wait_until

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the death signal and /proc are Linux's"
)

INNER_TEST = """
import time

from tests.cli._cli_helpers import Served


def test_holds_a_served_app():
    served = Served("support-intents")
    url = served.wait_url(60)
    with open({pid_file!r} + ".tmp", "w") as out:
        out.write(f"{{served.proc.pid}} {{url}}")
    import os
    os.replace({pid_file!r} + ".tmp", {pid_file!r})
    time.sleep(600)  # killed long before this ends
"""


def test_sigkill_of_a_test_run_takes_its_taskapp_serve_along(tmp_path: Path) -> None:
    pid_file = tmp_path / "serve.pid"
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(textwrap.dedent(INNER_TEST.format(pid_file=str(pid_file))))
    # The test run in its own session, so that only it is killed (not this test run).
    run = start_child(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert wait_until(pid_file.exists, 90), "the inner test never served its app"
        serve_pid_s, url = pid_file.read_text().split()
        serve_pid = int(serve_pid_s)
        assert httpx.get(f"{url}/health", trust_env=False).status_code in (200, 400, 401)
        os.kill(run.pid, signal.SIGKILL)
        run.wait(5)
        started = time.monotonic()
        assert wait_until(lambda: not pid_alive(serve_pid), 5), (
            f"taskapp serve (pid {serve_pid}) outlived its SIGKILLed test run"
        )
        print(f"serve gone {time.monotonic() - started:.2f}s after the SIGKILL")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health", trust_env=False, timeout=2)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(5)
        if pid_file.exists():  # a failed check leaves nothing behind either
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)


def test_guarded_popen_behaves_like_popen() -> None:
    with pytest.raises(FileNotFoundError):
        guarded_popen(["no-such-program-taskapp-test"])
    with guarded_popen(
        [sys.executable, "-c", "import os; print(os.getpid(), os.getppid())"],
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        out, _ = child.communicate(timeout=30)
    # The pid is the program's (the wrapper execs it), and its parent is this process.
    assert out.split() == [str(child.pid), str(os.getpid())]
    assert child.returncode == 0


#: Calls that start a child process without the orphan guard.
UNGUARDED = {
    ("subprocess", "Popen"),
    ("subprocess", "run"),
    ("subprocess", "call"),
    ("subprocess", "check_call"),
    ("subprocess", "check_output"),
    ("subprocess", "getoutput"),
    ("subprocess", "getstatusoutput"),
    ("os", "system"),
    ("os", "popen"),
    ("os", "fork"),
    ("os", "forkpty"),
    ("os", "posix_spawn"),
    ("os", "posix_spawnp"),
    ("asyncio", "create_subprocess_exec"),
    ("asyncio", "create_subprocess_shell"),
    ("pty", "spawn"),
}


def unguarded_calls(source: str) -> list[str]:
    """``line N: module.name`` for every unguarded way ``source`` starts a child."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            found += [
                (node.lineno, f"from {node.module} import {alias.name}")
                for alias in node.names
                if (node.module, alias.name) in UNGUARDED
                or (node.module == "os" and alias.name.startswith("spawn"))
            ]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
        ):
            pair = (node.func.value.id, node.func.attr)
            if pair in UNGUARDED or (pair[0] == "os" and pair[1].startswith("spawn")):
                found.append((node.lineno, f"{pair[0]}.{pair[1]}"))
    return [f"line {line}: {name}" for line, name in sorted(found)]


def test_tests_start_children_only_through_the_guarded_helpers() -> None:
    offenders = {}
    for path in sorted(TESTS.rglob("*.py")):
        relative = path.relative_to(REPO)
        if "fixtures" in relative.parts or relative == Path("tests/helpers.py"):
            continue
        calls = unguarded_calls(path.read_text(encoding="utf-8"))
        if calls:
            offenders[str(relative)] = calls
    assert not offenders, (
        "these tests start children that would outlive a killed test run; use "
        f"tests.helpers.start_child / run_child instead: {offenders}"
    )


def test_the_check_finds_each_unguarded_spelling() -> None:
    source = (
        "import subprocess, os, asyncio\n"
        "proc: subprocess.Popen[str]\n"
        "from subprocess import check_output\n"
        "subprocess.Popen(['x'])\nsubprocess.run(['x'])\nos.system('x')\n"
        "asyncio.create_subprocess_exec('x')\nos.spawnv(0, 'x', [])\n"
        "start_child(['x'])\nrun_child(['x'])\n"
        "'subprocess.run(text in a child script is not a call)'\n"
    )
    assert [line.split(": ", 1)[1] for line in unguarded_calls(source)] == [
        "from subprocess import check_output",
        "subprocess.Popen",
        "subprocess.run",
        "os.system",
        "asyncio.create_subprocess_exec",
        "os.spawnv",
    ]
