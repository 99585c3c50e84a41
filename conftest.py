"""Doctests of the package's docstrings run in a scratch directory of their own.

The examples write stores by relative path (``"example.zarr"``), as a user would.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _doctest_in_scratch(request: pytest.FixtureRequest, tmp_path, monkeypatch) -> None:
    if isinstance(request.node, pytest.DoctestItem):
        monkeypatch.chdir(tmp_path)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """``TOOLKIT_REQUIRE_EXTRAS=1`` (set in CI): a test skipped for a missing extra fails.

    ``pytest.importorskip`` skips when an optional package (obstore, icechunk,
    moto, s3fs, ...) is missing, which on a developer's machine is a fair
    answer; in CI, where everything is installed, such a skip hides a test that
    did not run, so it is turned into a failure naming the package.
    """
    import os

    outcome = yield
    report = outcome.get_result()
    if not report.skipped or os.environ.get("TOOLKIT_REQUIRE_EXTRAS") != "1":
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
    if "could not import" in reason or "needs an extra" in reason:
        report.outcome = "failed"
        report.longrepr = f"TOOLKIT_REQUIRE_EXTRAS=1 and a test was skipped: {reason}"
