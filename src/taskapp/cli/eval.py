"""``taskapp eval TARGET``: run rollouts over HTTP and summarize the scores.

The app is started in this process (or reached with ``--url``); rollouts run concurrently
through one shared ``httpx.AsyncClient``; results go to stdout (a summary table and the
worst examples), progress and logs to stderr, every result to ``--json FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import math
import re
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from taskapp.cli._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    TARGET_HELP,
    SignalFlag,
    UsageError,
    add_key_arguments,
    add_worker_token_argument,
    describe_transport_error,
    ephemeral_port,
    error_message,
    load_json_argument,
    parse_key_values,
    resolve_api_key,
    resolve_target,
    stderr,
    worker_token_headers,
)
from taskapp.core.errors import TaskAppError
from taskapp.core.secrets import fingerprint
from taskapp.core.seeds import format_seeds, parse_seeds

EPILOG = """examples:
  taskapp eval support-intents                         the bundled example, its test split
  taskapp eval support-intents --seeds 0-99 --concurrency 16
  taskapp eval support-intents --policy-config @policy.json --json results.json
  taskapp eval support-intents --policy-config \\
      '{"inference_url": "http://localhost:8000/v1", "model": "my-model"}'
  taskapp eval my_task_app.py --split train
  taskapp eval --url https://tasks.example.com --api-key-env TASK_APP_KEY --split test

Without --seeds or --split: the task set's default_split, else its "test" split, else all
seeds. Exit status: 0 all rollouts succeeded, 1 any failed, 2 bad arguments, 130 Ctrl-C
(143 SIGTERM); when interrupted, what finished is still printed and written.
"""

#: Stop early when this many rollouts finished first and every one failed (--keep-going
#: turns it off): a wrong inference URL should not cost the whole run.
EARLY_STOP_AFTER = 10

REPORT_FORMAT = "taskapp.eval/1"

_REQUEST_ID = re.compile(r"\b[0-9a-f]{12,}\b")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="run rollouts against a task app and summarize the scores",
        description=(
            "Start a task app in this process (or use --url for a running one), run "
            "rollouts concurrently over HTTP, and print a summary (n, mean score, "
            "successes and failures, latency p50/p95) and the worst examples."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", metavar="TARGET", nargs="?", help=TARGET_HELP)
    parser.add_argument(
        "--url", help="evaluate a task app already running at URL instead of starting TARGET"
    )
    add_key_arguments(parser, what="the task app's API key")
    add_worker_token_argument(parser)
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--seeds", metavar="SPEC", help="seeds to run: 0-99, 7, or 1,5,10-12 (inclusive)"
    )
    which.add_argument("--split", metavar="NAME", help="run every seed of split NAME (e.g. test)")
    parser.add_argument(
        "--concurrency", type=int, default=8, metavar="N", help="rollouts in flight (default 8)"
    )
    parser.add_argument(
        "--policy-config",
        metavar="JSON",
        help="policy.config sent with every rollout: a JSON object, or @file.json",
    )
    parser.add_argument(
        "--tunnel",
        default="local",
        metavar="MODE",
        help="tunnel to reach the started app through (default local)",
    )
    parser.add_argument(
        "--tunnel-option", action="append", default=[], metavar="KEY=VALUE", help="tunnel option"
    )
    parser.add_argument("--json", metavar="FILE", help="write every result as JSON (- = stdout)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="time limit of one rollout request (default 300)",
    )
    parser.add_argument(
        "--worst", type=int, default=5, metavar="N", help="worst examples to show (default 5)"
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help=f"do not stop early when the first {EARLY_STOP_AFTER} rollouts all fail",
    )
    parser.set_defaults(run=run)


# -- results -----------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    seed: int
    run_id: str
    status: str  # success | failure | timeout | runtime_error | http_error | transport_error
    score: float | None
    latency_s: float
    http_status: int | None = None
    error: str | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Plan:
    seeds: list[int]
    split: str | None
    env_config: dict[str, Any]
    taskset: Any


@dataclasses.dataclass
class Run:
    """Everything a run produced, also when interrupted."""

    label: str
    url: str
    concurrency: int
    policy_config: dict[str, Any]
    plan: Plan | None = None
    results: list[Result] = dataclasses.field(default_factory=list)
    interrupted: str | None = None
    stopped_early: str | None = None
    rollout_s: float = 0.0
    rollout_cpu_s: float = 0.0
    started_at: float = dataclasses.field(default_factory=time.time)


# -- command -----------------------------------------------------------------------------


class _Interrupt:
    """Cancels the running evaluation on SIGINT/SIGTERM; the app is stopped afterwards."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[Any] | None = None

    def __call__(self, signum: int) -> None:
        loop, task = self.loop, self.task
        if loop is None or task is None or loop.is_closed():
            raise KeyboardInterrupt  # not evaluating yet: abort whatever runs
        loop.call_soon_threadsafe(task.cancel)


