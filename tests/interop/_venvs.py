"""Virtual environments with real synth-ai releases, for tests/interop/.

One per release under ``~/.cache/taskapp-interop/<version>`` (``TASKAPP_INTEROP_CACHE``
overrides the folder): a venv that also sees the site-packages of the interpreter that
built it (a ``.pth`` file; on CI that is ``.venv-plain``, which has fastapi, pydantic, httpx,
uvicorn: what taskapp itself needs), with ``synth-ai==<version>``
installed ``--no-deps`` plus only the packages its code imports on the paths the tests
use (found by importing them until nothing is missing). A marker file records what was
installed; a venv whose marker differs is rebuilt.

``python -m tests.interop._venvs`` builds them all (``.ci/run`` does, before the tests);
``--check`` only says which are ready.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import run_child

__all__ = [
    "CONTAINERS",
    "IMPORTS",
    "REQUIREMENTS",
    "VERSIONS",
    "Unavailable",
    "build",
    "cache_root",
    "python_for",
    "ready",
    "requirement",
]

_AIOHTTP = (
    "aiohttp",
    "aiohappyeyeballs",
    "aiosignal",
    "frozenlist",
    "multidict",
    "propcache",
    "yarl",
)

#: the venv with synth-containers 0.4.6 and synth-optimizers 0.1.1
CONTAINERS = "containers-0.4.6"

# What synth_ai.sdk.task pulls in beyond taskapp's own: tracing (libsql, sqlalchemy) and the
# CLI (modal, mcp, celery); the same for 0.3.9 and 0.4.12 (found the same way)
_SDK_TASK = (
    "libsql",
    "sqlalchemy",
    "modal",
    "mcp<2",
    "celery",
    "kombu",
    "amqp",
    "vine",
    "billiard",
    "tzlocal",
    "tomli_w",
    "pynacl",
    "grpclib",
    "synchronicity",
    "h2",
    "hyperframe",
    "hpack",
    "httpx_sse",
    "sse_starlette",
    "python-dotenv",
    "protobuf",
    "pydantic-settings",
    *_AIOHTTP,
)

#: release -> the extra packages its imports need (installed --no-deps), measured in a venv
#: that sees only .venv-plain's packages (`.[test]`), as on a fresh CI machine
VERSIONS: dict[str, tuple[str, ...]] = {
    # TaskAppConfig, create_task_app, TaskAppClient: aiohttp (with its own dependencies)
    # beyond what taskapp needs
    "0.7.3": _AIOHTTP,
    "0.3.9": _SDK_TASK,
    # Gen C's first shape (metrics.outcome_reward, no reward_info): synth_ai.sdk.task pulls
    # in what 0.3.9's does
    "0.4.12": _SDK_TASK,
    # the Rust agent ships in the wheel (synth_ai_py, manylinux abi3)
    "0.9.11": (),
    # the lease REST client
    "0.17.4": (),
    # synth-containers 0.4.6 (its HTTPContainerClient, models, Container SDK and bundled
    # targets) with synth-optimizers 0.1.1 (pure Python): what their imports need beyond
    # taskapp's own packages
    CONTAINERS: ("synth-optimizers==0.1.1", "zstandard"),
}

#: venv label -> the distribution it is built around (default: synth-ai at that version)
REQUIREMENTS: dict[str, str] = {CONTAINERS: "synth-containers==0.4.6"}

#: release -> the import that proves the venv usable
IMPORTS: dict[str, str] = {
    "0.7.3": (
        "from synth_ai.sdk.localapi._impl.server import TaskAppConfig, create_task_app; "
        "from synth_ai.sdk.localapi.client import TaskAppClient"
    ),
    "0.3.9": (
        "from synth_ai.sdk.task.contracts import RolloutRequest; "
        "from synth_ai.sdk.task.client import TaskAppClient"
    ),
    "0.4.12": (
        "from synth_ai.sdk.task.server import TaskAppConfig, create_task_app; "
        "from synth_ai.sdk.task.client import TaskAppClient; "
        "from synth_ai.sdk.task.contracts import RolloutMetrics, RolloutResponse"
    ),
    "0.9.11": (
        "import synth_ai_py; "
        "from synth_ai.core.tunnels.tunneled_api import TunneledContainer, TunnelBackend"
    ),
    "0.17.4": "from synth_ai.sdk.tunnels import TunnelsClient",
    CONTAINERS: (
        "from synth_containers.sdk import Container; "
        "from synth_containers.http_client import HTTPContainerClient; "
        "from synth_containers.http_models import RolloutRequestModel; "
        "from synth_optimizers.miprov2.container_gepa_compat import ContainerGepaAdapter"
    ),
}


class Unavailable(RuntimeError):
    """The venv could not be built (the package index unreachable, say)."""


def cache_root() -> Path:
    configured = os.environ.get("TASKAPP_INTEROP_CACHE")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "taskapp-interop"


def requirement(version: str) -> str:
    """The distribution a venv label is built around."""
    return REQUIREMENTS.get(version, f"synth-ai=={version}")


def _marker(version: str) -> dict[str, object]:
    marker: dict[str, object] = {
        "synth-ai": version,
        "extras": list(VERSIONS[version]),
        "python": sys.version.split()[0],
        "base": sys.base_prefix,
        "provider": _provider_site_packages(),
    }
    if version in REQUIREMENTS:  # (synth-ai venvs keep their marker: no rebuild)
        marker["requirement"] = REQUIREMENTS[version]
    return marker


def _python(root: Path) -> Path:
    return root / "bin" / "python"


def child_env(home: Path | None = None) -> dict[str, str]:
    """The environment an interop child runs in: this checkout's taskapp importable,
    HOME in a scratch folder (synth-ai writes ~/.synth_ai), no taskapp or synth-ai keys."""
    repo = Path(__file__).resolve().parents[2]
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TASKAPP_", "SYNTH_", "ENVIRONMENT_API_KEY", "DEV_ENVIRONMENT"))
    }
    env["PYTHONPATH"] = os.pathsep.join([str(repo / "src"), str(repo)])
    env["PYTHONUNBUFFERED"] = "1"
    env["SYNTH_LOCALAPI_AUTH_PERSIST"] = "0"
    env["SYNTH_REQUIRE_EXPLICIT_BACKEND"] = "1"  # never the hosted service
    if home is not None:
        env["HOME"] = str(home)
    return env


def ready(version: str) -> Path | None:
    """The venv's python when it is built and current, else None."""
    root = cache_root() / version
    try:
        marker = json.loads((root / ".taskapp-interop.json").read_text())
    except (OSError, ValueError):
        return None
    if marker != _marker(version) or not _python(root).exists():
        return None
    return _python(root)


