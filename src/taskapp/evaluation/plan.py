"""Which seeds an evaluation runs: the ones asked for, a split, or the task set's default."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from taskapp.core.errors import ConfigurationError
from taskapp.core.seeds import format_seeds, known_seeds

__all__ = ["EvaluationPlanError", "Plan", "plan_seeds", "split_seeds"]


class EvaluationPlanError(ConfigurationError):
    """The seeds or the split asked for do not fit the task set.

    ``option`` is the argument at fault (``"seeds"`` or ``"split"``), so a front end can
    name its own spelling of it (``--seeds``).
    """

    def __init__(self, option: str, detail: str) -> None:
        self.option = option
        self.detail = detail
        super().__init__(f"{option}{detail}")

    def named(self, spelling: str) -> str:
        """The message with ``option`` spelled as ``spelling``."""
        return f"{spelling}{self.detail}"


@dataclasses.dataclass
class Plan:
    """The seeds to run, the split they come from (if any), the ``env.config`` every
    rollout gets (``{"split": name}`` for a split), and the task set as the app described
    it."""

    seeds: list[int]
    split: str | None
    env_config: dict[str, Any]
    taskset: Any


def split_seeds(value: Any) -> list[int] | None:
    """A split is a list of seeds, ``{"seeds": [...]}``, or a size (seeds 0..size-1)."""
    if isinstance(value, dict):
        value = value.get("seeds", value.get("size", value.get("count")))
    if isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return list(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return list(range(value))
    return None


def plan_seeds(taskset: Any, *, seeds: Sequence[int] | None, split: str | None) -> Plan:
    """The :class:`Plan` for ``seeds`` (checked against the task set when it lists its
    seeds) or ``split``; with neither, the task set's ``default_split``, else its
    ``test`` split, else every seed it has."""
    splits = taskset.get("splits") if isinstance(taskset, dict) else None
    splits = splits if isinstance(splits, dict) else {}
    known = known_seeds(taskset)
    if seeds is not None:
        if known is not None:
            outside = [seed for seed in seeds if seed not in known]
            if outside:
                raise EvaluationPlanError(
                    "seeds",
                    f": {format_seeds(outside)} outside the task set (its seeds are "
                    f"{format_seeds(known)})",
                )
        return Plan(list(seeds), None, {}, taskset)
    if split is None:
        default = taskset.get("default_split") if isinstance(taskset, dict) else None
        if isinstance(default, str) and default in splits:
            split = default
        elif "test" in splits:
            split = "test"
        elif known is not None:
            return Plan(sorted(known), None, {}, taskset)
        else:
            raise EvaluationPlanError(
                "seeds",
                ": the task set names no splits and no size, so pass the seeds to run (e.g. 0-99)",
            )
    if split not in splits:
        available = ", ".join(map(str, splits)) or "none"
        raise EvaluationPlanError(
            "split", f" {split!r} is not in the task set (splits: {available})"
        )
    chosen = split_seeds(splits[split])
    if chosen is None:
        raise EvaluationPlanError(
            "split", f" {split!r}: the task set does not say which seeds it has; pass seeds"
        )
    if not chosen:
        raise EvaluationPlanError("split", f" {split!r} is empty")
    return Plan(chosen, split, {"split": split}, taskset)
