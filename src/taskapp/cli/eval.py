"""``taskapp eval TARGET``: run rollouts over HTTP and summarize the scores.

A thin front end over :mod:`taskapp.evaluation` (``taskapp.evaluate`` from Python): this
module parses the options, starts the app off the main thread, draws progress on stderr,
handles Ctrl-C, and prints the summary table and the worst examples on stdout (every
result to ``--json FILE``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from taskapp.cli._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    TARGET_HELP,
    SignalFlag,
    UsageError,
    add_key_arguments,
    add_start_arguments,
    add_worker_token_argument,
    load_json_argument,
    resolve_api_key,
    resolve_target,
    start_kwargs,
    started_with_options,
    stderr,
    worker_token,
)
from taskapp.core.secrets import fingerprint
from taskapp.core.seeds import parse_seeds

if TYPE_CHECKING:
    from taskapp.core.endpoint import Endpoint

EPILOG = """examples:
  taskapp eval support-intents                         the bundled example, its test split
  taskapp eval support-intents --seeds 0-99 --concurrency 16
  taskapp eval support-intents --policy-config @policy.json --json results.json
  taskapp eval support-intents --policy-config \\
      '{"inference_url": "http://localhost:8000/v1", "model": "my-model"}'
  taskapp eval my_task_app.py --split train --health-timeout 60 --server subprocess
  taskapp eval evals.py@my_task --model openai/gpt-4o-mini     an Inspect AI task
  taskapp eval examples/inspect_intents.py@intents --model mockllm/model --seeds 0-9
  taskapp eval --url https://tasks.example.com --api-key-env TASK_APP_KEY --split test

