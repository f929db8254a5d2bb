"""After a run: gepa's state turned into an :class:`OptimizeResult`, and the saved history.

``build_result`` reads the candidates, scores and Pareto front off gepa's state;
``read_history`` reads ``history.jsonl`` back for ``--resume`` (skipping a line a hard
kill cut short).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from taskapp.optimize.resolved import HISTORY_FILE, ResolvedRun
from taskapp.optimize.result import OptimizeResult


def best_idx(state: Any) -> int:
    scores = list(state.program_full_scores_val_set)
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def build_result(
    gepa: Any,
    state: Any,
    *,
    run: ResolvedRun,
    seed_candidate: dict[str, str],
    status: str,
    error: str | None,
    stopped_by: str,
    history: list[dict[str, Any]],
    test_scores: dict[str, float] | None,
    elapsed: float,
    reflection: dict[str, Any],
    rollouts: dict[str, Any],
    gepa_result: Any,
) -> OptimizeResult:
    scores = list(state.program_full_scores_val_set)
    best = best_idx(state)
    best_candidate = dict(state.program_candidates[best])
    key = (
        run.config.prompt_key
        if run.config.prompt_key in best_candidate
        else next(iter(best_candidate))
    )
    candidates = [
        {
            "idx": idx,
            "parents": [p for p in state.parent_program_for_candidate[idx] if p is not None],
            "val_score": scores[idx],
            "discovered_at_calls": state.num_metric_calls_by_discovery[idx]
            if idx < len(state.num_metric_calls_by_discovery)
            else None,
            "candidate": dict(candidate),
        }
        for idx, candidate in enumerate(state.program_candidates)
    ]
    raw = None
    if gepa_result is None:
        with contextlib.suppress(Exception):
            gepa_result = gepa.GEPAResult.from_state(state, seed=run.config.seed)
    if gepa_result is not None:
        with contextlib.suppress(Exception):
            raw = gepa_result.to_dict()
    return OptimizeResult(
        status=status,
        best_score=scores[best],
        best_prompt=best_candidate[key],
        best_candidate=best_candidate,
        baseline_score=scores[0],
        seed_candidate=seed_candidate,
        history=list(history),
        test_scores=test_scores,
        best_idx=best,
        candidates=candidates,
        val_scores={int(k): float(v) for k, v in state.prog_candidate_val_subscores[best].items()},
        baseline_val_scores={
            int(k): float(v) for k, v in state.prog_candidate_val_subscores[0].items()
        },
        pareto_front={int(k): sorted(v) for k, v in state.program_at_pareto_front_valset.items()},
        metric_calls=int(state.total_num_evals),
        budget=run.config.budget,
        iterations=max(0, int(state.i) + 1),
        stopped_by=stopped_by,
        elapsed_s=round(elapsed, 3),
        train_seeds=run.train,
        val_seeds=run.val,
        test_seeds=run.test,
        reflection=reflection,
        rollouts=rollouts,
        config=run.public(),
        error=error,
        raw=raw,
    )


def read_history(folder: Path | None) -> list[dict[str, Any]]:
    if folder is None:
        return []
    path = folder / HISTORY_FILE
    events: list[dict[str, Any]] = []
    if not path.exists():
        return events
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line cut short by a hard kill
        if isinstance(event, dict):
            events.append(event)
    return events
