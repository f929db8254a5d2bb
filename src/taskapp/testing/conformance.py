"""Conformance suites for plugin authors: what taskapp requires of every tunnel backend
and every server runner, as pytest test classes to subclass.

::

    from taskapp.testing import ServerRunnerConformance, TunnelBackendConformance

    class TestMyTunnel(TunnelBackendConformance):
        backend = "mytunnel"                    # the name your plugin registers
        options = {"region": "eu"}              # tunnel_options for a working tunnel
        failing_options = {"region": "nowhere"} # valid options with which open() fails

    class TestMyServer(ServerRunnerConformance):
        backend = "myserver"
        options = {"workers": 2}

pytest collects every ``test_*`` method of the subclass. Options that depend on the app's
port or on a fixture go in :meth:`TunnelBackendConformance.tunnel_options` (override
it); a public URL that only resolves through your own transport is reached through
:meth:`TunnelBackendConformance.fetch` (override it). Every test also checks that
nothing is left running afterwards: the port, child processes and threads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
import typing
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from taskapp.core import proctable
from taskapp.testing.helpers import (
    DEFAULT_IGNORED_THREADS,
    LeakCheck,
    assert_released,
    free_port,
    pid_alive,
    wait_until,
)

if TYPE_CHECKING:
    from taskapp.core.backends import Tunnel, TunnelBackend, TunnelContext
    from taskapp.core.lifecycle import InProcessTaskApp

__all__ = ["ServerRunnerConformance", "TunnelBackendConformance"]

KEY = "conformance-key-0123456789abcdef"  # the API key every suite's app runs with

#: The app the suites serve, by import string so any server can load it in any process.
DEMO_APP = "taskapp.testing.apps:demo_config"
FAILING_APP = "taskapp.testing.apps:failing_startup_app"


def _cmdline(pid: int) -> str:
    return b" ".join(proctable.argv(pid) or []).decode(errors="replace")


def _wrong_value(hint: Any) -> Any:
    """A value of the wrong type for ``hint``, or None when every value fits."""
    from taskapp.core.options import _check

    for candidate in (object(), 3.5j, b"bytes"):
        ok, _ = _check(candidate, hint)
        if not ok:
            return candidate
    return None


class _Base:
    backend: ClassVar[str]
    options: ClassVar[Mapping[str, Any]] = {}
    #: seconds a start may take (server start, health check, tunnel open)
    start_timeout: ClassVar[float] = 30.0
    #: how many start/stop cycles :meth:`test_survives_start_stop_cycles` runs
    cycles: ClassVar[int] = 3
    #: thread-name prefixes allowed to outlive a task app (your library's own pool)
    ignore_threads: ClassVar[tuple[str, ...]] = ()
    #: seconds threads and child processes get to end after a stop
    leak_timeout: ClassVar[float] = 10.0

    def leak_check(self) -> LeakCheck:
        """What runs now; the tests compare with it after stopping."""
        return LeakCheck.snapshot(ignore_threads=DEFAULT_IGNORED_THREADS + self.ignore_threads)

    def assert_nothing_left(
        self, leaks: LeakCheck, apps: list[InProcessTaskApp], pids: set[int]
    ) -> None:
        for app in apps:
            assert_released(app.port, timeout=self.leak_timeout)
        assert wait_until(lambda: not [p for p in pids if pid_alive(p)], self.leak_timeout), (
            f"{self.kind} {self.backend!r} left processes running after stop: "
            f"{sorted(p for p in pids if pid_alive(p))}"
        )
        leaks.assert_clean(timeout=self.leak_timeout)

    kind: ClassVar[str] = "backend"

    @staticmethod
    def _pids(app: InProcessTaskApp) -> set[int]:
        pids: set[int] = set()
        if app.server is not None:
            pids.update(app.server.pids)
        if app.tunnel is not None:
            pids.update(app.tunnel.pids)
        return pids


class TunnelBackendConformance(_Base):
    """The conformance suite of a tunnel backend. Set ``backend`` (and ``options``).

    Override :meth:`tunnel_options` when the options depend on the app's port or on a
    fixture, :meth:`failing_tunnel_options` (or set ``failing_options``) to give options
    that validate but make the tunnel fail to open, :meth:`fetch` when the public URL is
    reached some other way than a direct HTTP request, and :meth:`drop` to break an open
    tunnel of a supervised backend (the default kills the tunnel's processes).
    """

    kind: ClassVar[str] = "tunnel"
    #: valid options with which the tunnel cannot open (None: the failure test is skipped)
    failing_options: ClassVar[Mapping[str, Any] | None] = None
    #: seconds a failing open may take before the test gives up
    failure_timeout: ClassVar[float] = 15.0
    #: seconds a supervised tunnel gets to come back after :meth:`drop`
    reconnect_timeout: ClassVar[float] = 30.0

    # -- hooks for plugin authors -----------------------------------------------------

    def tunnel_options(self, port: int) -> dict[str, Any]:
        """``tunnel_options`` for a tunnel to the app served on ``port``."""
        return dict(self.options)

    def failing_tunnel_options(self, port: int) -> dict[str, Any] | None:
        """Options that pass validation but with which the tunnel fails to open (or to
        verify); None skips :meth:`test_failure_is_typed_and_names_the_backend`."""
        return None if self.failing_options is None else dict(self.failing_options)

    def fetch(self, task_app: InProcessTaskApp, path: str) -> tuple[int, Any]:
        """GET ``task_app.url + path`` as a remote client would; (status, JSON or text)."""
        assert task_app.url is not None
        return self.fetch_url(task_app.url, path, task_app.tunnel)

    def fetch_url(self, url: str, path: str, tunnel: Tunnel | None) -> tuple[int, Any]:
        """GET ``url + path`` with the API key and what ``tunnel`` says clients must send
        (its headers, its worker token). Override it when the URL resolves only through
        your own transport."""
        from taskapp.core.client import WORKER_TOKEN_HEADER
        from taskapp.core.transport import http_client

        headers = {"X-API-Key": KEY}
        if tunnel is not None:
            headers.update(tunnel.headers)
            if tunnel.worker_token:
                headers[WORKER_TOKEN_HEADER] = tunnel.worker_token
        # verify=False: a tunnel under test may serve a self-signed certificate
        with http_client(timeout=10.0, trust_env=False, verify=False) as client:
            response = client.get(url.rstrip("/") + path, headers=headers)
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, response.text

    def drop(self, task_app: InProcessTaskApp) -> bool:
        """Break the open tunnel as a network failure would; False when this backend has
        no way to (the reconnect test is then skipped). Default: SIGKILL the tunnel's
        processes."""
        pids = task_app.tunnel.pids if task_app.tunnel is not None else ()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return bool(pids)

    # -- plumbing ---------------------------------------------------------------------

    def _backend_cls(self) -> type[TunnelBackend]:
        from taskapp.core.plugins import get_registry

        return get_registry().tunnel(self.backend)

    def _app(self, port: int | None = None, **kwargs: Any) -> InProcessTaskApp:
        from taskapp.core.lifecycle import InProcessTaskApp

        port = free_port() if port is None else port
        kwargs.setdefault("tunnel_options", self.tunnel_options(port))
        kwargs.setdefault("health_check_timeout", self.start_timeout)
        return InProcessTaskApp(
            app=DEMO_APP,
            api_key=KEY,
            port=port,
            auto_find_port=False,
            tunnel_backend=self.backend,
            **kwargs,
        )

    def _context(self, port: int) -> TunnelContext:
        from taskapp.core.backends import TunnelContext

        return TunnelContext(
            local_url=f"http://127.0.0.1:{port}",
            host="127.0.0.1",
            port=port,
            api_key=KEY,
            force_new=False,
            start_timeout=self.start_timeout,
            logger=logging.getLogger(f"taskapp.tunnel.{self.backend}"),
            url_changed=lambda tunnel: None,
        )

    def _assert_reaches(self, app: InProcessTaskApp, tunnel: Tunnel | None = None) -> None:
        if tunnel is None:
            url, (status, body) = app.url, self.fetch(app, "/health")
        else:
            url, (status, body) = tunnel.url, self.fetch_url(tunnel.url, "/health", tunnel)
        healthy = status == 200 and isinstance(body, dict) and body.get("healthy") is True
        assert healthy, (
            f"GET {url}/health through tunnel {self.backend!r} answered "
            f"{status}: {body!r}; expected 200 {{'healthy': true}} from the task app"
        )

    @pytest.fixture
    def conformance_local_app(self) -> Iterator[InProcessTaskApp]:
        """The demo app without a tunnel, for tests that drive the backend directly."""
        from taskapp.core.lifecycle import InProcessTaskApp

        app = InProcessTaskApp(app=DEMO_APP, api_key=KEY, port=free_port(), tunnel_mode="local")
        with app:
            yield app

    # -- the suite --------------------------------------------------------------------

    def test_registered_under_its_name(self) -> None:
        from taskapp.core.backends import TunnelBackend

        cls = self._backend_cls()
        assert issubclass(cls, TunnelBackend)
        assert cls.name == self.backend, (
            f"the class registered as {self.backend!r} says its name is {cls.name!r}"
        )
        assert dataclasses.is_dataclass(cls.Options), "Options must be a (frozen) dataclass"

    def test_opens_and_closes(self) -> None:
        leaks = self.leak_check()
        app = self._app()
        with app:
            assert app.running
            assert app.tunnel is not None
            assert app.url == app.tunnel.url
            assert app.url.startswith(("http://", "https://")), app.url
            assert not app.url.endswith("/"), f"URL {app.url!r} ends with a slash"
            pids = self._pids(app)
            for pid in app.tunnel.pids:
                assert pid_alive(pid), f"tunnel process {pid} is not running while open"
        assert not app.running
        self.assert_nothing_left(leaks, [app], pids)

    def test_url_reaches_the_app(self) -> None:
        with self._app() as app:
            self._assert_reaches(app)
            status, body = self.fetch(app, "/task_info")
            described = status == 200 and isinstance(body, dict) and "taskset" in body
            assert described, (
                f"GET /task_info through tunnel {self.backend!r} answered {status}: {body!r}"
            )

    def test_verify_accepts_the_open_tunnel(self) -> None:
        leaks = self.leak_check()
        app = self._app(skip_tunnel_verification=False)
        with app:
            pids = self._pids(app)
            self._assert_reaches(app)
        self.assert_nothing_left(leaks, [app], pids)

    def test_verify_rejects_a_dead_url_with_a_typed_error(
        self, conformance_local_app: InProcessTaskApp
    ) -> None:
        from taskapp.core.backends import Tunnel, TunnelBackend
        from taskapp.core.errors import TunnelError
        from taskapp.core.options import parse_options

        cls = self._backend_cls()
        options = parse_options(
            cls.Options,
            self.tunnel_options(conformance_local_app.port),
            owner=f"tunnel {self.backend!r}",
        )
        backend = cls(options)
        dead = Tunnel(url=f"http://127.0.0.1:{free_port()}")
        started = time.monotonic()
        error: TunnelError | None = None
        try:
            backend.verify(dead, self._context(conformance_local_app.port), 1.0)
        except TunnelError as exc:
            error = exc
        finally:
            backend.close()
        if error is None:
            # Only a backend that overrides verify() as a no-op (local) may accept it.
            assert cls.verify is not TunnelBackend.verify, (
                "the default verify() accepted a dead URL"
            )
        else:
            assert error.backend == self.backend or self.backend in str(error), (
                f"{type(error).__name__} does not name the backend {self.backend!r}: {error}"
            )
        elapsed = time.monotonic() - started
        assert elapsed < 1.0 + 10.0, f"verify(timeout=1) took {elapsed:.1f} s"

    def test_close_is_idempotent_and_safe_before_open(
        self, conformance_local_app: InProcessTaskApp
    ) -> None:
        from taskapp.core.options import parse_options

        cls = self._backend_cls()
        port = conformance_local_app.port
        options = parse_options(cls.Options, self.tunnel_options(port), owner=self.backend)
        leaks = self.leak_check()
        cls(options).close()  # never opened: must not raise
        backend = cls(options)
        tunnel = backend.open(self._context(port))
        try:
            self._assert_reaches(conformance_local_app, tunnel)
        finally:
            backend.close()
        backend.close()  # a second close must not raise either
        self.assert_nothing_left(leaks, [], set(tunnel.pids))

    def test_failure_is_typed_and_names_the_backend(
        self, conformance_local_app: InProcessTaskApp
    ) -> None:
        from taskapp.core.errors import ConfigurationError, TunnelError
        from taskapp.core.options import parse_options

        port = conformance_local_app.port
        failing = self.failing_tunnel_options(port)
        if failing is None:
            pytest.skip(f"no failing_options given for tunnel {self.backend!r}")
        cls = self._backend_cls()
        try:
            options = parse_options(cls.Options, failing, owner=f"tunnel {self.backend!r}")
        except ConfigurationError as exc:
            pytest.fail(
                f"failing_options were refused by validation ({exc}); give options that "
                "validate but make the tunnel fail to open"
            )
        leaks = self.leak_check()
        # The backend itself, as the lifecycle drives it: open(), then verify().
        backend = cls(options)
        ctx = self._context(port)
        error: Exception | None = None
        started = time.monotonic()
        try:
            tunnel = backend.open(ctx)
            backend.verify(tunnel, ctx, self.failure_timeout)
        except Exception as exc:
            error = exc
        finally:
            backend.close()
        elapsed = time.monotonic() - started
        assert error is not None, "with failing_options, open() and verify() both succeeded"
        assert isinstance(error, TunnelError), (
            f"tunnel {self.backend!r} raised {type(error).__name__}: {error}; a tunnel must "
            "raise a taskapp.TunnelError subclass (TunnelAuthError, TunnelTimeoutError, ...) "
            "that says what happened and what to do"
        )
        assert error.backend == self.backend or self.backend in str(error), (
            f"{type(error).__name__} does not name the backend {self.backend!r}: {error}"
        )
        assert elapsed < self.failure_timeout + 15.0, f"the failure took {elapsed:.1f} s"
        self.assert_nothing_left(leaks, [], set())
        # And through InProcessTaskApp: the start fails and releases everything.
        app = self._app(
            tunnel_options=failing,
            skip_tunnel_verification=False,
            health_check_timeout=self.failure_timeout,
        )
        with pytest.raises(TunnelError):
            app.start()
        assert not app.running
        self.assert_nothing_left(leaks, [app], set())

    def test_unknown_option_is_rejected_before_anything_starts(self) -> None:
        from taskapp.core.errors import ConfigurationError

        leaks = self.leak_check()
        port = free_port()
        options = {**self.tunnel_options(port), "no_such_option_xyz": 1}
        with pytest.raises(ConfigurationError) as caught:
            self._app(port, tunnel_options=options)
        assert "no_such_option_xyz" in str(caught.value)
        assert self.backend in str(caught.value), (
            f"the error does not name the backend: {caught.value}"
        )
        self.assert_nothing_left(leaks, [], set())

    def test_wrong_option_type_is_rejected(self) -> None:
        from taskapp.core.errors import ConfigurationError

        cls = self._backend_cls()
        hints = typing.get_type_hints(cls.Options)
        fields = [
            (f.name, _wrong_value(hints[f.name]))
            for f in dataclasses.fields(cls.Options)
            if f.init and _wrong_value(hints[f.name]) is not None
        ]
        if not fields:
            pytest.skip(f"tunnel {self.backend!r} has no typed options")
        port = free_port()
        for name, value in fields:
            with pytest.raises(ConfigurationError) as caught:
                self._app(port, tunnel_options={**self.tunnel_options(port), name: value})
            assert name in str(caught.value), caught.value

    def test_survives_start_stop_cycles(self) -> None:
        leaks = self.leak_check()
        port = free_port()
        pids: set[int] = set()
        apps = []
        for _ in range(self.cycles):
            app = self._app(port)
            apps.append(app)
            with app:
                pids |= self._pids(app)
                self._assert_reaches(app)
            assert_released(port, timeout=self.leak_timeout)
        self.assert_nothing_left(leaks, apps, pids)

    def test_child_processes_get_no_secret_in_argv(self) -> None:
        with self._app() as app:
            assert app.tunnel is not None
            for pid in app.tunnel.pids:
                argv = _cmdline(pid)
                assert KEY not in argv, f"the API key is in the command line of pid {pid}"

    def test_wait_dropped_returns_when_stopped(
        self, conformance_local_app: InProcessTaskApp
    ) -> None:
        from taskapp.core.options import parse_options

        cls = self._backend_cls()
        if not cls.supervised:
            pytest.skip(f"tunnel {self.backend!r} is not supervised")
        port = conformance_local_app.port
        options = parse_options(cls.Options, self.tunnel_options(port), owner=self.backend)
        backend = cls(options)
        backend.open(self._context(port))
        stop = threading.Event()
        result: list[object] = []
        waiter = threading.Thread(
            target=lambda: result.append(backend.wait_dropped(stop)), daemon=True
        )
        try:
            waiter.start()
            time.sleep(0.3)
            assert waiter.is_alive(), (
                f"wait_dropped() returned {result!r} while the tunnel was up and not stopped"
            )
            stop.set()
            waiter.join(10)
            assert not waiter.is_alive(), "wait_dropped() did not return 10 s after stop was set"
            assert result == [None], f"wait_dropped() returned {result!r} after stop; expected None"
        finally:
            stop.set()
            backend.close()

    def test_reconnects_after_a_drop(self) -> None:
        cls = self._backend_cls()
        if not cls.supervised:
            pytest.skip(f"tunnel {self.backend!r} is not supervised")
        leaks = self.leak_check()
        app = self._app()
        pids: set[int] = set()
        with app:
            before = app.tunnel
            pids |= self._pids(app)
            if not self.drop(app):
                pytest.skip(f"no way to drop a {self.backend!r} tunnel (override drop())")

            def back() -> bool:
                if app.tunnel is before:
                    return False  # the supervisor has not reported a reopened tunnel yet
                try:
                    status, _ = self.fetch(app, "/health")
                except Exception:
                    return False
                return status == 200

            assert wait_until(back, self.reconnect_timeout, interval=0.2), (
                f"tunnel {self.backend!r} did not come back within {self.reconnect_timeout:g} s "
                "after a drop (the supervisor reports a reopened tunnel through "
                "ctx.url_changed; is `supervised = True` and does wait_dropped() notice?)"
            )
            pids |= self._pids(app)
        self.assert_nothing_left(leaks, [app], pids)


class ServerRunnerConformance(_Base):
    """The conformance suite of a server runner. Set ``backend`` (and ``options``).

    The app served is :data:`DEMO_APP` (an import string, so runners that serve from
    another process can load it); set ``app`` to serve another.
    """

    kind: ClassVar[str] = "server"
    app: ClassVar[str] = DEMO_APP
    failing_app: ClassVar[str] = FAILING_APP
    #: seconds a failing start may take
    failure_timeout: ClassVar[float] = 15.0

    def server_options(self) -> dict[str, Any]:
        """``server_options`` for a working server (override when they need a fixture)."""
        return dict(self.options)

    def _runner_cls(self) -> type[Any]:
        from taskapp.core.plugins import get_registry

        return get_registry().server(self.backend)

    def _app(self, port: int | None = None, **kwargs: Any) -> InProcessTaskApp:
        from taskapp.core.lifecycle import InProcessTaskApp

        kwargs.setdefault("server_options", self.server_options())
        kwargs.setdefault("health_check_timeout", self.start_timeout)
        kwargs.setdefault("app", self.app)
        return InProcessTaskApp(
            api_key=KEY,
            port=free_port() if port is None else port,
            auto_find_port=False,
            server=self.backend,
            **kwargs,
        )

    def test_registered_under_its_name(self) -> None:
        from taskapp.core.backends import ServerRunner

        cls = self._runner_cls()
        assert issubclass(cls, ServerRunner)
        assert cls.name == self.backend, (
            f"the class registered as {self.backend!r} says its name is {cls.name!r}"
        )
        assert dataclasses.is_dataclass(cls.Options), "Options must be a (frozen) dataclass"

    def test_serves_the_app_and_keeps_the_contract(self) -> None:
        from taskapp.testing.assertions import assert_task_app_contract

        leaks = self.leak_check()
        app = self._app()
        with app:
            assert app.server is not None
            pids = self._pids(app)
            for pid in pids:
                assert pid_alive(pid), f"server process {pid} is not running"
            assert_task_app_contract(app, seeds=[0, 1])
        self.assert_nothing_left(leaks, [app], pids)

    def test_stop_is_idempotent(self) -> None:
        leaks = self.leak_check()
        app = self._app()
        with app:
            runner = app.server
            assert runner is not None
            pids = self._pids(app)
            runner.check_alive()  # running: must not raise
        runner.stop()  # the lifecycle stopped it already: a second stop must not raise
        app.stop()
        self.assert_nothing_left(leaks, [app], pids)

    def test_stop_before_start_is_safe(self) -> None:
        from taskapp.core.options import parse_options

        cls = self._runner_cls()
        cls(parse_options(cls.Options, self.server_options(), owner=self.backend)).stop()

    def test_survives_start_stop_cycles(self) -> None:
        leaks = self.leak_check()
        port = free_port()
        apps = []
        pids: set[int] = set()
        for _ in range(self.cycles):
            app = self._app(port)
            apps.append(app)
            with app:
                pids |= self._pids(app)
                from taskapp.core.client import TaskAppClient

                with TaskAppClient(app.local_url, KEY) as client:
                    client.health()
            assert_released(port, timeout=self.leak_timeout)
        self.assert_nothing_left(leaks, apps, pids)

    def test_failed_start_is_typed_and_releases_everything(self) -> None:
        from taskapp.core.errors import HealthCheckError, ServerStartError

        leaks = self.leak_check()
        app = self._app(app=self.failing_app, health_check_timeout=self.failure_timeout)
        started = time.monotonic()
        with pytest.raises((ServerStartError, HealthCheckError)):
            app.start()
        assert time.monotonic() - started < self.failure_timeout + 15.0
        assert not app.running
        self.assert_nothing_left(leaks, [app], set())

    def test_unknown_option_is_rejected_before_anything_starts(self) -> None:
        from taskapp.core.errors import ConfigurationError

        leaks = self.leak_check()
        with pytest.raises(ConfigurationError) as caught:
            self._app(server_options={**self.server_options(), "no_such_option_xyz": 1})
        assert "no_such_option_xyz" in str(caught.value)
        assert self.backend in str(caught.value), (
            f"the error does not name the server: {caught.value}"
        )
        self.assert_nothing_left(leaks, [], set())

    def test_wrong_option_type_is_rejected(self) -> None:
        from taskapp.core.errors import ConfigurationError

        cls = self._runner_cls()
        hints = typing.get_type_hints(cls.Options)
        fields = [
            (f.name, _wrong_value(hints[f.name]))
            for f in dataclasses.fields(cls.Options)
            if f.init and _wrong_value(hints[f.name]) is not None
        ]
        if not fields:
            pytest.skip(f"server {self.backend!r} has no typed options")
        for name, value in fields:
            with pytest.raises(ConfigurationError) as caught:
                self._app(server_options={**self.server_options(), name: value})
            assert name in str(caught.value), caught.value

    def test_child_processes_get_no_secret_in_argv(self) -> None:
        with self._app() as app:
            assert app.server is not None
            for pid in app.server.pids:
                argv = _cmdline(pid)
                assert KEY not in argv, f"the API key is in the command line of pid {pid}"
