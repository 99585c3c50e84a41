"""toolkit's own Sphinx pieces: the layer diagram, the errors tree and the notebooks.

- ``.. toolkit-layers::`` draws the layers from the import-linter contract in
  ``pyproject.toml``, so the diagram is the rule ``./dev lint`` checks.
- ``.. toolkit-steps:: title`` draws a path through the code, a row per line.
- ``.. toolkit-errors::`` lists :mod:`toolkit.errors` as a tree, with the builtins each
  error also is.
- The notebooks live in ``notebooks/`` at the top of the repository; they are mirrored
  into ``docs/notebooks/`` (not tracked) before Sphinx reads its sources.
- A signature's ``**unknown`` is left out: :func:`toolkit.to_zarr` takes it only to refuse
  every other keyword with :class:`~toolkit.errors.UnknownOptionError` (naming the
  closest parameter), so the parameters it documents are all it accepts.
"""

from __future__ import annotations

import filecmp
import html
import inspect
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.util.docutils import SphinxDirective

DOCS = Path(__file__).parent.parent
REPO = DOCS.parent


def _mirror_notebooks(app: Sphinx, config: Config) -> None:
    """Copy ``notebooks/*.ipynb`` into ``docs/notebooks/`` (only what changed)."""
    src, dst = REPO / "notebooks", DOCS / "notebooks"
    dst.mkdir(exist_ok=True)
    wanted = {p.name for p in src.glob("*.ipynb")}
    for p in dst.glob("*.ipynb"):
        if p.name not in wanted:
            p.unlink()
    for name in wanted:
        if not (dst / name).exists() or not filecmp.cmp(src / name, dst / name, shallow=False):
            shutil.copyfile(src / name, dst / name)  # an unchanged copy keeps its mtime


def _drop_refused_keywords(
    app: Sphinx,
    what: str,
    name: str,
    obj: object,
    options: object,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str | None, str | None] | None:
    """Autodoc's signature without a trailing ``**unknown`` (keywords refused, not taken)."""
    if signature is None or "**unknown" not in signature:
        return None
    return re.sub(r",\s*\*\*unknown(:[^,)]*)?\)$", ")", signature), return_annotation


def _layers() -> list[list[str]]:
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    # The package's layers (the other layers contracts are inside its subpackages).
    (layers,) = [c["layers"] for c in contracts["contracts"] if c.get("id") == "layers"]
    return [[m.strip() for m in row.split("|")] for row in layers]


def _boxes(rows: list[list[str]], title: str) -> nodes.raw:
    """Rows of boxes, top to bottom, an arrow from each row to the next, as inline SVG.

    The first row is highlighted (the entry point); ``_static/toolkit.css`` styles them.
    """
    width, height, gap, left = 640, 30, 14, 10
    total = len(rows) * (height + gap) - gap + 2
    out = [
        f'<svg class="toolkit-layers" viewBox="0 0 {width + 2 * left} {total}" '
        'role="img" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{html.escape(title)}</title>",
        '<defs><marker id="toolkit-arrow" viewBox="0 0 10 10" refX="9" refY="5" '
        'markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z"/>'
        "</marker></defs>",
    ]
    for i, row in enumerate(rows):
        y = 1 + i * (height + gap)
        box = (width - (len(row) - 1) * 10) / len(row)
        for j, label in enumerate(row):
            x = left + j * (box + 10)
            cls = ' class="toolkit-front"' if i == 0 else ""
            out.append(
                f'<rect{cls} x="{x:.1f}" y="{y}" width="{box:.1f}" height="{height}" rx="5"/>'
                f'<text x="{x + box / 2:.1f}" y="{y + height / 2 + 5}" '
                f'text-anchor="middle" font-size="14">{html.escape(label)}</text>'
            )
        if i + 1 < len(rows):
            mid = left + width / 2
            out.append(
                f'<path d="M{mid},{y + height} L{mid},{y + height + gap - 1}" '
                'marker-end="url(#toolkit-arrow)"/>'
            )
    out.append("</svg>")
    return nodes.raw("", "\n".join(out), format="html")


class LayersDiagram(SphinxDirective):
    """The package's layers: each row imports only the rows below it."""

    def run(self) -> list[nodes.Node]:
        """The diagram, drawn from the import-linter contract."""
        rows = [[m.removeprefix("toolkit.") for m in row] for row in _layers()]
        top = ["toolkit  (__init__.py: the public API, __all__)"]
        return [_boxes([top, *rows], "toolkit's layers: each imports only the layers below it")]


class StepsDiagram(SphinxDirective):
    """A path through the code: one row per content line, boxes split by ``|``."""

    has_content = True
    required_arguments = 1
    final_argument_whitespace = True

    def run(self) -> list[nodes.Node]:
        """The diagram of the directive's lines, titled by its argument."""
        rows = [[box.strip() for box in line.split("|")] for line in self.content if line.strip()]
        return [_boxes(rows, self.arguments[0])]


class ErrorsTree(SphinxDirective):
    """:mod:`toolkit.errors` as a nested list, each error with its builtin bases.

    Built as nodes (cross-references to each error's page), not as text to parse, so
    it works alike in reST and MyST pages.
    """

    def run(self) -> list[nodes.Node]:
        """The tree, as a nested list of links to each error's page."""
        from toolkit import errors

        classes = [getattr(errors, n) for n in errors.__all__]
        classes = [c for c in classes if inspect.isclass(c)]
        ours = {*classes, errors.ToolkitError}

        def item(c: type) -> nodes.list_item:
            ref = addnodes.pending_xref(
                "",
                refdomain="py",
                reftype="class",
                reftarget=f"toolkit.errors.{c.__name__}",
                refexplicit=False,
                refwarn=True,
                refdoc=self.env.docname,
            )
            ref += nodes.literal(c.__name__, c.__name__, classes=["xref", "py", "py-class"])
            para = nodes.paragraph("", "", ref)
            also = [b.__name__ for b in c.__bases__ if b not in ours]
            if also:
                para += nodes.Text(f" (also {', '.join(also)})")
            li = nodes.list_item("", para)
            children = [
                k
                for k in sorted(classes, key=lambda k: k.__name__)
                if k is not errors.ToolkitError
                and next(b for b in k.__bases__ if b in ours) is c  # under its first base
            ]
            if children:
                li += nodes.bullet_list("", *(item(k) for k in children))
            return li

        tree = nodes.bullet_list("", item(errors.ToolkitError), classes=["toolkit-errors"])
        return [tree]


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the directives and the notebooks' mirror."""
    app.connect("config-inited", _mirror_notebooks)
    app.connect("autodoc-process-signature", _drop_refused_keywords)
    app.add_directive("toolkit-layers", LayersDiagram)
    app.add_directive("toolkit-steps", StepsDiagram)
    app.add_directive("toolkit-errors", ErrorsTree)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
