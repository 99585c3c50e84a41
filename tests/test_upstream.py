"""Each upstream private name toolkit uses (toolkit.upstream), checked on the installed release.

A test here fails when upstream changes the name toolkit relies on: it is gone or has
moved, its signature no longer takes what toolkit passes, or it behaves otherwise on a
small example. The message says what changed and which function of toolkit.upstream
stands for it: adapt that function (and this test) before raising the bound in
pyproject.toml. Real objects throughout: zarr's stores, xarray's ZarrStore, moto's S3
server through s3fs, an Icechunk repository on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.buffer import default_buffer_prototype
from zarr.buffer.cpu import Buffer
from zarr.storage import FsspecStore, LocalStore, MemoryStore, WrapperStore

from toolkit import upstream
from toolkit.upstream import sync


def _release(dist: str) -> str:
    return f"{dist} {importlib.metadata.version(dist)}"


@contextlib.contextmanager
def _upstream(what: str, via: str) -> Iterator[None]:
    """Fail naming the upstream change when using ``what`` (through ``via``) raises so."""
    dist = what.partition(".")[0]
    try:
        yield
    except (ImportError, AttributeError, TypeError) as e:
        pytest.fail(
            f"{_release(dist)} changed {what} (toolkit.upstream.{via} stands for it): "
            f"{type(e).__name__}: {e}"
        )


def _changed(what: str, via: str, how: str) -> str:
    dist = what.partition(".")[0]
    return f"{_release(dist)} changed {what} (toolkit.upstream.{via}): {how}"


def _takes(fn: Callable[..., Any], names: list[str], what: str, via: str) -> None:
    """``fn`` still takes each of ``names`` (as toolkit passes them)."""
    with _upstream(what, via):
        params = inspect.signature(fn).parameters
    missing = [n for n in names if n not in params]
    assert not missing, _changed(what, via, f"no parameter {missing} (it takes {list(params)})")


def _private(module: str, name: str, via: str) -> Any:
    with _upstream(f"{module}.{name}", via):
        return getattr(importlib.import_module(module), name)


# --------------------------------------------------------------------------- xarray


class _Capturing(upstream.ArrayWriter):
    """As toolkit's writer: dask sources captured, the rest written by xarray."""

    def __init__(self) -> None:
        super().__init__()
        self.captured: dict[str, tuple[Any, Any, Any]] = {}

    def add(self, source: Any, target: Any, region: Any = None) -> None:
        if isinstance(source, da.Array):
            self.captured[target.basename] = (source, target, region)
        else:
            super().add(source, target, region)


_WRITE = {
    "mode": "w-",
    "group": None,
    "consolidated": False,
    "append_dim": None,
    "region": None,
    "safe_chunks": False,
    "zarr_format": 3,
    "write_empty_chunks": None,
}


def test_xarrays_writer_functions_take_what_toolkit_passes():
    writers = "xarray.backends.writers"
    _takes(
        _private(writers, "get_writable_zarr_store", "writable_zarr_store"),
        ["store", *_WRITE],
        f"{writers}.get_writable_zarr_store",
        "writable_zarr_store",
    )
    _takes(
        _private(writers, "dump_to_store", "dump_to_store"),
        ["dataset", "store", "writer", "encoding"],
        f"{writers}.dump_to_store",
        "dump_to_store",
    )
    _takes(
        _private(writers, "to_zarr", "xarray_to_zarr"),
        [
            "dataset",
            "store",
            "mode",
            "encoding",
            "compute",
            "consolidated",
            "safe_chunks",
            "zarr_format",
        ],
        f"{writers}.to_zarr",
        "xarray_to_zarr",
    )


