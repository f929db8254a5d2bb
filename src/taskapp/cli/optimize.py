"""``taskapp optimize``: GEPA prompt optimization against a task app, run locally."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

EPILOG = """examples:
  # offline, on the bundled example, with the deterministic stand-in reflection model
  taskapp optimize support-intents --stand-in --train-seeds 0-99 --val-seeds 100-139 \\
      --test-seeds 300-399 --budget 400 --out runs/demo

  # any task app (file, module:attr or URL), any OpenAI-compatible reflection model
  taskapp optimize my_app.py --prompt-file prompt.txt --train-seeds 0-29 --val-seeds 30-79 \\
      --budget 300 --reflection-model gpt-4.1-mini --reflection-api-key-env OPENAI_API_KEY \\
      --policy-config '{"model": "llama-3.1-8b", "inference_url": "http://127.0.0.1:8000/v1"}'

  # continue a run (its seeds come from --out; the budget is the total over all runs there)
  taskapp optimize support-intents --stand-in --budget 800 --out runs/demo --resume

  # a Synth [prompt_learning] TOML (flags given on the command line override it)
  taskapp optimize --config configs/support_intents_gepa.toml --out runs/toml

writes to --out: result.json, best_prompt.txt, history.jsonl, score_curve.svg (and .png
with matplotlib), candidate_tree.html, and gepa/ (the checkpoint --resume continues).
exit status: 0 done, 1 failed, 2 bad input, 3 task app down or rollouts failing,
4 reflection model failed every time, 130 Ctrl-C / 143 SIGTERM (the best so far
is saved).
"""

EXIT_UNAVAILABLE = 3
EXIT_REFLECTION = 4
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def add_parser(subparsers: Any) -> None:
    from taskapp.cli._common import TARGET_HELP, add_key_arguments, add_start_arguments

    parser = subparsers.add_parser(
        "optimize",
        help="optimize a prompt with GEPA against a task app's /rollout, locally",
        description=(
            "Run the open-source GEPA optimizer on this machine against a task app's "
            "POST /rollout: the candidate prompt travels in policy.config[PROMPT_KEY], "
            "the rollout's metrics.details.feedback is what the reflection model reads. "
            "Needs the optimize extra: pip install '.[optimize]' in your taskapp clone."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "target",
        metavar="TARGET",
        nargs="?",
        help=TARGET_HELP
        + ", or the http(s) URL of a running task app (default: --config's task_app_url)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="TOML",
        help="a Synth [prompt_learning] TOML (see docs/jobs.md); flags override its values",
    )
    from taskapp.cli._common import add_dataclass_options
    from taskapp.optimize.config import OUTPUT, PROMPT, REFLECTION, SEEDS, TASK_APP, OptimizeConfig

    groups: dict[str | None, Any] = {None: parser}
    for title in (PROMPT, SEEDS, REFLECTION, TASK_APP, OUTPUT):
        groups[title] = parser.add_argument_group(title)
    # the options whose values this command reads in its own way (files, JSON, a model
    # name); the rest are declared once, on OptimizeConfig
    source = groups[PROMPT].add_mutually_exclusive_group()
    source.add_argument("--prompt", help="the seed prompt (default: what /info advertises)")
    source.add_argument("--prompt-file", type=Path, help="read the seed prompt from a file")
    which = groups[REFLECTION].add_mutually_exclusive_group()
    which.add_argument("--reflection-model", help="an OpenAI-compatible chat model name")
    which.add_argument(
        "--stand-in",
        action="store_true",
        help="the deterministic offline stand-in instead of a model (tests, demos)",
    )
    group = groups[REFLECTION]
    group.add_argument(
        "--reflection-base-url",
        help="OpenAI-compatible base URL ending in /v1 (default: $OPENAI_BASE_URL or OpenAI)",
    )
    group.add_argument(
        "--reflection-api-key-env",
        default="OPENAI_API_KEY",
        metavar="VAR",
        help="environment variable holding the model's API key (default OPENAI_API_KEY)",
    )
    group.add_argument(
        "--reflection-temperature",
        type=float,
        default=0.7,
        help="sampling temperature of the reflection model (default 0.7)",
    )
    group.add_argument(
        "--reflection-max-tokens",
        type=int,
        default=2048,
        help="the most tokens one reflection may answer with (default 2048)",
    )
    group.add_argument(
        "--reflection-template",
        type=Path,
        help="a reflection prompt file with <curr_param> and <side_info>",
    )
    group = groups[TASK_APP]
    group.add_argument(
        "--policy-config",
        help="JSON object (or @file) merged into every rollout's policy.config",
    )
    group.add_argument("--env-config", help="JSON object (or @file) sent as env.config")
    add_key_arguments(group, what="the key of a URL target")
    group = groups[OUTPUT]
    group.add_argument(
        "--out", type=Path, help="output directory (default: optimize-runs/<target>-<time>)"
    )
    group.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    group.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    add_dataclass_options(groups, OptimizeConfig, defaults=False)
    add_start_arguments(parser)
    parser.set_defaults(run=run)


def _json_object(value: str | None, flag: str) -> dict[str, Any] | None:
    from taskapp.cli._common import UsageError, load_json_argument

    if value is None:
        return None
    parsed = load_json_argument(value, option=flag)
    if not isinstance(parsed, dict):
        raise UsageError(f"{flag} must be a JSON object, got {type(parsed).__name__}")
    return parsed


def _read_text(path: Path, flag: str) -> str:
    from taskapp.cli._common import UsageError

    try:
        return path.expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{flag}: cannot read {str(path)!r}: {exc.strerror}") from None


def _default_out(target: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(target.rstrip("/")).name or "run").strip("-.")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("optimize-runs") / f"{name or 'run'}-{stamp}"


def _config(args: argparse.Namespace) -> tuple[Any, Any]:
    """(OptimizeConfig, PromptLearningSpec or None): --config's values, then the flags."""
    from taskapp.cli._common import UsageError, stderr
    from taskapp.optimize.config import OptimizeConfig
    from taskapp.optimize.prompt_learning import load_prompt_learning

    spec = None
    config = OptimizeConfig()
    if args.config is not None:
        spec = load_prompt_learning(args.config)
        for warning in spec.warnings:
            stderr(f"taskapp optimize: warning: {spec.source}: {warning}")
        config = spec.config
    else:
        _check_required(args)
    config = config.replace(**_flag_changes(args))
    if config.reflection_lm is None:
        raise UsageError(
            "choose a reflection model: --reflection-model NAME (any OpenAI-compatible "
            "server) or --stand-in (the offline stand-in)"
        )
    return config, spec


