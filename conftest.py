"""Doctests of the package's docstrings run in a scratch directory of their own.

The examples write stores by relative path (``"example.zarr"``), as a user would.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _doctest_in_scratch(request: pytest.FixtureRequest, tmp_path, monkeypatch) -> None:
    if isinstance(request.node, pytest.DoctestItem):
        monkeypatch.chdir(tmp_path)
