"""A region of a zarr array in parts, for concurrent zarr calls."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from toolkit.io.calls import local_slices, zarr_parts


@pytest.fixture
def sharded() -> zarr.Array:
    return zarr.create_array(
        zarr.storage.MemoryStore(), shape=(95, 30), chunks=(5, 10), shards=(10, 30), dtype="i4"
    )


def test_parts_keep_inflight_going_in_calls_of_zarrs_cap_and_share_no_shard(sharded):
    region = (slice(3, 95), slice(0, 30))
    with zarr.config.set({"async.concurrency": 10}):
        parts = zarr_parts(sharded, region, 40)
        assert zarr.config.get("async.concurrency") == 10  # read, never changed
    assert len(parts) == 4  # 4 calls of at most 10 requests each
    seen = np.zeros(sharded.shape, dtype=int)
    for p in parts:
        seen[p] += 1
        # Cut on shard edges only (a shard in two parts: two calls race on one object).
        assert p[0].start == 3 or p[0].start % 10 == 0
        assert p[0].stop == 95 or p[0].stop % 10 == 0
        assert p[1] == slice(0, 30)  # one shard across
    expected = np.zeros(sharded.shape, dtype=int)
    expected[region] = 1
    np.testing.assert_array_equal(seen, expected)  # every element once
    block = np.arange(92 * 30).reshape(92, 30)
    whole = np.zeros(sharded.shape, dtype=int)
    for p in parts:
        whole[p] = block[local_slices(p, region)]
    np.testing.assert_array_equal(whole[region], block)


@pytest.mark.parametrize("cap", [10, 64, None])
def test_one_call_when_zarrs_cap_allows_it_or_there_is_none(sharded, cap):
    region = (slice(0, 95), slice(0, 30))
    with zarr.config.set({"async.concurrency": cap}):
        assert zarr_parts(sharded, region, 10) == [region]
        assert len(zarr_parts(sharded, region, 64)) == (1 if cap in (64, None) else 7)


def test_a_region_that_is_no_box_is_one_call(sharded):
    # dask folds a selection of a block into the block's read: an integer, a step.
    for region in [(13, slice(0, 30)), (slice(0, 95, 2), slice(0, 30)), (slice(0, 95),)]:
        with zarr.config.set({"async.concurrency": 10}):
            assert zarr_parts(sharded, region, 64) == [region]
