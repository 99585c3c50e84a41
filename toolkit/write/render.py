"""How a write plan shows: its one line, its table, its pictures (text and HTML).

:class:`~toolkit.write.plan.WritePlan`'s ``repr`` and ``_repr_html_`` (and a
tree's, :mod:`toolkit.write.tree`) are these; the plan itself only answers
numbers.
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING

from dask.utils import format_bytes

from toolkit import grid
from toolkit._render import grid_svg, html_table, text_table
from toolkit.io.stores import display_location

if TYPE_CHECKING:
    from toolkit.io.throttle import Throttle
    from toolkit.write.plan import VariablePlan, WritePlan

__all__ = ["plan_html", "plan_summary", "plan_text", "variable_row", "variable_svg"]


def variable_svg(v: VariablePlan) -> str:
    """Two axes: tasks (black), write units (dashed blue), dask chunks (grey).

    The axes shown are those where regrouping happened, then those with the
    most write units.
    """
    if not v.shape:
        return ""
    rank = sorted(
        range(len(v.shape)),
        key=lambda a: (
            v.source_chunks[a] != v.task_chunks[a],
            v.shape[a] / v.write_unit[a],
        ),
        reverse=True,
    )
    axes = sorted(rank[:2])

    def inner(chunks: tuple[int, ...]) -> list[int]:
        return [int(e) for e in grid.edges(chunks)[1:-1]]

    def unit_edges(a: int) -> list[int]:
        u, o, n = v.write_unit[a], v.offset[a], v.shape[a]
        return [k * u - o for k in range(o // u + 1, -(-(o + n) // u)) if 0 < k * u - o < n]

    layers = [
        ([inner(v.task_chunks[a]) for a in axes], "#111", 2.5, ""),
        ([unit_edges(a) for a in axes], "#1f77b4", 1.2, "4 3"),
        ([inner(v.source_chunks[a]) for a in axes], "#999", 0.7, ""),
    ]
    return grid_svg([v.shape[a] for a in axes], layers, labels=[v.dims[a] for a in axes])


def variable_row(v: VariablePlan) -> dict[str, str]:
    """One row of a plan's table: a variable, its layout, tasks, bytes and requests."""
    return {
        "variable": v.name + ("" if v.new else " (existing)"),
        "shape": "×".join(map(str, v.shape)),
        "dtype": str(v.dtype),
        "chunks": "×".join(map(str, v.chunks)),
        "shards": "×".join(map(str, v.shards)) if v.shards else "-",
        "dask chunks": f"{math.prod(len(c) for c in v.source_chunks):,}",
        "tasks": f"{v.ntasks:,}",
        "units": f"{v.nunits:,}" + (f" ({v.npartial:,} merge)" if v.npartial else ""),
        "bytes": format_bytes(v.nbytes),
        "requests": f"{v.requests:,}",
        "peak/task": format_bytes(v.peak_memory),
    }


def plan_summary(plan: WritePlan) -> str:
    """A plan in one line: where, how, and its totals."""
    what = f"mode={plan.mode!r}, zarr_format={plan.zarr_format}"
    if plan.append_dim:
        what += f", append_dim={plan.append_dim!r}"
    if plan.region:
        what += (
            ", region={"
            + ", ".join(f"{k}: {s.start}:{s.stop}" for k, s in plan.region.items())
            + "}"
        )
    return (
        f"WritePlan → {display_location(plan.target)} ({what}): {plan.ntasks:,} tasks, "
        f"{plan.nunits:,} write units, {format_bytes(plan.nbytes)}, "
        f"~{plan.requests:,} requests, peak ~{format_bytes(plan.peak_memory)}/task "
        f"(target {format_bytes(plan.max_task_bytes)})"
        + (f", {_throttle_text(plan.throttle)}" if plan.throttle else "")
    )


def plan_text(plan: WritePlan) -> str:
    """A plan as text: its line, then a table of its variables."""
    lines = [plan_summary(plan)]
    rows = [variable_row(v) for v in plan.variables]
    if rows:
        lines.append(text_table(rows))
    if plan.eager:
        lines.append("written with the metadata: " + ", ".join(plan.eager))
    return "\n".join(lines)


def plan_html(plan: WritePlan) -> str:
    """A plan as HTML: its line, the table, and a picture of up to four variables' grids."""
    body = html_table([variable_row(v) for v in plan.variables])
    eager = f"<p>Written with the metadata: {', '.join(plan.eager)}</p>" if plan.eager else ""
    pictures = "".join(
        f"<figure style='display:inline-block;margin:4px 12px'>{variable_svg(v)}"
        f"<figcaption style='font-size:11px'>{html.escape(v.name)}</figcaption></figure>"
        for v in plan.variables[:4]
    )
    legend = (
        "<p style='font-size:11px'>black: write tasks · dashed blue: write units "
        "(shards, else chunks) · grey: dask chunks</p>"
    )
    return (
        f"<div><p><b>{html.escape(plan_summary(plan))}</b></p>{body}{eager}"
        f"{pictures}{legend if pictures else ''}</div>"
    )


def _throttle_text(t: Throttle) -> str:
    # The budget's limits that are set (an unlimited one says nothing).
    return "throttle " + " ".join(f"{k}={v}" for k, v in t._row().items() if v not in ("∞",))
