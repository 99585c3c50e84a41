"""The benchmarks page's plot, drawn from a stored report (``benchmarks/results/latest.md``).

The docs build draws it when it builds ``docs/how-it-works/benchmarks.md`` (nothing is
measured again); ``python benchmarks/plot.py [REPORT] [OUT.png]`` draws it by hand.

One bar per incumbent or floor row that has a toolkit row beside it: the bar runs from
toolkit's time (1) to the row's, on a log scale, so right of the line is slower than
toolkit and left of it faster. Bars are grouped under their case, named once as a
heading, and each bar is labelled by what it measures ("floor: raw obstore PUTs", not
"floor"), so no two bars of a case read alike.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPORT = Path(__file__).resolve().parent / "results" / "latest.md"
FONT_SIZE = 11  # tick labels and annotations: readable at the page's width
FLOOR, INCUMBENT = "#8a96a3", "#e07b39"

# Labels that the generic shortening leaves too long to sit beside a bar.
SHORTER = {
    "xarray open_mfdataset(parallel=True).chunk().to_zarr()": "xarray open_mfdataset + to_zarr",
    "floor: CPU of encode + raw obstore PUTs / 2 cores": "floor: CPU of encode + PUTs / 2 cores",
    "floor: CPU of raw obstore GETs + decode / 2 cores": "floor: CPU of GETs + decode / 2 cores",
    "floor: requests x latency / 64 in flight": "floor: requests × latency / 64 in flight",
}


@dataclass(frozen=True)
class Bar:
    """One row of the report: its case, a short label and its time over toolkit's."""

    case: str
    label: str
    ratio: float

    @property
    def floor(self) -> bool:
        """Whether the row is a physical floor (else an incumbent)."""
        return self.label.startswith("floor")


def short_label(method: str) -> str:
    """What a row measures, without the run's details.

    ``"floor: raw obstore PUTs, 64 in flight"`` -> ``"floor: raw obstore PUTs"``;
    ``"delta-rs append: 18/100 landed, ..."`` -> ``"delta-rs append"``;
    ``"xarray to_zarr (dask, defaults: s3fs)"`` -> ``"xarray to_zarr"``.
    """
    if method.startswith("floor:"):
        what = re.split(r",\s| \(", method.removeprefix("floor:").strip())[0]
        label = f"floor: {what}"
    else:
        label = re.split(r":\s|, peak| \(", method)[0].strip()
    return SHORTER.get(label, label)


def bars(report: str) -> list[Bar]:
    """The bars of a report's main table, in its order."""
    out = []
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not re.fullmatch(r"[\d.]+x", cells[3]):
            continue
        case, method, _seconds, ratio = cells[:4]
        if method.startswith(("toolkit", "floor part")):
            continue
        out.append(Bar(case, short_label(method), float(ratio.rstrip("x"))))
    return out


def rows(items: Iterable[Bar]) -> list[tuple[str, Bar | None]]:
    """The plot's rows, top to bottom: a case's heading (no bar), then its bars."""
    out: list[tuple[str, Bar | None]] = []
    case = None
    for bar in items:
        if bar.case != case:
            case = bar.case
            out.append((case, None))
        out.append((bar.label, bar))
    return out


def figure(report: str) -> Any:
    """The plot of a report's ratios (a matplotlib figure)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    lines = rows(bars(report))
    ratios = [b.ratio for _, b in lines if b]
    fig, ax = plt.subplots(figsize=(9, 0.29 * len(lines) + 1.6))
    for y, (text, bar) in enumerate(lines):
        if bar is None:  # a case's heading, from the figure's left edge across the plot
            ax.annotate(
                text,
                xy=(0, y),
                xycoords=("figure fraction", "data"),
                xytext=(6, 0),
                textcoords="offset points",
                ha="left",
                va="center",
                fontsize=FONT_SIZE,
                fontweight="bold",
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1},
            )
            continue
        ax.barh(y, bar.ratio - 1, left=1, height=0.7, color=FLOOR if bar.floor else INCUMBENT)
        # The value, right of the line: after a slower bar's end, beside a faster bar.
        ax.annotate(
            f"{bar.ratio:.2f}x",
            (max(bar.ratio, 1), y),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            ha="left",
            fontsize=FONT_SIZE - 1,
        )
    ax.axvline(1, color="#2f6690", lw=1.5)
    ax.set_xscale("log")
    lo, hi = min(ratios) / 1.5, max(ratios) * 2.2  # room for the values
    ax.set_xlim(lo, hi)
    ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100) if lo <= t <= hi]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set_ylim(len(lines) - 0.4, -0.6)
    ax.set_yticks(
        range(len(lines)), [text if bar else "" for text, bar in lines], fontsize=FONT_SIZE
    )
    ax.tick_params(axis="y", length=0)
    ax.tick_params(axis="x", labelsize=FONT_SIZE)
    ax.grid(axis="x", color="#dddddd", lw=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.set_xlabel("time / toolkit's time on the same case (log scale)", fontsize=FONT_SIZE)
    ax.legend(
        handles=[
            Patch(color=INCUMBENT, label="the incumbent (xarray, zarr, delta-rs)"),
            Patch(color=FLOOR, label="the physical floor"),
        ],
        loc="lower right",
        bbox_to_anchor=(1.0, 1.0),
        ncol=2,
        frameon=False,
        fontsize=FONT_SIZE,
        title="right of the blue line: slower than toolkit",
        title_fontsize=FONT_SIZE,
    )
    fig.tight_layout()
    return fig


def main(argv: list[str]) -> int:
    """Draw ``argv[0]`` (default: the latest report) into ``argv[1]`` (default: a window)."""
    report = Path(argv[0]) if argv else REPORT
    fig = figure(report.read_text())
    if len(argv) > 1:
        fig.savefig(argv[1], dpi=100)
    else:
        import matplotlib.pyplot as plt

        plt.show()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
