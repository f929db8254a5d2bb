"""What an evaluation produced: :class:`EvaluationResult`, its summary and its JSON report
(the ``taskapp.eval/1`` format of ``taskapp eval --json``, docs/cli.md)."""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from taskapp.core.client import RolloutOutcome
from taskapp.evaluation.plan import Plan

__all__ = ["REPORT_FORMAT", "EvaluationResult", "Summary", "percentile"]

REPORT_FORMAT = "taskapp.eval/1"

#: The fields of one result in the report (a stable subset of RolloutOutcome's).
RESULT_FIELDS = (
    "seed",
    "run_id",
    "status",
    "score",
    "latency_s",
    "http_status",
    "error",
    "details",
)


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile (``fraction`` 0.5 = median), None for no values.

    >>> percentile([3.0, 1.0, 2.0, 4.0], 0.5)
    2.0
    """
    if not values:
        return None
    ordered = sorted(values)
    index = max(0, math.ceil(fraction * len(ordered)) - 1)
    return ordered[index]


@dataclasses.dataclass(frozen=True)
class Summary:
    """The numbers of one evaluation (``report["summary"]``)."""

    requested: int
    completed: int
    mean_score: float | None
    success: int
    failed: int
    statuses: dict[str, int]
    latency_p50_s: float | None
    latency_p95_s: float | None
    rollout_s: float
    rollouts_per_s: float | None
    #: CPU time of this process during the rollouts (the client, plus the app when it
    #: runs in-process)
    rollout_cpu_s: float


@dataclasses.dataclass
class EvaluationResult:
    """Every rollout of one evaluation, also when it was interrupted or stopped early.

    ``results`` are in completion order; :meth:`by_seed` sorts them.
    """

    target: str
    url: str
    concurrency: int
    policy_config: dict[str, Any]
    plan: Plan | None = None
    results: list[RolloutOutcome] = dataclasses.field(default_factory=list)
    interrupted: str | None = None
    stopped_early: str | None = None
    rollout_s: float = 0.0
    rollout_cpu_s: float = 0.0
    started_at: float = dataclasses.field(default_factory=time.time)

    @property
    def seeds(self) -> list[int]:
        return list(self.plan.seeds) if self.plan else []

    @property
    def split(self) -> str | None:
        return self.plan.split if self.plan else None

    @property
    def failures(self) -> list[RolloutOutcome]:
        """The rollouts that did not succeed, by seed."""
        return [r for r in self.by_seed() if not r.ok]

    @property
    def ok(self) -> bool:
        """Every planned rollout ran and succeeded."""
        return (
            self.plan is not None
            and not self.interrupted
            and not self.stopped_early
            and len(self.results) == len(self.plan.seeds)
            and all(r.ok for r in self.results)
        )

    @property
    def mean_score(self) -> float | None:
        return self.summary.mean_score

    def by_seed(self) -> list[RolloutOutcome]:
        return sorted(self.results, key=lambda r: r.seed)

    @property
    def summary(self) -> Summary:
        results = self.results
        scores = [r.score for r in results if r.score is not None]
        statuses = Counter(r.status for r in results)
        return Summary(
            requested=len(self.plan.seeds) if self.plan else 0,
            completed=len(results),
            mean_score=(sum(scores) / len(scores)) if scores else None,
            success=statuses.get("success", 0),
            failed=len(results) - statuses.get("success", 0),
            statuses=dict(sorted(statuses.items())),
            latency_p50_s=percentile([r.latency_s for r in results], 0.50),
            latency_p95_s=percentile([r.latency_s for r in results], 0.95),
            rollout_s=self.rollout_s,
            rollouts_per_s=(len(results) / self.rollout_s) if self.rollout_s > 0 else None,
            rollout_cpu_s=self.rollout_cpu_s,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (format ``taskapp.eval/1``); secrets in the policy config are
        replaced by ``[redacted]``."""
        return {
            "format": REPORT_FORMAT,
            "target": self.target,
            "url": self.url,
            "split": self.split,
            "seeds": self.seeds,
            "concurrency": self.concurrency,
            "policy_config": redacted_config(self.policy_config),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_at)),
            "interrupted": self.interrupted,
            "stopped_early": self.stopped_early,
            "summary": dataclasses.asdict(self.summary),
            "results": [{name: getattr(r, name) for name in RESULT_FIELDS} for r in self.by_seed()],
        }


def redacted_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with string values of key-, token-, secret- and password-like names
    replaced (``*_env`` names, which name a variable, are kept)."""
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