def run(args: argparse.Namespace) -> int:
    if args.url and args.target:
        raise UsageError("pass either TARGET or --url, not both")
    if not args.url and not args.target:
        raise UsageError("pass TARGET (a .py file, module:attr or support-intents) or --url URL")
    if args.concurrency < 1:
        raise UsageError(f"--concurrency must be at least 1, got {args.concurrency}")
    if not math.isfinite(args.timeout) or args.timeout <= 0:
        raise UsageError(f"--timeout must be positive and finite, got {args.timeout}")
    if args.url and (args.tunnel != "local" or args.tunnel_option):
        raise UsageError("--tunnel and --tunnel-option start a tunnel for TARGET; not with --url")
    requested = parse_seeds(args.seeds, what="--seeds") if args.seeds else None
    policy_config: dict[str, Any] = {}
    if args.policy_config:
        policy_config = load_json_argument(args.policy_config, option="--policy-config")
        if not isinstance(policy_config, dict):
            raise UsageError("--policy-config must be a JSON object ({...})")
    target = resolve_target(args.target) if args.target else None
    tunnel_options = parse_key_values(args.tunnel_option, option="--tunnel-option")
    key = resolve_api_key(args)

    interrupt = _Interrupt()
    with SignalFlag(interrupt) as flag:
        if target is None:
            url = _check_url(args.url)
            state = Run(target_label(args), url, args.concurrency, policy_config)
            relay_headers = worker_token_headers(args)
            _evaluate_blocking(state, url, key.value, relay_headers, args, requested, interrupt)
        else:
            from taskapp.core.lifecycle import InProcessTaskApp

            task_app = InProcessTaskApp(
                **target.kwargs,
                port=ephemeral_port(),
                api_key=key.value,  # None: a fresh key for this run
                tunnel_mode=args.tunnel,
                tunnel_options=tunnel_options or None,
                server="thread",
                # Ctrl-C should not wait long for rollouts the client no longer wants.
                server_options={"graceful_timeout": 1.0},
            )
            stderr(f"eval: starting {target.label} ...")
            _start_off_main_thread(task_app)
            try:
                url = task_app.url or task_app.local_url
                headers = dict(task_app.tunnel.headers) if task_app.tunnel else {}
                stderr(
                    f"eval: {target.label} is serving at {url} "
                    f"(API key {fingerprint(task_app.api_key)})"
                )
                state = Run(target.label, url, args.concurrency, policy_config)
                _evaluate_blocking(
                    state, url, task_app.api_key, headers, args, requested, interrupt
                )
            finally:
                if flag.signum is not None and not args.verbose:
                    _quiet_server_logs()
                task_app.stop()
        if flag.signum is not None:
            state.interrupted = flag.name
    return _report(state, args)


def _start_off_main_thread(task_app: Any) -> None:
    """Start the app from a helper thread, so that InProcessTaskApp installs no signal
    handlers: on Ctrl-C this command cancels its own requests first, then stops the app
    (the other order would make the server cut rollouts the client still waits for).
    """
    errors: list[BaseException] = []

    def start() -> None:
        try:
            task_app.start()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=start, name="taskapp-eval-start", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.05)
    except KeyboardInterrupt:
        thread.join()  # the start ends by itself (bounded by its health timeout)
        task_app.stop()
        raise
    if errors:
        raise errors[0]


