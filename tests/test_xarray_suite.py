"""xarray's own Zarr test suite, writes (and the directory suite's reads) routed through toolkit.

The classes come from the installed xarray (``xarray.tests.test_backends`` and
``test_backends_datatree``), so the suite always matches the xarray in use. The
routed classes replace ``Dataset.to_zarr``, ``DataArray.to_zarr`` and
``DataTree.to_zarr`` themselves by ``toolkit.to_zarr`` (every write the tests make,
not only their ``self.save``), and the directory suite also opens through
``toolkit.open_zarr``; every assertion is xarray's. Tests that fail on xarray itself in this
environment are skipped with the reason (``_XARRAY_FAILS``); tests where toolkit
deliberately differs from xarray are xfailed with the reason (``DEVIATIONS``,
and the "Differences from xarray" page, docs/user-guide/xarray.md). Nothing else is skipped.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest
import xarray as xr

import toolkit
from toolkit.errors import AppendError, IncompleteStoreError

xt = pytest.importorskip("xarray.tests.test_backends")

# xarray's fixtures, looked up by name from the classes below.
from xarray.tests.conftest import time_unit, use_dask  # noqa: E402, F401
from xarray.tests.test_backends import default_zarr_format, tmp_store  # noqa: E402, F401

pytestmark = pytest.mark.filterwarnings("ignore")  # xarray's tests check their own warnings


# TOOLKIT_XARRAY_BASELINE=1 routes nothing: the same classes then measure xarray alone.
BASELINE = bool(os.environ.get("TOOLKIT_XARRAY_BASELINE"))


_STRADDLE = (
    "xarray refuses dask chunks that straddle Zarr {what} (or are not uniform); toolkit "
    "regroups them into tasks that each own whole {what} and writes them safely"
)
_PARTIAL = (
    "xarray refuses a {what} that covers Zarr chunks only partly; toolkit merges each "
    "partial chunk in the one task that owns it (under a lock shared with concurrent jobs)"
)
DEVIATIONS = {
    "test_chunk_encoding_with_dask": _STRADDLE.format(what="chunks"),
    "test_shard_encoding_with_dask": _STRADDLE.format(what="shards"),
    "test_zarr_append_chunk_partial": _STRADDLE.format(what="chunks") + ", appends included",
    "test_zarr_safe_chunk_append_dim": _PARTIAL.format(what="append"),
    "test_zarr_region_chunk_partial": _PARTIAL.format(what="region write"),
    "test_zarr_region_chunk_partial_offset": _PARTIAL.format(what="region write"),
    "test_zarr_safe_chunk_region": _PARTIAL.format(what="region write"),
}
# xarray's tests that toolkit fails on purpose, and why (docs/user-guide/xarray.md).
READ_DEVIATIONS = {
    name: (
        "toolkit.open_zarr refuses a store whose write has not finished (here: written "
        "with compute=False and not computed yet), where xarray returns fill values as "
        "data; incomplete='ignore' reads it anyway"
    )
    for name in (
        "test_to_zarr_compute_false_roundtrip",
        "test_to_zarr_append_compute_false_roundtrip",
        "test_zarr_fill_value_setting",
        # Its first write is the method's, with compute=False and never computed.
        "test_write_preexisting_override_metadata",
    )
}

# Reached only with the methods routed (the suite calls ``ds_to_append.to_zarr`` itself).
APPEND_DEVIATIONS = {
    "test_append_with_append_dim_no_overwrite": (
        "xarray appends rows whose other coordinates differ from the stored ones: mode='a' "
        "relabels every stored row with the new 'lon', mode='a-' keeps the old labels for "
        "the new rows; toolkit refuses both (AppendError naming the coordinate), since either "
        "way rows end up under labels they were not computed for"
    ),
}


@pytest.fixture(autouse=True)
def _deviations(request: pytest.FixtureRequest) -> None:
    if BASELINE:
        return
    name = getattr(request.node, "originalname", "")
    if name in DEVIATIONS:
        # Only the missing refusal may fail the test: strict, and only pytest's
        # "DID NOT RAISE".
        request.applymarker(
            pytest.mark.xfail(reason=DEVIATIONS[name], strict=True, raises=pytest.fail.Exception)
        )
    elif name in APPEND_DEVIATIONS and isinstance(request.instance, _RoutedMethods):
        request.applymarker(
            pytest.mark.xfail(reason=APPEND_DEVIATIONS[name], strict=True, raises=AppendError)
        )
    elif name in READ_DEVIATIONS and isinstance(request.instance, _RoutedReads):
        request.applymarker(
            pytest.mark.xfail(
                reason=READ_DEVIATIONS[name], strict=True, raises=IncompleteStoreError
            )
        )


def _save(dataset: Any, store: Any, **kwargs: Any) -> Any:
    if BASELINE:
        return dataset.to_zarr(store, **kwargs)
    return toolkit.to_zarr(dataset, store, progress=False, **kwargs)


class _RoutedWrites:
    """Every ``self.save`` of xarray's suite goes through ``toolkit.to_zarr``."""

    version_kwargs: dict[str, Any]

    def save(self, dataset: Any, store_target: Any, **kwargs: Any) -> Any:
        return _save(dataset, store_target, **kwargs, **self.version_kwargs)


