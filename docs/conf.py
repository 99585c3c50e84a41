"""Sphinx configuration of toolkit's documentation (``./dev docs`` builds it)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import toolkit

DOCS = Path(__file__).parent
REPO = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))
# Pages executed at build time (the benchmark plot) find the repository here: myst-nb runs
# them in a temporary directory, and their kernels inherit this environment.
os.environ["TOOLKIT_REPO"] = str(REPO)

project = "toolkit"
author = "toolkit developers"
copyright = "2026, toolkit developers"
release = toolkit.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_nb",
    "sphinx_design",
    "sphinx_copybutton",
    "sphinxarg.ext",
    "toolkit_docs",
]

exclude_patterns = ["_build", "_inventories", "**.ipynb_checkpoints", "jupyter_execute"]
templates_path = ["_templates"]
html_static_path = ["_static"]
html_css_files = ["toolkit.css"]

# --- API pages: numpydoc renders the docstrings, autosummary makes a page per name.
autosummary_generate = True
autosummary_imported_members = True
autodoc_typehints = "none"  # numpydoc's Parameters sections say the types
numpydoc_show_class_members = False  # the class template documents members in full
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = False

# --- Links to the libraries' documentation. The build has no network, so each inventory
# is a file kept in the repository (docs/_inventories/make.py writes them from the
# installed packages and says why) instead of the site's own objects.inv.
intersphinx_mapping = {
    name: (url, f"_inventories/{name}.inv")
    for name, url in {
        "python": "https://docs.python.org/3/",
        "numpy": "https://numpy.org/doc/stable/",
        "xarray": "https://docs.xarray.dev/en/stable/",
        "dask": "https://docs.dask.org/en/stable/",
        "distributed": "https://distributed.dask.org/en/stable/",
        "zarr": "https://zarr.readthedocs.io/en/stable/",
        "fsspec": "https://filesystem-spec.readthedocs.io/en/latest/",
    }.items()
}
# Parameter types become links: "xarray.Dataset or xarray.DataArray" links both names.
# The words below are prose inside a type ("dict of dim to slice", "zarr Store"); the
# aliases give the short names the docstrings use their full names.
numpydoc_xref_param_type = True
numpydoc_xref_ignore = {
    "optional",
    "or",
    "of",
    "to",
    "default",
    "dim",
    "dims",
    "path",
    "paths",
    "zarr",
    "async",
    "etc",
    "the",
    "a",
    "an",
    "same",
    "as",
    "keyword",
    "arguments",
    "any",
}
numpydoc_xref_aliases = {
    "Dataset": "xarray.Dataset",
    "DataArray": "xarray.DataArray",
    "hashable": ":term:`hashable`",
    "mapping": ":term:`mapping`",
    "iterable": ":term:`iterable`",
    "sequence": ":term:`sequence`",
    "path-like": ":term:`path-like object`",
    "Store": "zarr.abc.store.Store",  # "zarr Store"
    "Repository": "icechunk.Repository",
    # toolkit's names as the docstrings of its inner modules write them
    "Throttle": "toolkit.Throttle",
    "IOMetrics": "toolkit.IOMetrics",
    "UnsafePlanError": "toolkit.errors.UnsafePlanError",
    "ResumeLog": "toolkit.coordination.records.ResumeLog",
    "CreationClaim": "toolkit.coordination.claim.CreationClaim",
}

# A reference to a toolkit name that has no page fails the build (nitpicky), except the
# internals that docstrings name for readers of the code (toolkit.io.*, .coordination.*,
# .cluster.*, .stats.*: documented in the source). The libraries' names link through the
# inventories above; one an inventory lacks stays plain text rather than failing the build
# (the inventories are made here, not the sites' own: see docs/_inventories/make.py).
nitpicky = True
# Parameter types are linked as py:obj (numpydoc): a word in one that links nowhere
# ("list of Path") stays text too. Roles written in docstrings (:class:, :func:...) are
# checked.
nitpick_ignore_regex = [
    (r"py:obj", r".*"),
    (r"py:.*", r"(xarray|numpy|dask|distributed|zarr|pandas|fsspec|obstore|icechunk)\..*"),
    (r"py:.*", r"toolkit\.(io|coordination|cluster|stats|write|_util|grid)\..*"),
]

# --- Notebooks and MyST pages: executed at build time; a failing cell fails the build.
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "force"
nb_execution_in_temp = True  # the notebooks write their stores into a scratch directory
nb_execution_timeout = 300
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
nb_render_markdown_format = "myst"

# --- Pages.
html_theme = "pydata_sphinx_theme"
html_title = f"toolkit {release}"
html_logo = "_static/logo.svg"
html_favicon = "_static/logo.svg"
html_show_sourcelink = False
html_theme_options = {
    "navigation_with_keys": False,
    "logo": {"text": "toolkit"},
    "show_toc_level": 2,
    "header_links_before_dropdown": 6,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version", "theme-version"],
    "secondary_sidebar_items": ["page-toc"],
}
html_context = {"default_mode": "auto"}
html_sidebars = {"index": [], "getting-started": [], "notebooks": []}