def _provider_site_packages() -> list[str]:
    """The site-packages of the interpreter building the venvs (on CI: .venv-plain, which
    has fastapi, pydantic, httpx, uvicorn: what taskapp itself needs). The base Python's
    own site-packages may have none of them on a fresh machine."""
    import site

    return [path for path in site.getsitepackages() if Path(path).is_dir()]


def _lend_site_packages(python: Path) -> None:
    """Make the provider's packages importable in the venv, after the venv's own (a .pth
    file appends them to sys.path, so synth-ai's pinned extras still win)."""
    found = run_child(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    purelib = Path(found.stdout.strip())
    (purelib / "taskapp-interop-provider.pth").write_text(
        "".join(f"{path}\n" for path in _provider_site_packages())
    )


def build(version: str) -> Path:
    """Build (or reuse) the venv of ``version``; raises :class:`Unavailable` saying why not."""
    found = ready(version)
    if found is not None:
        return found
    root = cache_root() / version
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    base = Path(sys.base_prefix) / "bin" / "python3"
    interpreter = str(base if base.exists() else sys.executable)
    run_child(
        [interpreter, "-m", "venv", str(root)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    python = _python(root)
    _lend_site_packages(python)
    packages = [requirement(version), *VERSIONS[version]]
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
    result = run_child([*pip, *packages], capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise Unavailable(
            f"pip could not install {requirement(version)} ({', '.join(packages[1:]) or 'alone'}): "
            + (lines[-1] if lines else f"exit {result.returncode}")
        )
    scratch = root / "home"
    scratch.mkdir(exist_ok=True)
    check = run_child(
        [str(python), "-c", IMPORTS[version]],
        capture_output=True,
        text=True,
        timeout=300,
        env=child_env(scratch),
        check=False,
    )
    if check.returncode != 0:
        lines = check.stderr.strip().splitlines()
        raise RuntimeError(
            f"{requirement(version)} installed but does not import: "
            + (lines[-1] if lines else f"exit {check.returncode}")
        )
    (root / ".taskapp-interop.json").write_text(json.dumps(_marker(version)))
    return python


def python_for(version: str) -> Path:
    """The venv's python for a test: built when missing. Not buildable: the test is
    skipped with the reason, or fails under ``CI=true`` (CI must run them)."""
    import pytest

    try:
        return build(version)
    except Unavailable as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"interop venv for {requirement(version)} unavailable in CI: {exc}")
        pytest.skip(f"interop venv for {requirement(version)} unavailable: {exc}")


def main(argv: list[str]) -> int:
    """Build the venvs (all four at once: pip mostly waits on the network)."""
    from concurrent.futures import ThreadPoolExecutor

    versions = [arg for arg in argv if not arg.startswith("-")] or list(VERSIONS)
    if "--check" in argv:
        for version in versions:
            print(f"{requirement(version)}: {'ready' if ready(version) else 'missing'}")
        return 0

    def one(version: str) -> tuple[str, str | None, float]:
        started = time.monotonic()
        try:
            return str(build(version)), None, time.monotonic() - started
        except (Unavailable, RuntimeError, subprocess.SubprocessError) as exc:
            return "", str(exc), time.monotonic() - started

    status = 0
    with ThreadPoolExecutor(max_workers=len(versions)) as pool:
        for version, (python, error, took) in zip(versions, pool.map(one, versions), strict=True):
            if error is not None:
                print(f"{requirement(version)}: FAILED: {error}", file=sys.stderr)
                status = 1
            else:
                print(f"{requirement(version)}: {python} ({took:.1f} s)")
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
