"""An :class:`EvaluationResult` for people: the summary table, the worst examples and the
failures grouped by cause (what ``taskapp eval`` prints; rich is imported on use)."""

from __future__ import annotations

import json
import re
import sys
from typing import IO, TYPE_CHECKING, Any

from taskapp.core.seeds import format_seeds

if TYPE_CHECKING:
    from taskapp.evaluation.report import EvaluationResult

__all__ = ["print_summary"]

_REQUEST_ID = re.compile(r"\b[0-9a-f]{12,}\b")


def print_summary(result: EvaluationResult, file: IO[str] | None = None, *, worst: int = 5) -> None:
    """Print what ``taskapp eval`` prints to ``file`` (standard output by default): the
    summary table, the ``worst`` lowest scores with the app's explanation, and the
    failures grouped by cause. Nothing when no seeds were planned."""
    from rich.console import Console
    from rich.table import Table

    if result.plan is None:
        return
    if file is None:
        file = sys.stdout
    console = Console(file=file, highlight=False, width=None if file.isatty() else 110)
    summary = result.summary
    where = f"split {result.split}" if result.split else f"seeds {format_seeds(result.seeds)}"
    config = result.policy_config
    policy = "chat model" if config.get("inference_url") else "default policy"
    if config and not config.get("inference_url"):
        policy = "the given policy config"
    console.print(f"[bold]{result.target}[/]: {where}, {policy}", highlight=False)
    table = Table(show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    mean = summary.mean_score
    table.add_row("rollouts", f"{summary.completed} of {summary.requested}")
    table.add_row("mean score", "-" if mean is None else f"{mean:.3f}")
    table.add_row("succeeded", str(summary.success))
    failed = summary.failed
    table.add_row("failed", str(failed) if not failed else f"[red]{failed}[/]")
    table.add_row("latency p50", _ms(summary.latency_p50_s))
    table.add_row("latency p95", _ms(summary.latency_p95_s))
    rate = summary.rollouts_per_s
    wall = f"{result.rollout_s:.2f} s" + (f" ({rate:.1f} rollouts/s)" if rate else "")
    table.add_row("wall time", wall)
    console.print(table)
    _print_worst(console, result, worst)
    _print_failures(console, result)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


#: ``metrics.details`` keys that hold a rollout's input, in the order they are looked for.
_INPUT_KEYS = ("message", "question", "input", "prompt")


def _print_worst(console: Any, result: EvaluationResult, count: int) -> None:
    """The lowest-scoring rollouts that ran, each with the app's explanation."""
    scored = [r for r in result.results if r.ok and r.score is not None]
    worst = sorted(scored, key=lambda r: (r.score or 0.0, r.seed))[: max(0, count)]
    worst = [r for r in worst if r.score is not None and r.score < 1.0]
    if not worst:
        return
    console.print(f"[bold]worst {len(worst)}[/]")
    for outcome in worst:
        head = f"  seed {outcome.seed:<5} score {outcome.score or 0.0:.2f}"
        details = outcome.details
        if "predicted" in details or "expected" in details:
            head += f"  predicted {details.get('predicted')}, expected {details.get('expected')}"
        _line(console, head)
        # The input the app scored: support-intents says "message", a QA task "question".
        shown = next((details[k] for k in _INPUT_KEYS if isinstance(details.get(k), str)), None)
        if shown is not None:
            _line(console, f"      {json.dumps(shown)}")
        feedback = details.get("feedback")
        if feedback:
            _line(console, f"      {feedback}")


def _print_failures(console: Any, result: EvaluationResult) -> None:
    """Failed rollouts grouped by cause (each distinct cause once), with their seeds."""
    causes: dict[str, list[int]] = {}
    for outcome in result.results:
        if not outcome.ok:
            # Request ids differ per failure; group by what remains.
            text = f"{outcome.status}: {outcome.error or ''}".rstrip(": ")
            causes.setdefault(_REQUEST_ID.sub("<id>", text), []).append(outcome.seed)
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
