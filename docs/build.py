"""Build the documentation site into ``docs/_build/html`` (``./dev docs`` runs this).

Every build is a fresh one (``sphinx-build -E``) with warnings as errors, and it executes
the notebooks and the executable pages, so a broken link, a bad docstring or a failing
cell fails it. After a build that passed, a digest of everything the site is made of
(the package, the docs, the notebooks, the benchmark results and their plot,
``pyproject.toml``) is kept next to it; ``./dev docs`` and the test suite skip the build
while that digest still holds, so CI builds once. ``--force`` builds anyway.

Usage: ``python docs/build.py [--force] [extra sphinx-build arguments]``
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
HTML = DOCS / "_build" / "html"
STAMP = DOCS / "_build" / "inputs.sha256"
# What the site is made of. Generated pages and mirrored notebooks are outputs, not inputs.
INPUTS = [
    "toolkit",
    "docs",
    "notebooks",
    "benchmarks/results/latest.md",
    "benchmarks/plot.py",
    "pyproject.toml",
]
GENERATED = ("docs/_build", "docs/notebooks", "docs/reference/generated")


def inputs_digest() -> str:
    """A digest of every file the site is built from (paths and contents)."""
    h = hashlib.sha256()
    for top in INPUTS:
        root = REPO / top
        for p in sorted([root] if root.is_file() else root.rglob("*")):
            rel = p.relative_to(REPO).as_posix()
            if not p.is_file() or rel.startswith(GENERATED) or "__pycache__" in p.parts:
                continue
            h.update(rel.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def up_to_date() -> bool:
    """Whether the built site is from the sources as they are now."""
    return (
        (HTML / "index.html").exists()
        and STAMP.exists()
        and STAMP.read_text().strip() == inputs_digest()
    )


def main(argv: list[str]) -> int:
    """Build unless up to date; the exit status of ``sphinx-build``."""
    force = "--force" in argv
    extra = [a for a in argv if a != "--force"]
    if not force and not extra and up_to_date():
        print(f"docs: up to date ({HTML / 'index.html'})")
        return 0
    STAMP.unlink(missing_ok=True)
    digest = inputs_digest()
    cmd = [sys.executable, "-m", "sphinx", "-E", "-W", "--keep-going", "-q", "-b", "html"]
    status = subprocess.call([*cmd, *extra, str(DOCS), str(HTML)], cwd=REPO)
    if status == 0 and not extra:
        STAMP.write_text(digest + "\n")
        print(f"docs: built {HTML / 'index.html'}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