def test_the_metadata_round_creates_arrays_and_hands_dask_sources_to_the_writer():
    """toolkit's metadata round: xarray creates the arrays, toolkit keeps the dask sources."""
    ds = xr.Dataset({"a": ("x", da.arange(4, chunks=2))}, coords={"x": np.arange(4) * 10})
    store = MemoryStore()
    with _upstream("xarray.backends.writers.get_writable_zarr_store", "writable_zarr_store"):
        zstore = upstream.writable_zarr_store(store, **_WRITE)
    what = "xarray.backends.zarr.ZarrStore._validate_and_autodetect_region"
    with _upstream(what, "autodetect_region"):
        ds = upstream.autodetect_region(zstore, ds)
    writer = _Capturing()
    with _upstream("xarray.backends.writers.dump_to_store", "dump_to_store"):
        upstream.dump_to_store(ds, zstore, writer, encoding={"a": {"chunks": (2,)}})
    how = "the dask variable did not reach writer.add(source, target) as a zarr array"
    assert set(writer.captured) == {"a"}, _changed(
        "xarray.backends.writers.dump_to_store", "dump_to_store", how
    )
    source, target, _ = writer.captured["a"]
    assert isinstance(target, zarr.Array) and target.shape == (4,) and target.chunks == (2,), (
        _changed("xarray.backends.writers.dump_to_store", "dump_to_store", f"target {target}")
    )
    assert source is ds["a"].data
    group = zarr.open_group(store, mode="r")
    assert sorted(group.array_keys()) == ["a", "x"]
    # In-memory variables xarray writes itself, through ArrayWriter.add.
    assert group["x"][:].tolist() == [0, 10, 20, 30], _changed(
        "xarray.backends.common.ArrayWriter", "ArrayWriter", "in-memory data not written by add"
    )


def test_region_auto_is_resolved_against_the_stored_coordinates():
    store = MemoryStore()
    xr.Dataset({"a": ("x", np.arange(4))}, coords={"x": [0, 10, 20, 30]}).to_zarr(
        store, consolidated=False
    )
    part = xr.Dataset(
        {"a": ("x", da.from_array(np.array([7, 8]), chunks=2))}, coords={"x": [20, 30]}
    )
    zstore = upstream.writable_zarr_store(store, **{**_WRITE, "mode": "r+", "region": "auto"})
    what = "xarray.backends.zarr.ZarrStore._validate_and_autodetect_region"
    with _upstream(what, "autodetect_region"):
        out = upstream.autodetect_region(zstore, part)
    assert "x" not in out.variables, _changed(what, "autodetect_region", "the region's index kept")
    writer = _Capturing()
    upstream.dump_to_store(out, zstore, writer, encoding={})
    _, target, region = writer.captured["a"]
    assert target.shape == (4,) and region == (slice(2, 4),), _changed(
        what, "autodetect_region", f"region {region} for x=[20, 30] of [0, 10, 20, 30]"
    )