def _quiet_server_logs() -> None:
    """After Ctrl-C, rollouts cut short by the server's shutdown are expected, not news."""
    import logging

    for name in ("uvicorn.error", "taskapp.server"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def target_label(args: argparse.Namespace) -> str:
    return str(args.target or args.url)


def _check_url(url: str) -> str:
    import httpx

    try:
        parsed = httpx.URL(url)
    except Exception as exc:
        raise UsageError(f"--url {url!r} is not a URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise UsageError(f"--url {url!r}: expected http://host[:port] or https://host")
    return url.rstrip("/")


def _evaluate_blocking(
    state: Run,
    url: str,
    api_key: str | None,
    headers: dict[str, str],
    args: argparse.Namespace,
    requested: list[int] | None,
    interrupt: _Interrupt,
) -> None:
    async def main() -> None:
        interrupt.loop = asyncio.get_running_loop()
        interrupt.task = asyncio.current_task()
        try:
            await _evaluate(state, url, api_key, headers, args, requested)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        finally:
            interrupt.loop = interrupt.task = None

    asyncio.run(main())


async def _evaluate(
    state: Run,
    url: str,
    api_key: str | None,
    headers: dict[str, str],
    args: argparse.Namespace,
    requested: list[int] | None,
) -> None:
    import httpx

    from taskapp.core.health import is_loopback_url

    # One header is enough (and one key comparison per request on the server).
    all_headers = {**({"X-API-Key": api_key} if api_key else {}), **headers}
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    timeout = httpx.Timeout(args.timeout, connect=min(args.timeout, 15.0))
    async with httpx.AsyncClient(
        base_url=url,
        headers=all_headers,
        timeout=timeout,
        limits=limits,
        trust_env=not is_loopback_url(url),  # no proxy detour for loopback
    ) as client:
        plan = await _plan(client, url, args, requested, api_key)
        state.plan = plan
        await _run_rollouts(client, state, plan, args)


# -- planning: which seeds ---------------------------------------------------------------


async def _get_json(client: Any, path: str, url: str, limit_s: float, api_key: str | None) -> Any:
    import httpx

    try:
        response = await client.get(path)
    except httpx.HTTPError as exc:
        raise _EvalError(
            f"cannot reach the task app at {url}: {describe_transport_error(exc, url, limit_s)}"
        ) from None
    if response.status_code in (401, 403):
        key = f"key {fingerprint(api_key)}" if api_key else "no key"
        hint = (
            "pass the key it was started with: --api-key-env NAME or ENVIRONMENT_API_KEY"
            if api_key
            else "it needs an API key: --api-key-env NAME or ENVIRONMENT_API_KEY"
        )
        raise _EvalError(
            f"the task app at {url} rejected the API key (HTTP {response.status_code}, {key}); "
            f"{hint}"
        )
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200:
        reason = error_message(body) or f"HTTP {response.status_code}"
        if response.status_code == 404:
            reason = f"GET {path} answered 404"
        raise _EvalError(
            f"{url} does not look like a task app: {reason}. Check the URL with "
            f"`taskapp check {url}`"
        )
    if body is None:
        raise _EvalError(f"{url} does not look like a task app: GET {path} did not return JSON")
    return body


class _EvalError(TaskAppError):
    """The evaluation could not run (the app is unreachable, rejects the key, ...)."""


async def _plan(
    client: Any, url: str, args: argparse.Namespace, requested: list[int] | None, key: str | None
) -> Plan:
    body = await _get_json(client, "/task_info", url, args.timeout, key)
    taskset = body.get("taskset") if isinstance(body, dict) else None
    if taskset is None:
        raise _EvalError(
            f"{url} does not look like a task app: GET /task_info has no 'taskset' field"
        )
    splits = taskset.get("splits") if isinstance(taskset, dict) else None
    splits = splits if isinstance(splits, dict) else {}
    known = _known_seeds(taskset, splits)
    if requested is not None:
        if known is not None:
            outside = [seed for seed in requested if seed not in known]
            if outside:
                raise UsageError(
                    f"--seeds: {format_seeds(outside)} outside the task set "
                    f"(its seeds are {format_seeds(known)})"
                )
        return Plan(requested, None, {}, taskset)
    split = args.split
    if split is None:
        default = taskset.get("default_split") if isinstance(taskset, dict) else None
        if isinstance(default, str) and default in splits:
            split = default
        elif "test" in splits:
            split = "test"
        elif known is not None:
            return Plan(sorted(known), None, {}, taskset)
        else:
            raise UsageError(
                "the task set names no splits and no size: pass --seeds (e.g. --seeds 0-99)"
            )
    if split not in splits:
        available = ", ".join(map(str, splits)) or "none"
        raise UsageError(f"--split {split!r} is not in the task set (splits: {available})")
    seeds = _split_seeds(splits[split])
    if seeds is None:
        raise UsageError(f"the task set does not say which seeds split {split!r} has; pass --seeds")
    if not seeds:
        raise UsageError(f"split {split!r} is empty")
    return Plan(seeds, split, {"split": split}, taskset)


def _int_list(value: Any) -> list[int] | None:
    if isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return list(value)
    return None


def _split_seeds(value: Any) -> list[int] | None:
    """A split is a list of seeds, ``{"seeds": [...]}``, or a size (seeds 0..size-1)."""
    seeds = _int_list(value)
    if seeds is not None:
        return seeds
    if isinstance(value, dict):
        seeds = _int_list(value.get("seeds"))
        if seeds is not None:
            return seeds
        value = value.get("size", value.get("count"))
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return list(range(value))
    return None


def _known_seeds(taskset: Any, splits: dict[str, Any]) -> set[int] | None:
    if isinstance(taskset, dict):
        bounds = _int_list(taskset.get("seed_range"))
        if bounds is not None and len(bounds) == 2:
            return set(range(bounds[0], bounds[1]))
        size = taskset.get("size")
        if isinstance(size, int) and not isinstance(size, bool):
            return set(range(size))
    found: set[int] = set()
    for value in splits.values():
        seeds = _int_list(value) or (
            _int_list(value.get("seeds")) if isinstance(value, dict) else None
        )
        if seeds is None:
            return None  # sizes only: seeds may be per split, so any check could be wrong
        found.update(seeds)
    return found or None


# -- running -----------------------------------------------------------------------------


class _Progress:
    """A rich progress bar on a terminal; a plain line every 10% otherwise."""

    def __init__(self, total: int, label: str) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.started = time.perf_counter()
        self._next_line = max(1, math.ceil(total / 10))
        self._bar: Any = None
        self._task: Any = None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]eval[/] {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("failed {task.fields[failed]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._task = self._bar.add_task(label, total=total, failed=0)
            self._bar.start()
        else:
            stderr(f"eval: {total} rollouts of {label}")

    def advance(self, ok: bool) -> None:
        self.done += 1
        if not ok:
            self.failed += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1, failed=self.failed)
        elif self.done >= self._next_line or self.done == self.total:
            self._next_line += max(1, math.ceil(self.total / 10))
            elapsed = time.perf_counter() - self.started
            rate = self.done / elapsed if elapsed > 0 else 0.0
            stderr(
                f"eval: {self.done}/{self.total} done, {self.failed} failed, {rate:.1f} rollouts/s"
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


async def _run_rollouts(client: Any, state: Run, plan: Plan, args: argparse.Namespace) -> None:
    run_prefix = f"eval-{uuid.uuid4().hex[:8]}"
    policy = {"config": state.policy_config}
    env_config = plan.env_config
    safety = {"max_time_s": args.timeout}
    seeds: Iterator[int] = iter(plan.seeds)
    progress = _Progress(len(plan.seeds), state.label + (f" [{plan.split}]" if plan.split else ""))
    stop = False
    results = state.results

    async def worker() -> None:
        nonlocal stop
        for seed in seeds:
            if stop:
                return
            run_id = f"{run_prefix}-{seed}"
            body = {
                "run_id": run_id,
                "env": {"seed": seed, "config": env_config},
                "policy": policy,
                "mode": "eval",
                "safety": safety,
            }
            started = time.perf_counter()
            result = await _one_rollout(
                client, body, seed, run_id, started, state.url, args.timeout
            )
            results.append(result)
            progress.advance(result.ok)
            if (
                not args.keep_going
                and not stop
                and len(results) == min(EARLY_STOP_AFTER, len(plan.seeds))
                and len(results) < len(plan.seeds)
                and not any(r.ok for r in results)
            ):
                stop = True
                state.stopped_early = (
                    f"the first {len(results)} rollouts all failed; stopped the rest "
                    "(--keep-going runs them anyway)"
                )

    # The objects alive now (modules, the client, the app) live until the end: keep them
    # out of the collector's full scans, which the results kept below would otherwise
    # trigger (measured: about 10% of the client's CPU per rollout).
    gc.freeze()
    started = time.perf_counter()
    cpu_started = time.process_time()
    try:
        await asyncio.gather(*(worker() for _ in range(min(args.concurrency, len(plan.seeds)))))
    finally:
        state.rollout_s = time.perf_counter() - started
        state.rollout_cpu_s = time.process_time() - cpu_started
        gc.unfreeze()
        progress.close()


async def _one_rollout(
    client: Any,
    body: dict[str, Any],
    seed: int,
    run_id: str,
    started: float,
    url: str,
    limit_s: float,
) -> Result:
    import httpx

    try:
        try:
            response = await client.post("/rollout", json=body)
        except (httpx.ReadError, httpx.RemoteProtocolError):
            # The server closed a kept-alive connection as we reused it (uvicorn does so
            # after an app error): nothing was answered, so send the request once more.
            response = await client.post("/rollout", json=body)
    except httpx.TimeoutException:
        return Result(
            seed,
            run_id,
            "timeout",
            None,
            time.perf_counter() - started,
            error=f"no answer within {limit_s:g}s (--timeout)",
        )
    except httpx.HTTPError as exc:
        return Result(
            seed,
            run_id,
            "transport_error",
            None,
            time.perf_counter() - started,
            error=describe_transport_error(exc, url, limit_s),
        )
    latency = time.perf_counter() - started
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if response.status_code != 200:
        message = error_message(payload) or response.text[:200]
        return Result(
            seed,
            run_id,
            "http_error",
            None,
            latency,
            response.status_code,
            error=f"HTTP {response.status_code}: {message}",
        )
    if not isinstance(payload, dict):
        payload = {}
    metrics = payload.get("metrics")
    if not isinstance(metrics, dict):
        metrics = {}
    score = metrics.get("outcome_score")
    if not isinstance(score, int | float) or isinstance(score, bool):
        return Result(
            seed,
            run_id,
            "invalid_response",
            None,
            latency,
            200,
            error="the response has no metrics.outcome_score",
        )
    details = metrics.get("details")
    details = details if isinstance(details, dict) else {}
    status = payload.get("success_status") or "success"
    error = None
    if status != "success":
        error = str(details.get("error") or details.get("feedback") or status)
    return Result(seed, run_id, str(status), float(score), latency, 200, error, details)


# -- reporting ---------------------------------------------------------------------------


def _percentile(values: Sequence[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = max(0, math.ceil(fraction * len(ordered)) - 1)
    return ordered[index]


def summarize(state: Run) -> dict[str, Any]:
    results = state.results
    scores = [r.score for r in results if r.score is not None]
    latencies = [r.latency_s for r in results]
    statuses = Counter(r.status for r in results)
    requested = len(state.plan.seeds) if state.plan else 0
    return {
        "requested": requested,
        "completed": len(results),
        "mean_score": (sum(scores) / len(scores)) if scores else None,
        "success": statuses.get("success", 0),
        "failed": len(results) - statuses.get("success", 0),
        "statuses": dict(sorted(statuses.items())),
        "latency_p50_s": _percentile(latencies, 0.50),
        "latency_p95_s": _percentile(latencies, 0.95),
        "rollout_s": state.rollout_s,
        "rollouts_per_s": (len(results) / state.rollout_s) if state.rollout_s > 0 else None,
        # CPU time of this process during the rollouts (the client, plus the app when it
        # runs in-process)
        "rollout_cpu_s": state.rollout_cpu_s,
    }


def _redacted_config(config: dict[str, Any]) -> dict[str, Any]:
    secret_words = ("key", "token", "secret", "password")
    return {
        name: (
            "[redacted]"
            if isinstance(value, str)
            and any(word in name.lower() for word in secret_words)
            and not name.lower().endswith("_env")
            else value
        )
        for name, value in config.items()
    }


def build_report(state: Run) -> dict[str, Any]:
    plan = state.plan
    return {
        "format": REPORT_FORMAT,
        "target": state.label,
        "url": state.url,
        "split": plan.split if plan else None,
        "seeds": plan.seeds if plan else [],
        "concurrency": state.concurrency,
        "policy_config": _redacted_config(state.policy_config),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(state.started_at)),
        "interrupted": state.interrupted,
        "stopped_early": state.stopped_early,
        "summary": summarize(state),
        "results": [r.as_json() for r in sorted(state.results, key=lambda r: r.seed)],
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


def _report(state: Run, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    summary = summarize(state)
    report = build_report(state)
    to_stdout_json = args.json == "-"
    console = Console(
        file=sys.stderr if to_stdout_json else sys.stdout,
        highlight=False,
        width=None if (sys.stderr if to_stdout_json else sys.stdout).isatty() else 110,
    )
    if state.plan is not None:
        where = (
            f"split {state.plan.split}"
            if state.plan.split
            else f"seeds {format_seeds(state.plan.seeds)}"
        )
        policy = "chat model" if state.policy_config.get("inference_url") else "default policy"
        if state.policy_config and not state.policy_config.get("inference_url"):
            policy = "policy from --policy-config"
        console.print(f"[bold]{state.label}[/]: {where}, {policy}", highlight=False)
        table = Table(show_header=False)
        table.add_column("metric", style="bold")
        table.add_column("value", justify="right")
        mean = summary["mean_score"]
        completed = summary["completed"]
        table.add_row("rollouts", f"{completed} of {summary['requested']}")
        table.add_row("mean score", "-" if mean is None else f"{mean:.3f}")
        table.add_row("succeeded", str(summary["success"]))
        failed = summary["failed"]
        table.add_row("failed", str(failed) if not failed else f"[red]{failed}[/]")
        table.add_row("latency p50", _ms(summary["latency_p50_s"]))
        table.add_row("latency p95", _ms(summary["latency_p95_s"]))
        rate = summary["rollouts_per_s"]
        table.add_row(
            "wall time",
            f"{state.rollout_s:.2f} s" + (f" ({rate:.1f} rollouts/s)" if rate else ""),
        )
        console.print(table)
        _print_worst(console, state, args.worst)
        _print_failures(console, state)
    if args.json:
        text = json.dumps(report, indent=2, default=str)
        if to_stdout_json:
            print(text, flush=True)
        else:
            try:
                with open(args.json, "w", encoding="utf-8") as handle:
                    handle.write(text + "\n")
            except OSError as exc:
                stderr(f"taskapp eval: error: cannot write --json {args.json}: {exc.strerror}")
                return EXIT_FAILED
            stderr(f"eval: wrote {len(state.results)} results to {args.json}")
    if state.stopped_early:
        stderr(f"taskapp eval: {state.stopped_early}")
    if state.interrupted:
        stderr(
            f"taskapp eval: interrupted by {state.interrupted} after "
            f"{len(state.results)} of {summary['requested']} rollouts"
        )
        return EXIT_INTERRUPTED if state.interrupted == "SIGINT" else 128 + signal.SIGTERM
    if summary["failed"] or state.stopped_early:
        stderr(f"taskapp eval: {summary['failed']} rollout(s) failed")
        return EXIT_FAILED
    return EXIT_OK


def _print_worst(console: Any, state: Run, count: int) -> None:
    """The lowest-scoring rollouts that ran, each with the app's explanation."""
    scored = [r for r in state.results if r.ok and r.score is not None]
    worst = sorted(scored, key=lambda r: (r.score, r.seed))[: max(0, count)]
    worst = [r for r in worst if r.score is not None and r.score < 1.0]
    if not worst:
        return
    console.print(f"[bold]worst {len(worst)}[/]")
    for result in worst:
        head = f"  seed {result.seed:<5} score {result.score:.2f}"
        details = result.details
        if "predicted" in details or "expected" in details:
            head += f"  predicted {details.get('predicted')}, expected {details.get('expected')}"
        _line(console, head)
        message = details.get("message")
        if isinstance(message, str):
            _line(console, f"      {json.dumps(message)}")
        feedback = details.get("feedback")
        if feedback:
            _line(console, f"      {feedback}")


def _print_failures(console: Any, state: Run) -> None:
    """Failed rollouts grouped by cause, with their seeds."""
    causes: dict[str, list[int]] = {}
    for result in state.results:
        if not result.ok:
            # Request ids differ per failure; group by what remains.
            cause = _REQUEST_ID.sub("<id>", f"{result.status}: {result.error or ''}".rstrip(": "))
            causes.setdefault(cause, []).append(result.seed)
    if not causes:
        return
    console.print(f"[bold red]failed {sum(len(s) for s in causes.values())}[/]")
    ranked = sorted(causes.items(), key=lambda item: -len(item[1]))
    for cause, seeds in ranked[:5]:
        _line(console, f"  {len(seeds)} x {cause}")
        _line(console, f"      seeds {format_seeds(seeds)}")
    if len(ranked) > 5:
        _line(console, f"  ... and {len(ranked) - 5} other causes (see --json)")


def _line(console: Any, text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)
