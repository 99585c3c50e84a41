"""The documentation site: built with warnings as errors, complete, linked, and working
in a real browser (headless Chromium)."""

from __future__ import annotations

import functools
import html
import html.parser
import http.server
import inspect
import re
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
    "writes", "reads", "object-stores", "statistics", "many-jobs", "ingest", "dashboard",
    "xarray",
]  # fmt: skip
NOTEBOOKS = sorted(p.stem for p in (Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_every_page_is_built(docs_site: Path) -> None:
    pages = [
        "index", "getting-started", "user-guide/index", *(f"user-guide/{g}" for g in GUIDE),
        "notebooks", *(f"notebooks/{n}" for n in NOTEBOOKS), "reference/api",
        "reference/storage", "reference/cli", "how-it-works/architecture",
        "how-it-works/benchmarks", "search", "genindex",
    ]  # fmt: skip
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
        assert (generated / f"toolkit.jobs.{job}.html").is_file(), job
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
