"""Nothing lost at the edges: writes killed on events, stray temporary files, concurrent creators.

Every case reads the data back. The kill harness (``kill_jobs.py``) SIGKILLs a
real writer process at a named moment of its write; after the kill,
``toolkit.open_zarr`` must refuse the store or return exactly what an
uninterrupted run writes, and the same command run again must finish it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from zarr.storage import LocalStore

import toolkit
from toolkit.coordination.claim import group_contents
from toolkit.errors import ExistingStoreError, IncompleteStoreError
from toolkit.testing.conformance import CreationClaimTests

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import kill_jobs  # noqa: E402
from coordination_backends import Azure, Local, Memory, S3fs, S3Obstore  # noqa: E402

STEPS = 48  # 6 chunks of 8 steps: 6 write tasks of t2m

# Each event: op, when, nth, key pattern. "half-way" is the 3rd of 6 chunks.
EVENTS = {
    "first-object": "set:before:1:.",
    "begin": r"set:after:1:\.toolkit/resume/[^/]+/begin\.json$",
    "record": r"set:after:1:\.toolkit/writes/[^/]+\.json$",
    "first-array-metadata": r"set:after:1:^t2m/zarr\.json$",
    "metadata-round": r"set:after:1:\.toolkit/resume/[^/]+/metadata\.json$",
    "first-chunk": "set:after:1:^t2m/c/",
    "first-marker": r"set:after:1:\.toolkit/resume/[^/]+/t2m/[0-9]",
    "half-way": "set:after:3:^t2m/c/",
    "manifest": r"set:before:1:\.toolkit/manifest/",
    "record-removal": r"delete:before:1:\.toolkit/writes/[^/]+\.json$",
}
# A kill in the middle of a write leaves zarr's temporary file behind: planted here.
PLANTED = ["first-object", "record", "first-array-metadata", "first-chunk", "manifest"]
RESUMABLE_ONLY = {"begin", "metadata-round", "first-marker", "manifest"}


def _source() -> xr.Dataset:
    rng = np.random.default_rng(7)
    time = pd.date_range("2026-01-01", periods=STEPS, freq="h")
    t2m = (280 + rng.standard_normal((STEPS, 20, 30))).astype("float32")
    return xr.Dataset(
        {"t2m": (("time", "lat", "lon"), t2m, {"units": "K"})},
        coords={"time": time, "lat": np.linspace(-60, 60, 20), "lon": np.arange(30.0)},
        attrs={"title": "kill harness"},
    )


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One netCDF file (copy, to_zarr), 12 files of 4 steps (ingest), and each job's result."""
    root = tmp_path_factory.mktemp("sources")
    ds = _source()
    ds.to_netcdf(root / "all.nc", engine="h5netcdf")
    (root / "parts").mkdir()
    for i in range(0, STEPS, 4):
        ds.isel(time=slice(i, i + 4)).to_netcdf(root / "parts" / f"p{i:03d}.nc", engine="h5netcdf")
    out: dict[str, Any] = {"all": str(root / "all.nc"), "parts": str(root / "parts" / "*.nc")}
    for job in ("to_zarr", "ingest", "copy"):
        ref = root / f"ref-{job}.zarr"
        kill_jobs.run(job, "w-", _src(out, job), str(ref))  # uninterrupted
        out[job] = toolkit.open_zarr(ref).load()
        np.testing.assert_array_equal(out[job].t2m.values, ds.t2m.values)
    return out


def _src(sources: dict[str, Any], job: str) -> str:
    return str(sources["parts"] if job == "ingest" else sources["all"])


def _old_dataset(path: Path) -> None:
    """Something for mode 'w' to replace: other values, another shape."""
    old = _source().isel(time=slice(0, 10)) * 0 - 1
    old.to_zarr(path, mode="w")


def _kill(job: str, mode: str, src: str, dst: Path, event: str, plant: bool) -> int:
    env = {**os.environ, "TOOLKIT_KILL": EVENTS[event] + (":plant" if plant else "")}
    args = [sys.executable, str(HERE / "kill_jobs.py"), job, mode, src, str(dst)]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr[-3000:]
    return proc.returncode


