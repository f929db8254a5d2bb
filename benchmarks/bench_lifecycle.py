"""InProcessTaskApp enter / exit / import: taskapp vs the anchor (synth-ai 0.7.3) vs the floor.

Usage (from the repository root)::

    python benchmarks/bench_lifecycle.py                  # 20 runs per variant
    python benchmarks/bench_lifecycle.py --runs 30 --json lifecycle.json
    python benchmarks/bench_lifecycle.py --anchor-venv /elsewhere/anchor-venv
    python benchmarks/bench_lifecycle.py --stack auto     # uvicorn defaults for taskapp
    python benchmarks/bench_lifecycle.py --breakdown 10   # where a first enter goes

Every measurement runs in a fresh child process (``--child VARIANT``), so each first
enter pays the same import and warm-up costs; variants are interleaved round by round
(rotating the order) so that machine noise spreads over all of them. One warm-up round
is run first and discarded. Children get bytecode caching in a temporary directory
(``PYTHONPYCACHEPREFIX``) for both interpreters alike, as an installed package would have.

Variants (all serve the same trivial FastAPI app whose ``GET /health`` checks ``X-API-Key``):

``taskapp``                   ``async with InProcessTaskApp(app=app, tunnel_mode="local")``
``taskapp-config``            the same with ``config=TaskAppConfig(...)``
``taskapp-sync``              ``with InProcessTaskApp(app=app, ...)`` (no event loop)
``taskapp-uvicorn-imported``  ``taskapp`` with ``import uvicorn`` done before the first
                              enter, as the anchor's own import does
``anchor``                    synth-ai 0.7.3: ``async with InProcessTaskApp(app=app,
                              tunnel_mode="local", api_key=...)``
``floor``                     uvicorn in a thread on a pre-bound socket + one
                              ``GET /health`` over ``http.client``; exit = close the
                              listener, lifespan shutdown, join the thread. A third cycle
                              measures stock uvicorn's ``should_exit`` exit.

taskapp and the floor serve on the uvicorn stack the anchor venv resolves to (``--stack
anchor``: asyncio loop, h11, no WebSocket protocol) unless ``--stack auto``.

Per child: constructor time, enter (entering the context until ``url`` is set), exit
(leaving the context until it returns) for a first cycle in the fresh process and a
second "warm" cycle in the same process, full-GC pauses during the first enter, and
``cold`` = from spawning the child until ``url`` is set (interpreter start + imports +
app build + construct + enter). Each cycle checks the app answered 200 and the port is
closed after exit.

Import: ``python -c "import taskapp"`` (and ``from taskapp import InProcessTaskApp``) vs
``python -c "from synth_ai.sdk import InProcessTaskApp"`` in the anchor venv, each a fresh
subprocess, plus ``python -c pass`` for both interpreters, and the top ``-X importtime``
entries for taskapp.

The anchor lives in its own virtual environment outside the repository (``--anchor-venv``,
default ``../anchor-venv`` relative to the repository root). If it is missing it is
created with ``python -m venv`` and pip's configured package index (nothing of the
anchor is ever copied into this repository)::

    python -m venv ../anchor-venv
    ../anchor-venv/bin/pip install --no-deps synth-ai==0.7.3
    ../anchor-venv/bin/pip install fastapi uvicorn httpx requests "click<8.2" rich \
        pydantic aiohttp python-dotenv
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ANCHOR_VENV = REPO_ROOT.parent / "anchor-venv"
ANCHOR_VERSION = "0.7.3"
ANCHOR_DEPS = (
    "fastapi",
    "uvicorn",
    "httpx",
    "requests",
    "click<8.2",
    "rich",
    "pydantic",
    "aiohttp",
    "python-dotenv",
)
ANCHOR_IMPORT = "from synth_ai.sdk import InProcessTaskApp"
RESULT_PREFIX = "BENCH_RESULT "
BENCH_KEY = "bench-lifecycle-key-0123456789abcdef"  # a throwaway key for a loopback app
TASKAPP_VARIANTS = ("taskapp", "taskapp-config", "taskapp-sync", "taskapp-uvicorn-imported")
ALL_VARIANTS = (*TASKAPP_VARIANTS, "anchor", "floor")
CHILD_TIMEOUT = 60.0
#: Environment of every measured child; set by :func:`main` (see :func:`child_env`).
CHILD_ENV: dict[str, str] = {}
#: uvicorn settings for taskapp and the floor. "anchor": exactly what uvicorn resolves to in
#: the anchor venv made as ANCHOR.md says (no uvloop, no httptools, no websockets/wsproto:
#: asyncio loop, h11, no WebSocket protocol), so all three serve on the same stack; "auto":
#: uvicorn's defaults in the taskapp environment (may pick uvloop/httptools/websockets).
STACKS: dict[str, dict[str, str]] = {
    "anchor": {"loop": "asyncio", "http": "h11", "ws": "none"},
    "auto": {},
}
STACK: dict[str, str] = {}  # the chosen one, in the child
STACK_NAME = "anchor"  # the chosen one, in the parent

# --------------------------------------------------------------------------------------
# child side: stdlib only at module level (runs under both interpreters)
# --------------------------------------------------------------------------------------


def _make_app(key: str) -> Any:
    """The trivial task app: ``GET /health`` answers 200 to the right ``X-API-Key``."""
    from fastapi import FastAPI, Header
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.get("/health")
    async def health(x_api_key: str | None = Header(default=None)) -> Any:
        if x_api_key != key:
            return JSONResponse({"detail": "bad key"}, status_code=401)
        return {"healthy": True}

    return app


def _make_config() -> Any:
    from taskapp import TaskAppConfig

    async def rollout(request: Any, http_request: Any) -> dict[str, Any]:
        return {"run_id": request.run_id, "metrics": {"outcome_score": 1.0}}

    return TaskAppConfig(
        app_id="bench",
        name="Bench",
        description="trivial benchmark task app",
        describe_taskset=lambda: {"splits": {"train": 1}},
        provide_task_instances=lambda seeds: [],
        rollout=rollout,
    )


def _get(url: str, key: str, timeout: float = 10.0) -> int:
    import http.client
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", (parts.path or "") + "/health", headers={"X-API-Key": key})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _port_closed(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(("127.0.0.1", port))
        except OSError:
            return True
    return False


class _GcWatch:
    """Sums the time of full (generation 2) garbage collections, in any thread."""

    def __init__(self) -> None:
        import gc

        self.total = 0.0
        self._started: dict[int, float] = {}
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        ident = threading.get_ident()
        if phase == "start":
            self._started[ident] = time.perf_counter()
        elif ident in self._started:
            self.total += time.perf_counter() - self._started.pop(ident)


_GC: _GcWatch | None = None


def _gc_total() -> float:
    return _GC.total if _GC is not None else 0.0


class _Cycle:
    """Timings of one enter/exit cycle plus sanity checks (not timed)."""

    def __init__(self) -> None:
        self.construct = 0.0
        self.enter = 0.0
        self.enter_cpu = 0.0  # process CPU (all threads) while entering: steadier when loaded
        self.exit = 0.0
        self.gc_in_enter = 0.0  # full GC pauses (any thread) while entering
        self.url_set_at = 0.0  # time.monotonic() when url was set (cross-process clock)
        self.status = 0
        self.port_closed = False

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def _lifecycle_cycle(cls: Any, port: int, key: str, build: Callable[[], dict[str, Any]]) -> _Cycle:
    """One ``async with`` cycle of an InProcessTaskApp class (taskapp's or the anchor's)."""
    cycle = _Cycle()

    async def run() -> None:
        s = time.perf_counter()
        task_app = cls(**build(), port=port, tunnel_mode="local", api_key=key)
        gc0 = _gc_total()
        c0 = time.process_time()
        t0 = time.perf_counter()
        cycle.construct = t0 - s
        async with task_app:
            t1 = time.perf_counter()
            cycle.enter_cpu = time.process_time() - c0
            cycle.url_set_at = time.monotonic()
            cycle.gc_in_enter = _gc_total() - gc0
            assert task_app.url, "url not set after enter"
            cycle.enter = t1 - t0
            cycle.status = await asyncio.to_thread(_get, task_app.url, key)
            t2 = time.perf_counter()
        cycle.exit = time.perf_counter() - t2

    asyncio.run(run())
    cycle.port_closed = _port_closed(port)
    return cycle


def _sync_cycle(cls: Any, port: int, key: str, build: Callable[[], dict[str, Any]]) -> _Cycle:
    cycle = _Cycle()
    s = time.perf_counter()
    task_app = cls(**build(), port=port, tunnel_mode="local", api_key=key)
    gc0 = _gc_total()
    c0 = time.process_time()
    t0 = time.perf_counter()
    cycle.construct = t0 - s
    with task_app:
        t1 = time.perf_counter()
        cycle.enter_cpu = time.process_time() - c0
        cycle.url_set_at = time.monotonic()
        cycle.gc_in_enter = _gc_total() - gc0
        assert task_app.url, "url not set after enter"
        cycle.enter = t1 - t0
        cycle.status = _get(task_app.url, key)
        t2 = time.perf_counter()
    cycle.exit = time.perf_counter() - t2
    cycle.port_closed = _port_closed(port)
    return cycle


def _floor_cycle(app: Any, port: int, key: str, *, stock_exit: bool = False) -> _Cycle:
    """uvicorn in a thread on a pre-bound socket; ready = one GET /health answered."""
    import uvicorn

    cycle = _Cycle()
    gc0 = _gc_total()
    t0 = time.perf_counter()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    stack: dict[str, Any] = dict(STACK)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="auto", **stack)
    server = uvicorn.Server(config)
    state: dict[str, Any] = {}
    started = threading.Event()

    async def serve_until_stopped() -> None:
        state["loop"] = asyncio.get_running_loop()
        state["stop"] = stop = asyncio.Event()
        config.load()
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        started.set()
        await stop.wait()
        # the floor of a stop: close the listener, end the lifespan, return
        for listener in server.servers:
            listener.close()
        for listener in server.servers:
            await listener.wait_closed()
        await server.lifespan.shutdown()

    def run() -> None:
        if stock_exit:
            asyncio.run(server.serve(sockets=[sock]))
        else:
            asyncio.run(serve_until_stopped())

    thread = threading.Thread(target=run, name="floor-uvicorn", daemon=True)
    thread.start()
    cycle.status = _get(f"http://127.0.0.1:{port}", key)  # the one GET: connect is
    t1 = time.perf_counter()  # accepted by the kernel; the answer comes once uvicorn serves
    cycle.url_set_at = time.monotonic()
    cycle.gc_in_enter = _gc_total() - gc0
    cycle.enter = t1 - t0
    t2 = time.perf_counter()
    if stock_exit:
        server.should_exit = True
    else:
        started.wait(5)
        state["loop"].call_soon_threadsafe(state["stop"].set)
    thread.join(10)
    sock.close()
    cycle.exit = time.perf_counter() - t2
    cycle.port_closed = _port_closed(port)
    return cycle


class _Spans:
    """Wall time spent inside chosen functions (any thread), for ``--breakdown``."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    def add(self, label: str, seconds: float) -> None:
        self.totals[label] = self.totals.get(label, 0.0) + seconds

    def wrap(self, owner: Any, name: str, label: str) -> None:
        import functools
        import inspect

        original = getattr(owner, name)
        if getattr(original, "_bench_wrapped", False):
            return
        if inspect.iscoroutinefunction(original):

            @functools.wraps(original)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                s = time.perf_counter()
                try:
                    return await original(*args, **kwargs)
                finally:
                    self.add(label, time.perf_counter() - s)

        else:

            @functools.wraps(original)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                s = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    self.add(label, time.perf_counter() - s)

        wrapper._bench_wrapped = True  # type: ignore[attr-defined]
        setattr(owner, name, wrapper)

    def wrap_uvicorn(self) -> None:
        import uvicorn
        import uvicorn.lifespan.on

        self.wrap(uvicorn.Config, "configure_logging", "  uvicorn.Config: logging setup")
        self.wrap(uvicorn.Config, "load", "  uvicorn.Config.load (protocol/ws imports, app)")
        self.wrap(uvicorn.Config, "get_loop_factory", "  event loop factory (loop import)")
        self.wrap(uvicorn.lifespan.on.LifespanOn, "startup", "  lifespan startup")


