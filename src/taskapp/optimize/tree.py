"""``candidate_tree.html``: the run's candidates as a lineage tree, in one offline file.

gepa's own ``candidate_tree_html()`` loads a Graphviz renderer from a CDN, so the page is
blank without network. This one is drawn here, as inline SVG (no script at all): one node
per candidate, placed by generation (its longest parent chain from the seed), an edge from
each parent, the best in blue; below it every candidate's text.

>>> html = candidate_tree_html([
...     {"idx": 0, "parents": [], "val_score": 0.2, "candidate": {"prompt": "seed"}},
...     {"idx": 1, "parents": [0], "val_score": 0.5, "candidate": {"prompt": "better"}},
... ], best_idx=1)
>>> "<script" in html, "#1 0.500" in html, "better" in html
(False, True, True)
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["candidate_tree_html"]

_COL, _ROW, _W, _H = 150, 70, 116, 34


def _generations(candidates: Sequence[Mapping[str, Any]]) -> dict[int, int]:
    depth: dict[int, int] = {}
    for c in sorted(candidates, key=lambda c: int(c["idx"])):
        parents = [int(p) for p in c.get("parents") or [] if p is not None]
        depth[int(c["idx"])] = 1 + max((depth.get(p, 0) for p in parents), default=-1)
    return depth


def candidate_tree_html(
    candidates: Sequence[Mapping[str, Any]], *, best_idx: int | None, title: str = "candidates"
) -> str:
    """The page for ``candidates`` (``OptimizeResult.candidates``: idx, parents, val_score,
    candidate) with ``best_idx`` highlighted."""
    depth = _generations(candidates)
    rows: dict[int, list[int]] = {}
    for idx in sorted(depth):
        rows.setdefault(depth[idx], []).append(idx)
    where = {idx: (20 + col * _COL, 20 + d * _ROW) for d, ids in rows.items()
             for col, idx in enumerate(ids)}  # fmt: skip
    width = 40 + _COL * max((len(ids) for ids in rows.values()), default=1)
    height = 40 + _ROW * max(len(rows), 1)
    by_idx = {int(c["idx"]): c for c in candidates}
    parts: list[str] = []
    for idx, c in by_idx.items():
        x, y = where[idx]
        for parent in c.get("parents") or []:
            if parent is None or int(parent) not in where:
                continue
            px, py = where[int(parent)]
            parts.append(
                f'<line x1="{px + _W / 2}" y1="{py + _H}" x2="{x + _W / 2}" y2="{y}" '
                'stroke="#8a96a3" stroke-width="1.4"/>'
            )
    for idx, c in by_idx.items():
        x, y = where[idx]
        fill = "#1760b8" if idx == best_idx else "#e9edf1" if idx == 0 else "#ffffff"
        ink = "#ffffff" if idx == best_idx else "#1d2329"
        score = c.get("val_score")
        label = f"#{idx} {float(score):.3f}" if score is not None else f"#{idx}"
        role = " best" if idx == best_idx else " seed" if idx == 0 else ""
        parts.append(
            f'<a href="#c{idx}"><rect x="{x}" y="{y}" width="{_W}" height="{_H}" rx="6" '
            f'fill="{fill}" stroke="#1760b8"/><text x="{x + _W / 2}" y="{y + 21}" '
            f'text-anchor="middle" fill="{ink}" font-size="13">{html.escape(label + role)}'
            f"</text><title>candidate #{idx}</title></a>"
        )
    texts = []
    for idx, c in sorted(by_idx.items()):
        parents = ", ".join(f"#{p}" for p in c.get("parents") or [] if p is not None) or "none"
        body = "".join(
            f"<h4>{html.escape(str(name))}</h4><pre>{html.escape(str(text))}</pre>"
            for name, text in (c.get("candidate") or {}).items()
        )
        score = c.get("val_score")
        shown = f"{float(score):.3f}" if score is not None else "–"
        texts.append(
            f'<section id="c{idx}"><h3>#{idx}{" (best)" if idx == best_idx else ""}: val '
            f"score {shown}, parents {html.escape(parents)}</h3>{body}</section>"
        )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>"
        "body{font:14px system-ui,sans-serif;margin:1.5em;color:#1d2329}"
        "pre{white-space:pre-wrap;background:#f5f7f9;padding:.5em;border:1px solid #d8dde2}"
        "svg{max-width:100%;height:auto}h3{font-size:1em;margin-top:1.4em}h4{margin:.4em 0 0;"
        "font-size:.85em;color:#5f6b76}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>One box per candidate (val score), an edge from "
        "each parent; generations top to bottom. Select a box for its text.</p>"
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="candidate lineage">{"".join(parts)}</svg>'
        f"{''.join(texts)}</body></html>\n"
    )
