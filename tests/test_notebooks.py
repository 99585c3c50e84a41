"""Every notebook runs top to bottom and is stored without outputs.

The notebooks run once per session, in the documentation build (``docs/build.py``, which
fails on a cell that raises): these tests judge the executed copies it keeps.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, path.name


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the first test of a session may build the docs
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, docs_site):
    executed = docs_site.parent / "jupyter_execute" / "notebooks" / path.name
    nb = nbformat.read(executed, as_version=4)
    stored = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.source for c in code] == [c.source for c in stored.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)  # every cell ran, in order
    assert [c.execution_count for c in code] == sorted(c.execution_count for c in code)
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert (docs_site / "notebooks" / f"{path.stem}.html").is_file()
