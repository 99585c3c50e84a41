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
    cell = "padding:2px 8px;border-bottom:1px solid #ddd"
    head = "".join(f"<th style='{cell}'>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td style='{cell}'>{html.escape(r[c])}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    return f"<table style='{_STYLE}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
