"""Plugins: real third-party distributions built and pip-installed into a temporary venv,
broken plugins, conflicts, environment switches, and the order hooks fire in."""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import taskapp
from taskapp import InProcessTaskApp, PluginConflictError, PluginLoadError, Tunnel
from taskapp.core.backends import AppTarget, LoadedApp, TunnelBackend, TunnelContext
from taskapp.core.plugins import PluginRegistry, get_registry
from taskapp.plugins.servers.thread import ThreadServer
from tests.helpers import FIXTURES as TEST_FIXTURES
from tests.helpers import free_port, minimal_app, run_child, venv_with_distributions, wait_until

FIXTURES = TEST_FIXTURES / "plugins"
DISTRIBUTIONS = (
    "taskapp-echo-tunnel",
    "taskapp-broken-plugin",
    "taskapp-misspelled-hook",
    "taskapp-echo-clash",
)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv that sees this taskapp and has the fixture plugin distributions installed (built by
    this environment's pip and hatchling: nothing from the base interpreter)."""
    return venv_with_distributions(
        tmp_path_factory.mktemp("plugin-venv") / "venv", *(FIXTURES / d for d in DISTRIBUTIONS)
    )


def run_in(
    python: Path, *args: str, env: dict[str, str] | None = None, code: str | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [str(python), *(["-c", textwrap.dedent(code)] if code else ["-m", "taskapp", *args])]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKAPP_")}
    return run_child(
        argv, capture_output=True, text=True, timeout=60, env={**clean, **(env or {})}, check=False
    )


def test_plugins_listing_shows_installed_and_failed(venv: Path) -> None:
    result = run_in(venv, "plugins", "--json")
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    echo = rows["echo"]
    assert echo["distribution"] == "taskapp-echo-tunnel"
    assert echo["version"] == "1.2.3"
    assert echo["tunnels"] == ["echo"]
    assert echo["loader"] is True
    assert "before_shutdown" in echo["hooks"] and "register_tunnels" in echo["hooks"]
    broken = rows["broken"]
    assert broken["distribution"] == "taskapp-broken-plugin"
    assert broken["version"] == "0.0.1"
    assert "ModuleNotFoundError" in broken["error"]
    assert "register_tunnel" in rows["misspelled"]["error"]
    assert "Did you mean 'register_tunnels'?" in rows["misspelled"]["error"]
    assert len(result.stdout) < 4000, "no dump of every registered plugin"
    assert result.returncode == 1, "a listing with failed plugins exits 1"
    assert not any(row["builtin"] for row in rows.values())


def test_plugins_listing_text_and_all(venv: Path) -> None:
    result = run_in(
        venv, "plugins", "--all", env={"TASKAPP_DISABLE_PLUGINS": "broken,misspelled,clash"}
    )
    assert result.returncode == 0, result.stderr
    assert "echo [taskapp-echo-tunnel 1.2.3]" in result.stdout
    assert "tunnels: echo" in result.stdout
    assert "taskapp.plugins.servers.thread" in result.stdout


RUN_ECHO = """
import httpx, os
from taskapp import InProcessTaskApp
from tests.helpers import minimal_app, free_port
with InProcessTaskApp(app=minimal_app(), port=free_port(), tunnel_backend="echo",
                      tunnel_options={"label": "custom"}, skip_tunnel_verification=False) as ta:
    print("URL", ta.url)
    print("HEADERS", dict(ta.tunnel.headers))
    print("STATUS", httpx.get(ta.url + "/health").status_code)
"""


def test_third_party_tunnel_used_despite_broken_plugins(venv: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.txt"
    result = run_in(
        venv,
        code=f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
        + RUN_ECHO,
        env={"ECHO_EVENTS_FILE": str(events), "TASKAPP_DISABLE_PLUGINS": "clash"},
    )
    assert result.returncode == 0, result.stderr
    assert "STATUS 200" in result.stdout
    assert "HEADERS {'X-Echo': 'custom'}" in result.stdout
    assert "failed to load and is skipped" in result.stderr  # reported, not fatal
    assert events.read_text().splitlines() == [
        "app_loaded loader=app",
        "server_started thread",
        "echo.open label=custom",
        "tunnel_opened",
        "task_app_started",
        "before_shutdown",
        "echo.close",
    ]


def test_third_party_loader_claims_target_first(venv: Path, tmp_path: Path) -> None:
    target = tmp_path / "special.echo.py"
    target.write_text("raise SystemExit('the builtin path loader must not run this file')\n")
    code = f"""
import httpx
from taskapp import InProcessTaskApp
with InProcessTaskApp(task_app_path={str(target)!r}, port={free_port()}) as ta:
    print(httpx.get(ta.url + "/health").json())
"""
    result = run_in(venv, code=code, env={"TASKAPP_DISABLE_PLUGINS": "clash"})
    assert result.returncode == 0, result.stderr
    assert "{'loaded_by': 'echo'}" in result.stdout


def test_conflicting_names_name_both_plugins(venv: Path) -> None:
    code = """
from taskapp import InProcessTaskApp
from tests.helpers import minimal_app
try:
    InProcessTaskApp(app=minimal_app(), tunnel_backend="echo")
except Exception as exc:
    print(type(exc).__name__, exc)
"""
    result = run_in(
        venv,
        code=f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
        + code,
    )
    assert "PluginConflictError" in result.stdout
    assert "echo" in result.stdout and "clash" in result.stdout


def test_unknown_name_mentions_failed_plugins(venv: Path) -> None:
    code = """
from taskapp import InProcessTaskApp
try:
    InProcessTaskApp(app=lambda scope, receive, send: None, tunnel_backend="provided-by-broken")
except Exception as exc:
    print(type(exc).__name__, exc)
"""
    result = run_in(venv, code=code)
    assert result.stdout.startswith("PluginLoadError")
    assert "broken (taskapp-broken-plugin 0.0.1): ModuleNotFoundError" in result.stdout


def test_strict_mode_makes_failures_fatal(venv: Path) -> None:
    code = """
from taskapp import InProcessTaskApp
try:
    InProcessTaskApp(app=lambda scope, receive, send: None)
except Exception as exc:
    print(type(exc).__name__, exc)
"""
    result = run_in(venv, code=code, env={"TASKAPP_STRICT_PLUGINS": "1"})
    assert result.stdout.startswith("PluginLoadError TASKAPP_STRICT_PLUGINS is set")


@pytest.mark.parametrize(
    ("load", "expected"),
    [("", set()), ("taskapp-echo-tunnel", {"echo"}), ("taskapp-broken-plugin", {"broken"})],
)
def test_load_plugins_restricts_distributions(venv: Path, load: str, expected: set[str]) -> None:
    result = run_in(venv, "plugins", "--json", env={"TASKAPP_LOAD_PLUGINS": load})
    assert {row["name"] for row in json.loads(result.stdout)} == expected


def test_disable_plugins_by_entry_point_or_distribution(venv: Path) -> None:
    result = run_in(
        venv,
        "plugins",
        "--json",
        env={"TASKAPP_DISABLE_PLUGINS": "taskapp-broken-plugin,misspelled,clash"},
    )
    assert {row["name"] for row in json.loads(result.stdout)} == {"echo"}
    assert result.returncode == 0


def test_trace_plugins_logs_hook_calls(venv: Path) -> None:
    code = """
import logging, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stdout)
from taskapp.core.plugins import get_registry
get_registry()
"""
    result = run_in(
        venv, code=code, env={"TASKAPP_TRACE_PLUGINS": "1", "TASKAPP_DISABLE_PLUGINS": "clash"}
    )
    assert "taskapp.plugins" in result.stdout
    assert "register_tunnels" in result.stdout


# -- in-process plugin registration ----------------------------------------------------


class _Recorder:
    """A plugin object registered at run time."""

    def __init__(self) -> None:
        self.events: list[str] = []

    @taskapp.hookimpl
    def url_changed(self, old_url: str, new_url: str) -> None:
        self.events.append(f"url_changed {old_url} -> {new_url}")

    @taskapp.hookimpl
    def server_started(self) -> None:
        raise RuntimeError("observer bug")


class FlakyTunnel(TunnelBackend):
    """A supervised in-process tunnel that drops once, then reopens under a new URL."""

    name = "flaky-test-tunnel"
    supervised = True
    opened = 0
    drop = threading.Event()

    def open(self, ctx: TunnelContext) -> Tunnel:
        type(self).opened += 1
        return Tunnel(url=f"{ctx.local_url}/#{type(self).opened}", stable=False)

    def wait_dropped(self, stop: threading.Event) -> str | None:
        while not stop.is_set():
            if type(self).drop.wait(0.02):
                type(self).drop.clear()
                return "simulated drop"
        return None


@taskapp.hookimpl
def register_tunnels(register: Any) -> None:
    register(FlakyTunnel)


@pytest.fixture
def recorder() -> Iterator[_Recorder]:
    registry = get_registry()
    plugin = _Recorder()
    registry.register(plugin, name="test-recorder")
    registry.register(sys.modules[__name__], name="test-flaky-tunnel")
    try:
        yield plugin
    finally:
        registry.unregister("test-recorder")
        registry.unregister("test-flaky-tunnel")


def test_url_change_from_supervised_tunnel(
    recorder: _Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    changes: list[str | None] = []
    port = free_port()
    with caplog.at_level(logging.WARNING, logger="taskapp"):
        with InProcessTaskApp(
            app=minimal_app(),
            port=port,
            tunnel_backend="flaky-test-tunnel",
            on_url_change=lambda ta: changes.append(ta.url),
        ) as task_app:
            first = task_app.url
            FlakyTunnel.drop.set()
            assert wait_until(lambda: task_app.url != first, timeout=10)
            assert httpx.get(f"{task_app.local_url}/health").status_code == 200
    assert changes == [task_app.url]
    assert recorder.events == [f"url_changed {first} -> {task_app.url}"]
    # A failing observer is logged with its plugin name and does not break the run.
    assert "plugin 'test-recorder' raised in hook server_started" in caplog.text


def test_registry_rejects_misspelled_hook_at_register_time() -> None:
    class Misspelled:
        @taskapp.hookimpl
        def tunnel_opend(self) -> None: ...

    registry = PluginRegistry(load_entry_points=False)
    with pytest.raises(
        taskapp.PluginError, match="unknown hook 'tunnel_opend'. Did you mean 'tunnel_opened'?"
    ) as caught:
        registry.register(Misspelled(), name="misspelled")
    assert not registry.pm.has_plugin("misspelled")
    assert "before_shutdown" in str(caught.value)  # the hooks that exist are listed


def test_registering_a_plugin_name_twice_names_both_plugins() -> None:
    class First:
        pass

    class Second:
        pass

    registry = PluginRegistry(load_entry_points=False)
    registry.register(First(), name="mine")
    with pytest.raises(PluginConflictError) as caught:
        registry.register(Second(), name="mine")
    message = str(caught.value)
    assert "Second object as plugin 'mine'" in message
    assert "already taken by a tests.core.test_plugins" in message and "First object" in message
    assert len(message) < 400, "no dump of every registered plugin"
    assert "taskapp.plugins.loaders" not in message
    same = First()
    registry.register(same, name="once")
    with pytest.raises(PluginConflictError, match="already registered as plugin 'once'"):
        registry.register(same, name="twice")


def test_registry_rejects_non_backend_classes() -> None:
    class NotATunnel:
        name = "x"

    class Bad:
        @taskapp.hookimpl
        def register_tunnels(self, register: Any) -> None:
            register(NotATunnel)

    registry = PluginRegistry(load_entry_points=False)
    registry.register(Bad(), name="bad")
    assert "not a subclass of TunnelBackend" in registry.failures[0].error
    assert "x" not in registry.tunnels


def test_loader_returning_wrong_type_is_named() -> None:
    class WrongLoader:
        @taskapp.hookimpl(tryfirst=True)
        def load_app(self, target: AppTarget) -> Any:
            return "not a LoadedApp"

    registry = PluginRegistry(load_entry_points=False)
    registry.register(WrongLoader(), name="wrong-loader")
    with pytest.raises(taskapp.AppLoadError, match="loader plugin 'wrong-loader' returned str"):
        registry.load_app(AppTarget(kind="app", value=minimal_app(), api_key="k" * 10))


def test_loader_crash_is_attributed() -> None:
    class CrashingLoader:
        @taskapp.hookimpl(tryfirst=True)
        def load_app(self, target: AppTarget) -> LoadedApp | None:
            raise KeyError("boom")

    registry = PluginRegistry(load_entry_points=False)
    registry.register(CrashingLoader(), name="crashing-loader")
    with pytest.raises(taskapp.AppLoadError, match="loader plugin 'crashing-loader' failed"):
        registry.load_app(AppTarget(kind="app", value=minimal_app(), api_key="k" * 10))


def test_in_process_conflict() -> None:
    class One:
        @taskapp.hookimpl
        def register_tunnels(self, register: Any) -> None:
            register(FlakyTunnel)

    registry = PluginRegistry(load_entry_points=False)
    registry.register(One(), name="one")
    registry.register(sys.modules[__name__], name="two")
    with pytest.raises(PluginConflictError, match="registered by more than one plugin: one, two"):
        registry.tunnel("flaky-test-tunnel")


def test_plugins_are_loaded_lazily_and_once() -> None:
    assert get_registry() is get_registry()
    assert isinstance(PluginLoadError("x"), RuntimeError)


class CountingRunner(ThreadServer):
    """A third-party server runner: the thread runner, counting its starts."""

    name = "counting-test"
    starts = 0

    def start(self, ctx: Any) -> None:
        type(self).starts += 1
        super().start(ctx)


class _RunnerPlugin:
    @taskapp.hookimpl
    def register_servers(self, register: Any) -> None:
        register(CountingRunner)


def test_third_party_server_runner() -> None:
    registry = get_registry()
    registry.register(_RunnerPlugin(), name="test-counting-runner")
    try:
        with InProcessTaskApp(app=minimal_app(), port=free_port(), server="counting-test") as ta:
            assert httpx.get(f"{ta.url}/health").status_code == 200
            assert ta.server is not None
            assert ta.server.name == "counting-test"
        assert CountingRunner.starts == 1
    finally:
        registry.unregister("test-counting-runner")
    with pytest.raises(taskapp.UnknownBackendError):
        InProcessTaskApp(app=minimal_app(), server="counting-test")


def test_async_hook_implementations_are_refused_with_the_plugin_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class AsyncPlugin:
        @taskapp.hookimpl
        async def register_tunnels(self, register: Any) -> None:
            register(FlakyTunnel)

        @taskapp.hookimpl(tryfirst=True)
        async def load_app(self, target: AppTarget) -> None:
            return None

        @taskapp.hookimpl
        async def task_app_started(self) -> None:
            return None

    registry = PluginRegistry(load_entry_points=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no nameless "coroutine was never awaited"
        registry.register(AsyncPlugin(), name="async-plugin")
        (failure,) = registry.failures
        assert failure.name == "async-plugin"
        assert "implements hook register_tunnels with `async def`" in failure.error
        assert "flaky-test-tunnel" not in registry.tunnels
        with pytest.raises(taskapp.PluginError, match="'async-plugin' implements hook load_app"):
            registry.load_app(AppTarget(kind="app", value=minimal_app(), api_key="k" * 10))
        with caplog.at_level(logging.WARNING, logger="taskapp"):
            registry.events.task_app_started(task_app=None)  # type: ignore[arg-type]
        assert "plugin 'async-plugin' raised in hook task_app_started" in caplog.text
        gc.collect()


class _Wrapper:
    @taskapp.hookimpl(wrapper=True)
    def task_app_started(self, task_app: Any) -> Any:
        return (yield)


class _OldStyleWrapper:
    @taskapp.hookimpl(hookwrapper=True)
    def load_app(self, target: AppTarget) -> Any:
        yield


@pytest.mark.parametrize(
    ("plugin", "hook", "kind"),
    [
        (_Wrapper(), "task_app_started", "wrapper=True"),
        (_OldStyleWrapper(), "load_app", "hookwrapper=True"),
    ],
)
def test_wrapper_hook_implementations_are_refused_with_the_plugin_name(
    plugin: object, hook: str, kind: str
) -> None:
    registry = PluginRegistry(load_entry_points=False)
    with pytest.raises(taskapp.PluginError) as info:
        registry.register(plugin, name="wrapping-plugin")
    message = str(info.value)
    assert f"plugin 'wrapping-plugin' implements hook {hook} with {kind}" in message
    assert "plain @taskapp.hookimpl" in message
    # Refused means not registered: the plugin is gone, the registry still works.
    assert not registry.pm.has_plugin("wrapping-plugin")
    loaded = registry.load_app(AppTarget(kind="app", value=minimal_app(), api_key="k" * 10))
    assert loaded.loader


class _EventLog:
    """Implements every lifecycle event hook; records what each one received."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    @taskapp.hookimpl
    def app_loaded(self, task_app: Any, loaded: LoadedApp) -> None:
        self.calls.append(("app_loaded", (task_app.url, loaded.loader)))

    @taskapp.hookimpl
    def server_started(self, task_app: Any, server: Any) -> None:
        self.calls.append(("server_started", (task_app.port, server is task_app.server)))

    @taskapp.hookimpl
    def tunnel_opened(self, tunnel: Tunnel) -> None:
        self.calls.append(("tunnel_opened", tunnel.url))

    @taskapp.hookimpl
    def task_app_started(self, task_app: Any) -> None:
        self.calls.append(("task_app_started", task_app.url))

    @taskapp.hookimpl
    def before_shutdown(self, task_app: Any) -> None:
        tunnel = task_app.tunnel
        self.calls.append(("before_shutdown", tunnel.url if tunnel is not None else None))


def test_event_hooks_fire_in_order_with_their_arguments() -> None:
    registry = get_registry()
    log = _EventLog()
    registry.register(log, name="test-event-log")
    try:
        port = free_port()
        with InProcessTaskApp(app=minimal_app(), port=port, tunnel_mode="local") as ta:
            url = ta.url
    finally:
        registry.unregister("test-event-log")
    assert url is not None
    assert log.calls == [
        ("app_loaded", (None, "app")),
        ("server_started", (port, True)),
        ("tunnel_opened", url),
        ("task_app_started", url),
        ("before_shutdown", url),  # the tunnel is still open
    ]


class ReopenBlocksTunnel(TunnelBackend):
    """Drops once; the reopen blocks until released, as a slow cloudflared start would."""

    name = "reopen-blocks-test"
    supervised = True

    def __init__(self, options: Any) -> None:
        super().__init__(options)
        self.opens = 0
        self.is_open = False
        self.reopening = threading.Event()
        self.release = threading.Event()

    def open(self, ctx: TunnelContext) -> Tunnel:
        self.opens += 1
        if self.opens == 2:
            self.reopening.set()
            self.release.wait(10)
        self.is_open = True
        return Tunnel(url=f"{ctx.local_url}/#{self.opens}")

    def close(self) -> None:
        self.is_open = False

    def wait_dropped(self, stop: threading.Event) -> str | None:
        if self.opens == 1:
            return "simulated drop"
        stop.wait()
        return None


def test_supervisor_closes_a_tunnel_it_opened_after_being_stopped() -> None:
    from taskapp.core.options import NoOptions
    from taskapp.core.supervisor import TunnelSupervisor

    backend = ReopenBlocksTunnel(NoOptions())
    ctx = TunnelContext(
        local_url="http://127.0.0.1:9",
        host="127.0.0.1",
        port=9,
        api_key="k" * 10,
        force_new=False,
        start_timeout=5.0,
        logger=logging.getLogger("taskapp.tunnel.test"),
        url_changed=lambda tunnel: None,
    )
    backend.open(ctx)
    supervisor = TunnelSupervisor(backend, ctx, first_delay=0.0)
    supervisor.start()
    assert backend.reopening.wait(5)
    supervisor.stop(timeout=0.1)  # the lifecycle's join gives up: open() is still running
    backend.close()  # ... and the lifecycle closes the backend
    backend.release.set()  # now the late open() returns
    supervisor._thread.join(5)
    assert not supervisor._thread.is_alive()
    assert backend.opens == 2
    assert not backend.is_open, "the tunnel opened after stop() was left open"
