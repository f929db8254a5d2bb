"""The synth-ai <= 0.17 gaps of issue 22, item 4, on taskapp's side.

* synth-ai's example files define both ``fastapi_app()`` and ``build_config()``, and every
  synth-ai loader (0.2.24 - 0.7.3) uses ``fastapi_app`` first: taskapp does too. The file
  here is written in those examples' shape with taskapp's own API (a stand-in for
  synth-ai's file, whose real form runs in tests/interop/test_synth_apps.py);
* a rollout request naming no task is a 422 naming what is missing (in
  tests/containers/test_gepa_routes.py, with the container requests).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import httpx

from taskapp import InProcessTaskApp

EXAMPLE = '''
"""In the shape of synth-ai's banking77_task_app.py: build_config() and fastapi_app()."""
from fastapi import APIRouter

from taskapp import create_task_app
from tests.helpers import demo_config


def build_config():
    return demo_config(app_id="from-build-config")


def fastapi_app():
    app = create_task_app(build_config())
    extra = APIRouter()

    @extra.get("/extra-route")
    def extra_route():
        return {"from": "fastapi_app"}

    app.include_router(extra)
    return app
'''


def test_a_file_with_fastapi_app_and_build_config_is_served_from_fastapi_app(
    tmp_path: Path,
) -> None:
    path = tmp_path / "banking77_style_task_app.py"
    path.write_text(textwrap.dedent(EXAMPLE))
    with InProcessTaskApp(task_app_path=path, port=0) as app:
        headers = {"X-API-Key": app.api_key or ""}
        answer = httpx.get(f"{app.url}/extra-route", headers=headers, trust_env=False)
        assert answer.status_code == 200
        assert answer.json() == {"from": "fastapi_app"}
