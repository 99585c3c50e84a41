"""The write graph: which units a task covers only partly, aborts, requests in flight."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr
import zarr
from hypothesis import given
from hypothesis import strategies as st
from zarr.storage import LocalStore

import toolkit
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


def _trip(io: object) -> None:
    from toolkit.write import graph

    graph._abort(io)  # type: ignore[arg-type]


def _tripped(io: object) -> bool:
    from toolkit.write import graph

    return graph._aborted(io)  # type: ignore[arg-type]


@pytest.mark.cluster
@pytest.mark.timeout(120)
def test_a_task_that_fails_on_one_worker_stops_the_writes_tasks_on_every_worker(cluster_client):
    """The abort gate reaches every worker process, not only the failing task's.

    It did not: the broadcast asked distributed to run a plain function without
    waiting, which every worker refused ("Combination not supported"), and the
    refusal was swallowed; the other workers wrote on after a failure.
    """
    from toolkit.write.graph import WriteIO

    io = WriteIO(token=uuid.uuid4().hex, throttle=None, concurrency=1, distributed=True)
    first, *others = sorted(cluster_client.scheduler_info(n_workers=-1)["workers"])
    assert others
    cluster_client.submit(_trip, io, workers=[first], pure=False).result(timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(cluster_client.run(_tripped, io).values()):
        time.sleep(0.05)
    assert all(cluster_client.run(_tripped, io).values())


def test_the_write_graph_is_built_in_dasks_task_spec_so_nothing_is_converted():
    """Every node toolkit adds is a dask.task_spec node, never a tuple.

    dask converts a tuple graph task by task before it runs it (10 s for 100,000
    write tasks); a graph of Task nodes is handed over as it is.
    """
    import dask.array as da
    import xarray as xr
    from dask.task_spec import GraphNode

    import toolkit

    values = np.arange(320, dtype="f4").reshape(40, 8)
    ds = xr.Dataset({"v": (("t", "x"), da.from_array(values, chunks=(1, 8)))})
    store = zarr.storage.MemoryStore()
    lazy = toolkit.to_zarr(ds, store, encoding={"v": {"chunks": (2, 8)}}, compute=False)
    graph = lazy.__dask_graph__()
    ours = {n: layer for n, layer in graph.layers.items() if n.startswith("toolkit-")}
    assert any(n.startswith("toolkit-write-") for n in ours)
    kinds = {type(task).__name__ for layer in ours.values() for task in dict(layer).values()}
    assert all(isinstance(t, GraphNode) for lay in ours.values() for t in dict(lay).values()), kinds
    assert len(ours[next(n for n in ours if n.startswith("toolkit-write-"))]) == 20
    assert lazy.compute().units == 20
    np.testing.assert_array_equal(xr.open_zarr(store, consolidated=False).v.values, values)


def test_the_collector_is_paused_while_a_graph_is_built_and_resumed_as_it_was():
    import gc

    from toolkit._util import collector_paused

    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # a caller that had paused it keeps it paused
    finally:
        gc.enable()


class _Counts:
    def __init__(self) -> None:
        self.now = self.peak = 0
        self.caps: set[object] = set()
        self.lock = threading.Lock()


class _Peak(LocalStore):
    """Chunk requests in flight at once (each held 20 ms), and zarr's cap each one saw.

    A store of its own, not a wrapper: toolkit reads below any wrapper.
    """

    def __init__(self, root: Path, *, read_only: bool = False, counts: _Counts | None = None):
        super().__init__(root, read_only=read_only)
        self.counts = counts or _Counts()

    def with_read_only(self, read_only: bool = False) -> _Peak:
        return _Peak(self.root, read_only=read_only, counts=self.counts)

    async def _held(self, key, request):  # type: ignore[no-untyped-def]
        if "/c/" not in key:
            return await request
        c = self.counts
        with c.lock:
            c.now += 1
            c.peak = max(c.peak, c.now)
            c.caps.add(zarr.config.get("async.concurrency"))
        try:
            await asyncio.sleep(0.02)
            return await request
        finally:
            with c.lock:
                c.now -= 1

    async def get(self, key, prototype, byte_range=None):  # type: ignore[no-untyped-def]
        return await self._held(key, super().get(key, prototype, byte_range))

    async def set(self, key, value):  # type: ignore[no-untyped-def]
        return await self._held(key, super().set(key, value))


@pytest.mark.parametrize("inflight", [4, 40])
def test_a_task_keeps_its_share_in_flight_and_never_raises_zarrs_cap(tmp_path, inflight):
    """The budget's in-flight cap is reached in concurrent zarr calls, not by raising
    zarr's process-wide ``async.concurrency`` (other code in the process relies on it)."""
    cap = zarr.config.get("async.concurrency")
    store = _Peak(tmp_path / "d.zarr")
    values = np.arange(4000.0)
    policy = toolkit.Throttle(max_inflight=inflight)
    with dask.config.set(scheduler="sync"):  # one task at a time: the peak is one task's
        toolkit.to_zarr(
            xr.Dataset({"v": ("x", values)}),
            store,
            encoding={"v": {"chunks": (10,)}},
            throttle=policy,
            progress=False,
        )
        written, store.counts.peak = store.counts.peak, 0
        back = toolkit.open_zarr(store, throttle=policy).v.values
        read = store.counts.peak
    np.testing.assert_array_equal(back, values)
    assert store.counts.caps == {cap}
    if inflight > cap:
        assert cap < written <= inflight
        assert cap < read <= inflight
    else:
        assert written <= cap and read <= cap
