"""The runtime: where toolkit keeps what it holds while it runs, and how it is let go."""

from __future__ import annotations

import pickle
import threading

import dask
import numpy as np
import pytest
import xarray as xr
from zarr.storage import LocalStore, MemoryStore

import toolkit
from toolkit import runtime
from toolkit.cluster.client import _HOOKS, on_client
from toolkit.io.budget import _BUDGETS, budget_for, local_states
from toolkit.io.metrics import _PROCESS, process_totals
from toolkit.io.throttle import Throttle
from toolkit.runtime import Registry, Runtime, Slot
from toolkit.testing import FaultStore
from toolkit.write import graph, manyjobs

_THING: Slot[Registry[str, int]] = Slot("tests.thing", Registry)


def _ds() -> xr.Dataset:
    return xr.Dataset({"v": (("t", "x"), np.arange(64.0).reshape(8, 8))}).chunk({"t": 2})


def test_the_process_runtime_is_current_and_a_block_can_have_its_own():
    assert runtime.current() is runtime.process()
    with Runtime() as rt:
        assert runtime.current() is rt is not runtime.process()
        with Runtime() as inner:
            assert runtime.current() is inner
        assert runtime.current() is rt
    assert runtime.current() is runtime.process()


def test_close_drops_every_value_and_the_runtime_goes_on():
    rt = Runtime()
    rt.get(_THING).put("a", 1)
    assert rt.held() == ["tests.thing"]
    rt.close()
    assert rt.held() == [] and "a" not in rt.get(_THING)  # made again, empty


def test_state_made_in_a_runtime_stays_in_it():
    policy = Throttle(rate=123.0)
    with Runtime() as rt:
        mine = budget_for(policy, "runtime-test://a")
        assert budget_for(policy, "runtime-test://a") is mine  # shared within the runtime
        assert [s.store for s in local_states()] == ["runtime-test://a"]
    assert "runtime-test://a" not in [s.store for s in local_states()]
    assert rt.held() == []  # closed at the end of the block
    assert budget_for(policy, "runtime-test://a") is not mine


def test_threads_share_the_process_runtime():
    """A thread starts in the process's runtime: budgets of one store shared by all threads."""
    policy = Throttle(rate=7.0)
    seen = []
    threads = [
        threading.Thread(target=lambda: seen.append(budget_for(policy, "runtime-test://t")))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(b) for b in seen}) == 1
    assert seen[0] in runtime.process().get(_BUDGETS).values()


def test_a_runtime_pickles_as_the_receivers_current_one():
    with Runtime() as rt:
        assert pickle.loads(pickle.dumps(rt)) is rt
    assert pickle.loads(pickle.dumps(rt)) is runtime.process()


def test_a_new_runtime_starts_with_the_wiring_and_keeps_it_when_closed():
    def hook(client):
        pass

    with Runtime() as rt:
        on_client(hook)
        # The package's own hook (the dashboard's) came with it.
        assert toolkit.ensure_registered in rt.get(_HOOKS)
        with Runtime() as child:
            assert hook in child.get(_HOOKS)
        rt.close()
        assert hook in rt.get(_HOOKS)
    assert hook not in runtime.process().get(_HOOKS)
    assert Runtime(inherit=False).get(_HOOKS).keys() == []


def test_a_write_in_its_own_runtime_counts_its_io_there(tmp_path):
    store = str(tmp_path / "own.zarr")
    with Runtime() as rt, dask.config.set(scheduler="threads"):
        toolkit.to_zarr(_ds(), store, progress=False)
        mine = process_totals()
        assert any("own.zarr" in scope for scope in mine)
        assert not rt.get(graph._ABORTED)  # nothing failed, nothing kept
    assert not any("own.zarr" in scope for scope in process_totals())
    assert rt.get(_PROCESS).keys() == []


def test_a_failed_writes_abort_gate_is_dropped_when_it_ends(tmp_path):
    toolkit.to_zarr(_ds(), LocalStore(tmp_path / "f.zarr"), compute=False, progress=False)
    faulty = FaultStore(LocalStore(tmp_path / "f.zarr"), error_prob=1.0, match=r"/c/")
    with Runtime() as rt, dask.config.set(scheduler="threads"):
        with pytest.raises(Exception):  # noqa: B017 (whichever error the write reports)
            toolkit.to_zarr(_ds(), faulty, mode="r+", progress=False)
        assert rt.get(graph._ABORTED).keys() == []


def test_a_finished_targets_batch_queue_is_dropped(tmp_path):
    store = MemoryStore()
    toolkit.to_zarr(_ds(), store, progress=False)
    with Runtime() as rt:
        toolkit.append(_ds().isel(t=slice(0, 2)), store, "t", progress=False)
        batches = rt.get(manyjobs._BATCHES)
        assert batches.queues == {} and batches.leaders == set()


def _is_the_process_runtime(rt: Runtime) -> bool:
    return rt is runtime.process() and runtime.current() is runtime.process()


@pytest.mark.cluster
def test_a_runtime_sent_to_a_worker_process_is_that_process_s_own(cluster_client):
    with Runtime() as rt:
        assert cluster_client.submit(_is_the_process_runtime, rt, pure=False).result()