def run_breakdown(variant: str, ports: Sequence[int]) -> dict[str, Any]:
    """Where the first enter of a fresh process goes (``--breakdown``; not the benchmark)."""
    global _GC
    _GC = _GcWatch()
    key = BENCH_KEY
    os.environ["ENVIRONMENT_API_KEY"] = key
    app = _make_app(key)
    spans = _Spans()
    if variant == "anchor":
        import uvicorn  # noqa: F401  (imported by the anchor anyway)
        from synth_ai.sdk import InProcessTaskApp as cls  # type: ignore[import-not-found,unused-ignore]

        module = sys.modules[cls.__module__]
        spans.wrap(module, "wait_for_health_check", "health check (new httpx client per try)")
        spans.wrap_uvicorn()
    else:
        import taskapp.core.lifecycle as lifecycle
        import taskapp.core.plugins as plugins
        from taskapp import InProcessTaskApp as cls
        from taskapp.plugins.servers import thread as thread_server

        registry_cls = plugins.PluginRegistry
        spans.wrap(plugins, "get_registry", "plugin registry (first use)")
        if hasattr(registry_cls, "_load_entry_points"):
            spans.wrap(registry_cls, "_load_entry_points", "  entry-point scan")
        if hasattr(registry_cls, "_register_builtin"):
            register_builtin = registry_cls._register_builtin

            def timed_register(self: Any, module_name: str) -> None:
                s = time.perf_counter()
                try:
                    register_builtin(self, module_name)
                finally:
                    spans.add(f"  builtin {module_name}", time.perf_counter() - s)

            registry_cls._register_builtin = timed_register  # type: ignore[method-assign]

        def import_uvicorn_first(original: Any) -> Any:
            def start(self: Any, ctx: Any) -> None:
                s = time.perf_counter()
                import uvicorn  # noqa: F401  (what ThreadServer.start does first)

                spans.add("  import uvicorn (deferred to the first start)", time.perf_counter() - s)
                spans.wrap_uvicorn()
                original(self, ctx)

            return start

        thread_server.ThreadServer.start = import_uvicorn_first(thread_server.ThreadServer.start)  # type: ignore[method-assign]
        spans.wrap(thread_server.ThreadServer, "start", "server start (until uvicorn started)")
        spans.wrap(lifecycle, "wait_healthy", "health check (http.client)")
        spans.wrap(lifecycle.InProcessTaskApp, "_start_steps", "all start steps (in the worker)")
    extra = {"server_options": dict(STACK)} if variant != "anchor" and STACK else {}
    cycle = _lifecycle_cycle(cls, ports[0], key, lambda: {"app": app, **extra})
    return {
        "variant": variant,
        "enter": cycle.enter,
        "construct": cycle.construct,
        "gc_in_enter": cycle.gc_in_enter,
        "spans": spans.totals,
    }


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    found: dict[str, str] = {"python": platform.python_version()}
    for dist in ("fastapi", "starlette", "uvicorn", "httpx", "uvloop", "httptools"):
        with contextlib.suppress(md.PackageNotFoundError):
            found[dist] = md.version(dist)
    return found