def _opens_whole_or_refuses(dst: Path, want: xr.Dataset, old: xr.Dataset | None = None) -> str:
    """Whole, the ``old`` dataset untouched, or a refusal the docs promise: nothing else."""
    try:
        got = toolkit.open_zarr(dst).load()
    except (IncompleteStoreError, FileNotFoundError) as e:
        # FileNotFoundError: "no Zarr group" (killed before its group was written).
        return type(e).__name__
    if old is not None and got.sizes == old.sizes and got.identical(old):
        return "old"
    xr.testing.assert_identical(got, want)
    return "whole"


def _no_leftovers(dst: Path) -> None:
    assert not list(dst.rglob("*.partial")), list(dst.rglob("*.partial"))
    assert not (dst / ".toolkit" / "writes").exists() or not any(
        (dst / ".toolkit" / "writes").iterdir()
    )
    assert not (dst / ".toolkit" / "resume").exists()


CASES = [
    (job, mode, event, plant)
    for job in ("ingest", "copy", "to_zarr")
    for mode in ("w-", "w")
    for event in EVENTS
    for plant in (False, True)
    if (plant is False or event in PLANTED)
    and (job != "to_zarr" or event not in RESUMABLE_ONLY)
    # copy resumes by the same code as ingest: its 'w' runs sample the events.
    and not (job == "copy" and mode == "w" and plant)
]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("job", "mode", "event", "plant"), CASES)
def test_killed_write_refuses_or_is_whole_and_its_rerun_finishes(
    sources, tmp_path, job, mode, event, plant
):
    dst = tmp_path / "dst.zarr"
    old = None
    if mode == "w":
        _old_dataset(dst)
        old = toolkit.open_zarr(dst).load()
    src = _src(sources, job)
    rc = _kill(job, mode, src, dst, event, plant)
    assert rc == -signal.SIGKILL, f"the event {event!r} never came"
    state = _opens_whole_or_refuses(dst, sources[job], old)
    if state == "old":
        # A replacing write killed before its first object (its record) deleted nothing.
        assert event == "first-object", state
    if event in ("record-removal",):
        assert state == "IncompleteStoreError"  # the record goes last
    if job == "to_zarr" and mode == "w-" and group_contents(LocalStore(dst), None):
        # Not resumable: w- never overwrites, and says how to replace the leftovers.
        with pytest.raises(ExistingStoreError, match="mode='w'"):
            kill_jobs.run(job, mode, src, str(dst))
        mode = "w"
    kill_jobs.run(job, mode, src, str(dst))  # the same command again
    xr.testing.assert_identical(toolkit.open_zarr(dst).load(), sources[job])
    _no_leftovers(dst)
    if job != "to_zarr":
        mine = toolkit.verify(str(dst), progress=False)
        theirs = toolkit.verify(src, str(dst), concat_dim="time", progress=False)
        assert mine.ok and theirs.ok, (mine, theirs)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_overwrite_rerun_after_kill_starts_over_and_the_manifest_covers_every_object(
    sources, tmp_path
):
    """Hole 1: a killed --overwrite ingest, rerun, read back NaN where markers were."""
    dst = tmp_path / "dst.zarr"
    _old_dataset(dst)
    assert _kill("ingest", "w", sources["parts"], dst, "half-way", False) == -signal.SIGKILL
    kill_jobs.run("ingest", "w", sources["parts"], str(dst))
    back = toolkit.open_zarr(dst).load()
    assert int(back.t2m.isnull().sum()) == 0
    xr.testing.assert_identical(back, sources["ingest"])
    manifest = toolkit.coordination.records.read_manifest(LocalStore(dst))
    stored = {str(p.relative_to(dst)) for p in (dst / "t2m" / "c").rglob("*") if p.is_file()}
    assert stored and stored <= set(manifest)
    assert all((dst / k).exists() for k in manifest)  # only objects that exist


