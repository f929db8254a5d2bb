"""``taskapp backend serve`` and ``taskapp backend worker`` as real child processes (the
installed console script), and the toy task app and configs the job tests submit."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import BackendChild, backend_child_env
from tests.optimize._optimize_helpers import toy_toml as shared_toy_toml

KEY = "backend-test-key-0123456789"


def toy_toml(budget: int = 150, val: int = 30, patience: int = 50) -> str:
    """The toy job config with the jobs tests' health timeout (2 s)."""
    return shared_toy_toml(budget, val, patience, health_timeout=2.0)


def child_env(**extra: str) -> dict[str, str]:
    return backend_child_env(KEY, **extra)


class Proc(BackendChild):
    """A ``taskapp backend serve|worker`` child, started at once; its stderr is collected
    as it runs."""

    def __init__(self, kind: str, db: str, *extra: str, cwd: Path) -> None:
        super().__init__(kind, db, *extra, env=child_env(), cwd=cwd)
        self.start()
