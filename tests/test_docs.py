"""The documentation site: built with warnings as errors, complete, linked, and working
in a real browser (headless Chromium)."""

from __future__ import annotations

import functools
import html
import html.parser
import http.server
import inspect
import itertools
import re
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import headless_chromium

import toolkit
from toolkit import errors
from toolkit.cli import _parser

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # the first one may build

GUIDE = [
    "writes",
    "reads",
    "object-stores",
    "statistics",
    "many-jobs",
    "ingest",
    "dashboard",
    "xarray",
]
NOTEBOOKS = sorted(p.stem for p in (Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_every_page_is_built(docs_site: Path) -> None:
    pages = [
        "index",
        "getting-started",
        "user-guide/index",
        *(f"user-guide/{g}" for g in GUIDE),
        "notebooks",
        *(f"notebooks/{n}" for n in NOTEBOOKS),
        "reference/api",
        "reference/storage",
        "reference/cli",
        "how-it-works/architecture",
        "how-it-works/benchmarks",
        "search",
        "genindex",
    ]
    missing = [p for p in pages if not (docs_site / f"{p}.html").is_file()]
    assert not missing


def test_the_api_reference_documents_every_public_name(docs_site: Path) -> None:
    generated = docs_site / "reference" / "generated"
    api = (docs_site / "reference" / "api.html").read_text()
    for name in set(toolkit.__all__) - {"__version__", "errors"}:
        page = generated / f"toolkit.{name}.html"
        assert page.is_file() or f'id="toolkit.{name}"' in api, name
        assert f"toolkit.{name}" in api, name  # and the reference page lists it
    tree = api[api.index('class="toolkit-errors') :]
    tree = tree[: tree.index("<table")]  # the tree, before the errors' summary table
    for name in errors.__all__:
        if inspect.isclass(getattr(errors, name)):
            assert (generated / f"toolkit.errors.{name}.html").is_file(), name
            assert f'href="generated/toolkit.errors.{name}.html' in tree, name  # linked
    for job in ("copy", "inspect", "demo"):  # the command line's jobs, as functions
        assert (generated / f"toolkit.commands.{job}.html").is_file(), job
    accessor = (generated / "toolkit.accessor.ToolkitAccessor.html").read_text()
    for method in ("to_zarr", "plan_write", "stats"):
        assert f"ToolkitAccessor.{method}" in accessor
    # numpydoc rendered the sections, and the examples are there.
    to_zarr = (generated / "toolkit.to_zarr.html").read_text()
    assert "Parameters" in to_zarr and "Examples" in to_zarr and "append_dim" in to_zarr


def test_the_cli_reference_has_every_command_and_option(docs_site: Path) -> None:
    text = html.unescape(re.sub(r"<[^>]+>", "", (docs_site / "reference" / "cli.html").read_text()))
    sub = next(a for a in _parser()._actions if a.choices and isinstance(a.choices, dict))
    for command, parser in sub.choices.items():
        assert f"toolkit {command}" in text, command
        for action in parser._actions:
            for option in set(action.option_strings) - {"-h", "--help"}:
                assert option in text, (command, option)


def test_the_how_it_works_pages_have_their_figures(docs_site: Path) -> None:
    architecture = (docs_site / "how-it-works" / "architecture.html").read_text()
    assert '<svg class="toolkit-layers"' in architecture
    assert ">write | read<" not in architecture and ">write<" in architecture
    benchmarks = (docs_site / "how-it-works" / "benchmarks.html").read_text()
    assert "<img" in benchmarks and "vs toolkit" in benchmarks  # the plot and the table


REPO = Path(__file__).resolve().parent.parent
PAGES_SKIPPED = {"_modules", "_static", "_sources", "_images"}


def _pages(docs_site: Path) -> list[Path]:
    return [p for p in sorted(docs_site.rglob("*.html")) if not PAGES_SKIPPED & set(p.parts)]


def _text(page: str) -> str:
    """A page's visible prose: no code blocks, scripts or styles, no tags, unescaped."""
    page = re.sub(r"(?s)<(pre|script|style)\b.*?</\1>", " ", page)
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def test_no_myst_or_rst_role_shows_as_text(docs_site: Path) -> None:
    # A mistyped role ("{func}{func}`x`", or reST's ":func:`x`" on a MyST page) is not an
    # error to Sphinx: it shows its markup as text beside the link. Nor is a paragraph after
    # a docstring's last "Parameters" entry, which numpydoc reads as one more parameter.
    role = r"(?:\{|:)(?:func|class|meth|mod|attr|doc|ref|obj|exc|data|term)(?:\}|:`)"
    shown = {}
    for page in _pages(docs_site):
        found = re.findall(role, _text(page.read_text()))
        if found:
            shown[page.relative_to(docs_site).as_posix()] = found
    assert shown == {}
    for guide in ("writes", "reads"):  # where the issue saw "{func}" before 9 links
        page = (docs_site / "user-guide" / f"{guide}.html").read_text()
        assert "{func}" not in _text(page) and 'href="../reference/generated/toolkit.' in page


def _benchmarks_plot() -> object:
    import importlib.util

    import matplotlib

    matplotlib.use("Agg")
    spec = importlib.util.spec_from_file_location("bench_plot", REPO / "benchmarks" / "plot.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_plot_has_distinct_readable_labels(docs_site: Path) -> None:
    plot = _benchmarks_plot()
    report = (REPO / "benchmarks" / "results" / "latest.md").read_text()
    bars = plot.bars(report)  # type: ignore[attr-defined]
    assert len(bars) > 20
    by_case: dict[str, list[str]] = {}
    for bar in bars:
        by_case.setdefault(bar.case, []).append(bar.label)
    for case, labels in by_case.items():
        assert len(set(labels)) == len(labels), (case, labels)  # no "floor", "floor", "floor"
    assert {"floor: raw obstore PUTs", "floor: raw s3fs PUTs"} <= {b.label for b in bars}
    fig = plot.figure(report)  # type: ignore[attr-defined]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    ticks = [t for t in ax.get_yticklabels() if t.get_text()]
    assert min(t.get_fontsize() for t in ticks) >= 10
    assert min(t.get_fontsize() for t in ax.get_xticklabels()) >= 10
    # Every label and heading is inside the figure, and no two labels overlap.
    width, _ = fig.canvas.get_width_height()
    texts = [*ticks, *(t for t in ax.texts if t.get_fontweight() == "bold")]
    assert len(texts) == len(bars) + len(by_case)  # each case is named once, as a heading
    boxes = sorted((t.get_window_extent(renderer) for t in texts), key=lambda b: b.y0)
    assert all(b.x0 >= 0 and b.x1 <= width for b in boxes)
    assert all(lower.y1 <= upper.y0 + 0.5 for lower, upper in itertools.pairwise(boxes))
    # The page draws it from the stored report (benchmarks/plot.py), not from a rerun.
    page = (docs_site / "how-it-works" / "benchmarks.html").read_text()
    code = html.unescape(re.sub(r"<[^>]+>", "", page))  # its (hidden) cell included
    assert "plot.figure(plot.REPORT.read_text())" in code
    assert "<img" in page


def test_wide_tables_and_code_scroll_sideways(docs_site: Path) -> None:
    css = (docs_site / "_static" / "toolkit.css").read_text()
    rules = {
        m.group(1).strip(): m.group(2)
        for m in re.finditer(r"([^{}]+)\{([^}]*)\}", re.sub(r"(?s)/\*.*?\*/", "", css))
    }

    def rule_for(selector: str) -> str:
        return next(body for sel, body in rules.items() if selector in sel.split(",\n"))

    for selector in (
        ".bd-article .pst-scrollable-table-container",
        ".bd-article pre",
        ".bd-article div.cell_output",
        ".bd-article div.cell_output table",
    ):
        assert "overflow-x: auto" in rule_for(selector), selector
    assert "overflow-wrap: anywhere" in rule_for(".bd-article h1")
    for page in ("how-it-works/benchmarks.html", "notebooks/quickstart.html"):
        assert 'href="../_static/toolkit.css' in (docs_site / page).read_text(), page


def test_signatures_show_only_the_parameters_taken(docs_site: Path) -> None:
    # to_zarr's **unknown exists to refuse other keywords (UnknownOptionError), so the
    # reference does not show it as a parameter.
    for page in sorted((docs_site / "reference" / "generated").glob("*.html")):
        signatures = re.findall(
            r'(?s)<dt class="sig sig-object[^"]*"[^>]*>(.*?)</dt>', page.read_text()
        )
        for sig in signatures:
            assert "unknown" not in _text(sig), (page.name, _text(sig))
    to_zarr = _text((docs_site / "reference" / "generated" / "toolkit.to_zarr.html").read_text())
    assert "progress=True)" in to_zarr and "UnknownOptionError" in to_zarr


def test_library_names_link_to_their_documentation(docs_site: Path) -> None:
    xarray = "https://docs.xarray.dev/en/stable/generated/"
    api = (docs_site / "reference" / "api.html").read_text()
    assert f'href="{xarray}xarray.Dataset.html#xarray.Dataset"' in api
    to_zarr = (docs_site / "reference" / "generated" / "toolkit.to_zarr.html").read_text()
    assert f'href="{xarray}xarray.Dataset.to_zarr.html#xarray.Dataset.to_zarr"' in to_zarr
    assert 'href="https://docs.dask.org/en/stable/delayed-api.html#dask.delayed.Delayed"' in (
        to_zarr
    )  # the Returns type
    assert 'href="https://docs.python.org/3/library/os.html#os.PathLike"' in to_zarr
    assert (
        'href="https://zarr.readthedocs.io/en/stable/api/zarr/abc/store/#zarr.abc.store.Store"'
        in (to_zarr)
    )  # "zarr Store"
    sites = {
        "https://docs.xarray.dev/",
        "https://docs.dask.org/",
        "https://zarr.readthedocs.io/",
        "https://numpy.org/doc/",
        "https://docs.python.org/3/",
    }
    linked = {
        site
        for page in _pages(docs_site)
        for href in _parse(page).hrefs
        for site in sites
        if href.startswith(site)
    }
    assert linked == sites
    # The inventories are files in the repository (the build has no network).
    from sphinx.util.inventory import InventoryFile

    inventories = REPO / "docs" / "_inventories"
    wanted = {
        "xarray": "xarray.Dataset.to_zarr",
        "dask": "dask.array.Array.rechunk",
        "zarr": "zarr.storage.ObjectStore",
        "numpy": "numpy.ndarray",
        "python": "os.PathLike",
    }
    for name, entry in wanted.items():
        with (inventories / f"{name}.inv").open("rb") as f:
            inv = InventoryFile.load(f, "https://example.invalid/", lambda base, uri: base + uri)
        assert any(entry in objects for objects in inv.values()), name


def test_getting_started_shows_both_statistics(docs_site: Path) -> None:
    page = (docs_site / "getting-started.html").read_text()
    cells = re.split(r'<div class="cell docutils container">', page)[1:]
    stats = [c for c in cells if "toolkit.stats(" in html.unescape(re.sub(r"<[^>]+>", "", c))]
    assert len(stats) == 2  # the summary and the map, each in a cell of its own
    for cell in stats:
        assert 'class="cell_output' in cell and "xarray.Dataset" in _text(cell)


def test_the_quickstart_streams_many_blocks(docs_site: Path) -> None:
    page = (docs_site / "notebooks" / "quickstart.html").read_text()
    text = html.unescape(re.sub(r"<[^>]+>", "", page))  # the outputs are <pre> blocks
    streamed = re.search(r"(\d+) blocks streamed, at most (\d+) in flight", text)
    assert streamed, "the map_chunks cell's output"
    assert int(streamed.group(1)) > int(streamed.group(2)) > 1  # more blocks than in flight


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"] or "")
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"] or "")
        if tag in ("img", "script") and a.get("src"):
            self.hrefs.append(a["src"] or "")


@functools.cache
def _parse(path: Path) -> _Links:
    p = _Links()
    p.feed(path.read_text())
    return p


def test_no_internal_link_is_broken(docs_site: Path) -> None:
    broken = []
    for page in sorted(docs_site.rglob("*.html")):
        if {"_modules", "_static"} & set(page.parts):  # source listings; the theme's own
            continue
        for href in _parse(page).hrefs:
            url = urllib.parse.urlsplit(href)
            if url.scheme or url.netloc or href.startswith(("mailto:", "javascript:")):
                continue
            target = (page.parent / urllib.parse.unquote(url.path)).resolve() if url.path else page
            if not target.exists():
                broken.append(f"{page.relative_to(docs_site)}: {href}")
            elif (
                target.suffix == ".html"
                and "_modules" not in target.parts  # viewcode's source pages anchor only some
                and url.fragment not in {"", *_parse(target).ids}
            ):
                broken.append(f"{page.relative_to(docs_site)}: {href} (no such anchor)")
    assert not broken


@pytest.fixture
def served(docs_site: Path) -> Iterator[str]:
    """The site over HTTP on 127.0.0.1, as a browser would fetch it from a host."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(docs_site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _console_errors(driver: object) -> list[dict[str, object]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]  # type: ignore[attr-defined]


def test_the_site_works_in_chromium(served: str) -> None:
    from selenium.webdriver.common.by import By

    with headless_chromium() as driver:
        driver.get(f"{served}/index.html")
        assert driver.title.startswith("toolkit")
        assert driver.find_element(By.CSS_SELECTOR, "nav.bd-header, header").is_displayed()
        cards = driver.find_elements(By.CSS_SELECTOR, ".sd-card")
        assert len(cards) == 6
        assert not _console_errors(driver)

        driver.get(f"{served}/reference/generated/toolkit.to_zarr.html")
        signature = driver.find_element(By.CSS_SELECTOR, "dt.sig")
        assert "to_zarr" in signature.text
        assert driver.find_element(By.ID, "toolkit.to_zarr").is_displayed()
        assert not _console_errors(driver)

        driver.get(f"{served}/search.html?q=to_zarr")
        deadline = time.monotonic() + 30
        found: list[str] = []

        def hit(hrefs: list[str]) -> bool:
            return any(h.endswith("toolkit.to_zarr.html") or "toolkit.to_zarr" in h for h in hrefs)

        # Sphinx's search adds its results one by one: wait for the one sought, not the first.
        while time.monotonic() < deadline and not hit(found):
            links = driver.find_elements(By.CSS_SELECTOR, "#search-results li a")
            found = [a.get_attribute("href") or "" for a in links]
            time.sleep(0.2)
        assert hit(found), found
        assert not _console_errors(driver)


def test_wide_content_scrolls_in_chromium(served: str) -> None:
    # At a laptop's width, a long name wraps and a wide table or code block scrolls inside
    # the article: nothing pushes the article itself sideways (cutting off its right edge).
    pages = [
        "reference/generated/toolkit.errors.UnsupportedVariableError.html",
        "how-it-works/benchmarks.html",
        "notebooks/quickstart.html",
        "user-guide/writes.html",
    ]
    with headless_chromium() as driver:
        for width in (1400, 900):
            driver.set_window_size(width, 1000)
            for page in pages:
                driver.get(f"{served}/{page}")
                found = driver.execute_script(
                    """
                    const article = document.querySelector('.bd-article-container');
                    const scrolls = (el) =>
                      ['auto', 'scroll'].includes(getComputedStyle(el).overflowX);
                    return {
                      article: article.scrollWidth - article.clientWidth,
                      h1: [...document.querySelectorAll('.bd-article h1')]
                        .map((h) => h.scrollWidth - h.clientWidth),
                      wide: [...document.querySelectorAll(
                          '.bd-article pre, .bd-article .pst-scrollable-table-container')]
                        .filter((el) => el.scrollWidth > el.clientWidth + 1 && !scrolls(el))
                        .map((el) => el.outerHTML.slice(0, 80)),
                    };
                    """
                )
                assert found["article"] <= 1, (width, page, found)
                assert max(found["h1"]) <= 1, (width, page, found)
                assert not found["wide"], (width, page, found)