def test_xarrays_write_function_is_not_the_method(monkeypatch):
    """toolkit's probe writes do not come back to a routed ``Dataset.to_zarr``."""

    def routed(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("Dataset.to_zarr called")

    monkeypatch.setattr(xr.Dataset, "to_zarr", routed)
    probe = xr.Dataset({"probe": ("x", da.empty(3, chunks=-1))})
    store = MemoryStore()
    with _upstream("xarray.backends.writers.to_zarr", "xarray_to_zarr"):
        delayed = upstream.xarray_to_zarr(
            probe,
            store,
            mode="w",
            compute=False,
            consolidated=False,
            zarr_format=3,
            safe_chunks=False,
            encoding={"probe": {"chunks": (3,)}},
        )
    assert hasattr(delayed, "compute")
    assert zarr.open_array(store, path="probe").chunks == (3,)


def test_determine_zarr_chunks_checks_encoding_chunks_as_toolkit_expects():
    what, via = "xarray.backends.zarr._determine_zarr_chunks", "determine_zarr_chunks"
    fn = _private("xarray.backends.zarr", "_determine_zarr_chunks", via)
    _takes(fn, ["enc_chunks", "var_chunks", "ndim", "name"], what, via)
    with _upstream(what, via):
        assert upstream.determine_zarr_chunks(2, None, 2, "v") == (2, 2), _changed(
            what, via, "an int is no longer one chunk length per dimension"
        )
        assert upstream.determine_zarr_chunks((3,), None, 1, "v") == (3,)
        # Chunks of the wrong length are dropped (then zarr chooses): not an error.
        assert upstream.determine_zarr_chunks((3,), None, 2, "v") is None, _changed(
            what, via, "encoding chunks of the wrong length are no longer dropped"
        )
    # toolkit turns these into EncodingTypeError / EncodingError, as xarray raises them.
    with pytest.raises(TypeError, match="int or a tuple of ints"):
        upstream.determine_zarr_chunks(("a",), None, 1, "v")
    with pytest.raises(ValueError, match="Final chunk"):
        upstream.determine_zarr_chunks(None, ((2, 3),), 1, "v")


def test_extract_zarr_variable_encoding_refuses_unknown_keys():
    what = "xarray.backends.zarr.extract_zarr_variable_encoding"
    via = "extract_zarr_variable_encoding"
    fn = _private("xarray.backends.zarr", "extract_zarr_variable_encoding", via)
    _takes(fn, ["variable", "raise_on_invalid", "name", "zarr_format"], what, via)

    def var() -> xr.Variable:
        return xr.Variable(("x",), np.arange(4), encoding={"chunks": (2,), "nonsense": 1})

    with pytest.raises(ValueError, match="nonsense"):
        upstream.extract_zarr_variable_encoding(
            var(), raise_on_invalid=True, name="v", zarr_format=3
        )
    kept = upstream.extract_zarr_variable_encoding(
        var(), raise_on_invalid=False, name="v", zarr_format=3
    )
    assert kept == {"chunks": (2,)}, _changed(what, via, f"kept {kept}")


def test_encode_zarr_attr_value_makes_numpy_values_json():
    what, via = "xarray.backends.zarr.encode_zarr_attr_value", "encode_zarr_attr_value"
    _private("xarray.backends.zarr", "encode_zarr_attr_value", via)
    out = [upstream.encode_zarr_attr_value(v) for v in (np.int64(3), np.arange(2), "s")]
    assert out == [3, [0, 1], "s"] and type(out[0]) is int, _changed(what, via, f"{out}")


def test_a_variable_named_none_is_stored_as_xarray_names_it():
    what, via = "xarray.backends.common._encode_variable_name", "encode_variable_name"
    _private("xarray.backends.common", "_encode_variable_name", via)
    assert upstream.encode_variable_name(None) == "__values__", _changed(
        what, via, "not __values__"
    )
    assert upstream.encode_variable_name("a") == "a"


def test_dataarray_names_are_xarrays():
    """toolkit stores a DataArray under the names xarray's open_dataarray looks for."""
    assert upstream.DATAARRAY_VARIABLE == "__xarray_dataarray_variable__"
    assert upstream.DATAARRAY_NAME == "__xarray_dataarray_name__"
    store = MemoryStore()
    xr.DataArray(np.arange(3), dims="x").to_zarr(store, consolidated=False)
    assert list(zarr.open_group(store, mode="r").array_keys()) == [upstream.DATAARRAY_VARIABLE], (
        _changed("xarray.backends.api.DATAARRAY_VARIABLE", "DATAARRAY_VARIABLE", "not the name")
    )


def test_array_writer_takes_sources_and_targets():
    what, via = "xarray.backends.common.ArrayWriter", "ArrayWriter"
    _takes(upstream.ArrayWriter.add, ["source", "target", "region"], what, via)
    writer = upstream.ArrayWriter()
    assert writer.sources == [] and writer.targets == [], _changed(what, via, "no sources/targets")


def test_decode_cf_variable_decodes_one_variable():
    what, via = "xarray.conventions.decode_cf_variable", "decode_cf_variable"
    _private("xarray.conventions", "decode_cf_variable", via)
    var = xr.Variable(("x",), np.array([1, 2], "i2"), {"scale_factor": 0.5, "_FillValue": 2})
    out = upstream.decode_cf_variable("v", var)
    assert out.dtype == np.float64 and np.isnan(out.values[1]) and out.values[0] == 0.5, _changed(
        what, via, f"{out.values!r}"
    )


# --------------------------------------------------------------------------- zarr


def test_sync_runs_a_coroutine_on_zarrs_loop():
    with _upstream("zarr.core.sync.sync", "sync"):
        assert upstream.sync(asyncio.sleep(0, result=5)) == 5


@pytest.mark.parametrize(
    ("byte_range", "expected"),
    [
        (None, b"0123456789"),
        (RangeByteRequest(2, 5), b"234"),
        (OffsetByteRequest(7), b"789"),
        (SuffixByteRequest(4), b"6789"),
    ],
)
def test_byte_ranges_are_normalized_as_zarrs_stores_answer_them(byte_range, expected):
    what, via = "zarr.storage._utils._normalize_byte_range_index", "normalize_byte_range"
    fn = _private("zarr.storage._utils", "_normalize_byte_range_index", via)
    _takes(fn, ["data", "byte_range"], what, via)
    data = b"0123456789"
    start, stop = upstream.normalize_byte_range(Buffer.from_bytes(data), byte_range)
    assert data[start:stop] == expected, _changed(what, via, f"{byte_range} -> {start}:{stop}")
    # And as zarr's own store answers it.
    store = MemoryStore()
    sync(store.set("k", Buffer.from_bytes(data)))
    got = sync(store.get("k", default_buffer_prototype(), byte_range))
    assert got is not None and got.to_bytes() == expected


class _Counting(WrapperStore[Store]):
    """A wrapper counting its own gets, with zarr's sync-IO hook as given."""

    def __init__(self, store: Store, sync_io: bool = True) -> None:
        super().__init__(store)
        self.gets = 0
        self.sync_io = sync_io

    @property
    def _supports_sync_io(self) -> bool:
        return self.sync_io

    def _with_store(self, store: Store) -> _Counting:
        return type(self)(store, self.sync_io)

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        self.gets += 1
        return await self._store.get(key, prototype, byte_range)


def test_zarr_asks_a_stores_supports_sync_io_hook():
    what, via = "zarr.abc.store._store_supports_sync_io", "store_supports_sync_io"
    _private("zarr.abc.store", "_store_supports_sync_io", via)
    assert upstream.store_supports_sync_io(MemoryStore()), _changed(what, via, "MemoryStore")
    assert upstream.store_supports_sync_io(_Counting(MemoryStore(), sync_io=True))
    off = _Counting(MemoryStore(), sync_io=False)
    assert not upstream.store_supports_sync_io(off), _changed(
        what, via, "a store's _supports_sync_io = False is no longer asked"
    )
    # zarr's own wrapper forwards the store's answer through the same hook.
    assert not upstream.store_supports_sync_io(WrapperStore(off)), _changed(
        "zarr.storage.WrapperStore._supports_sync_io", "STORE_HOOKS", "not forwarded"
    )


def test_the_store_hooks_toolkit_overrides_are_still_zarrs():
    for name in upstream.STORE_HOOKS:
        assert hasattr(WrapperStore, name), _changed(
            f"zarr.storage.WrapperStore.{name}", "STORE_HOOKS", "gone"
        )
    _takes(Store._get_many, ["requests"], "zarr.abc.store.Store._get_many", "STORE_HOOKS")
    _takes(Store._set_many, ["values"], "zarr.abc.store.Store._set_many", "STORE_HOOKS")
    _takes(
        WrapperStore._with_store, ["store"], "zarr.storage.WrapperStore._with_store", "STORE_HOOKS"
    )
    # with_read_only rebuilds a wrapper through _with_store (toolkit's keep their settings).
    wrapper = _Counting(MemoryStore(), sync_io=False)
    copy = wrapper.with_read_only(True)
    assert isinstance(copy, _Counting) and copy.sync_io is False, _changed(
        "zarr.storage.WrapperStore.with_read_only", "STORE_HOOKS", "_with_store is not called"
    )
    assert upstream.wrapped_store(copy).read_only


def test_a_batch_read_through_get_is_one_get_of_the_wrapper_per_request():
    what, via = "zarr.abc.store.Store._get_many", "get_many_through_get"
    memory = MemoryStore()
    for k in "ab":
        sync(memory.set(k, Buffer.from_bytes(k.encode())))
    wrapper = _Counting(memory)
    proto = default_buffer_prototype()

    async def read(reads: Any) -> dict[str, bytes]:
        return {k: b.to_bytes() async for k, b in reads if b is not None}

    with _upstream(what, via):
        got = sync(read(upstream.get_many_through_get(wrapper, [(k, proto, None) for k in "ab"])))
    assert got == {"a": b"a", "b": b"b"} and wrapper.gets == 2, _changed(
        what, via, f"{got}, {wrapper.gets} gets of the wrapper"
    )


def test_a_wrapper_store_keeps_the_store_it_wraps():
    what, via = "zarr.storage.WrapperStore._store", "wrapped_store"
    memory = MemoryStore()
    with _upstream(what, via):
        assert upstream.wrapped_store(WrapperStore(memory)) is memory, _changed(what, via, "not it")
        assert upstream.wrapped_store(_Counting(WrapperStore(memory))).__class__ is WrapperStore


def test_a_memory_stores_dict_is_the_store():
    what, via = "zarr.storage.MemoryStore._store_dict", "memory_store_dict"
    given: dict[str, Any] = {}
    store = MemoryStore(store_dict=given)
    with _upstream(what, via):
        held = upstream.memory_store_dict(store)
    assert held is given, _changed(what, via, "not the dict the store was made with")
    sync(store.set("k", Buffer.from_bytes(b"v")))
    assert held["k"].to_bytes() == b"v", _changed(what, via, "a set does not land in it")
    held["j"] = Buffer.from_bytes(b"w")
    got = sync(store.get("j", default_buffer_prototype()))
    assert got is not None and got.to_bytes() == b"w", _changed(what, via, "a get does not read it")


def test_a_groups_async_group_reads_members_and_tells_missing_ones():
    what, via = "zarr.Group._async_group", "async_group"
    group = zarr.create_group(MemoryStore())
    group.create_array("a", shape=(2,), dtype="i4")
    with _upstream(what, via):
        node = upstream.async_group(group)
    assert isinstance(node, zarr.AsyncGroup) and node.store_path.path == "", _changed(
        what, via, f"{type(node)}"
    )
    assert isinstance(sync(node.getitem("a")), zarr.AsyncArray)
    # toolkit tells a missing member (a KeyError from a FileNotFoundError) from a damaged one.
    with pytest.raises(KeyError) as missing:
        sync(node.getitem("nothing"))
    assert isinstance(missing.value.__cause__, FileNotFoundError), _changed(
        "zarr.AsyncGroup.getitem", via, f"a missing member: {missing.value.__cause__!r}"
    )


def test_the_tasks_a_failed_concurrent_map_leaves_are_told_apart():
    what, via = "zarr.core.common.concurrent_iter", "is_zarr_chunk_task"
    concurrent_map = _private("zarr.core.common", "concurrent_map", via)

    async def one(i: int) -> None:
        if i == 0:
            raise RuntimeError("the first request fails")
        await asyncio.sleep(0.2)

    async def run() -> tuple[int, int]:
        with contextlib.suppress(RuntimeError):
            await concurrent_map([(i,) for i in range(4)], one, 2)
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        left = [t for t in tasks if upstream.is_zarr_chunk_task(t)]
        await asyncio.wait(tasks)
        return len(left), len(tasks)

    left, tasks = sync(run())
    assert left == tasks == 3, _changed(what, via, f"{left} of the {tasks} tasks left told")


# --------------------------------------------------------------------------- fsspec, s3fs


@pytest.fixture
def s3fs_fs(s3: Any) -> Any:
    import time

    bucket = f"upstream-{time.time_ns() % 10**9}"
    s3.create_bucket(bucket)
    base = FsspecStore.from_url(f"s3://{bucket}/p", storage_options=s3.storage_options())
    return base.fs, bucket


def test_s3fs_call_s3_sends_conditional_puts_and_gets(s3fs_fs):
    fs, bucket = s3fs_fs
    what, via = "s3fs.S3FileSystem._call_s3", "call_s3"
    _takes(type(fs)._call_s3, ["method"], what, via)
    with _upstream(what, via):
        put = sync(
            upstream.call_s3(fs, "put_object", Bucket=bucket, Key="p/a", Body=b"x", IfNoneMatch="*")
        )
    etag = put.get("ETag")
    assert etag, _changed(what, via, f"no ETag in {put}")
    # A refused conditional put: FileExistsError whose cause names S3's code (toolkit's test).
    with pytest.raises(FileExistsError) as refused:
        sync(
            upstream.call_s3(fs, "put_object", Bucket=bucket, Key="p/a", Body=b"y", IfNoneMatch="*")
        )
    code = getattr(refused.value.__cause__, "response", {}).get("Error", {}).get("Code")
    assert code == "PreconditionFailed", _changed(what, via, f"the refusal's cause: {code}")
    got = sync(upstream.call_s3(fs, "get_object", Bucket=bucket, Key="p/a"))

    async def body() -> bytes:
        try:
            return bytes(await got["Body"].read())
        finally:
            got["Body"].close()

    assert sync(body()) == b"x" and got["ETag"] == etag, _changed(what, via, "get_object")
    with pytest.raises(FileNotFoundError):
        sync(upstream.call_s3(fs, "get_object", Bucket=bucket, Key="p/none"))
    listed = sync(upstream.call_s3(fs, "list_objects_v2", Bucket=bucket, Prefix="p/"))
    assert [o["Key"] for o in listed["Contents"]] == ["p/a"] and not listed.get("IsTruncated")


def test_s3fs_pipe_file_creates_only_once(s3fs_fs):
    fs, bucket = s3fs_fs
    what, via = "fsspec.asyn.AsyncFileSystem._pipe_file", "pipe_file_create"
    _takes(type(fs)._pipe_file, ["path", "mode"], what, via)
    with _upstream(what, via):
        sync(upstream.pipe_file_create(fs, f"{bucket}/p/b", b"1"))
    with pytest.raises(FileExistsError):
        sync(upstream.pipe_file_create(fs, f"{bucket}/p/b", b"2"))


# --------------------------------------------------------------------------- icechunk


def _fields(data: bytes) -> list[bytes]:
    import msgpack

    unpacker = msgpack.Unpacker(raw=True, strict_map_key=False, max_buffer_size=len(data))
    unpacker.feed(data)
    out = []
    for _ in range(unpacker.read_array_header()):
        start = unpacker.tell()
        unpacker.skip()
        out.append(data[start : unpacker.tell()])
    return out


def test_icechunk_sessions_as_bytes_and_back(tmp_path):
    icechunk = pytest.importorskip("icechunk")
    what, via = "icechunk.Session._session", "session_bytes"
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "r")))
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="a", shape=(4,), chunks=(2,), dtype="i4", fill_value=0)
    session.commit("an array")
    session = repo.writable_session("main")
    untouched, written = session.fork(), session.fork()
    zarr.open_array(written.store, path="a", mode="r+")[:2] = [1, 2]
    with _upstream(what, via):
        mine, theirs = upstream.session_bytes(untouched), upstream.session_bytes(written)
    ours, fork = _fields(mine), _fields(theirs)
    n = upstream.ICECHUNK_SESSION_FIELDS
    assert len(ours) == len(fork) == n, _changed(
        "icechunk.Session.as_bytes", "ICECHUNK_SESSION_FIELDS", f"{len(fork)} fields, not {n}"
    )
    differ = {i for i in range(n) if ours[i] != fork[i]}
    assert differ <= set(upstream.ICECHUNK_FORK_FIELDS), _changed(
        "icechunk.Session.as_bytes", "ICECHUNK_FORK_FIELDS", f"a fork's writes in fields {differ}"
    )
    # toolkit's rebuild: the committer's own fields, the fork's snapshot id and change set.
    parts = [fork[i] if i in upstream.ICECHUNK_FORK_FIELDS else ours[i] for i in range(n)]
    with _upstream("icechunk._icechunk_python.PySession.from_bytes", "fork_from_bytes"):
        rebuilt = upstream.fork_from_bytes(bytes([0x90 | n]) + b"".join(parts))
    assert isinstance(rebuilt, icechunk.ForkSession)
    session.merge(rebuilt)
    session.commit("merged")
    stored = zarr.open_array(repo.readonly_session("main").store, path="a")[:]
    assert stored.tolist() == [1, 2, 0, 0], _changed(
        "icechunk.ForkSession", "fork_from_bytes", f"the merged fork holds {stored}"
    )


# --------------------------------------------------------------------------- the module


def test_a_name_upstream_removed_is_an_import_error_naming_it():
    with pytest.raises(ImportError, match=r"zarr\.storage\._utils\._gone, which zarr 3\."):
        upstream._private("zarr.storage._utils", "_gone")
    with pytest.raises(ImportError, match=r"xarray\.backends\.nowhere\.f, which xarray 20"):
        upstream._private("xarray.backends.nowhere", "f")
    with pytest.raises(ImportError, match=r"MemoryStore\._store_dict, which zarr"):
        upstream.memory_store_dict(LocalStore("/nonexistent"))  # type: ignore[arg-type]


def test_every_name_of_the_module_is_checked_here():
    """A name added to toolkit.upstream comes with a test in this file."""
    source = Path(__file__).read_text()
    unchecked = [name for name in upstream.__all__ if f"upstream.{name}" not in source]
    assert unchecked == [], "names of toolkit.upstream without a test in tests/test_upstream.py"
