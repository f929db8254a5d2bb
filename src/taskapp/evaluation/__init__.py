"""Evaluation: run rollouts against a task app, summarize the scores.

The engine of ``taskapp eval`` (which only parses arguments, draws progress and prints),
usable from Python: :func:`taskapp.evaluate` / :func:`taskapp.aevaluate`.

* :mod:`.plan`: which seeds (asked for, a split, or the task set's default);
* :mod:`.rollouts`: the concurrent loop over one :class:`~taskapp.core.client.AsyncTaskAppClient`;
* :mod:`.report`: :class:`EvaluationResult`, its :class:`Summary` and JSON report;
* :mod:`.evaluate`: :func:`evaluate` (starting the target when it is not a URL);
* :mod:`.console`: :func:`print_summary`, what ``taskapp eval`` prints.
"""

from __future__ import annotations

from taskapp.evaluation.console import print_summary
from taskapp.evaluation.evaluate import aevaluate, evaluate
from taskapp.evaluation.plan import EvaluationPlanError, Plan
from taskapp.evaluation.report import REPORT_FORMAT, EvaluationResult, Summary
from taskapp.evaluation.rollouts import EARLY_STOP_AFTER, run_evaluation

__all__ = [
    "EARLY_STOP_AFTER",
    "REPORT_FORMAT",
    "EvaluationPlanError",
    "EvaluationResult",
    "Plan",
    "Summary",
    "aevaluate",
    "evaluate",
    "print_summary",
    "run_evaluation",
]
