"""Every job test that takes ``db`` runs against both stores (SQLite, PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.jobs._stores import job_db


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """``--db`` of a fresh, empty job database of each kind."""
    with job_db(request.param, tmp_path) as value:
        yield value