class _RoutedReads(_RoutedWrites):
    """And every ``self.open`` through ``toolkit.open_zarr``."""

    @contextlib.contextmanager
    def open(self, path: Any, **kwargs: Any) -> Iterator[xr.Dataset]:
        if BASELINE:
            with super().open(path, **kwargs) as ds:  # type: ignore[misc]
                yield ds
            return
        kwargs = {**kwargs, **self.version_kwargs}
        kwargs.update(kwargs.pop("backend_kwargs", None) or {})
        kwargs.pop("mode", None)
        # xarray's open_dataset(engine="zarr") default: chunks=None.
        ds = toolkit.open_zarr(path, chunks=kwargs.pop("chunks", None), **kwargs)
        try:
            yield ds
        finally:
            ds.close()


class TestToolkitDataArrayToZarr(xt.TestDataArrayToZarr):
    """xarray's DataArray.to_zarr tests, with DataArray.to_zarr routed through toolkit."""

    @pytest.fixture(autouse=True)
    def _route(self, monkeypatch: pytest.MonkeyPatch) -> None:
        if BASELINE:
            return

        def to_zarr(da: xr.DataArray, store: Any = None, *args: Any, **kwargs: Any) -> Any:
            return toolkit.to_zarr(da, store, *args, progress=False, **kwargs)

        monkeypatch.setattr(xr.DataArray, "to_zarr", to_zarr)


class _RoutedMethods:
    """``xarray.Dataset.to_zarr`` and ``DataArray.to_zarr`` themselves replaced by toolkit's.

    What a user does who routes every write of a code base through toolkit: each
    ``to_zarr`` call of xarray's suite, ``self.save`` and the tests' own, is toolkit's
    (a superset of routing ``self.save`` alone, which these classes replace).
    """

    @pytest.fixture(autouse=True)
    def _route_methods(self, monkeypatch: pytest.MonkeyPatch) -> None:
        if BASELINE:
            return

        def to_zarr(obj: Any, store: Any = None, *args: Any, **kwargs: Any) -> Any:
            return toolkit.to_zarr(obj, store, *args, progress=False, **kwargs)

        monkeypatch.setattr(xr.Dataset, "to_zarr", to_zarr)
        monkeypatch.setattr(xr.DataArray, "to_zarr", to_zarr)


class TestToolkitZarrDirectoryStoreMethods(_RoutedMethods, _RoutedReads, xt.TestZarrDirectoryStore):
    """xarray's directory-store suite with the ``to_zarr`` methods routed, read by toolkit.

    One class for both (the suite once, not twice: it is most of the suite's time).
    """


class TestToolkitZarrDictStoreMethods(_RoutedMethods, xt.TestZarrDictStore):
    """xarray's memory-store suite with the ``to_zarr`` methods routed."""


class TestToolkitZarrRegionAutoMethods(_RoutedMethods, xt.TestZarrRegionAuto):
    """xarray's region='auto' tests with the ``to_zarr`` methods routed."""


xtree = pytest.importorskip("xarray.tests.test_backends_datatree")
from xarray.tests.conftest import create_test_datatree, simple_datatree  # noqa: E402, F401
from xarray.tests.test_backends_datatree import unaligned_datatree_zarr_factory  # noqa: E402, F401


class TestToolkitZarrDatatreeIO(xtree.TestZarrDatatreeIO):
    """xarray's DataTree Zarr tests with ``DataTree.to_zarr`` routed through toolkit."""

    @pytest.fixture(autouse=True)
    def _route_tree(self, monkeypatch: pytest.MonkeyPatch) -> None:
        if BASELINE:
            return

        def to_zarr(tree: xr.DataTree, store: Any = None, *args: Any, **kwargs: Any) -> Any:
            return toolkit.to_zarr(tree, store, *args, progress=False, **kwargs)

        monkeypatch.setattr(xr.DataTree, "to_zarr", to_zarr)