def run_child(variant: str, ports: Sequence[int]) -> dict[str, Any]:
    """Runs in the fresh child process; returns everything measured."""
    global _GC
    _GC = _GcWatch()
    key = BENCH_KEY
    os.environ["ENVIRONMENT_API_KEY"] = key  # the anchor reads it; taskapp gets api_key=
    result: dict[str, Any] = {"variant": variant, "threads_before": threading.active_count()}
    s = time.perf_counter()
    app = _make_app(key)  # imports fastapi
    result["app_build"] = time.perf_counter() - s

    s = time.perf_counter()
    if variant == "anchor":
        from synth_ai.sdk import InProcessTaskApp as cls  # type: ignore[import-not-found,unused-ignore]
    elif variant == "floor":
        import uvicorn

        cls = None
    elif variant == "taskapp-uvicorn-imported":
        import uvicorn  # noqa: F401  (what the anchor's import does)

        from taskapp import InProcessTaskApp as cls
    else:
        from taskapp import InProcessTaskApp as cls
    result["lib_import"] = time.perf_counter() - s

    cycles: list[_Cycle] = []
    if variant == "floor":
        cycles.append(_floor_cycle(app, ports[0], key))
        cycles.append(_floor_cycle(app, ports[1], key))
        cycles.append(_floor_cycle(app, ports[2], key, stock_exit=True))
    else:
        extra = {"server_options": dict(STACK)} if variant != "anchor" and STACK else {}

        def build() -> dict[str, Any]:
            if variant == "taskapp-config":
                return {"config": _make_config(), **extra}
            return {"app": app, **extra}

        runner = _sync_cycle if variant == "taskapp-sync" else _lifecycle_cycle
        for port in ports[:2]:
            cycles.append(runner(cls, port, key, build))
    result["cycles"] = [c.as_dict() for c in cycles]
    result["threads_after"] = threading.active_count()
    result["versions"] = _versions()
    return result


