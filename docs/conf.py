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

exclude_patterns = ["_build", "**.ipynb_checkpoints", "jupyter_execute"]
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
numpydoc_xref_param_type = False

intersphinx_mapping = {}  # no network at build time: references stay internal

# A reference to a toolkit name that has no page fails the build (nitpicky), except the
# libraries' names (no intersphinx) and the internals that docstrings name for readers
# of the code (toolkit.io.*, .state.*, .cluster.*, .stats.*: documented in the source).
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(xarray|numpy|dask|distributed|zarr|pandas|fsspec|obstore)\..*"),
    (r"py:.*", r"toolkit\.(io|state|cluster|stats|write|_util|grid)\..*"),
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