def test_stray_partial_files_are_no_data_and_are_cleaned(tmp_path):
    dst = tmp_path / "s.zarr"
    (dst / ".toolkit" / "writes").mkdir(parents=True)
    (dst / ".toolkit" / "writes" / "x.json.0123abcd.partial").write_bytes(b'{"sta')
    (dst / "zarr.json.89ab.partial").write_bytes(b"")
    assert group_contents(LocalStore(dst), None) == []
    toolkit.to_zarr(_source(), str(dst), progress=False)  # mode w-: the store is empty
    assert not list(dst.rglob("*.partial"))
    (dst / ".toolkit" / "writes").mkdir(parents=True, exist_ok=True)
    (dst / ".toolkit" / "writes" / "y.json.4567.partial").write_bytes(b"{")
    xr.testing.assert_identical(toolkit.open_zarr(dst).load(), _source())  # no JSONDecodeError


def test_an_undecodable_record_makes_readers_refuse(tmp_path):
    dst = tmp_path / "s.zarr"
    toolkit.to_zarr(_source(), str(dst), progress=False)
    (dst / ".toolkit" / "writes").mkdir(parents=True, exist_ok=True)
    (dst / ".toolkit" / "writes" / "damaged.json").write_bytes(b"{not json")
    with pytest.raises(IncompleteStoreError, match="unreadable"):
        toolkit.open_zarr(dst)


# -- the creation claim on every store that coordinates: toolkit's conformance suite --


class TestCreationClaimMemory(Memory, CreationClaimTests):
    pass


class TestCreationClaimLocal(Local, CreationClaimTests):
    pass


class TestCreationClaimS3Obstore(S3Obstore, CreationClaimTests):
    pass


class TestCreationClaimS3fs(S3fs, CreationClaimTests):
    pass


class TestCreationClaimAzure(Azure, CreationClaimTests):
    pass


def test_mode_w_replaces_a_zarr_store_only_on_an_object_store(s3, client):
    """A prefix of other files is refused, beside the lease's request, and left as it was.

    The check lists the target while the creation lease is taken (no round trip of its
    own); refused, the lease document it created is deleted again: the bucket holds
    exactly what it held. A Zarr store there is replaced as before.
    """
    bucket = f"foreign-{client}"
    s3.create_bucket(bucket)
    raw = s3.client()
    for key in ("other/report.csv", "other/raw/day1.bin"):
        raw.put_object(Bucket=bucket, Key=key, Body=b"years of work")

    def listing() -> list[tuple[str, str]]:
        out = raw.list_objects_v2(Bucket=bucket).get("Contents", [])
        return sorted((o["Key"], o["ETag"]) for o in out)

    before = listing()
    options = s3.storage_options()
    with pytest.raises(ExistingStoreError, match=r"not a Zarr store.*report\.csv"):
        toolkit.to_zarr(
            _source(), f"s3://{bucket}/other", mode="w", storage_options=options, progress=False
        )
    assert listing() == before
    url = f"s3://{bucket}/x.zarr"
    toolkit.to_zarr(_source(), url, mode="w", storage_options=options, progress=False)
    toolkit.to_zarr(_source() + 1, url, mode="w", storage_options=options, progress=False)
    xr.testing.assert_equal(toolkit.open_zarr(url, storage_options=options).load(), _source() + 1)


