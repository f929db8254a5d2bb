"""Progress of a run: a gepa callback turning events into history, a stopper, a printer.

Events (``history`` entries, ``on_progress`` payloads and ``history.jsonl`` lines)::

    {"event": "baseline",  "iteration": 0, "metric_calls": 30, "score": 0.4, "best_score": 0.4, ...}
    {"event": "candidate", "iteration": 3, "candidate": 1, "score": 0.5, "parents": [0],
     "val_scores": {"100": 1.0, ...}, "texts": {"prompt": "..."} (a new best only), ...}
    {"event": "iteration", "iteration": 3, "metric_calls": 66, "best_score": 0.5,
     "accepted": true, "skipped": null, ...}
    {"event": "stopped",   "reason": "budget", "metric_calls": 198, "best_score": 0.77, ...}
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from taskapp.core.logs import get_logger
from taskapp.optimize.lm import ReflectionRecorder

__all__ = ["ConsolePrinter", "GepaLogger", "ProgressTracker", "RunStopper"]

logger = get_logger("taskapp.optimize")
gepa_logger = get_logger("taskapp.optimize.gepa")


class GepaLogger:
    """gepa's ``logger`` (anything with ``.log``): forwards to logging at DEBUG.

    Passing one keeps gepa from printing every proposed prompt on stdout and from
    teeing ``sys.stdout``/``sys.stderr`` process-wide when a run directory is used.
    """

    def log(self, message: str) -> None:
        gepa_logger.debug("%s", message)


class ProgressTracker:
    """A gepa callback: keeps the live ``GEPAState`` and emits history events."""

    def __init__(
        self,
        *,
        budget: int,
        history: list[dict[str, Any]] | None = None,
        sinks: list[Callable[[dict[str, Any]], None]] | None = None,
        records: list[Callable[[dict[str, Any]], None]] | None = None,
        resuming: bool = False,
        elapsed_before: float = 0.0,
    ) -> None:
        self.budget = budget
        self.history: list[dict[str, Any]] = list(history or [])
        self.sinks = list(sinks or [])
        #: the run's own records: where one fails the run stops (:attr:`record_error`)
        self.records = list(records or [])
        self.record_error: Exception | None = None
        self.resuming = resuming
        self.state: Any = None
        self.metric_calls = 0
        self.started = time.perf_counter()
        self.elapsed_before = elapsed_before
        self._iteration_notes: dict[str, Any] = {}
        self._lock = threading.Lock()
        #: (candidate, val seeds) -> the mean of each objective the app reported
        self.objectives_of: Callable[[dict[str, str], Any], dict[str, float]] | None = None

    # -- helpers -----------------------------------------------------------------------

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def best_score(self) -> float | None:
        state = self.state
        if state is None:
            return None
        scores = state.program_full_scores_val_set
        return max(scores) if scores else None

    def emit(self, event: dict[str, Any]) -> None:
        event.setdefault("elapsed_s", round(self.elapsed(), 3))
        with self._lock:
            self.history.append(event)
        for record in self.records:
            try:
                record(event)
            except Exception as exc:  # gepa swallows a callback's errors: the stopper reads it
                if self.record_error is None:
                    self.record_error = exc
                    logger.warning("cannot write the run's records (%s): stopping", exc)
        for sink in self.sinks:
            try:
                sink(event)
            except Exception:  # a broken progress hook must not end the run
                logger.warning("progress hook failed", exc_info=True)

    # -- gepa callbacks ----------------------------------------------------------------

    def on_valset_evaluated(self, event: Any) -> None:
        iteration = int(event["iteration"])
        score = float(event["average_score"])
        if iteration == 0:
            if self.resuming:
                return  # the resumed run re-scores the seed; the history already has it
            calls = int(event["num_examples_evaluated"])
            self.metric_calls = calls
            self.emit(
                {
                    "event": "baseline",
                    "iteration": 0,
                    "candidate": 0,
                    "metric_calls": calls,
                    "score": score,
                    "best_score": score,
                    "budget": self.budget,
                    "val_scores": {str(k): float(v) for k, v in event["scores_by_val_id"].items()},
                    "texts": dict(event.get("candidate") or {}),
                    **self._objectives(event),
                }
            )
            return
        is_best = bool(event.get("is_best_program"))
        candidate: dict[str, Any] = {
            "event": "candidate",
            "iteration": iteration,
            "candidate": int(event["candidate_idx"]),
            "parents": [p for p in event.get("parent_ids", []) if p is not None],
            "metric_calls": self.metric_calls,
            "score": score,
            "is_best": is_best,
            # per seed: what the jobs page's seed matrix shows while the run goes on
            "val_scores": {str(k): float(v) for k, v in event["scores_by_val_id"].items()},
            **self._objectives(event),
        }
        if is_best:  # the current best prompt, visible before the run ends
            candidate["texts"] = dict(event.get("candidate") or {})
        self.emit(candidate)
        self._iteration_notes.setdefault("new_candidates", []).append(int(event["candidate_idx"]))

    def _objectives(self, event: Any) -> dict[str, Any]:
        """``{"objectives": {name: mean}}`` when the app reports several objectives."""
        if self.objectives_of is None:
            return {}
        try:
            means = self.objectives_of(
                dict(event.get("candidate") or {}), event["scores_by_val_id"]
            )
        except Exception:  # a view of the run, never a reason to end it
            logger.debug("objective means failed", exc_info=True)
            return {}
        return {"objectives": means} if means else {}

    def on_budget_updated(self, event: Any) -> None:
        self.metric_calls = int(event["metric_calls_used"])

    def on_iteration_start(self, event: Any) -> None:
        self.state = event["state"]
        self._iteration_notes = {}

    def on_evaluation_skipped(self, event: Any) -> None:
        self._iteration_notes["skipped"] = str(event.get("reason"))

    def on_proposal_end(self, event: Any) -> None:
        self._iteration_notes["proposal"] = dict(event.get("new_instructions") or {})

    def on_candidate_rejected(self, event: Any) -> None:
        self._iteration_notes["rejected"] = True
        with contextlib.suppress(KeyError, TypeError, ValueError):
            self._iteration_notes["rejected_scores"] = [
                float(event["old_score"]),
                float(event["new_score"]),
            ]

    def _proposed_lines(self, state: Any) -> list[str]:
        """Lines of a rejected proposal that no kept candidate has (what it tried)."""
        proposal = self._iteration_notes.get("proposal") or {}
        known: set[str] = set()
        for candidate in getattr(state, "program_candidates", []) or []:
            for text in dict(candidate).values():
                known.update(line.strip() for line in str(text).splitlines())
        return [
            line.strip()
            for text in proposal.values()
            for line in str(text).splitlines()
            if line.strip() and line.strip() not in known
        ]

    def on_iteration_end(self, event: Any) -> None:
        state = event["state"]
        self.state = state
        self.metric_calls = int(state.total_num_evals)
        notes = self._iteration_notes
        self.emit(
            {
                "event": "iteration",
                "iteration": int(event["iteration"]),
                "metric_calls": self.metric_calls,
                "best_score": self.best_score(),
                "accepted": bool(event.get("proposal_accepted")),
                "new_candidates": notes.get("new_candidates", []),
                "skipped": notes.get("skipped"),
                "rejected": bool(notes.get("rejected")),
                # what a rejected proposal tried, and its minibatch score against its parent's
                "rejected_scores": notes.get("rejected_scores"),
                "proposed_lines": self._proposed_lines(state) if notes.get("rejected") else [],
                "candidates": len(state.program_candidates),
                "budget": self.budget,
                "baseline_score": float(state.program_full_scores_val_set[0])
                if state.program_full_scores_val_set
                else None,
            }
        )

    def on_optimization_end(self, event: Any) -> None:
        self.state = event["final_state"]
        self.metric_calls = int(self.state.total_num_evals)


class RunStopper:
    """One gepa stopper for every stop condition, remembering which one fired.

    * ``budget``: stop before an iteration that could overrun the budget (an iteration
      costs up to ``2 * minibatch + |val|`` rollouts), so a run never uses more;
    * ``patience``: that many iterations in a row without a better best score;
    * ``timeout``: wall time;
    * ``interrupted``: the stop event was set (Ctrl-C, :func:`run_async` cancelled);
    * ``reflection_failures``: the reflection model failed that many times in a row.
    """

    def __init__(
        self,
        *,
        budget: int,
        iteration_cost: int,
        patience: int | None,
        timeout_s: float | None,
        stop_event: threading.Event,
        recorder: ReflectionRecorder,
        max_reflection_failures: int,
        tracker: ProgressTracker,
    ) -> None:
        self.max_metric_calls = budget  # gepa reads this for "remaining" in budget events
        self.iteration_cost = iteration_cost
        self.patience = patience
        self.deadline = time.monotonic() + timeout_s if timeout_s else None
        self.stop_event = stop_event
        self.recorder = recorder
        self.max_reflection_failures = max_reflection_failures
        self.tracker = tracker
        self.reason: str | None = None
        self._best = float("-inf")
        self._stale = 0

    def __call__(self, state: Any) -> bool:
        self.tracker.state = state
        reason = self._reason(state)
        if reason is not None and self.reason is None:
            self.reason = reason
            logger.info("stopping the optimization: %s", reason)
        return reason is not None

    def _reason(self, state: Any) -> str | None:
        if self.stop_event.is_set():
            return "interrupted"
        if self.tracker.record_error is not None:
            return "error"
        if self.recorder.fatal is not None or (
            self.recorder.consecutive_failures >= self.max_reflection_failures
        ):
            return "reflection_failures"
        if state.total_num_evals + self.iteration_cost > self.max_metric_calls:
            return "budget"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "timeout"
        scores = state.program_full_scores_val_set
        best = max(scores) if scores else float("-inf")
        if best > self._best:
            self._best, self._stale = best, 0
        else:
            self._stale += 1
        if self.patience is not None and self._stale >= self.patience:
            return "patience"
        return None


class ConsolePrinter:
    """Progress lines on stderr (rich styling on a terminal, plain text otherwise)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        from rich.console import Console

        self.console = Console(file=stream or sys.stderr, highlight=False, soft_wrap=True)
        self.baseline: float | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "baseline":
            self.baseline = event["score"]
            self.console.print(
                f"[bold]baseline[/bold]  val score {event['score']:.3f}  "
                f"({event['metric_calls']} rollouts of {event.get('budget', '?')})"
            )
        elif kind == "candidate":
            best = " [green]new best[/green]" if event.get("is_best") else ""
            self.console.print(
                f"  candidate #{event['candidate']} val score {event['score']:.3f}{best}"
            )
        elif kind == "iteration":
            outcome = (
                "accepted"
                if event.get("accepted")
                else f"skipped ({event['skipped']})"
                if event.get("skipped")
                else "rejected"
                if event.get("rejected")
                else "no proposal"
            )
            best_score = float(event.get("best_score") or 0.0)
            if self.baseline is None and isinstance(event.get("baseline_score"), float):
                self.baseline = event["baseline_score"]  # a resumed run has no baseline event
            baseline = f" (baseline {self.baseline:.3f})" if self.baseline is not None else ""
            scores = event.get("rejected_scores")
            if outcome == "rejected" and isinstance(scores, list) and len(scores) == 2:
                outcome = f"rejected (minibatch {scores[1]:.2f}, parent {scores[0]:.2f})"
            self.console.print(
                f"iter {event['iteration']:>3}  rollouts {event['metric_calls']:>5}/"
                f"{event.get('budget', '?')}  best {best_score:.3f}{baseline}  {outcome}  "
                f"{event.get('elapsed_s', 0):.1f}s"
            )
            self._print_proposal(event.get("proposed_lines") or [])
        elif kind == "stopped":
            self.console.print(
                f"[bold]stopped[/bold] ({event.get('reason')}) after "
                f"{event.get('metric_calls')} rollouts, {event.get('elapsed_s', 0):.1f}s"
            )

    def _print_proposal(self, lines: list[str], shown: int = 3) -> None:
        """The lines a rejected proposal added (so a run that stays at +0.000 shows what
        was tried)."""
        for line in lines[:shown]:
            text = line if len(line) <= 100 else line[:97] + "..."
            self.console.print(f"      tried: {text}", markup=False, highlight=False)
        if len(lines) > shown:
            self.console.print(f"      ... and {len(lines) - shown} more lines", markup=False)


class JsonlWriter:
    """Appends every event to a JSONL file as it happens (opened at the first event)."""

    def __init__(self, path: Path, *, truncate: bool) -> None:
        self.path = path
        self._mode = "w" if truncate else "a"
        self._file: IO[str] | None = None
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, self._mode, encoding="utf-8")  # noqa: SIM115
            self._file.write(json.dumps(event, default=str) + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
