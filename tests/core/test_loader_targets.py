"""Targets a loader plugin claims, and the errors when nobody claims one.

A real third-party loader (the fixture distribution ``taskapp-qa-loader``, built and
pip-installed into a temporary venv) claims ``*.qa.json`` files: ``taskapp eval x.qa.json``
and ``InProcessTaskApp(task_app_path="x.qa.json")`` run them. Without it the same file is
refused before anything starts, with a message naming the loaders. Also: a ``"mod:attr"``
passed as ``task_app_path=``, "did you mean x.py", and ``tunnel_mode`` naming a plugin.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import httpx
import pytest

from taskapp import AppLoadError, ConfigurationError, InProcessTaskApp, TaskAppFileNotFoundError
from taskapp.core.backends import Tunnel, TunnelBackend, TunnelContext
from taskapp.core.plugins import get_registry
from tests.cli._cli_helpers import taskapp as run_taskapp
from tests.helpers import FIXTURES, free_port, minimal_app, run_child, venv_with_distributions

FIXTURE = FIXTURES / "plugins" / "taskapp-qa-loader"
QA = {
    "app_id": "tiny-qa",
    "items": [
        {"question": "6 x 7?", "answer": "42"},
        {"question": "capital of France?", "answer": "Paris"},
        {"question": "40 + 2?", "answer": "42"},
        {"question": "2 + 2?", "answer": "4"},
    ],
}


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv that sees this taskapp and has the qa loader distribution installed (built by
    this environment's pip and hatchling: nothing from the base interpreter)."""
    return venv_with_distributions(tmp_path_factory.mktemp("qa-venv") / "venv", FIXTURE)


@pytest.fixture
def qa_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.qa.json"
    path.write_text(json.dumps(QA), encoding="utf-8")
    return path


def run_in(python: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TASKAPP_") and k != "ENVIRONMENT_API_KEY"
    }
    return run_child(
        [str(python), *args],
        capture_output=True,
        text=True,
        timeout=90,
        env=clean,
        cwd=cwd,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_cli_eval_runs_a_file_an_installed_loader_claims(
    venv: Path, qa_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results.json"
    result = run_in(venv, "-m", "taskapp", "eval", str(qa_file), "--json", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    scores = {row["seed"]: row["score"] for row in report["results"]}
    assert scores == {0: 1.0, 1: 0.0, 2: 1.0, 3: 0.0}  # the default policy answers "42"


def test_subprocess_runner_reloads_a_claimed_file_in_its_child(
    venv: Path, qa_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results.json"
    result = run_in(
        venv, "-m", "taskapp", "eval", str(qa_file), "--server", "subprocess", "--json", str(out)
    )
    assert result.returncode == 0, result.stderr
    scores = {row["seed"]: row["score"] for row in json.loads(out.read_text())["results"]}
    assert scores == {0: 1.0, 1: 0.0, 2: 1.0, 3: 0.0}


def test_task_app_path_runs_a_file_an_installed_loader_claims(venv: Path, qa_file: Path) -> None:
    code = textwrap.dedent(
        f"""
        import httpx
        from taskapp import InProcessTaskApp
        with InProcessTaskApp(task_app_path={str(qa_file)!r}, port=0) as ta:
            print("LOADER", ta.loaded.loader)
            info = httpx.get(ta.url + "/task_info", headers={{"X-API-Key": ta.api_key}})
            print("ID", info.json()["taskset"]["id"])
        """
    )
    result = run_in(venv, "-c", code)
    assert result.returncode == 0, result.stderr
    assert "LOADER qa" in result.stdout
    assert "ID tiny-qa" in result.stdout


def test_a_file_no_installed_loader_claims_names_the_loaders(venv: Path, tmp_path: Path) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("not a task app\n")
    code = textwrap.dedent(
        f"""
        from taskapp import InProcessTaskApp
        try:
            with InProcessTaskApp(task_app_path={str(other)!r}, port=0):
                pass
        except Exception as exc:
            print(type(exc).__name__, exc)
        """
    )
    result = run_in(venv, "-c", code)
    assert result.stdout.startswith("AppLoadError no loader claims the file"), result
    assert "installed loader plugins (qa) do not take it either" in result.stdout


def test_without_the_plugin_a_non_python_file_is_refused_before_starting(qa_file: Path) -> None:
    with pytest.raises(ConfigurationError, match="no loader claims the file") as caught:
        InProcessTaskApp(task_app_path=qa_file)
    assert "no loader plugin is installed" in str(caught.value)
    result = run_taskapp("eval", str(qa_file))
    assert result.returncode == 2, result.stderr
    assert "no loader claims the file" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_registry_names_an_unclaimed_path(tmp_path: Path) -> None:
    from taskapp.core.backends import AppTarget

    with pytest.raises(AppLoadError, match="no loader claims the folder"):
        get_registry().load_app(AppTarget(kind="path", value=tmp_path, api_key="k" * 16))


def test_task_app_path_with_an_import_string_is_accepted() -> None:
    ta = InProcessTaskApp(task_app_path="tests.helpers:minimal_app", port=0)
    with ta:
        assert ta.loaded is not None and ta.loaded.loader == "import_string"
        assert httpx.get(f"{ta.url}/health", headers={"X-API-Key": ta.api_key}).status_code == 200


def test_missing_task_app_path_suggests_the_py_file(tmp_path: Path) -> None:
    (tmp_path / "arith_app.py").write_text("app = None\n")
    with pytest.raises(TaskAppFileNotFoundError, match=r"Did you mean .*arith_app\.py\?"):
        InProcessTaskApp(task_app_path=tmp_path / "arith_app")
    with pytest.raises(TaskAppFileNotFoundError, match=r"Did you mean .*arith_app\.py\?"):
        InProcessTaskApp(task_app_path=tmp_path / "arith_ap.py")


@pytest.mark.parametrize("command", ["serve", "eval"])
def test_cli_target_without_py_suggests_the_file(command: str, tmp_path: Path) -> None:
    (tmp_path / "arith_app.py").write_text("app = None\n")
    result = run_taskapp(command, "arith_app", cwd=tmp_path)
    assert result.returncode == 2
    assert "Did you mean arith_app.py?" in result.stderr, result.stderr


class _PluginTunnel(TunnelBackend):
    name = "newcomer-test-tunnel"

    def open(self, ctx: TunnelContext) -> Tunnel:
        return Tunnel(url=ctx.local_url)


class _TunnelPlugin:
    import taskapp as _taskapp

    @_taskapp.hookimpl
    def register_tunnels(self, register: object) -> None:
        register(_PluginTunnel)  # type: ignore[operator]


def test_tunnel_mode_names_the_plugin_tunnel_in_use() -> None:
    registry = get_registry()
    registry.register(_TunnelPlugin(), name="newcomer-test-tunnel-plugin")
    try:
        by_backend = InProcessTaskApp(
            app=minimal_app(), port=free_port(), tunnel_backend="newcomer-test-tunnel"
        )
        assert by_backend.tunnel_mode == "newcomer-test-tunnel"
        by_mode = InProcessTaskApp(app=minimal_app(), tunnel_mode="newcomer-test-tunnel")
        assert by_mode.tunnel_mode == "newcomer-test-tunnel"
        with by_backend:
            assert by_backend.tunnel_mode == "newcomer-test-tunnel"
        # Seed spellings stay as given (synth-ai code compares them).
        assert InProcessTaskApp(app=minimal_app(), tunnel_mode="local").tunnel_mode == "local"
    finally:
        registry.unregister("newcomer-test-tunnel-plugin")