@pytest.mark.parametrize("creator", ["toolkit", "xarray"])
@pytest.mark.parametrize("kind", ["dataset", "tree"])
def test_a_creation_planned_on_an_empty_store_refuses_what_landed_since(s3, client, kind, creator):
    """``mode="w-"`` planned on an empty prefix, executed after another job created it there.

    Another toolkit job leaves its creation lease (the claim reads it, not only its
    listing beside); plain xarray leaves none (the listing beside the claim sees its
    keys). Either way the write is refused and the other dataset is read back intact:
    the listing beside the lease is only trusted when the claim made the lease's
    document and found nothing at all.
    """
    bucket = f"since-{kind}-{creator}-{client}"
    s3.create_bucket(bucket)
    url = f"s3://{bucket}/x.zarr"
    options = s3.storage_options()
    theirs = _source().isel(time=slice(0, 8)) + 1
    ours: Any = _source()
    if kind == "dataset":
        plan = toolkit.plan_write(ours, url, mode="w-", storage_options=options)
    else:
        from toolkit.write.tree import execute_tree, plan_tree_write

        child = xr.Dataset({"b": ("y", np.arange(3.0))})
        ours = xr.DataTree.from_dict({"/": _source(), "/child": child})
        plan = plan_tree_write(ours, url, mode="w-", storage_options=options)
    if creator == "toolkit":
        toolkit.to_zarr(theirs, url, mode="w-", storage_options=options, progress=False)
    else:
        from toolkit.io.stores import resolve_store

        theirs.to_zarr(resolve_store(url, storage_options=options), mode="w-")
    raw = s3.client()
    before = sorted(
        (o["Key"], o["ETag"]) for o in raw.list_objects_v2(Bucket=bucket).get("Contents", [])
    )
    with pytest.raises(ExistingStoreError, match="holds data since this write was planned"):
        if kind == "dataset":
            toolkit.execute(plan, progress=False)
        else:
            execute_tree(plan, progress=False)
    after = raw.list_objects_v2(Bucket=bucket).get("Contents", [])
    # Only the creation lease may differ (this job's claim on it, released).
    lease = "x.zarr/.toolkit/coord/leases/create.json"
    assert [k for k in before if k[0] != lease] == sorted(
        (o["Key"], o["ETag"]) for o in after if o["Key"] != lease
    )
    got = toolkit.open_zarr(url, storage_options=options, incomplete="raise").load()
    xr.testing.assert_identical(got, theirs)


def test_the_listing_beside_the_claim_is_trusted_only_when_the_claim_made_the_lease(
    tmp_path, monkeypatch
):
    """``take_claim`` says "empty" only for a listing of nothing under a lease it created.

    The listing is sent beside the lease's request, so it may be older than the
    claim: a lease document that exists (another creator's, released) means that
    creator may have written after the listing was served. Here the listing is
    made stale on purpose (it always finds nothing).
    """
    import toolkit.coordination.claim as claim_mod
    from toolkit.coordination.claim import CreationClaim, take_claim

    monkeypatch.setattr(claim_mod, "listing_is_free", lambda store: False)
    monkeypatch.setattr(claim_mod, "_listing", lambda store, group, limit=200: [])

    def taken(path: Path) -> bool:
        store = LocalStore(path)
        claim = CreationClaim(store, None, f"test-{path.name}")
        try:
            return take_claim(claim, store, None, mode="w-", guard=False)
        finally:
            claim.release()

    assert taken(tmp_path / "new.zarr") is True  # nothing there, and the lease is new
    toolkit.to_zarr(_source(), tmp_path / "made.zarr", mode="w-", progress=False)
    assert taken(tmp_path / "made.zarr") is False  # a creator held the lease before
    monkeypatch.setattr(claim_mod, "_listing", lambda store, group, limit=200: ["t2m/c/0/0/0"])
    assert taken(tmp_path / "other.zarr") is False  # the listing found something


# -- concurrent creators ----------------------------------------------------------


def _creator(
    rank: int,
    url: str,
    options: dict[str, Any] | None,
    trials: int,
    mode: str,
    barrier: Any,
    results: Any,
) -> None:
    import toolkit as tk

    for trial in range(trials):
        ds = _source().isel(time=slice(0, 16 + 8 * rank)) + rank  # each its own dataset
        ds = ds.chunk({"time": 8})
        barrier.wait(timeout=120)
        try:
            tk.to_zarr(
                ds,
                f"{url}/t{trial}.zarr",
                mode=mode,
                storage_options=options,
                encoding={"t2m": {"chunks": (8, 20, 30)}},
                progress=False,
            )
            results.put((trial, rank, "ok"))
        except ExistingStoreError as e:
            results.put((trial, rank, f"refused: {e}"))
        except Exception as e:  # reported to the test, which fails on it, with where
            import traceback

            where = "".join(traceback.format_exception(e)[-6:])
            results.put((trial, rank, f"error: {type(e).__name__}: {e}\n{where}"))


