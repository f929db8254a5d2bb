"""score_curve.svg's legend holds its longest label (issue 21 item 6: the baseline label ran
out of a fixed-width box). Widths are measured with matplotlib's own sans-serif metrics."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from taskapp.optimize.result import plot_svg

SVG = "{http://www.w3.org/2000/svg}"


def text_width(text: str, size: float = 12) -> float:
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    return float(TextPath((0, 0), text, size=size, prop=FontProperties(family=["sans-serif"]))
                 .get_extents().width)  # fmt: skip


@pytest.mark.parametrize("baseline", [0.3, 0.123456, -12.5])
def test_every_legend_label_fits_in_the_box_and_the_box_in_the_chart(baseline: float) -> None:
    svg = plot_svg([(20, 0.3), (127, 0.35)], [(49, 0.35)], 150, "a title", baseline=baseline)
    root = ET.fromstring(svg)
    width = float(root.attrib["width"])
    legend = next(g for g in root.iter(f"{SVG}g") if g.attrib.get("class") == "legend")
    box = legend.find(f"{SVG}rect")
    assert box is not None
    left, right = float(box.attrib["x"]), float(box.attrib["x"]) + float(box.attrib["width"])
    assert left >= 0 and right <= width
    labels = legend.findall(f"{SVG}text")
    assert any(re.match(r"baseline \(seed prompt, ", t.text or "") for t in labels)
    for label in labels:
        end = float(label.attrib["x"]) + text_width(label.text or "")
        assert end <= right, f"{label.text!r} ends at {end:.0f}, the box at {right:.0f}"