# --------------------------------------------------------------------------------------
# parent side
# --------------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (bound at once, then released)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def ensure_anchor_venv(venv: Path) -> Path:
    """Return the anchor venv's python, creating the venv (as ANCHOR.md says) if missing."""
    python = venv / "bin" / "python"
    if python.exists() and _anchor_imports(python):
        return python
    if venv.resolve().is_relative_to(REPO_ROOT):
        raise SystemExit(f"--anchor-venv {venv} is inside the repository; put it outside")
    print(f"creating the anchor venv at {venv} (synth-ai=={ANCHOR_VERSION}) ...", flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--no-deps", f"synth-ai=={ANCHOR_VERSION}"], check=True)
    subprocess.run([*pip, *ANCHOR_DEPS], check=True)
    if not _anchor_imports(python):
        raise SystemExit(
            f"{python} -c {ANCHOR_IMPORT!r} fails; see the error above and install what it "
            f"names with {venv}/bin/pip"
        )
    return python


def _anchor_imports(python: Path) -> bool:
    done = subprocess.run(
        [str(python), "-c", ANCHOR_IMPORT], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-2000:])
    return done.returncode == 0


def child_env(pycache: Path) -> dict[str, str]:
    """The environment of measured children.

    Bytecode caching is switched on and pointed at a directory outside the repository
    (``PYTHONPYCACHEPREFIX``), for both interpreters alike: with
    ``PYTHONDONTWRITEBYTECODE=1`` (set on some machines) taskapp's editable checkout would
    be compiled from source in every child while the anchor's site-packages ship ``.pyc``
    files. The discarded warm-up round fills the cache.
    """
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def spawn_child(python: str, variant: str, flag: str = "--child") -> dict[str, Any]:
    ports = free_ports(3)
    cmd = [python, str(Path(__file__).resolve()), flag, variant]
    cmd += ["--ports", ",".join(map(str, ports)), "--stack", STACK_NAME]
    spawned = time.monotonic()
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        env=CHILD_ENV,
        cwd=str(REPO_ROOT.parent),  # never import the checkout by accident from the cwd
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"child {variant} failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT_PREFIX) :])
    if "cycles" not in result:  # --breakdown
        return result
    result["cold"] = result["cycles"][0]["url_set_at"] - spawned
    for i, cycle in enumerate(result["cycles"]):
        if cycle["status"] != 200 or not cycle["port_closed"]:
            raise RuntimeError(f"child {variant} cycle {i} failed its sanity check: {cycle}")
    return result


