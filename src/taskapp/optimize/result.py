"""``OptimizeResult``: what an optimization run found, and how it is saved.

Names follow the seed's ``PromptLearningResult`` (``best_score``, ``best_prompt``,
``succeeded``, ``error``, ``raw``) so ported scripts keep working.

``save(dir)`` writes::

    result.json          everything below, JSON
    best_prompt.txt      the best prompt (best_candidate.json too when it has several parts)
    history.jsonl        one event per line: baseline, candidate, iteration, stopped
    score_curve.svg      best validation score against rollouts used (no dependency)
    score_curve.png      the same with matplotlib, when it is installed
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from taskapp.core.logs import get_logger

__all__ = ["OptimizeResult", "plot_png", "plot_svg"]

logger = get_logger("taskapp.optimize")

#: Fields that differ between two otherwise identical runs (timings).
TIMING_FIELDS = frozenset({"elapsed_s", "started_at"})


@dataclasses.dataclass
class OptimizeResult:
    """The outcome of :func:`taskapp.optimize.run`.

    >>> result = run(...)                                   # doctest: +SKIP
    >>> result.best_score, result.baseline_score            # doctest: +SKIP
    (0.767, 0.4)
    >>> print(result.best_prompt)                           # doctest: +SKIP
    >>> result.save("runs/support-intents")                 # doctest: +SKIP

    ``status`` is ``"succeeded"``, ``"interrupted"`` (Ctrl-C / stop event: the best
    found so far) or ``"failed"`` (``error`` says why; the best found before it).
    ``stopped_by`` names the condition that ended the loop: ``budget``, ``patience``,
    ``timeout``, ``interrupted``, ``reflection_failures`` or ``error``.
    """

    status: str
    best_score: float
    best_prompt: str
    best_candidate: dict[str, str]
    baseline_score: float
    seed_candidate: dict[str, str]
    history: list[dict[str, Any]]
    test_scores: dict[str, float] | None = None
    best_idx: int = 0
    candidates: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    val_scores: dict[int, float] = dataclasses.field(default_factory=dict)
    baseline_val_scores: dict[int, float] = dataclasses.field(default_factory=dict)
    pareto_front: dict[int, list[int]] = dataclasses.field(default_factory=dict)
    metric_calls: int = 0
    budget: int = 0
    iterations: int = 0
    stopped_by: str = ""
    elapsed_s: float = 0.0
    train_seeds: list[int] = dataclasses.field(default_factory=list)
    val_seeds: list[int] = dataclasses.field(default_factory=list)
    test_seeds: list[int] | None = None
    reflection: dict[str, Any] = dataclasses.field(default_factory=dict)
    rollouts: dict[str, Any] = dataclasses.field(default_factory=dict)
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None
    raw: dict[str, Any] | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @property
    def improvement(self) -> float:
        return self.best_score - self.baseline_score

    def to_dict(self, *, include_raw: bool = True) -> dict[str, Any]:
        """A JSON-able dict (int seed keys become strings)."""
        data = dataclasses.asdict(self)
        for key in ("val_scores", "baseline_val_scores", "pareto_front"):
            data[key] = {str(k): v for k, v in data[key].items()}
        data["succeeded"] = self.succeeded
        data["improvement"] = round(self.improvement, 10)
        if not include_raw:
            data.pop("raw", None)
        jsonable: dict[str, Any] = _jsonable(data)
        return jsonable

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OptimizeResult:
        """Read back what :meth:`to_dict` wrote (``result.json``)."""
        names = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in names}
        for key in ("val_scores", "baseline_val_scores", "pareto_front"):
            values[key] = {int(k): v for k, v in (values.get(key) or {}).items()}
        return cls(**values)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write result.json, the best prompt, history.jsonl and the score curve."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        _write(folder / "result.json", self.to_json() + "\n")
        _write(folder / "best_prompt.txt", self.best_prompt.rstrip("\n") + "\n")
        if len(self.best_candidate) > 1:
            _write(
                folder / "best_candidate.json",
                json.dumps(self.best_candidate, indent=2, ensure_ascii=False) + "\n",
            )
        lines = "".join(json.dumps(_jsonable(event)) + "\n" for event in self.history)
        _write(folder / "history.jsonl", lines)
        points = curve_points(self.history)
        candidates = candidate_points(self.history)
        title = f"best validation score vs rollouts ({self.status})"
        baseline = self.baseline_score
        _write(
            folder / "score_curve.svg",
            plot_svg(points, candidates, self.budget, title, baseline=baseline),
        )
        try:
            plot_png(
                folder / "score_curve.png", points, candidates, self.budget, title,
                baseline=baseline,
            )  # fmt: skip
        except ImportError:
            logger.debug("matplotlib is not installed: no score_curve.png")
        return folder


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value) if isinstance(value, set | frozenset) else value
        return [_jsonable(v) for v in items]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


# -- the score curve --------------------------------------------------------------------


def curve_points(history: Sequence[Mapping[str, Any]]) -> list[tuple[int, float]]:
    """(rollouts used, best validation score so far) after the baseline and each step."""
    points: list[tuple[int, float]] = []
    for event in history:
        if event.get("event") in ("baseline", "iteration", "stopped"):
            best = event.get("best_score")
            calls = event.get("metric_calls")
            if isinstance(best, int | float) and isinstance(calls, int):
                points.append((calls, float(best)))
    return points


def candidate_points(history: Sequence[Mapping[str, Any]]) -> list[tuple[int, float]]:
    """(rollouts used, validation score) of every proposed candidate when it was found
    (the seed prompt's baseline is drawn on its own)."""
    return [
        (int(event["metric_calls"]), float(event["score"]))
        for event in history
        if event.get("event") == "candidate"
        and isinstance(event.get("score"), int | float)
        and isinstance(event.get("metric_calls"), int)
    ]


#: Width the legend allows per character of a label (font-size 12).
LEGEND_CHAR_PX = 7


def plot_svg(  # noqa: C901 -- complexity 16 at most (issue 21 ratchet); split when next changed
    points: Sequence[tuple[int, float]],
    candidates: Sequence[tuple[int, float]],
    budget: int,
    title: str,
    *,
    baseline: float | None = None,
) -> str:
    """A dependency-free SVG line chart of the best score against rollouts used, with a
    legend: best so far (line), candidates (dots), the seed prompt's baseline (a dashed
    horizontal line) and the budget (a dashed vertical line)."""
    width, height = 640, 360
    left, right, top, bottom = 60, 20, 40, 50
    x_max = max([budget, 1, *(x for x, _ in points), *(x for x, _ in candidates)])
    ys = [y for _, y in points] + [y for _, y in candidates]
    if baseline is not None:
        ys.append(baseline)
    y_min = min([0.0, *ys])
    y_max = max([1.0, *ys])
    if y_max - y_min < 1e-9:
        y_max = y_min + 1.0

    def sx(x: float) -> float:
        return left + (width - left - right) * x / x_max

    def sy(y: float) -> float:
        return height - bottom - (height - top - bottom) * (y - y_min) / (y_max - y_min)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="14">{escape(title)}</text>',
    ]
    for i in range(6):
        y = y_min + (y_max - y_min) * i / 5
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" '
            'stroke="#e5e5e5"/>'
        )
        parts.append(f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.2f}</text>')
    for i in range(6):
        x = x_max * i / 5
        parts.append(
            f'<text x="{sx(x):.1f}" y="{height - bottom + 16}" text-anchor="middle">{x:.0f}</text>'
        )
    parts.append(
        f'<line x1="{left}" x2="{width - right}" y1="{height - bottom}" '
        f'y2="{height - bottom}" stroke="black"/>'
    )
    parts.append(
        f'<line x1="{left}" x2="{left}" y1="{top}" y2="{height - bottom}" stroke="black"/>'
    )
    parts.append(
        f'<text x="{(left + width - right) / 2}" y="{height - 12}" text-anchor="middle">'
        "rollouts used</text>"
    )
    parts.append(
        f'<text x="16" y="{(top + height - bottom) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 16 {(top + height - bottom) / 2})">validation score</text>'
    )
    if budget:
        parts.append(
            f'<line x1="{sx(budget):.1f}" x2="{sx(budget):.1f}" y1="{top}" '
            f'y2="{height - bottom}" stroke="#999" stroke-dasharray="4 4"/>'
        )
    if baseline is not None:
        parts.append(
            f'<line class="baseline" x1="{left}" x2="{width - right}" y1="{sy(baseline):.1f}" '
            f'y2="{sy(baseline):.1f}" stroke="#59a14f" stroke-width="1.5" '
            'stroke-dasharray="6 3"/>'
        )
    for x, y in candidates:
        parts.append(
            f'<circle class="candidate" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="#f28e2b"/>'
        )
    if points:
        path: list[str] = []
        previous_y: float | None = None
        for x, y in points:
            if previous_y is not None:
                path.append(f"{sx(x):.1f},{sy(previous_y):.1f}")
            path.append(f"{sx(x):.1f},{sy(y):.1f}")
            previous_y = y
        parts.append(
            f'<polyline class="best" points="{" ".join(path)}" fill="none" stroke="#4e79a7" '
            'stroke-width="2"/>'
        )
    legend = [
        ('<line x1="0" x2="18" y1="0" y2="0" stroke="#4e79a7" stroke-width="2"/>', "best so far"),
        ('<circle cx="9" cy="0" r="3" fill="#f28e2b"/>', "candidate"),
    ]
    if baseline is not None:
        legend.append(
            (
                '<line x1="0" x2="18" y1="0" y2="0" stroke="#59a14f" stroke-width="1.5" '
                'stroke-dasharray="6 3"/>',
                f"baseline (seed prompt, {baseline:.3f})",
            )
        )
    if budget:
        legend.append(
            (
                '<line x1="9" x2="9" y1="-6" y2="6" stroke="#999" stroke-dasharray="4 4"/>',
                "budget",
            )
        )
    # Wide enough for the longest label (about 7 px a character at font-size 12: an
    # overestimate for sans-serif, so no label ever runs out of the box).
    box_w = 32 + LEGEND_CHAR_PX * max(len(label) for _, label in legend) + 8
    box_x, box_y = width - right - 4 - box_w, top + 8
    parts.append(
        f'<g class="legend"><rect x="{box_x}" y="{box_y}" width="{box_w}" '
        f'height="{16 * len(legend) + 8}" fill="white" fill-opacity="0.85" stroke="#ccc"/>'
    )
    for i, (mark, label) in enumerate(legend):
        y = box_y + 14 + 16 * i
        parts.append(
            f'<g transform="translate({box_x + 8},{y - 4})">{mark}</g>'
            f'<text x="{box_x + 32}" y="{y}">{escape(label)}</text>'
        )
    parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def plot_png(
    path: str | os.PathLike[str],
    points: Sequence[tuple[int, float]],
    candidates: Sequence[tuple[int, float]],
    budget: int,
    title: str,
    *,
    baseline: float | None = None,
) -> None:
    """The score curve as a PNG with matplotlib (ImportError when it is not installed).

    Uses the object API with the Agg canvas: no pyplot, no global backend change.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    if points:
        axes.step([x for x, _ in points], [y for _, y in points], where="post", label="best so far")
    if candidates:
        axes.scatter(
            [x for x, _ in candidates],
            [y for _, y in candidates],
            s=14,
            color="tab:orange",
            label="candidates",
            zorder=3,
        )
    if baseline is not None:
        axes.axhline(
            baseline,
            linestyle="--",
            color="tab:green",
            linewidth=1.5,
            label=f"baseline (seed prompt, {baseline:.3f})",
        )
    if budget:
        axes.axvline(budget, linestyle="--", color="grey", linewidth=1, label="budget")
    axes.set_xlim(left=0)
    axes.set_xlabel("rollouts used")
    axes.set_ylabel("validation score")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(os.fspath(path), format="png")