Without --seeds or --split: the task set's default_split, else its "test" split, else all
seeds. The same evaluation from Python: taskapp.evaluate(target_or_url, seeds=...).
Exit status: 0 all rollouts succeeded, 1 any failed, 2 bad arguments, 130 Ctrl-C
(143 SIGTERM); when interrupted, what finished is still printed and written.
"""


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
        "--model",
        metavar="NAME",
        help="the policy model of every rollout (policy.config.model); for an Inspect AI "
        "task, Inspect's provider/model (openai/gpt-4o-mini, mockllm/model, taskapp/standin) "
        "with the provider's key in this environment",
    )
    parser.add_argument("--json", metavar="FILE", help="write every result as JSON (- = stdout)")
    parser.add_argument(
        "--rollout-timeout",
        "--timeout",  # the old spelling, kept working
        dest="rollout_timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="time limit of one rollout request, in seconds (default 300; --timeout is an "
        "old spelling; in taskapp optimize, --timeout limits the whole run)",
    )
    parser.add_argument(
        "--worst", type=int, default=5, metavar="N", help="worst examples to show (default 5)"
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="do not stop early when the first 10 rollouts all fail",
    )
    add_start_arguments(parser)
    parser.set_defaults(run=run)


def _policy_config(args: argparse.Namespace) -> dict[str, Any]:
    """policy.config of every rollout: --policy-config, with --model as its ``model``."""
    policy_config: dict[str, Any] = {}
    if args.policy_config:
        policy_config = load_json_argument(args.policy_config, option="--policy-config")
        if not isinstance(policy_config, dict):
            raise UsageError("--policy-config must be a JSON object ({...})")
    if args.model is not None:
        if not args.model.strip():
            raise UsageError("--model needs a model name, e.g. openai/gpt-4o-mini")
        named = policy_config.get("model")
        if named is not None and named != args.model:
            raise UsageError(
                f"--model {args.model!r} and --policy-config's model {named!r} differ: "
                "name the model once"
            )
        policy_config["model"] = args.model
    return policy_config


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
    from taskapp.core.client import normalize_url
    from taskapp.core.endpoint import endpoint_of
    from taskapp.evaluation import EvaluationResult

    if args.url and args.target:
        raise UsageError("pass either TARGET or --url, not both")
    if not args.url and not args.target:
        raise UsageError("pass TARGET (a .py file, module:attr or support-intents) or --url URL")
    if args.concurrency < 1:
        raise UsageError(f"--concurrency must be at least 1, got {args.concurrency}")
    if not math.isfinite(args.rollout_timeout) or args.rollout_timeout <= 0:
        raise UsageError(
            f"--rollout-timeout must be positive and finite, got {args.rollout_timeout}"
        )
    if args.url and started_with_options(args):
        given = ", ".join(started_with_options(args))
        raise UsageError(f"{given} start TARGET; not with --url (it is already running)")
    requested = parse_seeds(args.seeds, what="--seeds") if args.seeds else None
    policy_config = _policy_config(args)
    target = resolve_target(args.target) if args.target else None
    options = start_kwargs(args) if target is not None else {}
    key = resolve_api_key(args)

    interrupt = _Interrupt()
    with SignalFlag(interrupt) as flag:
        if target is None:
            try:
                normalize_url(args.url, what="--url")
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            endpoint = endpoint_of(args.url, api_key=key.value, worker_token=worker_token(args))
            state = EvaluationResult(args.url, endpoint.url, args.concurrency, policy_config)
            _evaluate(state, endpoint, args, requested, interrupt)
        else:
            from taskapp.core.lifecycle import InProcessTaskApp

            # Ctrl-C should not wait long for rollouts the client no longer wants.
            if options["server"] == "thread" and not options["server_options"]:
                options["server_options"] = {"graceful_timeout": 1.0}
            task_app = InProcessTaskApp(**target.kwargs, api_key=key.value, **options)
            stderr(f"eval: starting {target.label} ...")
            _start_off_main_thread(task_app)
            try:
                endpoint = endpoint_of(task_app)
                stderr(
                    f"eval: {target.label} is serving at {endpoint.url} "
                    f"(API key {fingerprint(task_app.api_key)})"
                )
                state = EvaluationResult(
                    target.label, endpoint.url, args.concurrency, policy_config
                )
                _evaluate(state, endpoint, args, requested, interrupt)
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


def _evaluate(
    state: Any,
    endpoint: Endpoint,
    args: argparse.Namespace,
    requested: list[int] | None,
    interrupt: _Interrupt,
) -> None:
    from taskapp.evaluation import EvaluationPlanError, run_evaluation

    progress: _Progress | None = None

    def on_plan(plan: Any) -> None:
        nonlocal progress
        label = state.target + (f" [{plan.split}]" if plan.split else "")
        progress = _Progress(len(plan.seeds), label)

    async def main() -> None:
        interrupt.loop = asyncio.get_running_loop()
        interrupt.task = asyncio.current_task()
        try:
            async with endpoint.async_client(
                timeout=args.rollout_timeout, limit=args.concurrency
            ) as client:
                await run_evaluation(
                    state,
                    client,
                    seeds=requested,
                    split=args.split,
                    rollout_timeout=args.rollout_timeout,
                    keep_going=args.keep_going,
                    on_plan=on_plan,
                    on_result=lambda outcome: progress.advance(outcome.ok) if progress else None,
                )
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        finally:
            interrupt.loop = interrupt.task = None
            if progress is not None:
                progress.close()

    try:
        asyncio.run(main())
    except EvaluationPlanError as exc:
        raise UsageError(exc.named(f"--{exc.option}")) from None


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
            self._bar = None


# -- reporting ---------------------------------------------------------------------------


def _report(state: Any, args: argparse.Namespace) -> int:
    from taskapp.evaluation.console import print_summary

    summary = state.summary
    to_stdout_json = args.json == "-"
    print_summary(state, sys.stderr if to_stdout_json else sys.stdout, worst=args.worst)
    if args.json:
        text = json.dumps(state.to_dict(), indent=2, default=str)
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
            f"{len(state.results)} of {summary.requested} rollouts"
        )
        return EXIT_INTERRUPTED if state.interrupted == "SIGINT" else 128 + signal.SIGTERM
    if summary.failed or state.stopped_early:
        stderr(f"taskapp eval: {summary.failed} rollout(s) failed")
        return EXIT_FAILED
    return EXIT_OK