def timed_command(cmd: Sequence[str]) -> float:
    s = time.perf_counter()
    subprocess.run(
        cmd, check=True, cwd=str(REPO_ROOT.parent), stdout=subprocess.DEVNULL, env=CHILD_ENV
    )
    return time.perf_counter() - s


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def p90(xs: Sequence[float]) -> float:
    ordered = sorted(xs)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def ms(x: float) -> str:
    return f"{x * 1000:.1f}"


def importtime_top(python: str, stmt: str, n: int = 10) -> list[tuple[str, int, int]]:
    """(module, self us, cumulative us) of the slowest imports ``stmt`` adds over ``pass``."""

    def parse(code: str) -> dict[str, tuple[int, int]]:
        done = subprocess.run(
            [python, "-X", "importtime", "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=str(REPO_ROOT.parent),
            env=CHILD_ENV,
        )
        rows: dict[str, tuple[int, int]] = {}
        for line in done.stderr.splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            self_us, cum_us, name = line[len("import time:") :].split("|")
            rows[name.strip()] = (int(self_us), int(cum_us))
        return rows

    baseline = parse("pass")
    added = {k: v for k, v in parse(stmt).items() if k not in baseline}
    ranked = sorted(added.items(), key=lambda kv: kv[1][1], reverse=True)[:n]
    return [(name, s, c) for name, (s, c) in ranked]


def rotate(items: Sequence[str], k: int) -> list[str]:
    k %= len(items)
    return [*items[k:], *items[:k]]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per variant (>= 20)")
    parser.add_argument("--anchor-venv", type=Path, default=DEFAULT_ANCHOR_VENV)
    parser.add_argument("--json", type=Path, help="also write all samples and the summary here")
    parser.add_argument(
        "--stack",
        choices=sorted(STACKS),
        default="anchor",
        help="uvicorn loop/http/ws for taskapp and the floor: 'anchor' (default) = what the "
        "anchor venv resolves to (asyncio, h11, no ws); 'auto' = uvicorn's defaults here",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=(*TASKAPP_VARIANTS, "floor"),
        help="only these variants' enter figures (first, warm), no anchor venv needed; e.g. "
        "--variants taskapp taskapp-config for the config= warm enter vs app=",
    )
    parser.add_argument("--child", choices=ALL_VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    parser.add_argument(
        "--breakdown",
        type=int,
        metavar="N",
        help="instead of the benchmark: break the first enter of taskapp and the anchor "
        "down into its parts (medians of N fresh processes each)",
    )
    parser.add_argument("--breakdown-child", choices=("taskapp", "anchor"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global STACK_NAME
    STACK_NAME = args.stack
    STACK.clear()
    STACK.update(STACKS[args.stack])

    if args.child or args.breakdown_child:
        ports = [int(p) for p in args.ports.split(",")]
        if args.breakdown_child:
            result = run_breakdown(args.breakdown_child, ports)
        else:
            result = run_child(args.child, ports)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0

    if args.variants:
        with tempfile.TemporaryDirectory(prefix="bench-lifecycle-pycache-") as pycache:
            CHILD_ENV.clear()
            CHILD_ENV.update(child_env(Path(pycache)))
            return measure_variants(args.variants, args.runs)
    anchor_python = str(ensure_anchor_venv(args.anchor_venv))
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="bench-lifecycle-pycache-") as pycache:
        CHILD_ENV.clear()
        CHILD_ENV.update(child_env(Path(pycache)))
        if args.breakdown:
            return breakdown(args.breakdown, python, anchor_python)
        return measure(args, python, anchor_python)


BREAKDOWN_ORDER = (
    "plugin registry (first use)",
    "  entry-point scan",
    "all start steps (in the worker)",
    "server start (until uvicorn started)",
    "  import uvicorn (deferred to the first start)",
    "  uvicorn.Config: logging setup",
    "  uvicorn.Config.load (protocol/ws imports, app)",
    "  event loop factory (loop import)",
    "  lifespan startup",
    "health check (http.client)",
    "health check (new httpx client per try)",
)


def breakdown(runs: int, python: str, anchor_python: str) -> int:
    interpreters = {"taskapp": python, "anchor": anchor_python}
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in interpreters}
    for round_no in range(runs + 1):
        for variant in rotate(list(interpreters), round_no):
            result = spawn_child(interpreters[variant], variant, flag="--breakdown-child")
            if round_no:
                results[variant].append(result)
    print(
        f"First construct + enter in a fresh process, ms (median of {runs}; indented = part "
        f"of the line above; spans in the server thread overlap the caller's), "
        f"uvicorn stack {STACK_NAME!r}"
    )
    for variant, rows in results.items():
        print(f"\n{variant}:")
        seen = list(dict.fromkeys(label for r in rows for label in r["spans"]))
        labels = [x for x in BREAKDOWN_ORDER if x in seen]
        labels += [x for x in seen if x not in labels]
        construct_labels = [
            x for x in labels if x.startswith(("plugin registry", "  entry-point", "  builtin"))
        ]
        for title, key, group in (
            ("construct", "construct", construct_labels),
            ("enter", "enter", [x for x in labels if x not in construct_labels]),
        ):
            print(f"  {title:<52} {ms(median([r[key] for r in rows])):>7}")
            for label in group:
                value = median([r["spans"].get(label, 0.0) for r in rows])
                print(f"    {label:<50} {ms(value):>7}")
        gc_ms = ms(median([r["gc_in_enter"] for r in rows]))
        print(f"    {'full GC pauses during enter (any thread)':<50} {gc_ms:>7}")
    return 0


def measure_variants(variants: Sequence[str], runs: int) -> int:
    """``--variants``: first and warm enter of the named variants only (interleaved fresh
    children, a discarded warm-up round), medians and each warm enter minus the first
    variant's."""
    samples: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for round_no in range(runs + 1):
        for variant in rotate(list(variants), round_no):
            result = spawn_child(sys.executable, variant)
            if round_no:
                samples[variant].append(result)
    print(
        f"bench_lifecycle --variants: median of {runs} fresh processes each, uvicorn stack "
        f"{STACK_NAME!r}, load {os.getloadavg()[0]:.2f}"
    )
    print()
    print(
        f"| variant | first enter ms | warm enter ms | warm - {variants[0]} "
        f"| warm enter CPU ms | CPU - {variants[0]} |"
    )
    print("|---|---|---|---|---|---|")

    def median_ms(variant: str, cycle: int, key: str = "enter") -> float:
        return statistics.median(r["cycles"][cycle].get(key, 0.0) for r in samples[variant]) * 1e3

    base = median_ms(variants[0], 1)
    base_cpu = median_ms(variants[0], 1, "enter_cpu")
    for variant in variants:
        warm = median_ms(variant, 1)
        cpu = median_ms(variant, 1, "enter_cpu")
        print(
            f"| {variant} | {median_ms(variant, 0):.2f} | {warm:.2f} | {warm - base:+.2f} "
            f"| {cpu:.2f} | {cpu - base_cpu:+.2f} |"
        )
    return 0


def measure(args: argparse.Namespace, python: str, anchor_python: str) -> int:
    interpreters = {v: (anchor_python if v == "anchor" else python) for v in ALL_VARIANTS}
    started = time.time()
    if args.runs < 20:
        print(f"note: --runs {args.runs} < 20 is a smoke test, not a measurement", flush=True)
    print(
        f"bench_lifecycle: {args.runs} runs per variant, uvicorn stack {args.stack!r} "
        f"{STACKS[args.stack] or '(defaults)'}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}; anchor venv {args.anchor_venv}",
        flush=True,
    )

    # ---- lifecycle: interleaved fresh children; round 0 is a discarded warm-up ----
    samples: dict[str, list[dict[str, Any]]] = {v: [] for v in ALL_VARIANTS}
    for round_no in range(args.runs + 1):
        for variant in rotate(ALL_VARIANTS, round_no):
            result = spawn_child(interpreters[variant], variant)
            if round_no:
                samples[variant].append(result)
        print(f"\r  lifecycle round {round_no}/{args.runs}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    # ---- import time: interleaved fresh interpreters ----
    import_cmds = {
        "python -c pass (taskapp env)": [python, "-c", "pass"],
        "import taskapp": [python, "-c", "import taskapp"],
        "from taskapp import InProcessTaskApp": [
            python,
            "-c",
            "from taskapp import InProcessTaskApp",
        ],
        "python -c pass (anchor venv)": [anchor_python, "-c", "pass"],
        f"anchor: {ANCHOR_IMPORT}": [anchor_python, "-c", ANCHOR_IMPORT],
    }
    import_samples: dict[str, list[float]] = {k: [] for k in import_cmds}
    names = list(import_cmds)
    for round_no in range(args.runs + 1):
        for name in rotate(names, round_no):
            elapsed = timed_command(import_cmds[name])
            if round_no:
                import_samples[name].append(elapsed)
    top_import = importtime_top(python, "import taskapp")
    top_class = importtime_top(python, "from taskapp import InProcessTaskApp")

    summary = summarize(samples, import_samples)
    report = render(summary, top_import, top_class, args.runs)
    print(report)
    print(f"(took {time.time() - started:.0f} s)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "runs": args.runs,
                    "summary": summary,
                    "importtime_import_taskapp": top_import,
                    "importtime_from_taskapp_import_class": top_class,
                    "lifecycle_samples": samples,
                    "import_samples": import_samples,
                },
                indent=1,
            )
        )
        print(f"wrote {args.json}")
    return 0


def summarize(
    samples: dict[str, list[dict[str, Any]]], import_samples: dict[str, list[float]]
) -> dict[str, Any]:
    out: dict[str, Any] = {"lifecycle": {}, "import": {}}
    for variant, results in samples.items():
        cycles = [r["cycles"] for r in results]
        metrics = {
            "construct": [c[0]["construct"] for c in cycles],
            "enter": [c[0]["enter"] for c in cycles],
            "construct_enter": [c[0]["construct"] + c[0]["enter"] for c in cycles],
            "gc_in_enter": [c[0]["gc_in_enter"] for c in cycles],
            "exit": [c[0]["exit"] for c in cycles],
            "warm_construct": [c[1]["construct"] for c in cycles],
            "warm_enter": [c[1]["enter"] for c in cycles],
            "warm_exit": [c[1]["exit"] for c in cycles],
            "cold": [r["cold"] for r in results],
            "app_build": [r["app_build"] for r in results],
            "lib_import": [r["lib_import"] for r in results],
        }
        if variant == "floor":
            metrics["stock_exit"] = [c[2]["exit"] for c in cycles]
        out["lifecycle"][variant] = {
            name: {"median": median(xs), "p90": p90(xs)} for name, xs in metrics.items()
        }
        out["lifecycle"][variant]["gc_runs_with_full_gc_in_enter"] = sum(
            1 for c in cycles if c[0]["gc_in_enter"] > 0
        )
        out["lifecycle"][variant]["leftover_threads"] = max(
            r["threads_after"] - r["threads_before"] for r in results
        )
        out["lifecycle"][variant]["versions"] = results[0]["versions"]
    for name, xs in import_samples.items():
        out["import"][name] = {"median": median(xs), "p90": p90(xs)}
    return out


TARGETS = {"enter": 0.5, "exit": 0.15, "import": 0.2}


def render(
    summary: dict[str, Any],
    top_import: list[tuple[str, int, int]],
    top_class: list[tuple[str, int, int]],
    runs: int,
) -> str:
    life = summary["lifecycle"]
    lines: list[str] = []
    add = lines.append

    def med(variant: str, metric: str) -> float:
        return float(life[variant][metric]["median"])

    def ratio(variant: str, metric: str) -> float:
        return med(variant, metric) / med("anchor", metric)

    def cell(variant: str, metric: str) -> str:
        m = life[variant][metric]
        return f"{ms(m['median'])} / {ms(m['p90'])}"

    add("")
    add(
        f"### Enter: ms, median / p90 of {runs} fresh processes per variant; "
        "x = median vs the anchor"
    )
    add("")
    add(
        "| variant | enter (1st) | x | construct (1st) | construct + enter | x "
        "| warm enter (2nd) | x | full-GC pauses in 1st enter | cold: spawn to url | x |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|---|")
    for v in ALL_VARIANTS:
        add(
            f"| {v} | {cell(v, 'enter')} | {ratio(v, 'enter'):.2f}x | {cell(v, 'construct')} "
            f"| {cell(v, 'construct_enter')} | {ratio(v, 'construct_enter'):.2f}x "
            f"| {cell(v, 'warm_enter')} | {ratio(v, 'warm_enter'):.2f}x "
            f"| {ms(med(v, 'gc_in_enter'))} ({life[v]['gc_runs_with_full_gc_in_enter']}/{runs}"
            f" runs) | {cell(v, 'cold')} | {ratio(v, 'cold'):.2f}x |"
        )
    add("")
    add(f"### Exit: ms, median / p90 of {runs} fresh processes per variant")
    add("")
    add("| variant | exit (1st) | x | warm exit (2nd) | x |")
    add("|---|---|---|---|---|")
    for v in ALL_VARIANTS:
        add(
            f"| {v} | {cell(v, 'exit')} | {ratio(v, 'exit'):.2f}x "
            f"| {cell(v, 'warm_exit')} | {ratio(v, 'warm_exit'):.2f}x |"
        )
    add("")
    add(
        f"Floor exit with stock uvicorn `should_exit` (3rd cycle): "
        f"{cell('floor', 'stock_exit')} ms."
    )
    add("")
    add("Paid before the first enter, in the same child (ms, median):")
    add("")
    add("| variant | build the FastAPI app (imports fastapi) | import the library |")
    add("|---|---|---|")
    for v in ALL_VARIANTS:
        add(f"| {v} | {ms(med(v, 'app_build'))} | {ms(med(v, 'lib_import'))} |")
    add("")
    imp = summary["import"]
    anchor_import = imp[f"anchor: {ANCHOR_IMPORT}"]["median"]
    add(f"### Import: ms, median / p90 of {runs} fresh interpreters each; x = vs the anchor")
    add("")
    add("| command | wall | x |")
    add("|---|---|---|")
    for name, m in imp.items():
        x = m["median"] / anchor_import
        add(f"| `{name}` | {ms(m['median'])} / {ms(m['p90'])} | {x:.2f}x |")
    add("")
    add("### Targets (medians)")
    add("")
    checks = [
        ("enter, app=", ratio("taskapp", "enter"), "enter"),
        ("enter, config=", ratio("taskapp-config", "enter"), "enter"),
        (
            "enter, app=, uvicorn already imported",
            ratio("taskapp-uvicorn-imported", "enter"),
            "enter",
        ),
        ("construct + enter, app=", ratio("taskapp", "construct_enter"), "enter"),
        ("warm enter, app=", ratio("taskapp", "warm_enter"), "enter"),
        ("exit, app=", ratio("taskapp", "exit"), "exit"),
        ("exit, config=", ratio("taskapp-config", "exit"), "exit"),
        ("import taskapp", imp["import taskapp"]["median"] / anchor_import, "import"),
        (
            "from taskapp import InProcessTaskApp",
            imp["from taskapp import InProcessTaskApp"]["median"] / anchor_import,
            "import",
        ),
    ]
    add("| metric | taskapp / anchor | target | met |")
    add("|---|---|---|---|")
    for name, value, target in checks:
        limit = TARGETS[target]
        add(f"| {name} | {value:.2f}x | <= {limit}x | {'yes' if value <= limit else 'NO'} |")
    add("")
    for title, rows in (
        ("`-X importtime`, `import taskapp` (beyond `python -c pass`)", top_import),
        ("`-X importtime`, `from taskapp import InProcessTaskApp`", top_class),
    ):
        add(f"{title}: cumulative / self us")
        add("")
        for name, self_us, cum_us in rows:
            add(f"    {cum_us:>7} {self_us:>7}  {name}")
        add("")
    add(f"versions, taskapp env: {life['taskapp']['versions']}")
    add(f"versions, anchor venv: {life['anchor']['versions']}")
    leftovers = {v: life[v]["leftover_threads"] for v in ALL_VARIANTS}
    add(f"threads left after the cycles (max over runs): {leftovers}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
