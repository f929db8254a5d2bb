"""The public surface, pinned (httpx's ``tests/test_exported_members.py``).

Each package's ``__all__`` is exactly the list below, every listed name resolves (most are
imported lazily, on first use), and the compatibility faces that were deleted stay deleted.
Adding or removing a public name is a decision: update the list here in the same commit,
and the docs that name it.
"""

from __future__ import annotations

import importlib
import sys

import pytest

from tests.helpers import run_child

EXPORTED: dict[str, list[str]] = {
    "taskapp": [
        "ApiKeyRejectedError",
        "AppLoadError",
        "AppTarget",
        "CheckReport",
        "CheckResult",
        "ConfigurationError",
        "EvaluationResult",
        "HealthCheckError",
        "InProcessTaskApp",
        "LifecycleError",
        "LoadedApp",
        "PluginConflictError",
        "PluginError",
        "PluginLoadError",
        "PortError",
        "ProcessError",
        "ProcessTimeoutError",
        "ProcessTunnel",
        "PromptLearningJob",
        "PromptLearningResult",
        "RolloutMetrics",
        "RolloutRequest",
        "RolloutResponse",
        "ServerContext",
        "ServerRunner",
        "ServerStartError",
        "StartInterruptedError",
        "TaskAppClient",
        "TaskAppConfig",
        "TaskAppError",
        "TaskAppFileNotFoundError",
        "TaskAppRequestError",
        "TaskInfo",
        "Tunnel",
        "TunnelAuthError",
        "TunnelBackend",
        "TunnelBinaryMissingError",
        "TunnelContext",
        "TunnelError",
        "TunnelProtocolError",
        "TunnelRateLimitedError",
        "TunnelTimeoutError",
        "TunnelVerificationError",
        "UnknownBackendError",
        "__version__",
        "acheck",
        "aevaluate",
        "check",
        "create_task_app",
        "evaluate",
        "hookimpl",
        "run_in_process_job",
    ],
    "taskapp.optimize": [
        "GepaNotInstalledError",
        "OpenAICompatLM",
        "OptimizeConfig",
        "OptimizeError",
        "OptimizeResult",
        "REFLECTION_TEMPLATE",
        "ReflectionModelError",
        "ReflectionRecorder",
        "RunRecordError",
        "StandInReflectionLM",
        "TaskAppAdapter",
        "TaskAppUnavailableError",
        "advertised_prompts",
        "run",
        "run_async",
    ],
    "taskapp.jobs": [
        "JobBackendError",
        "PromptLearningJob",
        "PromptLearningResult",
        "run_in_process_job",
    ],
    "taskapp.evaluation": [
        "EARLY_STOP_AFTER",
        "EvaluationPlanError",
        "EvaluationResult",
        "Plan",
        "REPORT_FORMAT",
        "Summary",
        "aevaluate",
        "evaluate",
        "print_summary",
        "run_evaluation",
    ],
    "taskapp.testing": [
        "AsyncTaskAppFactory",
        "LeakCheck",
        "ServerRunnerConformance",
        "TaskAppFactory",
        "TunnelBackendConformance",
        "assert_released",
        "assert_task_app_contract",
        "check_task_app_contract",
        "child_pids",
        "free_port",
        "pid_alive",
        "port_is_free",
        "registered_plugin",
        "taskapp_factory",
        "taskapp_factory_async",
        "taskapp_factory_module",
        "taskapp_leak_check",
        "wait_until",
    ],
    "taskapp.plugins.servers.ray": [
        "INSTALL_HINT",
        "MIN_RAY_VERSION",
        "RayOptions",
        "RayServer",
        "stop_local_ray",
    ],
}


@pytest.mark.parametrize("package", sorted(EXPORTED))
def test_all_is_pinned(package: str) -> None:
    module = importlib.import_module(package)
    assert sorted(module.__all__) == EXPORTED[package], (
        f"{package}.__all__ changed: update EXPORTED in tests/core/test_exported_members.py "
        "(and the docs) if that is intended"
    )


@pytest.mark.parametrize("package", sorted(EXPORTED))
def test_every_exported_name_resolves(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"
    assert set(module.__all__) <= set(dir(module))


@pytest.mark.parametrize("package", ["taskapp", "taskapp.optimize", "taskapp.jobs"])
def test_lazy_face_refuses_unknown_names(package: str) -> None:
    module = importlib.import_module(package)
    with pytest.raises(AttributeError, match=rf"module '{package}' has no attribute 'nope'"):
        _ = module.nope


def test_lazy_names_are_imported_on_first_use() -> None:
    """``import taskapp.optimize`` imports none of the modules behind its names."""
    code = (
        "import sys, taskapp, taskapp.optimize, taskapp.jobs\n"
        "heavy = [m for m in ('taskapp.optimize.runner', 'taskapp.jobs.client', "
        "'taskapp.core.lifecycle', 'fastapi', 'uvicorn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "taskapp.optimize.OptimizeResult\n"
        "assert 'taskapp.optimize.result' in sys.modules\n"
        "assert 'OptimizeResult' in vars(taskapp.optimize)\n"  # cached after the first use
    )
    run_child([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(
    ("package", "gone"),
    [
        ("taskapp.relay.server", "start_relay_thread"),
        ("taskapp.relay.server", "RelaySettings"),
        ("taskapp.relay.agent", "AgentThread"),
        ("taskapp.optimize", "parse_seeds"),
        ("taskapp.plugins.servers.ray", "_session"),
        ("taskapp.plugins.servers.ray", "DRIVER_THREAD"),
    ],
)
def test_compat_faces_stay_deleted(package: str, gone: str) -> None:
    """One public path per name: these were re-exports of names that live elsewhere."""
    module = importlib.import_module(package)
    assert not hasattr(module, gone)


def test_deleted_shim_modules_stay_deleted() -> None:
    for name in ("taskapp.optimize.seeds", "taskapp.core.extras"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(name)
