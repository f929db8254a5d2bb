"""Notebooks: the sync forms work inside a running event loop, and docs/notebook.ipynb runs
top to bottom in a real Jupyter kernel (nbclient + ipykernel, a kernel spec for this very
interpreter installed into a temporary prefix)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from taskapp import AppLoadError, InProcessTaskApp
from taskapp.optimize import StandInReflectionLM, run
from tests.helpers import free_port, minimal_app, port_is_free, run_child
from tests.optimize._optimize_helpers import ToyTask

NOTEBOOK = Path(__file__).resolve().parents[2] / "docs" / "notebook.ipynb"


def test_with_start_and_stop_work_inside_a_running_event_loop() -> None:
    port, other = free_port(), free_port()
    seen: list[str] = []

    async def cell() -> None:
        loop_thread = threading.current_thread()
        with InProcessTaskApp(app=minimal_app(), port=port) as task_app:
            assert httpx.get(f"{task_app.url}/health").status_code == 200
        assert not task_app.running
        started = InProcessTaskApp(app=minimal_app(), port=other).start()
        try:
            assert started.running
            assert httpx.get(f"{started.url}/health").status_code == 200
        finally:
            started.stop()
        seen.append(loop_thread.name)

    asyncio.run(cell())
    assert seen, "the cell ran to the end"
    assert port_is_free(port) and port_is_free(other)


def test_a_failed_start_inside_a_running_loop_raises_the_real_error() -> None:
    port = free_port()

    async def cell() -> None:
        with pytest.raises(AppLoadError, match="expected an ASGI app"):
            with InProcessTaskApp(app="json:loads", port=port):
                pass

    asyncio.run(cell())
    assert port_is_free(port)


def test_optimize_run_inside_a_running_event_loop(caplog: pytest.LogCaptureFixture) -> None:
    task = ToyTask()

    async def cell() -> float:
        result = run(
            task.config(),
            train_seeds="0-19",
            val_seeds="100-109",
            reflection_lm=StandInReflectionLM(),
            budget=40,
        )
        return result.best_score

    with caplog.at_level(logging.WARNING, logger="taskapp"):
        best = asyncio.run(cell())
    assert best >= 0.0
    assert "blocks this thread's running event loop" not in caplog.text


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A kernel spec for this interpreter (which has taskapp), in a temporary prefix."""
    prefix = tmp_path_factory.mktemp("jupyter")
    run_child(
        [
            sys.executable,
            "-m",
            "ipykernel",
            "install",
            "--prefix",
            str(prefix),
            "--name",
            "taskapp-test",
            "--display-name",
            "taskapp test kernel",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    saved = {name: os.environ.get(name) for name in ("JUPYTER_PATH", "ENVIRONMENT_API_KEY")}
    os.environ["JUPYTER_PATH"] = str(prefix / "share" / "jupyter")
    os.environ.pop("ENVIRONMENT_API_KEY", None)
    try:
        yield dict(os.environ)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def test_docs_notebook_runs_in_a_real_kernel(kernel_env: dict[str, str], tmp_path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=180,
        kernel_name="taskapp-test",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError (with the cell and traceback) on failure
    outputs = [
        "".join(out.get("text", "") for out in cell.get("outputs", []))
        for cell in notebook.cells
        if cell.cell_type == "code"
    ]
    text = "\n".join(outputs)
    assert " 200" in text  # the `with` cell
    assert "Customer-support intents" in text  # start() in one cell, stop() in another
    assert "mean score" in text and "baseline" in text and "-> best" in text
    errors = [
        out
        for cell in notebook.cells
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error" or out.get("name") == "stderr"
    ]
    assert not [e for e in errors if "Traceback" in str(e) or e.get("output_type") == "error"]