def _check_required(args: argparse.Namespace) -> None:
    """Without --config: the seeds and budget (only the budget with --resume)."""
    from taskapp.cli._common import UsageError

    if args.resume:
        if args.budget is None:
            raise UsageError("--budget required (the total over all runs in --out)")
        return
    required = (
        ("--train-seeds", args.train_seeds),
        ("--val-seeds", args.val_seeds),
        ("--budget", args.budget),
    )
    missing = [flag for flag, value in required if value is None]
    if missing:
        raise UsageError(
            f"{', '.join(missing)} required (or --config TOML, or --resume for a saved run)"
        )


def _flag_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The OptimizeConfig fields the flags given set (a flag not given changes nothing)."""
    from taskapp.cli._common import dataclass_kwargs
    from taskapp.optimize.config import OptimizeConfig

    changes = dataclass_kwargs(args, OptimizeConfig)
    for field, value in (
        ("policy", _json_object(args.policy_config, "--policy-config")),
        ("env_config", _json_object(args.env_config, "--env-config")),
    ):
        if value is not None:
            changes[field] = value
    if changes.get("patience") == 0:
        changes["patience"] = None  # --patience 0: never
    if args.prompt is not None:
        changes["seed_prompt"] = args.prompt
    if args.prompt_file is not None:
        changes["seed_prompt"] = _read_text(args.prompt_file, "--prompt-file")
    if args.reflection_template:
        changes["reflection_prompt_template"] = _read_text(
            args.reflection_template, "--reflection-template"
        )
    if args.stand_in:
        changes["reflection_lm"] = "stand-in"
    elif args.reflection_model:
        changes["reflection_lm"] = {
            "model": args.reflection_model,
            "base_url": args.reflection_base_url,
            "api_key_env": args.reflection_api_key_env,
            "temperature": args.reflection_temperature,
            "max_tokens": args.reflection_max_tokens,
        }
    return changes


def run(args: argparse.Namespace) -> int:  # noqa: C901, PLR0915 -- complexity 16 and 60 statements at most (issue 21 ratchet); split when next changed
    from taskapp.cli._common import UsageError

    if args.resume and args.out is None:
        raise UsageError("--resume needs --out DIR (the run to continue)")
    config, spec = _config(args)
    from taskapp.cli._common import (
        bundled_aliases,
        resolve_api_key,
        resolve_target,
        start_kwargs,
        started_with_options,
    )

    target: Any = args.target or (spec.task_app_url if spec is not None else None)
    if target is None:
        raise UsageError("TARGET required (or a --config whose task_app_url names one)")
    from taskapp.core.endpoint import is_url

    start: dict[str, Any] | None = None
    if is_url(target):
        # --health-timeout also bounds the wait for a URL's /health here.
        refused = started_with_options(args, allowed=("--health-timeout",))
        if refused:
            given = ", ".join(refused)
            raise UsageError(f"{given} start TARGET; not with a URL (it is already running)")
        if spec is not None and not (args.api_key or args.api_key_env):
            api_key = spec.task_app_key()
        else:
            api_key = resolve_api_key(args).value
        health_timeout = args.health_timeout or 30.0
    else:
        resolve_target(target)  # a bad TARGET is a usage error, before anything starts
        # An app of our own for this run: a free port, not the default 8114 of serve; its
        # key as for `taskapp eval` (--api-key-env, $ENVIRONMENT_API_KEY, else a fresh one).
        start = start_kwargs(args)
        health_timeout = start["health_check_timeout"]
        api_key = resolve_api_key(args).value
    out = args.out
    if out is None:
        out = _default_out(args.target or (args.config.stem if args.config else "run"))
        if spec is not None and spec.results_folder:
            out = Path(spec.results_folder) / out.name
    config = config.replace(output_dir=out, resume=args.resume, health_timeout=health_timeout)

    from taskapp.optimize import (
        GepaNotInstalledError,
        ReflectionModelError,
        TaskAppUnavailableError,
    )
    from taskapp.optimize.progress import ConsolePrinter
    from taskapp.optimize.runner import run_config

    lm = config.build_reflection_lm()
    config = config.replace(reflection_lm=lm)
    printer: Any = None
    if args.log_json and not args.quiet:
        printer = _json_progress
    elif not args.quiet:
        printer = ConsolePrinter(sys.stderr)
    try:
        result = run_config(
            target,
            config,
            api_key=api_key,
            on_progress=printer,
            start=start,
            aliases=bundled_aliases(),
        )
    except GepaNotInstalledError as exc:
        raise UsageError(exc.message) from None
    except TaskAppUnavailableError as exc:
        _report_failure(exc, out, args.log_json)
        return EXIT_UNAVAILABLE
    except ReflectionModelError as exc:
        _report_failure(exc, out, args.log_json)
        return EXIT_REFLECTION
    finally:
        close = getattr(lm, "close", None)
        if callable(close):
            close()
    if args.json:
        print(json.dumps(result.to_dict(include_raw=False), indent=2))
    else:
        _summary(result, out)
    if result.status == "interrupted":
        return EXIT_TERMINATED if _stop_signal(result) == "SIGTERM" else EXIT_INTERRUPTED
    return 0 if result.succeeded else 1


def _json_progress(event: dict[str, Any]) -> None:
    """A progress event as one JSON log line on stderr (``--log-json``)."""
    import logging

    from taskapp.core.logs import JsonFormatter

    kind = event.get("event")
    record = logging.LogRecord(
        "taskapp.optimize", logging.INFO, "", 0, f"optimize: {kind}", None, None
    )
    line = json.loads(JsonFormatter().format(record))
    line["progress"] = {k: v for k, v in event.items() if k != "val_scores"}
    print(json.dumps(line, default=str), file=sys.stderr, flush=True)


def _stop_signal(result: Any) -> str | None:
    """The signal that stopped this run (SIGINT, SIGTERM), from its last "stopped" event."""
    for event in reversed(result.history):
        if event.get("event") == "stopped":
            signal_name = event.get("signal")
            return signal_name if isinstance(signal_name, str) else None
    return None


def _report_failure(exc: Any, out: Path, log_json: bool) -> None:
    from taskapp.cli._common import print_error

    print_error(f"taskapp optimize: error: {exc}", log_json)
    if exc.result is not None:
        print_error(
            f"taskapp optimize: the best found before the failure "
            f"({exc.result.best_score:.3f}, baseline {exc.result.baseline_score:.3f}) is "
            f"saved in {out}",
            log_json,
        )


def _summary(result: Any, out: Path) -> None:
    print(
        f"{result.status}: val score {result.baseline_score:.3f} -> {result.best_score:.3f} "
        f"({result.improvement:+.3f}) on {len(result.val_seeds)} val seeds; "
        f"{result.metric_calls}/{result.budget} rollouts, {result.iterations} iterations, "
        f"{len(result.candidates)} candidates, stopped by {result.stopped_by}, "
        f"{result.elapsed_s:.1f}s"
    )
    if result.test_scores:
        print(
            f"test ({len(result.test_seeds or [])} seeds): {result.test_scores['baseline']:.3f}"
            f" -> {result.test_scores['best']:.3f}"
        )
    if result.error:
        print(f"error: {result.error}")
    print(f"saved in {out}/ (result.json, best_prompt.txt, history.jsonl, score_curve.*)")
    print("best prompt:")
    print(result.best_prompt.rstrip("\n"))
