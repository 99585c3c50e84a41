"""How stores are named: for people (paths as given, URLs) and as keys (unchanged)."""

from __future__ import annotations

from zarr.storage import LocalStore, MemoryStore

from toolkit.io.stores import describe_store, display_location, display_store, resolve_store
from toolkit.io.wrappers import wrap_store


def test_a_local_store_is_shown_as_its_path_and_keyed_as_before(tmp_path):
    """Issue 30: reports printed ``file://x.zarr`` for the relative path ``x.zarr``."""
    relative = resolve_store("out/x.zarr")
    assert display_store(relative) == "out/x.zarr"
    assert display_store(wrap_store(LocalStore(tmp_path), None)) == str(tmp_path)
    # The description stays the key that budgets, running totals and write ids use.
    assert describe_store(relative) == "file://out/x.zarr"
    assert display_location(describe_store(relative)) == "out/x.zarr"


def test_urls_and_other_stores_are_shown_as_they_are_described():
    s3 = resolve_store("s3://bucket/era5.zarr", storage_options={"anon": True, "client": "s3fs"})
    assert display_store(s3) == describe_store(s3) == "s3://bucket/era5.zarr"
    assert display_location("gs://bucket/x.zarr") == "gs://bucket/x.zarr"
    assert display_store(MemoryStore()) == "<MemoryStore>"
