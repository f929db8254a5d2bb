"""The job backend's API under schemathesis (issue 24): every operation of its OpenAPI
document, with the right key, a wrong one and none, against ``taskapp backend serve`` in
a child process whose environment holds secrets. Every answer must be below 500 (a 503
with ``Retry-After`` is deliberate), no connection may drop, and no secret of the
backend's environment may appear in a body.

Short profile by default (CI); ``TASKAPP_FUZZ=long`` runs many more examples.
"""

from __future__ import annotations

import os
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ._backend import KEY, SECRETS, Backend

LONG = os.environ.get("TASKAPP_FUZZ", "").lower() == "long"
SETTINGS = settings(
    max_examples=200 if LONG else 12,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    db = tmp_path_factory.mktemp("backend-fuzz") / "jobs.sqlite3"
    with Backend(db, "--workers", "0") as served:  # submitted jobs stay queued
        yield served


def backend_schema() -> Any:
    from taskapp.jobs.service import create_backend_app

    store = types.SimpleNamespace(listeners=[])  # the schema needs no store
    app = create_backend_app(store, None, KEY)  # type: ignore[arg-type]
    return schemathesis.openapi.from_dict(app.api.openapi())


class Tally:
    def __init__(self) -> None:
        self.cases = 0
        self.errors: list[str] = []
        self.dropped: list[str] = []
        self.leaks: list[str] = []

    def call(self, name: str, case: Any, url: str, auth: dict[str, str]) -> None:
        self.cases += 1
        try:
            response = case.call(base_url=url, headers=auth, timeout=30)
        except httpx.TransportError as exc:
            self.dropped.append(f"{name}: {type(exc).__name__}")
            return
        deliberate = response.status_code == 503 and "retry-after" in response.headers
        if response.status_code >= 500 and not deliberate:
            self.errors.append(f"{name}: HTTP {response.status_code} {response.text[:200]}")
        for secret in SECRETS:
            if secret in response.text:
                self.leaks.append(f"{name}: a backend secret in the body")


def _fuzz(operation: Any, url: str, auths: list[dict[str, str]], tally: Tally) -> Any:
    name = f"{operation.method.upper()} {operation.path}"

    @SETTINGS
    @given(case=operation.as_strategy(), auth=st.sampled_from(auths))
    def run(case: Any, auth: dict[str, str]) -> None:
        tally.call(name, case, url, auth)

    return run


def test_schemathesis_over_the_backend_api(backend: Backend) -> None:
    auths = [{"Authorization": f"Bearer {KEY}"}, {"Authorization": "Bearer wrong-key-123"}, {}]
    tally = Tally()
    operations = 0
    for result in backend_schema().get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        operations += 1
        if operation.path in ("/api/jobs/{job_id}/events/stream", "/api/stream"):
            continue  # streams never end on their own; test_backend_security covers them
        _fuzz(operation, backend.url, auths, tally)()
    print(f"schemathesis over the backend: {operations} operations, {tally.cases} cases")
    assert operations >= 10
    assert tally.cases >= operations
    assert tally.errors == []
    assert tally.dropped == []
    assert tally.leaks == []


def test_the_submit_body_is_in_the_schema(tmp_path: Path) -> None:
    paths = backend_schema().raw_schema["paths"]
    body = paths["/api/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "config_toml" in body["required"]
