"""Write-unit arithmetic of the graph: which units a task covers only partly."""

from __future__ import annotations

import itertools

import numpy as np
import zarr
from hypothesis import given
from hypothesis import strategies as st

from toolkit.write.graph import partial_units


@st.composite
def _cases(draw):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, 30)) for _ in range(ndim))
    chunks = tuple(draw(st.integers(1, n)) for n in shape)
    region = []
    for n in shape:
        a = draw(st.integers(0, n - 1))
        b = draw(st.integers(a + 1, n))
        region.append(slice(a, b))
    return shape, chunks, tuple(region)


@given(_cases())
def test_partial_units_match_brute_force(case):
    shape, chunks, region = case
    arr = zarr.create_array(zarr.storage.MemoryStore(), shape=shape, chunks=chunks, dtype="i1")
    units = tuple((sl.start // c, -(-sl.stop // c)) for sl, c in zip(region, chunks, strict=True))
    covered = np.zeros(shape, bool)
    covered[region] = True
    expected = []
    for u in itertools.product(*(range(a, b) for a, b in units)):
        cell = tuple(
            slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(u, chunks, shape, strict=True)
        )
        if not covered[cell].all():
            expected.append(u)
    assert sorted(partial_units(arr, region, units)) == sorted(expected)
