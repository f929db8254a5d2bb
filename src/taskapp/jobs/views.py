"""What the jobs page shows beyond one job's row: labels and the per-seed score matrix.

:func:`job_labels` names a job in the list (its config file, task and models);
:func:`seed_matrix` turns a job's events into the candidate x validation-seed score matrix
(``GET /api/jobs/ID/seeds``): which seeds the best candidate fixed and which it broke
against the baseline, and each candidate's mean ``objectives`` when the app reports
several (``objective_scores``: the page draws their Pareto front).

>>> events = [
...     {"kind": "baseline", "data": {"candidate": 0, "score": 0.33,
...                                   "val_scores": {"1": 1.0, "2": 0.0, "3": 0.0}}},
...     {"kind": "candidate", "data": {"candidate": 1, "score": 0.67, "parents": [0],
...                                    "val_scores": {"1": 0.0, "2": 1.0, "3": 1.0}}},
... ]
>>> matrix = seed_matrix(events)
>>> matrix["seeds"], matrix["best_idx"], matrix["fixed"], matrix["broke"]
([1, 2, 3], 1, [2, 3], [1])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import PurePath
from typing import Any

__all__ = ["job_labels", "seed_matrix"]


def job_labels(config: Mapping[str, Any], config_name: Any) -> dict[str, str]:
    """The list's labels of a submitted job: config file name, task, models."""
    labels: dict[str, str] = {}
    if isinstance(config_name, str) and config_name.strip():
        labels["config_name"] = PurePath(config_name).name
    if config.get("env_name"):
        labels["task"] = str(config["env_name"])
    policy = config.get("policy")
    if isinstance(policy, Mapping) and policy.get("model"):
        labels["model"] = str(policy["model"])
    reflection = config.get("reflection_lm")
    if isinstance(reflection, Mapping) and reflection.get("model"):
        labels["reflection_model"] = str(reflection["model"])
    elif isinstance(reflection, str):
        labels["reflection_model"] = reflection
    return labels


def _seed_key(seed: str) -> tuple[int, Any]:
    return (0, int(seed)) if seed.lstrip("-").isdigit() else (1, seed)


def seed_matrix(
    events: Iterable[Mapping[str, Any]], result: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The candidate x seed score matrix of a job, from its events (the ``baseline`` and
    ``candidate`` events carry per-seed scores). A job recorded before events carried
    them falls back on its result (baseline and best rows only).

    ``fixed``: seeds the best candidate scores higher on than the baseline; ``broke``:
    lower. ``best_idx`` is the highest mean score (the earliest on a tie), as in GEPA.
    """
    rows: dict[int, dict[str, Any]] = {}
    for event in events:
        data = event.get("data") or {}
        scores = data.get("val_scores")
        if event.get("kind") not in ("baseline", "candidate") or not isinstance(scores, dict):
            continue
        idx = int(data.get("candidate") or 0)
        rows[idx] = {
            "idx": idx,
            "score": data.get("score"),
            "parents": list(data.get("parents") or []),
            "scores": {str(k): v for k, v in scores.items()},
            "objectives": dict(data.get("objectives") or {}),
        }
    if not rows and result:
        _rows_from_result(rows, result)
    seeds = sorted({seed for row in rows.values() for seed in row["scores"]}, key=_seed_key)
    candidates = [
        {**row, "scores": [row["scores"].get(seed) for seed in seeds]}
        for _, row in sorted(rows.items())
    ]
    best = max(candidates, key=lambda c: (c["score"] or 0.0, -c["idx"]), default=None)
    fixed: list[Any] = []
    broke: list[Any] = []
    if best is not None and 0 in rows:
        base = candidates[0]["scores"]
        for i, seed in enumerate(seeds):
            before, after = base[i], best["scores"][i]
            if before is None or after is None:
                continue
            if after > before:
                fixed.append(seed)
            elif after < before:
                broke.append(seed)
    plain = [int(s) if s.lstrip("-").isdigit() else s for s in seeds]
    return {
        "seeds": plain,
        "candidates": candidates,
        "baseline_idx": 0 if 0 in rows else None,
        "best_idx": best["idx"] if best is not None else None,
        "fixed": [int(s) if s.lstrip("-").isdigit() else s for s in fixed],
        "broke": [int(s) if s.lstrip("-").isdigit() else s for s in broke],
    }


def _rows_from_result(rows: dict[int, dict[str, Any]], result: Mapping[str, Any]) -> None:
    baseline = result.get("baseline_val_scores")
    if isinstance(baseline, dict) and baseline:
        rows[0] = {"idx": 0, "score": result.get("baseline_score"), "parents": [],
                   "scores": {str(k): v for k, v in baseline.items()}}  # fmt: skip
    best_idx = result.get("best_idx")
    best = result.get("val_scores")
    if isinstance(best_idx, int) and best_idx != 0 and isinstance(best, dict) and best:
        rows[best_idx] = {"idx": best_idx, "score": result.get("best_score"), "parents": [],
                          "scores": {str(k): v for k, v in best.items()}}  # fmt: skip
