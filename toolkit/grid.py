"""Pure chunk-grid arithmetic: no I/O, no dask, no zarr.

Vocabulary
----------
*write unit*
    The smallest stored object a writer replaces whole: the zarr chunk, or the
    shard when the array is sharded (zarr v3). Two writers touching one unit
    race, so every unit must belong to exactly one task.
*offset*
    Where the data being written starts inside the stored array along an axis
    (a region's start, or the old length of an array being appended to).
*task chunks*
    The chunking of the data being written, one block per write task.

All positions called *local* are relative to the data being written; *absolute*
positions are indices in the stored array. Every function works per axis; a
multi-dimensional grid is the Cartesian product of its axes, which is why
validation per axis is a proof for the whole grid.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "AxisOwnership",
    "RechunkBlocks",
    "RegularGrid",
    "axis_ownership",
    "default_chunks",
    "edges",
    "misaligned_edges",
    "rechunk_blocks",
    "regroup",
    "snap_axis",
    "split_axis",
    "split_box",
    "units_touched",
]

Chunks = tuple[tuple[int, ...], ...]


def edges(chunks: Sequence[int]) -> np.ndarray:
    """Cumulative block edges ``[0, c0, c0 + c1, ..., sum(chunks)]`` as int64."""
    out = np.zeros(len(chunks) + 1, dtype=np.int64)
    np.cumsum(np.asarray(chunks, dtype=np.int64), out=out[1:])
    return out


def _from_edges(e: np.ndarray) -> tuple[int, ...]:
    return tuple(int(v) for v in np.diff(e))


def misaligned_edges(chunks: Sequence[int], unit: int, offset: int = 0) -> np.ndarray:
    """Local interior edges of ``chunks`` that fall inside a write unit.

    An empty result means every block owns whole units (apart from the partial
    units at the very start and end of the written range, which the first and
    last block own alone).
    """
    e = edges(chunks)[1:-1]
    bad: np.ndarray = e[(e + offset) % unit != 0]
    return bad


def units_touched(start: int, stop: int, unit: int) -> range:
    """Indices of the units of size ``unit`` that absolute ``[start, stop)`` touches."""
    if stop <= start:
        return range(start // unit, start // unit)
    return range(start // unit, -(-stop // unit))


Box = tuple[tuple[int, int], ...]


def split_box(box: Sequence[tuple[int, int]], unit: Sequence[int], parts: int) -> list[Box]:
    """Absolute ``box`` (a start and stop per axis) cut into at most ``parts`` boxes.

    Every cut falls on a multiple of ``unit``, so no unit lies in two boxes, and
    the boxes tile ``box``: there are ``min(parts, units)`` of them, none with
    more than twice its share of the units (so that concurrent calls, one a
    box, finish within twice the time an even split would take).
    """
    ranges = [units_touched(a, b, c) for (a, b), c in zip(box, unit, strict=True)]
    if any(len(r) == 0 for r in ranges):
        return [tuple(box)]
    return [
        tuple(
            (max(lo, a * c), min(hi, b * c))
            for (a, b), (lo, hi), c in zip(ub, box, unit, strict=True)
        )
        for ub in _split_units(tuple((r.start, r.stop) for r in ranges), parts)
    ]


def _split_units(ub: Box, parts: int) -> list[Box]:
    """Unit ranges ``ub`` in ``min(parts, units)`` boxes (:func:`split_box`)."""
    total = math.prod(b - a for a, b in ub)
    if parts <= 1 or total == 1:
        return [ub]
    if parts >= total:
        every = itertools.product(*(range(a, b) for a, b in ub))
        return [tuple((i, i + 1) for i in u) for u in every]
    # One cut in two, each side given boxes in proportion to its units (never more
    # boxes than units): of the cuts near the middle of each axis, the one whose
    # busier side has the fewest units a box.
    best: tuple[float, int, int, int, int] | None = None
    for axis, (a, b) in enumerate(ub):
        n = b - a
        for cut in sorted({n // 2, -(-n // 2), round(n * (parts // 2) / parts)}):
            if not 0 < cut < n:
                continue
            lu = cut * (total // n)
            left = min(lu, parts - 1, max(1, round(parts * lu / total)))
            right = min(total - lu, parts - left)
            left = parts - right
            load = max(lu / left, (total - lu) / right)
            if best is None or load < best[0]:
                best = (load, axis, cut, left, right)
    assert best is not None
    _, axis, cut, left, right = best
    a, b = ub[axis]
    return [
        *_split_units((*ub[:axis], (a, a + cut), *ub[axis + 1 :]), left),
        *_split_units((*ub[:axis], (a + cut, b), *ub[axis + 1 :]), right),
    ]


@dataclass(frozen=True, slots=True)
class RegularGrid:
    """A regular grid over ``shape`` with blocks of ``step``.

    The last block of each axis may be ragged (shorter).

    Parameters
    ----------
    shape : tuple of int
        The array shape.
    step : tuple of int
        The block shape (a zarr chunk or shard shape).
    """

    shape: tuple[int, ...]
    step: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.shape) != len(self.step):
            raise ValueError(f"shape {self.shape} and step {self.step} differ in length")
        if any(s < 1 for s in self.step):
            raise ValueError(f"block sizes must be >= 1, got {self.step}")

    @property
    def nblocks(self) -> tuple[int, ...]:
        """Number of blocks along each axis."""
        return tuple(-(-n // s) for n, s in zip(self.shape, self.step, strict=True))

    def block_slices(self, index: Sequence[int]) -> tuple[slice, ...]:
        """The absolute slices of the block at ``index`` (ragged at the end)."""
        return tuple(
            slice(i * s, min((i + 1) * s, n))
            for i, s, n in zip(index, self.step, self.shape, strict=True)
        )

    def touched(self, region: Sequence[slice]) -> tuple[range, ...]:
        """Block index ranges along each axis that ``region`` touches."""
        out = []
        for sl, s, n in zip(region, self.step, self.shape, strict=True):
            start, stop, _ = sl.indices(n)
            out.append(units_touched(start, stop, s))
        return tuple(out)

    def is_whole(self, region: Sequence[slice]) -> bool:
        """Whether ``region`` covers only whole blocks.

        Ragged last blocks count as whole when the region reaches the array's end.
        """
        for sl, s, n in zip(region, self.step, self.shape, strict=True):
            start, stop, _ = sl.indices(n)
            if start % s or (stop % s and stop != n):
                return False
        return True


def snap_axis(chunks: Sequence[int], unit: int, offset: int = 0) -> tuple[int, ...]:
    """Move every straddling block edge to the nearest unit boundary.

    Edges already on a unit boundary are kept, so aligned blocks stay as they
    are; edges inside a unit move to its nearer end (ties go to the start), which
    merges blocks smaller than a unit and keeps every block near its original
    size. The first and last block absorb the partial units at the ends.
    """
    e = edges(chunks)
    length = int(e[-1])
    if length == 0:
        return tuple(int(c) for c in chunks) or (0,)
    inner = e[1:-1] + offset
    rem = inner % unit
    snapped = np.where(2 * rem <= unit, inner - rem, inner - rem + unit) - offset
    snapped = snapped[(snapped > 0) & (snapped < length)]
    return _from_edges(np.unique(np.concatenate(([0], snapped, [length]))))


def split_axis(
    chunks: Sequence[int], unit: int, offset: int = 0, max_len: int | None = None
) -> tuple[int, ...]:
    """Split blocks longer than ``max_len`` at unit boundaries.

    Each piece is as long as possible without exceeding ``max_len``; a piece is
    never cut inside a unit, so when ``max_len`` is below one unit the pieces are
    single units. Blocks already short enough are left untouched.
    """
    if max_len is None:
        return tuple(chunks)
    out: list[int] = []
    start = 0
    for c in chunks:
        stop = start + c
        pos = start
        while stop - pos > max_len:
            a = pos + offset
            first = (a // unit + 1) * unit  # first boundary strictly after pos
            last = ((pos + max_len + offset) // unit) * unit  # furthest allowed
            cut = max(first, last) - offset
            if cut >= stop:
                break
            out.append(cut - pos)
            pos = cut
        out.append(stop - pos)
        start = stop
    return tuple(out)


def regroup(
    chunks: Sequence[Sequence[int]],
    units: Sequence[int],
    offsets: Sequence[int] | None = None,
    *,
    itemsize: int = 1,
    max_bytes: int | None = None,
    min_units: int = 1,
) -> Chunks:
    """Regroup a chunking minimally so that every block owns whole write units.

    Parameters
    ----------
    chunks : sequence of sequence of int
        The source (dask) chunking, per axis.
    units : sequence of int
        The write-unit size per axis (zarr chunk, or shard when sharded).
    offsets : sequence of int, optional
        Absolute position of the data's first element per axis.
    itemsize : int
        Bytes per element, for the memory target.
    max_bytes : int, optional
        Target for the bytes of one block. Blocks are split (at unit boundaries
        only) along the axis with the most units per block until they fit, or
        until they are single units.
    min_units : int
        Blocks spanning fewer write units are merged with their neighbours
        (runs of consecutive blocks, outermost axis first) up to this many
        units, within ``max_bytes``. A task then keeps that many requests in
        flight, which hides an object store's latency when dask runs few
        threads. Merged edges are a subset of the aligned edges.

    Returns
    -------
    tuple of tuple of int
        The task chunking. Aligned source edges are kept, except those that
        ``min_units`` merges away.
    """
    offsets = offsets if offsets is not None else [0] * len(units)
    out = [snap_axis(c, u, o) for c, u, o in zip(chunks, units, offsets, strict=True)]
    if min_units > 1:
        out = _coalesce(out, units, itemsize, max_bytes, min_units)
    if max_bytes is None:
        return tuple(out)
    exhausted: set[int] = set()
    while True:
        ext = [max(c) if c else 0 for c in out]
        if itemsize * math.prod(ext) <= max_bytes:
            break
        # Split along the axis whose largest block spans the most units.
        splittable = [i for i in range(len(out)) if i not in exhausted and ext[i] > units[i]]
        if not splittable:
            break
        axis = max(splittable, key=lambda i: ext[i] / units[i])
        other = itemsize * math.prod(e for j, e in enumerate(ext) if j != axis)
        allowed = max(1, max_bytes // max(other, 1))
        new = split_axis(out[axis], units[axis], offsets[axis], allowed)
        if new == out[axis]:
            exhausted.add(axis)
        out[axis] = new
    return tuple(out)


def _coalesce(
    out: list[tuple[int, ...]],
    units: Sequence[int],
    itemsize: int,
    max_bytes: int | None,
    min_units: int,
) -> list[tuple[int, ...]]:
    """Merge runs of consecutive blocks until blocks span ``min_units`` units."""
    for axis in range(len(out)):
        span = math.prod(-(-max(c) // u) if c else 1 for c, u in zip(out, units, strict=True))
        if span >= min_units:
            break
        factor = min(-(-min_units // span), len(out[axis]))
        if max_bytes is not None:
            block = itemsize * math.prod(max(c) if c else 0 for c in out)
            factor = min(factor, max(1, max_bytes // max(block, 1)))
        if factor > 1:
            c = out[axis]
            out[axis] = tuple(sum(c[i : i + factor]) for i in range(0, len(c), factor))
    return out


@dataclass(frozen=True, slots=True)
class AxisOwnership:
    """Which units each block of one axis owns.

    Attributes
    ----------
    first, stop : numpy.ndarray
        Per block, the absolute index range ``[first, stop)`` of units it touches.
    full : numpy.ndarray
        Per block, how many of those units it covers completely (the others
        need a read-modify-write of existing values).
    """

    first: np.ndarray
    stop: np.ndarray
    full: np.ndarray

    @property
    def count(self) -> np.ndarray:
        """Units touched per block."""
        out: np.ndarray = self.stop - self.first
        return out

    def disjoint(self) -> bool:
        """True when no unit is touched by two blocks of this axis."""
        return bool(np.all(self.stop[:-1] <= self.first[1:]))


def axis_ownership(chunks: Sequence[int], unit: int, offset: int, array_len: int) -> AxisOwnership:
    """Map each block of one axis to the units it touches.

    Parameters
    ----------
    chunks : sequence of int
        Block lengths of the data being written along this axis.
    unit : int
        Write-unit length.
    offset : int
        Absolute start of the data in the stored array.
    array_len : int
        Length of the stored array along this axis after the write; the last
        unit may be ragged, and covering it up to ``array_len`` counts as whole.
    """
    e = edges(chunks) + offset
    a, b = e[:-1], e[1:]
    first = a // unit
    stop = -(-b // unit)
    stop = np.where(b > a, stop, first)
    # A unit is whole when the block covers [j*unit, min((j+1)*unit, array_len)).
    head_partial = (a % unit != 0) & (b > a)
    unit_end = np.minimum((stop) * unit, array_len)
    tail_partial = (b < unit_end) & (b > a)
    count = stop - first
    partial = head_partial.astype(np.int64) + tail_partial.astype(np.int64)
    partial = np.where((count == 1) & head_partial & tail_partial, 1, partial)
    return AxisOwnership(first=first, stop=stop, full=count - np.minimum(partial, count))


def default_chunks(
    shape: Sequence[int], itemsize: int, target_bytes: int = 4 * 2**20
) -> tuple[int, ...]:
    """A chunk shape of at most ``target_bytes`` for data with no chunking of its own.

    Halves the longest axis (ties: the first) until the chunk fits, which keeps
    chunks near cubic, like zarr's own guess.
    """
    out = [max(1, n) for n in shape]
    while itemsize * math.prod(out) > target_bytes and max(out) > 1:
        axis = out.index(max(out))
        out[axis] = -(-out[axis] // 2)
    return tuple(out)


@dataclass(frozen=True)
class RechunkBlocks:
    """How one array is rechunked with bounded memory (see :func:`rechunk_blocks`).

    Every length is per axis and uncapped (a block may reach past the array's
    end; its last block along that axis is then shorter). ``intermediate`` is
    None when one stage suffices: each task then reads ``read`` blocks of
    whole source chunks and writes the whole target units inside them.
    """

    shape: tuple[int, ...]
    source: tuple[int, ...]
    target: tuple[int, ...]
    itemsize: int
    read: tuple[int, ...]
    """Stage 1's task blocks: whole source chunks (and, with one stage, whole target units)."""
    intermediate: tuple[int, ...] | None
    """The intermediate copy's chunks (None: no intermediate copy)."""
    write: tuple[int, ...]
    """The last stage's task blocks: whole target units (the same as ``read`` with one stage)."""

    @property
    def stages(self) -> int:
        """1 (source to target) or 2 (source to an intermediate copy to target)."""
        return 1 if self.intermediate is None else 2

    def block_bytes(self, block: Sequence[int]) -> int:
        """Bytes of one block (capped at the array's shape)."""
        return self.itemsize * math.prod(min(b, n) for b, n in zip(block, self.shape, strict=True))

    def tasks(self, block: Sequence[int]) -> int:
        """How many tasks blocks of ``block`` make of the array."""
        return math.prod(-(-n // b) if n else 0 for b, n in zip(block, self.shape, strict=True))

    @property
    def peak_task_bytes(self) -> int:
        """The projected memory of the largest task: its block decoded, and encoded."""
        return 2 * max(self.block_bytes(self.read), self.block_bytes(self.write))


def _divisor_multiples(step: int, of: int) -> list[int]:
    """Multiples of ``step`` that divide ``of``, ascending (``[step]`` if none do)."""
    if of % step:
        return [step]
    return [step * k for k in range(1, of // step + 1) if of % (step * k) == 0]


def rechunk_blocks(
    shape: Sequence[int],
    source: Sequence[int],
    target: Sequence[int],
    itemsize: int,
    max_mem: int,
    *,
    task_bytes: int = 64 * 2**20,
    min_tasks: int = 1,
) -> RechunkBlocks:
    """Task blocks that rechunk an array from ``source`` chunks to ``target`` units.

    Every source chunk is read by exactly one task of the first stage, every
    intermediate chunk is written by one task and read by one task, every
    target unit is written whole by exactly one task of the last stage, and no
    task holds more than ``max_mem`` bytes (its block decoded, and encoded:
    twice the block). Blocks grow in whole steps up to about ``task_bytes``
    (decoded) while each stage keeps at least ``min_tasks`` tasks (the
    workers' threads, so that all of them are busy).

    One stage suffices when the blocks aligned with both grids (per axis the
    least common multiple of the two chunk lengths, or the whole axis) fit
    those limits and there are at least half ``min_tasks`` of them (two stages
    move the data twice: they are worth it only to keep twice as many threads
    busy). Otherwise, as rechunker does, the data goes through an
    intermediate copy whose chunks divide both the first stage's blocks (whole
    source chunks, grown along the axes the target gathers) and the last
    stage's (whole target units, grown along the axes the target splits): per
    axis their greatest common divisor.

    Raises
    ------
    ValueError
        If one source chunk or one target unit alone needs more than
        ``max_mem`` (the message names which and how big).
    """
    n = [max(int(x), 1) for x in shape]
    s = [max(1, min(int(x), m)) for x, m in zip(source, n, strict=True)]
    t = [max(1, min(int(x), m)) for x, m in zip(target, n, strict=True)]

    def nbytes(block: Sequence[int]) -> int:
        return 2 * itemsize * math.prod(min(b, m) for b, m in zip(block, n, strict=True))

    def ntasks(block: Sequence[int]) -> int:
        return math.prod(-(-m // b) for b, m in zip(block, n, strict=True))

    def fits(block: Sequence[int], base: Sequence[int]) -> bool:
        return (
            nbytes(block) <= max_mem
            and nbytes(block) <= 2 * task_bytes
            and ntasks(block) >= min(min_tasks, ntasks(base))
        )

    for name, block in (("target unit", t), ("source chunk", s)):
        if nbytes(block) > max_mem:
            raise ValueError(
                f"one {name} {tuple(block)} needs {nbytes(block):,} bytes (decoded and encoded), "
                f"more than max_mem={max_mem:,}"
            )
    frozen = (tuple(n), tuple(s), tuple(t), itemsize)
    aligned = [min(math.lcm(a, b), m) for a, b, m in zip(s, t, n, strict=True)]
    # One stage of k tasks on p threads takes about 1/min(k, p) of the data's time;
    # two stages about 2/p: one stage wins from k >= p/2 on.
    if (
        nbytes(aligned) <= max_mem
        and nbytes(aligned) <= 2 * task_bytes
        and ntasks(aligned) >= -(-min_tasks // 2)
    ) or aligned == t:
        block = list(aligned)
        # Grown in whole steps (first axes first) while the limits allow: fewer,
        # larger tasks cost less overhead.
        for axis in range(len(n)):
            while block[axis] < n[axis]:
                grown = [*block]
                grown[axis] = min(block[axis] + aligned[axis], n[axis])
                if not fits(grown, aligned):
                    break
                block = grown
        return RechunkBlocks(*frozen, tuple(block), None, tuple(block))

    def gathered(base: list[int], within: Sequence[int]) -> list[int]:
        # ``base`` grown axis by axis in whole multiples of itself that divide ``within``
        # (where ``within`` is longer), while the limits allow.
        block = list(base)
        for axis in range(len(n)):
            for cand in (
                _divisor_multiples(base[axis], within[axis]) if base[axis] < within[axis] else []
            ):
                trial = [*block]
                trial[axis] = cand
                if not fits(trial, base):
                    break
                block = trial
        return block

    # The first stage gathers along the axes whose target units are longer, in lengths
    # that divide the unit (so the intermediate chunk is that length); the last stage
    # grows along the axes the target splits, in lengths that divide the first stage's
    # blocks (the intermediate chunks there are as long).
    read = gathered(s, t)
    write = gathered(t, read)
    inter = tuple(min(math.gcd(r, w), m) for r, w, m in zip(read, write, n, strict=True))
    return RechunkBlocks(*frozen, tuple(read), inter, tuple(write))
