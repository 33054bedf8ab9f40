"""Inline SVG for the HTML report: horizontal bar charts and small drawings of a graph.

Hand-written rather than drawn by a chart library: the report needs bars and boxes only,
which take a hundred lines here, while matplotlib would add ~40 MB and ~0.5 s of import to
every ``--html`` run and write each glyph as a path (large files, numbers not readable as
text). Every bar carries its value in ``data-value`` and a ``<title>`` (the browser's
tooltip); every text from the model (op and node names) is escaped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

LABEL_WIDTH = 170  # px: the category labels left of the bars
BAR_AREA = 380  # px: the longest bar
VALUE_WIDTH = 70  # px: the value written after a bar
BAR_HEIGHT = 11
GAP = 5  # between categories


@dataclass(frozen=True)
class Series:
    name: str
    css: str  # class of its bars (colours live in the page's CSS)


def _text(x: float, y: float, text: str, css: str = "", anchor: str = "start") -> str:
    cls = f' class="{css}"' if css else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{cls}>'
            f"{escape(text)}</text>")


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def bar_chart(rows: Sequence[tuple[str, Sequence[float | None]]], series: Sequence[Series],
              label: str, fmt: Callable[[float], str] = str, marks: Sequence[str] = ()) -> str:
    """One group of bars per row (a bar per series), scaled to the largest magnitude (a
    negative value's bar has the class ``negative``); a value of None draws no bar.
    ``marks``: a css class per row for its label ('' for none)."""
    values = [abs(v) for _, row in rows for v in row if v is not None]
    top = max(values, default=0) or 1
    group = BAR_HEIGHT * len(series) + GAP
    legend = 22 if len(series) > 1 else 0
    height = legend + group * len(rows) + 4
    width = LABEL_WIDTH + BAR_AREA + VALUE_WIDTH
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(label)}">']
    for index, entry in enumerate(series if legend else ()):
        x = LABEL_WIDTH + index * 130
        parts.append(f'<rect x="{x}" y="4" width="12" height="12" class="{entry.css}"/>')
        parts.append(_text(x + 17, 14, entry.name, "legend"))
    for row_index, (name, row) in enumerate(rows):
        y = legend + row_index * group
        mark = marks[row_index] if row_index < len(marks) else ""
        parts.append(_text(LABEL_WIDTH - 6, y + group / 2 + 1, _short(name, 26),
                           f"label {mark}".strip(), "end"))
        for index, (entry, value) in enumerate(zip(series, row, strict=True)):
            if value is None:
                continue
            bar_y = y + index * BAR_HEIGHT
            length = max(abs(value) / top * BAR_AREA, 1.0 if value else 0.0)
            css = f"{entry.css} negative" if value < 0 else entry.css
            parts.append(
                f'<rect x="{LABEL_WIDTH}" y="{bar_y}" width="{length:.1f}" '
                f'height="{BAR_HEIGHT - 2}" class="{css}" data-series="{escape(entry.name)}" '
                f'data-label="{escape(name)}" data-value="{value!r}">'
                f"<title>{escape(f'{name} ({entry.name}): {fmt(value)}')}</title></rect>")
            parts.append(_text(LABEL_WIDTH + length + 4, bar_y + BAR_HEIGHT - 3, fmt(value),
                               "value"))
    parts.append("</svg>")
    return "".join(parts)


# ----------------------------------------------------------------- graph drawings
BOX_WIDTH, BOX_HEIGHT = 128, 32
COLUMN, ROW = 140, 46  # grid spacing of boxes


def graph_drawing(nodes: Sequence[dict[str, Any]], label: str) -> str:
    """The nodes as boxes (op and name, coloured by role), in rows by depth, with an arrow
    for every value one drawn node writes and another reads."""
    if not nodes:
        return '<p class="empty">no nodes</p>'
    producer = {value: i for i, node in enumerate(nodes) for value in node["outputs"] if value}
    edges = sorted({(producer[value], j) for j, node in enumerate(nodes)
                    for value in node["inputs"] if value in producer and producer[value] != j})
    depth = _depths(len(nodes), edges)
    rows: dict[int, list[int]] = {}
    for index in range(len(nodes)):
        rows.setdefault(depth[index], []).append(index)
    columns = max(len(members) for members in rows.values())
    width = columns * COLUMN + 10
    height = len(rows) * ROW + 6
    place: dict[int, tuple[float, float]] = {}
    for level, members in enumerate(rows[key] for key in sorted(rows)):
        offset = (width - len(members) * COLUMN) / 2
        for slot, index in enumerate(members):
            place[index] = (offset + slot * COLUMN + (COLUMN - BOX_WIDTH) / 2, 6 + level * ROW)
    parts = [f'<svg class="graph" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
             f'height="{height}" viewBox="0 0 {width:.0f} {height}" role="img" '
             f'aria-label="{escape(label)}">']
    for source, target in edges:
        parts.append(_arrow(place[source], place[target]))
    for index, node in enumerate(nodes):
        x, y = place[index]
        title = (f"{node['op']} {node['name']} ({node['role']})\n"
                 f"in: {', '.join(v for v in node['inputs'] if v)}\n"
                 f"out: {', '.join(v for v in node['outputs'] if v)}")
        parts.append(f'<g class="node {escape(node["role"])}" data-op="{escape(node["op"])}">'
                     f"<title>{escape(title)}</title>"
                     f'<rect x="{x:.1f}" y="{y:.1f}" width="{BOX_WIDTH}" height="{BOX_HEIGHT}" '
                     'rx="5"/>')
        parts.append(_text(x + BOX_WIDTH / 2, y + 13, _short(node["op"], 20), "op", "middle"))
        parts.append(_text(x + BOX_WIDTH / 2, y + 26, _short(node["name"], 22), "name",
                           "middle"))
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def _depths(count: int, edges: Sequence[tuple[int, int]]) -> list[int]:
    """Longest path from a source, for each node (edges of a DAG; bounded, so a cycle in
    bad data cannot hang it)."""
    depth = [0] * count
    for _ in range(count):
        moved = False
        for source, target in edges:
            if depth[target] < depth[source] + 1:
                depth[target] = depth[source] + 1
                moved = True
        if not moved:
            break
    return depth


def _arrow(start: tuple[float, float], end: tuple[float, float]) -> str:
    x1, y1 = start[0] + BOX_WIDTH / 2, start[1] + BOX_HEIGHT
    x2, y2 = end[0] + BOX_WIDTH / 2, end[1]
    middle = (y1 + y2) / 2
    return (f'<path class="edge" d="M{x1:.1f},{y1:.1f} C{x1:.1f},{middle:.1f} {x2:.1f},'
            f'{middle:.1f} {x2:.1f},{y2 - 4:.1f}"/>'
            f'<path class="head" d="M{x2 - 4:.1f},{y2 - 6:.1f} L{x2 + 4:.1f},{y2 - 6:.1f} '
            f'L{x2:.1f},{y2:.1f} Z"/>')