def _race(url: str, options: dict[str, Any] | None, n: int, mode: str, trials: int) -> dict:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [
        ctx.Process(target=_creator, args=(r, url, options, trials, mode, barrier, results))
        for r in range(n)
    ]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=600)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(10)
    out: dict[int, dict[int, str]] = {}
    while not results.empty():
        trial, rank, what = results.get()
        out.setdefault(trial, {})[rank] = what
    return out


def _check_race(outcomes: dict, n: int, mode: str, trials: int, read: Any) -> None:
    assert sorted(outcomes) == list(range(trials))
    for trial, by_rank in outcomes.items():
        assert len(by_rank) == n and not [w for w in by_rank.values() if w.startswith("error")], (
            by_rank
        )
        won = [r for r, w in by_rank.items() if w == "ok"]
        assert all(w == "ok" or w.startswith("refused") for w in by_rank.values()), by_rank
        if mode == "w-":
            assert len(won) == 1, by_rank  # exactly one creator wins
        else:
            assert len(won) == n, by_rank  # each replaces the store whole, one after another
        got = read(trial).load()
        ranks = [r for r in range(n) if got.sizes["time"] == 16 + 8 * r]
        assert len(ranks) == 1
        want = _source().isel(time=slice(0, 16 + 8 * ranks[0])) + ranks[0]
        xr.testing.assert_equal(got, want)  # one dataset, whole
        if mode == "w-":
            assert ranks == won


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("mode", ["w-", "w"])
def test_concurrent_creators_make_exactly_one_whole_dataset_local(tmp_path, n, mode):
    trials = 20
    outcomes = _race(str(tmp_path), None, n, mode, trials)
    _check_race(outcomes, n, mode, trials, lambda t: toolkit.open_zarr(tmp_path / f"t{t}.zarr"))


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("mode", ["w-", "w"])
def test_concurrent_creators_make_exactly_one_whole_dataset_s3(s3, client, n, mode):
    bucket = f"race-{n}-{mode.replace('-', 'x')}-{client}"
    s3.create_bucket(bucket)
    trials = 20
    options = s3.storage_options()
    outcomes = _race(f"s3://{bucket}", options, n, mode, trials)
    _check_race(
        outcomes,
        n,
        mode,
        trials,
        lambda t: toolkit.open_zarr(f"s3://{bucket}/t{t}.zarr", storage_options=options),
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", ["w-", "w"])
def test_concurrent_creators_make_exactly_one_whole_dataset_azure(azurite, mode):
    """The same race on Azure Blob Storage (Azurite, obstore): 4 creators, fewer trials.

    The claim is the same code on every store; what is Azure's own is the conditional
    create it rests on (``If-None-Match: *``, 409 BlobAlreadyExists), raced here.
    """
    n, trials = 4, 4
    container = f"race-{n}-{mode.replace('-', 'x')}-azure"
    azurite.create_container(container)
    options = azurite.storage_options()
    outcomes = _race(f"az://{container}", options, n, mode, trials)
    _check_race(
        outcomes,
        n,
        mode,
        trials,
        lambda t: toolkit.open_zarr(f"az://{container}/t{t}.zarr", storage_options=options),
    )


def test_a_creator_whose_listing_missed_a_racers_arrays_is_refused(tmp_path, monkeypatch):
    """The race above on Azure: the listing read empty, the group's documents then held arrays.

    The plan read both views of one store apart in time; it took the listing's word
    (empty) and failed an internal assertion on the arrays. Either view holding data
    now refuses, as a creation that lost the race.
    """
    from toolkit.write import plan as planning

    target = tmp_path / "raced.zarr"
    ds = _source().isel(time=slice(0, 8))
    toolkit.to_zarr(ds, target, progress=False)
    monkeypatch.setattr(planning, "_store_is_empty", lambda *a, **k: True)  # listed before
    with pytest.raises(ExistingStoreError, match="mode='w-' never overwrites"):
        toolkit.to_zarr(ds + 1, target, mode="w-", progress=False)
    xr.testing.assert_equal(toolkit.open_zarr(target).load(), ds)


# -- bad inputs: a toolkit error at plan time, the store untouched -----------------


def _bad_inputs() -> dict[str, Any]:
    import dask.array as da

    base = xr.Dataset({"v": (("t", "x"), np.zeros((4, 3)))}, coords={"t": np.arange(4)})
    return {
        "string region slice": (
            base.isel(t=slice(0, 2)),
            {"mode": "r+", "region": {"t": "0:2"}},
            IndexError,
        ),
        "unknown codec": (
            base,
            {"mode": "w", "encoding": {"v": {"compressors": ["nope"]}}},
            TypeError,
        ),
        "invalid _FillValue": (
            base,
            {"mode": "w", "encoding": {"v": {"_FillValue": "abc"}}},
            ValueError,
        ),
        "name with a slash": (base.rename(v="a/b"), {"mode": "w"}, ValueError),
        "name that is a number": (base.rename(v=5), {"mode": "w"}, TypeError),
        "zero-length dask dim, wrong chunks": (
            xr.Dataset({"e": (("t", "x"), da.zeros((0, 3), chunks=(1, 3)))}),
            {"mode": "w", "encoding": {"e": {"chunks": (0, 3)}}},
            ValueError,
        ),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_bad_input_is_refused_at_plan_time_and_the_store_is_byte_identical(tmp_path, case):
    from conftest import snapshot

    ds, kwargs, builtin = _bad_inputs()[case]
    dst = tmp_path / "s.zarr"
    toolkit.to_zarr(_bad_inputs()["unknown codec"][0], str(dst), progress=False)
    before = snapshot(dst)
    with pytest.raises(toolkit.errors.PlanError) as err:
        toolkit.to_zarr(ds, str(dst), progress=False, **kwargs)
    assert isinstance(err.value, builtin)
    assert snapshot(dst) == before
    fresh = tmp_path / "new.zarr"
    if kwargs["mode"] == "w":
        with pytest.raises(toolkit.errors.PlanError):
            toolkit.to_zarr(ds, str(fresh), progress=False, **kwargs)
        assert not fresh.exists()  # not even an empty directory


def test_an_empty_dask_dimension_is_written_as_xarray_writes_it(tmp_path):
    import dask.array as da

    ds = xr.Dataset({"e": (("t", "x"), da.zeros((0, 3), chunks=(1, 3)))})
    toolkit.to_zarr(ds, str(tmp_path / "e.zarr"), progress=False)
    back = toolkit.open_zarr(tmp_path / "e.zarr").load()
    assert back.e.shape == (0, 3)


def test_exhausted_retries_while_removing_the_record_warn_and_every_unit_landed(tmp_path):
    """Hole 6: a failing clean-up raised StoreUnavailableError after every unit landed."""
    from zarr.storage import WrapperStore

    from toolkit.errors import CleanupWarning

    class RecordStaysStore(WrapperStore[LocalStore]):
        """Deleting the write's record always fails with a dropped connection."""

        async def delete(self, key: str) -> None:
            if key.startswith(".toolkit/writes/"):
                raise ConnectionResetError("connection reset (injected)")
            await super().delete(key)

    dst = tmp_path / "s.zarr"
    policy = toolkit.Throttle(max_retries=2, max_retry_seconds=1.0)
    ds = _source().chunk({"time": 8})
    with pytest.warns(CleanupWarning, match="landed"):
        report = toolkit.to_zarr(
            ds, RecordStaysStore(LocalStore(dst)), mode="w", throttle=policy, progress=False
        )
    assert report.units == 6
    with pytest.raises(IncompleteStoreError):  # the record stays, so readers refuse...
        toolkit.open_zarr(dst)
    # ...though every value landed; a rerun removes the record.
    xr.testing.assert_identical(toolkit.open_zarr(dst, incomplete="ignore").load(), _source())
    toolkit.to_zarr(ds, str(dst), mode="w", progress=False)
    xr.testing.assert_identical(toolkit.open_zarr(dst).load(), _source())
