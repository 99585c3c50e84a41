"""Text and HTML tables shared by every repr (plans, reports)."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

_STYLE = "border-collapse:collapse;font-family:monospace;font-size:12px;text-align:right"


def text_table(rows: Sequence[Mapping[str, str]]) -> str:
    """Rows of equal keys as an aligned plain-text table."""
    if not rows:
        return ""
    cols = list(rows[0])
    width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    head = "  ".join(c.ljust(width[c]) if i == 0 else c.rjust(width[c]) for i, c in enumerate(cols))
    lines = [head, "  ".join("-" * width[c] for c in cols)]
    for r in rows:
        lines.append(
            "  ".join(
                r[c].ljust(width[c]) if i == 0 else r[c].rjust(width[c]) for i, c in enumerate(cols)
            )
        )
    return "\n".join(lines)


def html_table(rows: Sequence[Mapping[str, str]]) -> str:
    """Rows of equal keys as an HTML table (values escaped)."""
    if not rows:
        return ""
    cols = list(rows[0])
    cell = "padding:2px 8px;border-bottom:1px solid #ddd;white-space:nowrap"
    head = "".join(f"<th style='{cell}'>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td style='{cell}'>{html.escape(r[c])}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    return f"<table style='{_STYLE}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def grid_svg(
    lengths: Sequence[int],
    layers: Sequence[tuple[Sequence[Sequence[int]], str, float, str]],
    *,
    labels: Sequence[str] = ("", ""),
    size: int = 220,
    max_lines: int = 120,
) -> str:
    """An SVG of up to two axes with several sets of block edges drawn over each other.

    Parameters
    ----------
    lengths : sequence of int
        Length of the (row, column) axes; one axis draws a single band.
    layers : sequence of (edges per axis, colour, stroke width, dash pattern)
        Interior edges of each grid, drawn in order.
    labels : pair of str
        Axis names.
    size : int
        Pixels of the longer side.
    max_lines : int
        Above this many edges on an axis, a layer draws every k-th one.
    """
    rows, cols = (1, lengths[0]) if len(lengths) == 1 else (lengths[0], lengths[1])
    rows, cols = max(rows, 1), max(cols, 1)
    scale = size / max(rows, cols) if len(lengths) > 1 else size / cols
    w = cols * scale
    h = rows * scale if len(lengths) > 1 else 28.0
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{w + 30:.0f}' height='{h + 30:.0f}'>",
        f"<rect x='20' y='4' width='{w:.1f}' height='{h:.1f}' fill='#f7f7f7' stroke='#333'/>",
    ]
    for edges, colour, width, dash in layers:
        style = f"stroke='{colour}' stroke-width='{width}' stroke-dasharray='{dash}'"
        axes = [[], list(edges[0])] if len(lengths) == 1 else [list(edges[0]), list(edges[1])]
        for axis, es in enumerate(axes):
            step = max(1, -(-len(es) // max_lines))
            for e in es[::step]:
                if axis == 0:  # a row edge: horizontal line
                    y = 4 + e * scale
                    parts.append(
                        f"<line x1='20' x2='{20 + w:.1f}' y1='{y:.1f}' y2='{y:.1f}' {style}/>"
                    )
                else:
                    x = 20 + e * (w / cols)
                    parts.append(
                        f"<line x1='{x:.1f}' x2='{x:.1f}' y1='4' y2='{4 + h:.1f}' {style}/>"
                    )
    col_label, row_label = (labels[-1], labels[0] if len(lengths) > 1 else "")
    parts.append(
        f"<text x='{20 + w / 2:.0f}' y='{h + 22:.0f}' font-size='11' text-anchor='middle'>"
        f"{html.escape(col_label)} ({cols})</text>"
    )
    if row_label:
        parts.append(
            f"<text x='12' y='{4 + h / 2:.0f}' font-size='11' text-anchor='middle' "
            f"transform='rotate(-90 12 {4 + h / 2:.0f})'>{html.escape(row_label)} ({rows})</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
