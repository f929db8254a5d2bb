"""Job databases for the tests: a SQLite file, or a fresh database in the PostgreSQL
cluster at ``$TASKAPP_TEST_POSTGRES_URL`` (``scripts/pg-throwaway``; .ci/run starts one).

Without that variable the PostgreSQL cases skip, except under ``CI=true``, where they fail:
CI must run the job tests against both stores.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.helpers import run_child

POSTGRES_ENV = "TASKAPP_TEST_POSTGRES_URL"
REPO = Path(__file__).resolve().parents[2]
PG_THROWAWAY = REPO / "scripts" / "pg-throwaway"


def postgres_url() -> str:
    """The test cluster's URL, or skip (fail under CI=true)."""
    url = os.environ.get(POSTGRES_ENV, "")
    if url:
        return url
    message = f"${POSTGRES_ENV} is not set (start a cluster: scripts/pg-throwaway start DIR)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must test the PostgreSQL job store: {message}")
    pytest.skip(message)


def _admin(url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


@contextmanager
def fresh_postgres_db() -> Iterator[str]:
    """A new, empty database in the test cluster (dropped afterwards): its URL."""
    base = postgres_url()
    name = f"t_{uuid.uuid4().hex[:12]}"
    _admin(base, f"CREATE DATABASE {name}")
    try:
        yield urlunsplit(urlsplit(base)._replace(path=f"/{name}"))
    finally:
        _admin(base, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def job_db(kind: str, tmp_path: Path) -> Iterator[str]:
    """``--db`` for ``kind`` ("sqlite" or "postgresql")."""
    if kind == "sqlite":
        yield str(tmp_path / "jobs.sqlite3")
        return
    with fresh_postgres_db() as url:
        yield url


class Cluster:
    """A PostgreSQL cluster of this test's own (scripts/pg-throwaway), to stop and start."""

    def __init__(self) -> None:
        if not PG_THROWAWAY.exists() or not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
            if os.environ.get("CI") == "true":
                pytest.fail("Debian's postgresql package is missing (.ci/run installs it)")
            pytest.skip("Debian's postgresql package is not installed")
        self.dir = Path(tempfile.mkdtemp(prefix="taskapp-pg-"))
        self.url = self._run("start")

    def _run(self, command: str) -> str:
        done = run_child(
            ["bash", str(PG_THROWAWAY), command, str(self.dir)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def stop(self) -> None:
        self._run("stop")

    def start(self) -> None:
        self._run("start")

    def destroy(self) -> None:
        import shutil

        run_child(["bash", str(PG_THROWAWAY), "stop", str(self.dir)],
                       capture_output=True, timeout=60, check=False)  # fmt: skip
        shutil.rmtree(self.dir, ignore_errors=True)
