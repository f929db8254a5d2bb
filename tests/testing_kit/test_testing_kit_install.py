"""The testing kit as a user gets it: taskapp built as a wheel and installed into a fresh
virtual environment, a test file run there with a plain ``pytest``.

The fresh venv is ``python -m venv --without-pip`` plus the wheel of this checkout
(``pip --python VENV install --no-deps --no-index``). There is no network here, so taskapp's dependencies (and pytest)
come from the environment running these tests: a ``.pth`` file lists its site-packages
directories (plain paths; their own ``.pth`` files are not run, so an editable taskapp
installed there is not importable). Each run checks that ``taskapp`` is imported from
the wheel, not from this checkout.

A deliberately broken third-party tunnel is built and installed as its own distribution
(entry point group ``taskapp``) and must fail its conformance suite on exactly the checks
it breaks.
"""

from __future__ import annotations

import subprocess
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.helpers import REPO, build_wheels, install_wheels, new_venv, run_child


def _run(argv: list[str], *, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_child(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


class FreshVenv:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.python = root / "bin" / "python"

    def install(self, wheel: Path) -> None:
        # The venv has no pip of its own (faster to create): this pip installs into it.
        install_wheels(self.python, wheel)

    def pytest(
        self, test_dir: Path, *args: str
    ) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
        """Run a plain ``pytest`` in ``test_dir``; (result, {test name: outcome})."""
        report = test_dir / "report.xml"
        result = _run(
            [
                str(self.python),
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                f"--junitxml={report}",
                *args,
            ],
            cwd=test_dir,
            timeout=600,
        )
        outcomes: dict[str, str] = {}
        if report.exists():
            for case in ET.parse(report).getroot().iter("testcase"):
                name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
                outcome = "passed"
                for child in case:
                    if child.tag in ("failure", "error", "skipped"):
                        outcome = child.tag
                outcomes[name] = outcome
        return result, outcomes


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> FreshVenv:
    root = tmp_path_factory.mktemp("fresh") / "venv"
    # Dependencies come from the environment running this test (no network to fetch them);
    # taskapp does not: it must come from the wheel.
    fresh = FreshVenv(root)
    new_venv(root, taskapp_from_checkout=False)
    purelib = Path(
        _run(
            [str(fresh.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            cwd=root,
        ).stdout.strip()
    )
    (wheel,) = build_wheels(tmp_path_factory.mktemp("wheels"), REPO)
    fresh.install(wheel)
    where = _run(
        [str(fresh.python), "-c", "import taskapp, sys; print(taskapp.__file__)"], cwd=root
    ).stdout.strip()
    assert where.startswith(str(purelib)), f"taskapp imported from {where}, not the wheel"
    return fresh


GOOD = """
import httpx
import pytest

import taskapp
from taskapp.testing import TunnelBackendConformance, assert_task_app_contract


def build_config():
    async def rollout(request, http_request):
        return {"run_id": request.run_id, "metrics": {"outcome_score": 1.0}}

    return taskapp.TaskAppConfig(
        app_id="mine", name="Mine", description="a user's task app",
        describe_taskset=lambda: {"splits": {"train": 2}},
        provide_task_instances=lambda seeds: [{"task": {"id": "mine"}} for _ in seeds],
        rollout=rollout,
    )


def test_where_taskapp_comes_from():
    assert "site-packages" in taskapp.__file__, taskapp.__file__


def test_factory(taskapp_factory):
    app = taskapp_factory(config=build_config())
    answer = httpx.get(app.url + "/health", headers={"X-API-Key": app.api_key}, trust_env=False)
    assert answer.json() == {"healthy": True}


def test_contract(taskapp_factory):
    assert_task_app_contract(taskapp_factory(config=build_config()), seeds=[0, 1])


class TestMine(TunnelBackendConformance):
    backend = "local"
"""

BROKEN_APP = """
from fastapi import FastAPI
from taskapp.testing import assert_task_app_contract

app = FastAPI()

@app.get("/")
def root():
    return {"status": "ok", "service": "broken"}

@app.get("/health")
def health():
    return {"healthy": True}

@app.post("/rollout")
def rollout():
    return {"metrics": {"outcome_score": "high"}}


def test_broken_app_breaks_the_contract(taskapp_factory):
    assert_task_app_contract(taskapp_factory(app=app), seeds=[0])
"""


def test_a_user_test_file_passes_with_plain_pytest(venv: FreshVenv, tmp_path: Path) -> None:
    (tmp_path / "test_mine.py").write_text(GOOD)
    result, outcomes = venv.pytest(tmp_path, "-q")
    assert result.returncode == 0, result.stdout + result.stderr
    assert outcomes["test_mine::test_where_taskapp_comes_from"] == "passed"
    assert outcomes["test_mine::test_factory"] == "passed"
    assert outcomes["test_mine::test_contract"] == "passed"
    suite = {name: o for name, o in outcomes.items() if name.startswith("TestMine::")}
    assert len(suite) >= 10, suite
    assert set(suite.values()) <= {"passed", "skipped"}, suite
    assert suite["TestMine::test_url_reaches_the_app"] == "passed"
    assert "PytestAssertRewriteWarning" not in result.stdout + result.stderr


def test_a_broken_app_fails_with_a_readable_list(venv: FreshVenv, tmp_path: Path) -> None:
    (tmp_path / "test_broken_app.py").write_text(BROKEN_APP)
    result, outcomes = venv.pytest(tmp_path, "-q")
    assert result.returncode == 1, result.stdout + result.stderr
    assert outcomes == {"test_broken_app::test_broken_app_breaks_the_contract": "failure"}
    out = result.stdout
    assert "breaks the contract (5 of 8 checks failed):" in out, out
    for line in (
        "  - GET /health without key: answered 200 without a key",
        "  - GET /info: HTTP 404",
        "  - GET /task_info: HTTP 404",
        "  - POST /rollout seed 0: invalid_response: the rollout response has no score: "
        'metrics.outcome_score is "high", not a number',
        "  - error envelope: a malformed POST /rollout body answered",
    ):
        assert line in out, f"{line!r} not in\n{out}"


BROKEN_TUNNEL = '''
"""A third-party tunnel plugin with two bugs: close() is not idempotent, and a failing
open() raises a bare RuntimeError instead of a taskapp.TunnelError."""

import dataclasses

import taskapp
from taskapp.core.backends import Tunnel, TunnelBackend


class BrokenTunnel(TunnelBackend):
    name = "broken"

    @dataclasses.dataclass(frozen=True)
    class Options:
        fail: bool = False

    def __init__(self, options):
        super().__init__(options)
        self.closed = False

    def open(self, ctx):
        if self.options.fail:
            raise RuntimeError("could not connect")
        return Tunnel(url=ctx.local_url)

    def close(self):
        if self.closed:
            raise RuntimeError("already closed")
        self.closed = True


@taskapp.hookimpl
def register_tunnels(register):
    register(BrokenTunnel)
'''

BROKEN_TUNNEL_PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "taskapp-brokentunnel"
version = "1.0"

[project.entry-points.taskapp]
brokentunnel = "taskapp_brokentunnel"

[tool.hatch.build.targets.wheel]
include = ["taskapp_brokentunnel.py"]
"""


def test_a_broken_third_party_tunnel_fails_the_right_checks(
    venv: FreshVenv, tmp_path: Path
) -> None:
    source = tmp_path / "taskapp-brokentunnel"
    source.mkdir()
    (source / "pyproject.toml").write_text(BROKEN_TUNNEL_PYPROJECT)
    (source / "taskapp_brokentunnel.py").write_text(BROKEN_TUNNEL)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheel,) = build_wheels(wheels, source)
    venv.install(wheel)
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_conformance.py").write_text(
        textwrap.dedent(
            """
            from taskapp.testing import TunnelBackendConformance

            class TestBroken(TunnelBackendConformance):
                backend = "broken"
                failing_options = {"fail": True}
            """
        )
    )
    result, outcomes = venv.pytest(tests, "-q")
    assert result.returncode == 1, result.stdout + result.stderr
    failed = sorted(name for name, outcome in outcomes.items() if outcome == "failure")
    assert failed == [
        "TestBroken::test_close_is_idempotent_and_safe_before_open",
        "TestBroken::test_failure_is_typed_and_names_the_backend",
    ], result.stdout
    assert outcomes["TestBroken::test_url_reaches_the_app"] == "passed"
    assert outcomes["TestBroken::test_opens_and_closes"] == "passed"
    assert "RuntimeError: already closed" in result.stdout
    assert "tunnel 'broken' raised RuntimeError: could not connect; a tunnel must" in (
        result.stdout
    )
