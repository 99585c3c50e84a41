"""Grid arithmetic against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from toolkit import grid

chunks_1d = st.lists(st.integers(1, 40), min_size=1, max_size=25)


def brute_unit_owner(task_chunks, unit, offset):
    """Map unit id -> set of task ids, element by element."""
    owners: dict[int, set[int]] = {}
    pos = 0
    for t, c in enumerate(task_chunks):
        for p in range(pos, pos + c):
            owners.setdefault((offset + p) // unit, set()).add(t)
        pos += c
    return owners


@given(chunks_1d, st.integers(1, 30), st.integers(0, 100))
def test_snap_axis_owns_units_and_keeps_aligned_edges(chunks, unit, offset):
    out = grid.snap_axis(chunks, unit, offset)
    assert sum(out) == sum(chunks)
    assert all(c > 0 for c in out)
    assert all(len(ts) == 1 for ts in brute_unit_owner(out, unit, offset).values())
    src = set(grid.edges(chunks).tolist())
    new = set(grid.edges(out).tolist())
    aligned = {e for e in src if (e + offset) % unit == 0}
    assert aligned <= new
    assert grid.misaligned_edges(out, unit, offset).size == 0


@given(chunks_1d, st.integers(1, 30), st.integers(0, 100))
def test_snap_axis_is_identity_on_aligned_input(chunks, unit, offset):
    aligned = grid.snap_axis(chunks, unit, offset)
    assert grid.snap_axis(aligned, unit, offset) == aligned


@given(chunks_1d, st.integers(1, 30), st.integers(0, 100), st.integers(1, 200))
def test_split_axis_respects_units_and_length(chunks, unit, offset, max_len):
    base = grid.snap_axis(chunks, unit, offset)
    out = grid.split_axis(base, unit, offset, max_len)
    assert sum(out) == sum(chunks)
    assert set(grid.edges(base).tolist()) <= set(grid.edges(out).tolist())
    assert grid.misaligned_edges(out, unit, offset).size == 0
    pos = 0
    for c in out:
        # too long only if it could not be cut: no unit boundary strictly inside
        inner = [p for p in range(pos + 1, pos + c) if (p + offset) % unit == 0]
        assert c <= max_len or not inner or (inner[0] - pos) > max_len
        pos += c


@given(
    st.lists(st.tuples(chunks_1d, st.integers(1, 12), st.integers(0, 30)), min_size=1, max_size=3),
    st.sampled_from([1, 2, 4, 8]),
    st.integers(1, 5000),
)
def test_regroup_nd(axes, itemsize, max_bytes):
    chunks = [a[0] for a in axes]
    units = [a[1] for a in axes]
    offsets = [a[2] for a in axes]
    out = grid.regroup(chunks, units, offsets, itemsize=itemsize, max_bytes=max_bytes)
    for c, o, u, off in zip(chunks, out, units, offsets):
        assert sum(o) == sum(c)
        assert all(len(t) == 1 for t in brute_unit_owner(o, u, off).values())
    block = itemsize * np.prod([max(o) for o in out])
    if itemsize * np.prod(units) <= max_bytes:
        # One write unit fits the target, so every task must.
        assert block <= max_bytes
    snapped = [grid.snap_axis(c, u, off) for c, u, off in zip(chunks, units, offsets)]
    if itemsize * np.prod([max(s) for s in snapped]) <= max_bytes:
        assert list(out) == snapped  # nothing split that did not need it


@given(chunks_1d, st.integers(1, 30), st.integers(0, 60), st.integers(0, 60))
def test_axis_ownership_matches_brute_force(chunks, unit, offset, tail):
    length = sum(chunks)
    array_len = offset + length + tail
    own = grid.axis_ownership(chunks, unit, offset, array_len)
    pos = offset
    for t, c in enumerate(chunks):
        touched = sorted({p // unit for p in range(pos, pos + c)})
        full = [
            j
            for j in touched
            if all(pos <= p < pos + c for p in range(j * unit, min((j + 1) * unit, array_len)))
        ]
        assert (own.first[t], own.stop[t]) == (touched[0], touched[-1] + 1)
        assert own.full[t] == len(full)
        pos += c


@given(st.integers(0, 200), st.integers(0, 200), st.integers(1, 30))
def test_units_touched(a, b, unit):
    start, stop = min(a, b), max(a, b)
    assert list(grid.units_touched(start, stop, unit)) == sorted(
        {p // unit for p in range(start, stop)}
    )


@given(
    st.lists(st.tuples(st.integers(1, 50), st.integers(1, 12)), min_size=1, max_size=3),
    st.data(),
)
def test_regular_grid_touched_and_whole(dims, data):
    shape = tuple(d[0] for d in dims)
    step = tuple(d[1] for d in dims)
    g = grid.RegularGrid(shape, step)
    region = []
    for n in shape:
        a = data.draw(st.integers(0, n))
        b = data.draw(st.integers(a, n))
        region.append(slice(a, b))
    assume(all(s.stop > s.start for s in region))
    touched = g.touched(region)
    for r, sl, s in zip(touched, region, step):
        assert list(r) == sorted({p // s for p in range(sl.start, sl.stop)})
    mask = np.zeros(shape, bool)
    mask[tuple(region)] = True
    whole = all(
        mask[g.block_slices(idx)].all()
        for idx in np.ndindex(*[len(r) for r in touched])
        for idx in [tuple(r[i] for r, i in zip(touched, idx))]
    )
    assert g.is_whole(region) == whole
    assert g.nblocks == tuple(-(-n // s) for n, s in zip(shape, step))


@given(
    st.lists(st.integers(0, 5000), min_size=1, max_size=4),
    st.sampled_from([1, 4, 8]),
    st.integers(1, 2**22),
)
def test_default_chunks_fit_the_target(shape, itemsize, target):
    out = grid.default_chunks(shape, itemsize, target)
    assert len(out) == len(shape)
    assert all(1 <= c <= max(n, 1) for c, n in zip(out, shape))
    assert itemsize * np.prod(out) <= target or all(c == 1 for c in out)


@given(
    st.lists(st.tuples(chunks_1d, st.integers(1, 12), st.integers(0, 30)), min_size=1, max_size=3),
    st.integers(1, 8),
    st.integers(2, 40),
    st.integers(64, 4096),
)
def test_regroup_merges_tiny_blocks_on_aligned_edges(axes, itemsize, min_units, max_bytes):
    chunks = [a[0] for a in axes]
    units = [a[1] for a in axes]
    offsets = [a[2] for a in axes]
    out = grid.regroup(
        chunks, units, offsets, itemsize=itemsize, max_bytes=max_bytes, min_units=min_units
    )
    snapped = [grid.snap_axis(c, u, off) for c, u, off in zip(chunks, units, offsets)]
    fits = itemsize * np.prod([max(s) for s in snapped]) <= max_bytes
    for c, o, s, u, off in zip(chunks, out, snapped, units, offsets):
        assert sum(o) == sum(c)
        assert grid.misaligned_edges(o, u, off).size == 0
        if fits:  # no split needed: every edge is one of the aligned source edges
            assert set(np.cumsum(o)) <= set(np.cumsum(s))
        assert all(len(t) == 1 for t in brute_unit_owner(o, u, off).values())
    # Merging never makes a block exceed the memory target that the snap alone met.
    if itemsize * np.prod([max(s) for s in snapped]) <= max_bytes:
        assert itemsize * np.prod([max(o) for o in out]) <= max_bytes
    # Blocks were merged as far as allowed: fewer blocks, or already enough units.
    span = np.prod([-(-max(s) // u) for s, u in zip(snapped, units)])
    if span < min_units and any(len(s) > 1 for s in snapped):
        block = itemsize * np.prod([max(s) for s in snapped])
        if 2 * block <= max_bytes:
            assert sum(len(o) for o in out) < sum(len(s) for s in snapped)


# --------------------------------------------------------------------------- rechunk blocks


def _starts(block: int, n: int) -> list[int]:
    return list(range(0, n, block))


def _owners(block: int, unit: int, n: int) -> dict[int, set[int]]:
    """Element by element: which blocks each unit's elements fall in."""
    out: dict[int, set[int]] = {}
    for p in range(n):
        out.setdefault(p // unit, set()).add(p // block)
    return out


_axis = st.tuples(st.integers(1, 60), st.integers(1, 60), st.integers(1, 60))


@given(
    st.lists(_axis, min_size=1, max_size=3),
    st.sampled_from([1, 2, 4, 8]),
    st.integers(2, 4000),
    st.integers(1, 8),
)
def test_rechunk_blocks_read_every_chunk_once_and_write_every_unit_whole(
    axes, itemsize, max_mem, min_tasks
):
    shape = [a[0] for a in axes]
    source = [min(a[1], a[0]) for a in axes]
    target = [min(a[2], a[0]) for a in axes]
    try:
        b = grid.rechunk_blocks(shape, source, target, itemsize, max_mem, min_tasks=min_tasks)
    except ValueError as e:
        # Refused only when one source chunk or one target unit alone is too big.
        need = max(2 * itemsize * np.prod(source), 2 * itemsize * np.prod(target))
        assert need > max_mem, e
        assert "more than max_mem" in str(e)
        return
    assert b.peak_task_bytes <= max_mem
    for axis, n in enumerate(shape):
        # Stage 1 reads each source chunk in exactly one task.
        assert all(len(o) == 1 for o in _owners(b.read[axis], source[axis], n).values())
        # The last stage writes each target unit whole, in exactly one task.
        assert all(len(o) == 1 for o in _owners(b.write[axis], target[axis], n).values())
        if b.intermediate is None:
            assert b.read == b.write
            continue
        c = b.intermediate[axis]
        # Each intermediate chunk is written by one task and read by one task.
        assert all(len(o) == 1 for o in _owners(b.read[axis], c, n).values())
        assert all(len(o) == 1 for o in _owners(b.write[axis], c, n).values())


def test_rechunk_blocks_maps_to_time_series_go_through_an_intermediate_copy():
    b = grid.rechunk_blocks((4000, 360, 360), (1, 360, 360), (4000, 36, 36), 4, 2**30, min_tasks=2)
    assert b.stages == 2
    assert b.read[1:] == (360, 360) and 4000 % b.read[0] == 0  # whole maps, gathered
    assert b.write[0] == 4000 and 360 % b.write[1] == 0  # whole series
    assert b.intermediate == (b.read[0], b.write[1], b.write[2])
    assert b.peak_task_bytes <= 2**30


def test_rechunk_blocks_use_one_stage_when_aligned_blocks_fit():
    b = grid.rechunk_blocks((100, 50), (10, 50), (20, 25), 8, 2**20, min_tasks=2)
    assert b.stages == 1 and b.read == b.write
    assert b.read[0] % 20 == 0 and b.read[1] == 50


def test_rechunk_blocks_name_the_chunk_that_does_not_fit():
    with pytest.raises(ValueError, match=r"one target unit \(100, 100\) needs 80,000 bytes"):
        grid.rechunk_blocks((100, 100), (10, 100), (100, 100), 4, 50_000)


@given(
    st.lists(
        st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(1, 9)), min_size=0, max_size=3
    ),
    st.integers(1, 40),
)
def test_split_box_tiles_the_box_and_never_shares_a_unit(dims, parts):
    box = tuple((min(a, b), max(a, b)) for a, b, _ in dims)
    unit = tuple(c for _, _, c in dims)
    out = grid.split_box(box, unit, parts)
    shape = tuple(b - a for a, b in box)
    units = {
        tuple(p // c for p, c in zip(pos, unit, strict=True))
        for pos in np.ndindex(*shape)
        for pos in [tuple(a + i for (a, _), i in zip(box, pos, strict=True))]
    }
    if not units:
        assert out == [box]
        return
    assert len(out) == min(parts, len(units))
    owner: dict[tuple[int, ...], int] = {}
    covered = 0
    for k, sub in enumerate(out):
        assert all(lo <= a < b <= hi for (a, b), (lo, hi) in zip(sub, box, strict=True))
        covered += int(np.prod([b - a for a, b in sub]))
        for pos in np.ndindex(*(b - a for a, b in sub)):
            u = tuple((a + i) // c for (a, _), i, c in zip(sub, pos, unit, strict=True))
            assert owner.setdefault(u, k) == k  # a unit in two boxes: two writers race
    assert covered == int(np.prod(shape))  # disjoint (no unit shared) and complete
    assert set(owner) == units
    sizes = [sum(1 for v in owner.values() if v == k) for k in range(len(out))]
    assert max(sizes) <= 2 * len(units) / len(out)  # no box twice its share
