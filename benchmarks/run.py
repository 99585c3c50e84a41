"""toolkit benchmark suite: side-by-side ratios against the incumbent, in one run.

    ./dev bench                      # everything, ~1 GiB, 3 repeats, prints tables
    ./dev bench --size 256MiB --repeat 1 --only write
    ./dev bench --report benchmarks/results/latest.md
    ./dev bench --only latency --repeat 1 --chains   # round trips of the small operations
    ./dev bench --only rechunk --rechunk-steps 1000,4000   # maps to series, peers, floor
    ./dev bench --only groupby --groupby-size 256MiB --repeat 1   # climatology, resample
    ./dev bench --only tree --repeat 1   # a DataTree of 13 small nodes, toolkit vs xarray

Every figure is a median of ``--repeat`` runs, measured in the same process on the
same data, so ratios hold on any machine; absolute seconds are for context only.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

import toolkit
from toolkit.commands import parse_size

warnings.filterwarnings("ignore", category=UserWarning)


@dataclass
class Row:
    case: str
    method: str
    seconds: float
    note: str = ""


def timed(fn: Callable[[], object], repeat: int, setup: Callable[[], None] | None = None) -> float:
    times = []
    for _ in range(repeat):
        if setup:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _busy_jiffies() -> tuple[int, int] | None:
    """All CPU time and busy CPU time of the machine so far (Linux), in jiffies."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    return sum(v), sum(v) - v[3] - v[4]


def cpu_timed(fn: Callable[[], object], repeat: int) -> tuple[float, float | None]:
    """Median wall seconds of ``fn``, and the median busy core-seconds of the whole machine.

    The machine's, not the process's: a local S3 server and proxy spend CPU on
    every request too, and on a small machine that CPU is the floor.
    """
    walls, busy = [], []
    hz = os.sysconf("SC_CLK_TCK")
    for _ in range(repeat):
        a = _busy_jiffies()
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        b = _busy_jiffies()
        if a is not None and b is not None:
            busy.append((b[1] - a[1]) / hz)
    return statistics.median(walls), (statistics.median(busy) if busy else None)


def fresh(path: Path) -> Callable[[], None]:
    return lambda: shutil.rmtree(path, ignore_errors=True)


def bench_write(tmp: Path, nbytes: int, repeat: int) -> list[Row]:
    """~nbytes of float32 to a local directory store, zstd (zarr's default)."""
    ny, nx = 512, 512
    nt = max(16, nbytes // (ny * nx * 4) // 16 * 16)
    rng = np.random.default_rng(0)
    # Smooth field plus noise: compresses like real data (not like pure noise).
    base = np.sin(np.linspace(0, 20, ny * nx, dtype="f4")).reshape(ny, nx)
    values = (base[None] + 0.1 * rng.standard_normal((nt, ny, nx), dtype="f4")).round(3)
    size = values.nbytes
    zchunks = (16, 256, 256)  # 4 MiB chunks
    aligned = xr.Dataset({"v": (("t", "y", "x"), da.from_array(values, chunks=(64, 512, 512)))})
    mis = xr.Dataset({"v": (("t", "y", "x"), da.from_array(values, chunks=(50, 300, 512)))})
    enc = {"v": {"chunks": zchunks}}
    out = tmp / "w.zarr"
    rows = []

    def encode() -> dict[str, bytes]:
        # The same chunks through zarr's own codec pipeline (its threads, all cores),
        # into memory: every byte a write must produce, and no I/O.
        mem = zarr.storage.MemoryStore()
        zarr.create_array(mem, shape=values.shape, chunks=zchunks, dtype="f4")[:] = values
        return {k: v.to_bytes() for k, v in mem._store_dict.items()}

    encoded = encode()

    def write_encoded() -> None:
        # Raw files of those encoded bytes, 2 threads: the I/O a write cannot avoid.
        out.mkdir(parents=True)

        def put(item: tuple[str, bytes]) -> None:
            (out / item[0].replace("/", "_")).write_bytes(item[1])

        with ThreadPoolExecutor(2) as ex:
            list(ex.map(put, encoded.items()))

    def zarr_alone() -> None:
        arr = zarr.create_array(out, shape=values.shape, chunks=zchunks, dtype="f4")
        arr[:] = values

    def xarray_aligned() -> None:
        aligned.to_zarr(out, encoding=enc, mode="w")

    def xarray_misaligned() -> None:
        mis.to_zarr(out, encoding=enc, mode="w", align_chunks=True)

    def tk(ds: xr.Dataset) -> Callable[[], None]:
        return lambda: toolkit.to_zarr(ds, out, mode="w", encoding=enc, progress=False)

    case = f"write {size / 2**30:.2f} GiB local"
    t_encode = timed(encode, repeat)
    t_write = timed(write_encoded, repeat, fresh(out))
    rows.append(Row(case, "floor part: zarr codec pipeline into memory", t_encode))
    rows.append(Row(case, "floor part: raw files of the encoded bytes", t_write))
    # Encoding and writing share two cores: their sum is what no pipeline beats by much.
    rows.append(Row(case, "floor: encode + write (the two above)", t_encode + t_write))
    rows.append(Row(case, "zarr alone (arr[:] = numpy)", timed(zarr_alone, repeat, fresh(out))))
    rows.append(
        Row(case + ", aligned", "xarray to_zarr", timed(xarray_aligned, repeat, fresh(out)))
    )
    rows.append(Row(case + ", aligned", "toolkit", timed(tk(aligned), repeat, fresh(out))))
    rows.append(
        Row(
            case + ", misaligned",
            "xarray align_chunks=True",
            timed(xarray_misaligned, repeat, fresh(out)),
        )
    )
    rows.append(Row(case + ", misaligned", "toolkit", timed(tk(mis), repeat, fresh(out))))
    got = xr.open_zarr(out).v.values
    assert np.array_equal(got, values), "toolkit's misaligned write read back different values"
    return rows


def bench_graph(tmp: Path, nchunks: int, repeat: int) -> list[Row]:
    """Client-side time before the first byte: plan + metadata + graph, until a scheduler has it.

    A dask scheduler (the local one, and distributed's client) first turns the
    graph into dask's task spec: a graph of legacy tuples is converted task by
    task then (seconds for 100,000 tasks), one built as ``dask.task_spec`` tasks
    is not. ``convert_legacy_graph`` is that step (dask's own, private: a
    benchmark may call it, toolkit does not).
    """
    from dask._task_spec import convert_legacy_graph

    ds = xr.Dataset({"v": (("t", "x"), da.zeros((nchunks, 8), chunks=(1, 8), dtype="f4"))})
    enc = {"v": {"chunks": (1, 8)}}
    out = tmp / "g.zarr"

    def ready(graph: Any) -> None:
        convert_legacy_graph(dict(graph.__dask_graph__()))

    def xr_build() -> None:
        ready(ds.to_zarr(out, encoding=enc, mode="w", compute=False))

    def tk_build() -> None:
        ready(toolkit.to_zarr(ds, out, encoding=enc, mode="w", compute=False))

    case = f"plan+graph, {nchunks // 1000}k chunks, until the scheduler has it"
    return [
        Row(case, "xarray to_zarr(compute=False)", timed(xr_build, repeat, fresh(out))),
        Row(case, "toolkit to_zarr(compute=False)", timed(tk_build, repeat, fresh(out))),
    ]


def bench_cloud(nbytes: int, latencies: list[float], repeat: int) -> list[Row]:
    """Write and read ~nbytes in 1 MiB chunks through the S3 proxy, 2 dask threads.

    Both clients are measured in the same run: toolkit through obstore (its
    default) and through s3fs, beside xarray's defaults (which use s3fs). The
    floors are the same encoded objects sent and fetched raw at toolkit's
    concurrency (64 in flight) by each client through the same proxy, and, for
    writes, zarr's codec pipeline encoding the chunks into memory.
    """
    import logging

    from toolkit.testing import FaultProxy, S3Server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    n = max(16, nbytes // 2**20 // 16 * 16)
    rng = np.random.default_rng(0)
    base = np.sin(np.linspace(0, 20, 512 * 512, dtype="f4")).reshape(512, 512)
    values = (base[None] + 0.1 * rng.standard_normal((n, 512, 512), dtype="f4")).round(3)
    # dask chunks = zarr chunks, as xarray.open_zarr gives them: one 1 MiB chunk per task.
    ds = xr.Dataset({"v": (("t", "y", "x"), da.from_array(values, chunks=(1, 512, 512)))})
    rows: list[Row] = []

    def encode() -> dict[str, bytes]:
        mem = zarr.storage.MemoryStore()
        zarr.create_array(mem, shape=values.shape, chunks=(1, 512, 512), dtype="f4")[:] = values
        return {k: v.to_bytes() for k, v in mem._store_dict.items() if "/c/" in f"/{k}"}

    t_encode, cpu_encode = cpu_timed(encode, repeat)
    blobs = encode()
    mem = zarr.storage.MemoryStore()
    zarr.create_array(mem, shape=values.shape, chunks=(1, 512, 512), dtype="f4")[:] = values
    t_decode, cpu_decode = cpu_timed(lambda: zarr.open_array(mem, mode="r")[:], repeat)
    cores = os.cpu_count() or 1
    with S3Server() as s3, dask.config.set(scheduler="threads", num_workers=2):
        s3.create_bucket("data")
        for lat in latencies:
            with FaultProxy(s3.endpoint_url, latency=lat) as proxy:
                opts = s3.storage_options(proxy.url)
                raw = {c: _raw_client(c, opts, blobs) for c in ("obstore", "s3fs")}
                case = f"{n} MiB in 1 MiB chunks, S3 + {lat * 1e3:.0f} ms"
                w = f"{case}, write"
                rows.append(Row(w, "floor part: zarr codec pipeline into memory", t_encode))
                cpu_put = None
                for c, (put, _) in raw.items():
                    t_put, cpu = cpu_timed(put, repeat)
                    cpu_put = cpu_put if c != "obstore" else cpu
                    rows.append(Row(w, f"floor: raw {c} PUTs, 64 in flight", t_put))
                if cpu_encode is not None and cpu_put is not None:
                    # Encoding and sending may overlap, but not beyond the cores: the
                    # machine's busy time of both (server included) over its cores.
                    rows.append(
                        Row(
                            w,
                            f"floor: CPU of encode + raw obstore PUTs / {cores} cores",
                            (cpu_encode + cpu_put) / cores,
                        )
                    )
                rows += _cloud_case(
                    case,
                    ds,
                    values,
                    f"s3://data/b{int(lat * 1e3)}.zarr",
                    opts,
                    repeat,
                    raw,
                    (t_decode, cpu_decode),
                )
    return rows


def bench_latency(lat: float, repeat: int) -> list[Row]:
    """1,024 chunks of 64 KiB through a slow link: latency, not CPU, is the cost.

    The floor is the requests times the latency over 64 in flight. zarr alone
    is one call over every chunk with 64 in flight, the best a single writer
    can do; toolkit's row is the whole write (creation lease, record, metadata
    and the data), with 2 dask threads.
    """
    import logging

    from toolkit.io.stores import resolve_store
    from toolkit.testing import FaultProxy, S3Server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    n = 1024
    values = np.random.default_rng(0).standard_normal((n, 128, 128), dtype="f4").round(2)
    ds = xr.Dataset({"v": (("t", "y", "x"), da.from_array(values, chunks=(1, 128, 128)))})
    enc = {"v": {"chunks": (1, 128, 128)}}
    case = f"{n} chunks of 64 KiB, S3 + {lat * 1e3:.0f} ms, write"
    with S3Server() as s3, dask.config.set(scheduler="threads", num_workers=2):
        s3.create_bucket("data")
        with FaultProxy(s3.endpoint_url, latency=lat) as proxy:
            opts = s3.storage_options(proxy.url)
            store = resolve_store(
                "s3://data/zarr.zarr", storage_options=opts, throttle=toolkit.Throttle()
            )
            arr = zarr.create_array(store, shape=values.shape, chunks=(1, 128, 128), dtype="f4")

            def zarr_alone() -> None:
                with zarr.config.set({"async.concurrency": 64}):
                    arr[:] = values

            def tk() -> None:
                toolkit.to_zarr(
                    ds,
                    "s3://data/tk.zarr",
                    mode="w",
                    storage_options=opts,
                    encoding=enc,
                    progress=False,
                )

            return [
                Row(case, "floor: requests x latency / 64 in flight", n * lat / 64),
                Row(
                    case,
                    "zarr alone (one call, 64 in flight, data only)",
                    timed(zarr_alone, repeat),
                ),
                Row(case, "toolkit (the whole write)", timed(tk, repeat)),
            ]


_CASES = {
    "create": "create (mode='w') of one step",
    "append": "append one step",
    "region": "region write of one step",
    "partition": "partition overwrite of one partition (one step)",
    "stream batch": "stream ingest: one batch (4 one-step pieces appended)",
    "open": "open_zarr",
    "verify": "verify against the manifest",
    "stats": "stats(mean): open and one pass",
}


def bench_round_trips(
    latencies: list[float], repeat: int, chains: bool = False
) -> tuple[list[Row], str]:
    """The small operations of issue 28 over a slow link: seconds and serial round trips.

    12 float32 variables of 90 x 180, one chunk per variable and step, on moto's
    S3 server behind the proxy at each latency. Each operation is
    ``toolkit.testing.roundtrips.measure`` (the public call a user makes) with
    both clients; the serial round trips are the critical path of the requests
    the proxy recorded (``toolkit.testing.ledger``), not a division of times.
    Beside them, in the same run: xarray's ``to_zarr`` on zarr's ``ObjectStore``
    (obstore) for create, append and region write, and Icechunk (open the
    repository, a writable session, ``to_icechunk``, commit) for the append.
    Seconds are medians of ``repeat`` runs; round trips the range over them.
    """
    import logging

    from toolkit.testing import FaultProxy, S3Server
    from toolkit.testing.ledger import LedgerSummary
    from toolkit.testing.roundtrips import OPERATIONS, measure

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    rows: list[Row] = []
    # (operation, method) -> latency -> (median seconds, round trips, requests)
    grid: dict[tuple[str, str], dict[float, tuple[float, str, int]]] = {}
    shown: list[str] = []

    def record(op: str, method: str, lat: float, runs: list[tuple[float, LedgerSummary]]) -> None:
        trips = sorted({r[1].round_trips for r in runs})
        rt = f"{trips[0]}" if len(trips) == 1 else f"{trips[0]}-{trips[-1]}"
        n = runs[-1][1].requests
        sec = statistics.median(r[0] for r in runs)
        grid.setdefault((op, method), {})[lat] = (sec, rt, n)
        case = f"{_CASES[op]}, 12 vars 90x180 f32, S3 + {lat * 1e3:.0f} ms"
        rows.append(Row(case, f"{method}: {rt} serial round trips, {n} requests", sec))

    with S3Server() as s3, dask.config.set(scheduler="threads"):
        s3.create_bucket("data")
        for lat in latencies:
            with FaultProxy(s3.endpoint_url, latency=lat) as proxy:
                for client in ("obstore", "s3fs"):  # warm: imports, sessions, credentials
                    measure(s3, proxy, "open", client=client)
                for op in OPERATIONS:
                    for client in ("obstore", "s3fs"):
                        method = (
                            "toolkit (obstore, the default)"
                            if client == "obstore"
                            else "toolkit with client='s3fs'"
                        )
                        ms = [measure(s3, proxy, op, client=client) for _ in range(repeat)]
                        record(op, method, lat, [(m.seconds, m.summary) for m in ms])
                        if chains and lat == max(latencies):
                            shown.append(f"{op}, {method}, {lat * 1e3:.0f} ms: {ms[-1].summary}")
                    for method, peer in _peers(s3, proxy, op):
                        record(op, method, lat, [peer() for _ in range(repeat)])
    blocks = []
    for op in OPERATIONS:
        head = "| method | " + " | ".join(
            f"{lat * 1e3:.0f} ms: seconds | {lat * 1e3:.0f} ms: serial round trips"
            for lat in latencies
        )
        lines = [
            f"{_CASES[op]}:",
            "",
            head + " | requests |",
            "|---|" + "---:|---:|" * len(latencies) + "---:|",
        ]
        for (o, method), by_lat in grid.items():
            if o != op:
                continue
            cells = " | ".join(
                f"{by_lat[lat][0]:.2f} | {by_lat[lat][1]}" if lat in by_lat else " | "
                for lat in latencies
            )
            n = by_lat[max(by_lat)][2]
            lines.append(f"| {method} | {cells} | {n} |")
        blocks.append("\n".join(lines))
    text = (
        "Round trips of the small operations (serial round trips: the critical path of "
        "the requests the proxy recorded):\n\n" + "\n\n".join(blocks) + "\n"
    )
    if shown:
        text += "\nThe critical paths (toolkit):\n\n" + "\n\n".join(shown) + "\n"
    return rows, text


def _peers(s3: Any, proxy: Any, op: str) -> list[tuple[str, Callable[[], tuple[float, Any]]]]:
    """The incumbents of ``op``, each a call that sets itself up and measures one run.

    Each is set up straight on the server (not recorded), then timed through the
    proxy with a ledger: (seconds, the ledger's summary).
    """
    import itertools

    from toolkit.testing.ledger import summarize
    from toolkit.testing.roundtrips import dataset

    if op not in ("create", "append", "region"):
        return []
    import obstore.store
    from zarr.storage import ObjectStore

    counter = itertools.count()
    enc = {f"v{i:02d}": {"chunks": (1, 90, 180)} for i in range(12)}

    def zstore(prefix: str, endpoint: str) -> ObjectStore:
        s = obstore.store.S3Store(
            "data",
            prefix=prefix,
            endpoint=endpoint,
            access_key_id="testing",
            secret_access_key="testing",
            region="us-east-1",
            client_options={"allow_http": True},
        )
        return ObjectStore(s, read_only=False)

    def timed_ledger(fn: Callable[[], object]) -> tuple[float, Any]:
        with proxy.ledger() as ledger:
            t0 = time.perf_counter()
            fn()
            sec = time.perf_counter() - t0
        return sec, summarize(ledger.requests)

    def xr_run() -> tuple[float, Any]:
        name = f"peer-xr-{op}-{next(counter)}-{time.time_ns()}.zarr"
        direct = zstore(name, s3.endpoint_url)
        store = zstore(name, proxy.url)
        if op == "create":
            return timed_ledger(lambda: dataset(1).to_zarr(store, mode="w", encoding=enc))
        dataset(2 if op == "region" else 1).to_zarr(direct, mode="w", encoding=enc)
        if op == "append":
            return timed_ledger(lambda: dataset(1, 1).to_zarr(store, append_dim="time"))
        step = dataset(1, 1).drop_vars(["lat", "lon"])
        return timed_ledger(lambda: step.to_zarr(store, region={"time": slice(1, 2)}))

    peers: list[tuple[str, Callable[[], tuple[float, Any]]]] = [
        ("xarray to_zarr + zarr ObjectStore (obstore)", xr_run)
    ]
    try:
        import icechunk
        from icechunk.xarray import to_icechunk
    except ImportError:
        return peers
    if op != "append":
        return peers

    def storage(prefix: str, endpoint: str) -> Any:
        return icechunk.s3_storage(
            bucket="data",
            prefix=prefix,
            region="us-east-1",
            endpoint_url=endpoint,
            allow_http=True,
            access_key_id="testing",
            secret_access_key="testing",
            force_path_style=True,
        )

    def ice_run() -> tuple[float, Any]:
        name = f"peer-ice-{next(counter)}-{time.time_ns()}"
        repo = icechunk.Repository.create(storage(name, s3.endpoint_url))
        session = repo.writable_session("main")
        to_icechunk(dataset(1), session, mode="w", encoding=enc)
        session.commit("create")

        def append() -> None:
            repo = icechunk.Repository.open(storage(name, proxy.url))
            session = repo.writable_session("main")
            to_icechunk(dataset(1, 1), session, append_dim="time")
            session.commit("append one step")

        return timed_ledger(append)

    return [*peers, ("Icechunk (open, write, commit)", ice_run)]


def bench_budget(repeat: int) -> tuple[list[Row], str]:
    """A strict store limit, 4 worker processes: the rate a budget delivers.

    moto's S3 server behind the proxy allowing 100 requests/s with a burst of 10
    (503 SlowDown above it); 900 one-row chunks of 256 B. toolkit with
    ``Throttle(rate=90)`` and with the S3 defaults (3,000 writes/s, adaptive),
    beside xarray's ``to_zarr`` with dask and s3fs's own retries. The floor is
    the requests at 90/s. Also the discrete-event model's table at N = 10, 100
    and 1,000 workers sharing 3,000/s (``toolkit.testing.ratesim``).
    """
    import logging

    from distributed import Client, LocalCluster

    from toolkit.testing import FaultProxy, S3Server
    from toolkit.testing.ratesim import Scenario, simulate

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    n = 900
    values = np.arange(n * 64, dtype="f4").reshape(n, 64)
    ds = xr.Dataset({"v": (("t", "x"), values)}).chunk({"t": 50})
    enc = {"v": {"chunks": (1, 64)}}
    case = f"{n} chunks, 4 workers, a store allowing 100 req/s (burst 10), write"
    rows: list[Row] = []
    with (
        S3Server() as s3,
        LocalCluster(
            n_workers=4,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=40,
        ) as cluster,
        Client(cluster) as client,
        FaultProxy(s3.endpoint_url, rate=100, burst=10) as proxy,
    ):
        s3.create_bucket("data")
        opts = s3.storage_options(proxy.url)
        client.run(__import__, "toolkit")
        toolkit.to_zarr(
            ds.isel(t=slice(0, 8)),
            "s3://data/warm.zarr",
            storage_options=opts,
            encoding=enc,
            progress=False,
        )

        def measured(name: str, fn: Callable[[], object]) -> int:
            """Best of ``repeat`` runs as a row; the requests that run sent."""
            best: tuple[float, int, int] | None = None
            for _ in range(repeat):
                r0, th0 = proxy.counts.requests, proxy.counts.throttled
                t = time.perf_counter()
                try:
                    fn()
                except Exception as e:  # the incumbent may give up: say so
                    rows.append(
                        Row(case, f"{name}: failed ({type(e).__name__})", time.perf_counter() - t)
                    )
                    return 0
                e = time.perf_counter() - t
                got = e, proxy.counts.requests - r0, proxy.counts.throttled - th0
                if best is None or got[0] < best[0]:
                    best = got
            assert best is not None
            e, req, th = best
            rows.append(
                Row(
                    case,
                    f"{name}: {(req - th) / e:.0f}/s delivered, {th / max(req, 1):.1%} throttled",
                    e,
                )
            )
            return req - th

        k = iter(range(10**6))
        requests = measured(
            "toolkit with Throttle(rate=90)",
            lambda: toolkit.to_zarr(
                ds,
                f"s3://data/tk{next(k)}.zarr",
                storage_options=opts,
                encoding=enc,
                throttle=toolkit.Throttle(rate=90),
                progress=False,
            ),
        )
        measured(
            "toolkit with the S3 defaults (adaptive)",
            lambda: toolkit.to_zarr(
                ds,
                f"s3://data/td{next(k)}.zarr",
                storage_options=opts,
                encoding=enc,
                progress=False,
            ),
        )
        measured(
            "xarray.to_zarr + dask (s3fs retries)",
            lambda: ds.to_zarr(
                f"s3://data/xr{next(k)}.zarr",
                storage_options=opts,
                encoding=enc,
                mode="w",
                zarr_format=3,
                consolidated=False,
            ),
        )
        for r in range(repeat):
            back = xr.open_zarr(f"s3://data/tk{r}.zarr", storage_options=s3.storage_options())
            _check(back.v.values, values)
    # The floor: toolkit's own requests (chunks, metadata, record, lease) at exactly 90/s.
    rows.insert(0, Row(case, f"floor: {requests} requests at 90/s", requests / 90))

    lines = [
        "| workers | budget | delivered, worst 1 s | peak 0.1 s | 503s | messages/s, peak 1 s "
        "| newcomer's share after | model CPU s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for workers in (10, 100, 1000):
        t = time.perf_counter()
        o = simulate(
            Scenario(
                workers=workers, rate=3000.0, limit=3500.0, duration=10.0, die=(3, 4.0), join=7.0
            )
        )
        cpu = time.perf_counter() - t
        worst = min(o.delivered(a, a + 1) for a in range(1, 10)) / 3000
        lines.append(
            f"| {workers:,} | 3,000/s | {worst:.1%} | {o.peak(0.5, 10.0) / 3000:.1%} | "
            f"{o.throttled():.1%} | {o.peak_messages(2.9, 10.0):.0f} | "
            f"{o.share_after_join():.2f} s | {cpu:.1f} |"
        )
    return rows, "\n".join(lines)


def _raw_client(
    client: str, opts: dict[str, object], blobs: dict[str, bytes]
) -> tuple[Callable[[], None], Callable[[], None]]:
    """PUT and GET every object at 64 in flight, with nothing of toolkit's in the way."""
    import asyncio

    keys = [f"raw-{client}/{k}" for k in blobs]
    if client == "s3fs":
        import s3fs

        so = {k: v for k, v in opts.items() if k != "client"}
        cfg = {"max_pool_connections": 64}
        fs = s3fs.S3FileSystem(**so, config_kwargs=cfg, skip_instance_cache=True)  # type: ignore[arg-type]
        paths = [f"data/{k}" for k in keys]
        return (
            lambda: fs.pipe(dict(zip(paths, blobs.values(), strict=True)), batch_size=64),
            lambda: fs.cat(paths, batch_size=64),
        )
    import obstore

    from toolkit.io.stores import resolve_store

    store = resolve_store("s3://data", storage_options=opts).store  # type: ignore[attr-defined]

    async def each(fn: Callable[..., object], *args: object) -> None:
        gate = asyncio.Semaphore(64)

        async def one(*a: object) -> None:
            async with gate:
                r = await fn(store, *a)  # type: ignore[misc]
                if hasattr(r, "bytes_async"):
                    await r.bytes_async()

        await asyncio.gather(*(one(*a) for a in zip(*args, strict=True)))

    return (
        lambda: asyncio.run(each(obstore.put_async, keys, list(blobs.values()))),
        lambda: asyncio.run(each(obstore.get_async, keys)),
    )


def _cloud_case(
    case: str,
    ds: xr.Dataset,
    values: np.ndarray,
    url: str,
    opts: dict[str, object],
    repeat: int,
    raw: dict[str, tuple[Callable[[], None], Callable[[], None]]],
    decode: tuple[float, float | None],
) -> list[Row]:
    enc = {"v": {"chunks": (1, 512, 512)}}
    plain = {k: v for k, v in opts.items() if k != "client"}  # xarray's (fsspec's) options

    def xr_write() -> None:
        ds.to_zarr(url, storage_options=plain, encoding=enc, mode="w")

    def tk_write(client: str) -> Callable[[], None]:
        o = {**opts, "client": client}
        return lambda: toolkit.to_zarr(
            ds, url, mode="w", storage_options=o, encoding=enc, progress=False
        )

    def xr_read() -> None:
        assert np.array_equal(xr.open_zarr(url, storage_options=plain).v.values, values)

    def tk_read(client: str) -> Callable[[], None]:
        o = {**opts, "client": client}
        return lambda: _check(toolkit.open_zarr(url, storage_options=o).v.values, values)

    w, r = f"{case}, write", f"{case}, read"
    floors, cpu_get = [], None
    for c, (_, get) in raw.items():
        t_get, cpu = cpu_timed(get, repeat)
        cpu_get = cpu if c == "obstore" else cpu_get
        floors.append(Row(r, f"floor: raw {c} GETs, 64 in flight", t_get))
    if decode[1] is not None and cpu_get is not None:
        cores = os.cpu_count() or 1
        floors.append(
            Row(
                r,
                f"floor: CPU of raw obstore GETs + decode / {cores} cores",
                (cpu_get + decode[1]) / cores,
            )
        )
    return [
        Row(w, "xarray to_zarr (dask, defaults: s3fs)", timed(xr_write, repeat)),
        Row(w, "toolkit (obstore, the default)", timed(tk_write("obstore"), repeat)),
        Row(w, "toolkit with client='s3fs'", timed(tk_write("s3fs"), repeat)),
        Row(r, "floor part: zarr decode from memory", decode[0]),
        *floors,
        Row(r, "xarray open_zarr (dask, defaults: s3fs)", timed(xr_read, repeat)),
        Row(r, "toolkit (obstore, the default)", timed(tk_read("obstore"), repeat)),
        Row(r, "toolkit with client='s3fs'", timed(tk_read("s3fs"), repeat)),
    ]


def _check(got: np.ndarray, want: np.ndarray) -> None:
    assert np.array_equal(got, want)


def bench_stats(tmp: Path, nbytes: int, repeat: int) -> list[Row]:
    """count/mean/std/min/max/histogram of ~nbytes float32 zstd on a local store.

    The incumbent is xarray on ``xr.open_zarr`` (dask chunks = zarr chunks):
    separate computes, and one ``dask.compute`` of the same lazy results. The
    floor reads and decodes every chunk and does nothing with it.
    """
    ny, nx = 512, 512
    nt = max(16, nbytes // (ny * nx * 4) // 16 * 16)
    path = tmp / "stats.zarr"
    base = np.sin(np.linspace(0, 20, ny * nx, dtype="f4")).reshape(ny, nx)
    noise = da.random.default_rng(0).standard_normal((nt, ny, nx), chunks=(64, ny, nx))
    data = (base[None] + 0.1 * noise.astype("f4")).round(3)
    ds = xr.Dataset({"v": (("t", "y", "x"), data)})
    toolkit.to_zarr(ds, path, mode="w", encoding={"v": {"chunks": (16, 256, 256)}}, progress=False)
    size = nt * ny * nx * 4
    edges = (-1.5, 1.5)

    def lazy() -> list[object]:
        v = xr.open_zarr(path).v
        hist = da.histogram(v.data, bins=100, range=edges)[0]
        return [v.count(), v.mean(), v.std(), v.min(), v.max(), hist]

    def separate() -> None:
        for r in lazy():
            r.compute()  # type: ignore[attr-defined]

    def together() -> None:
        dask.compute(*lazy())

    def floor() -> None:
        d = toolkit.open_zarr(path).v.data
        d.map_blocks(lambda b: np.zeros((1,) * b.ndim), chunks=(1,) * d.ndim).sum().compute()

    def tk() -> None:
        toolkit.stats(
            path,
            stats=["count", "mean", "std", "min", "max"],
            bins=100,
            bin_range=edges,
            progress=False,
        )

    got = toolkit.stats(path, stats=["mean", "std"], progress=False)
    v = xr.open_zarr(path).v.astype("f8")
    assert abs(float(got.v_mean) - float(v.mean())) <= 1e-9 * float(abs(v).mean())
    case = f"stats {size / 2**30:.2f} GiB f32 zstd, 6 statistics"
    return [
        Row(case, "floor: read + decode every chunk", timed(floor, repeat)),
        Row(case, "xarray, separate computes", timed(separate, max(1, repeat - 1))),
        Row(case, "xarray, one dask.compute", timed(together, repeat)),
        Row(case, "toolkit stats()", timed(tk, repeat)),
    ]


def _flox() -> str:
    """`` + flox <version>`` when xarray's groupby runs through flox (installed), else ""."""
    try:
        import flox
    except ImportError:
        return " (flox not installed)"
    return f" + flox {flox.__version__}" if xr.get_options()["use_flox"] else ""


def _bare_count() -> Callable[[np.ndarray], None] | None:
    """The least work a quantile sketch of every cell can do after decoding, compiled.

    Each float32 value adds one to a slot of its cell's table, picked by six
    of its bits (no bucket arithmetic at all: no sketch's mapping is cheaper),
    cells in tiles of 256 so that the tables stay in cache, each tile's table
    read and reset once. A sketch does this and more (its buckets' mapping,
    their range per cell, its state out and merged), so ``floor + this`` is
    below any sketch's time. None without numba.
    """
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(nogil=True)
    def count(bits: np.ndarray, table: np.ndarray) -> int:  # pragma: no cover - compiled
        size, ncells = bits.shape
        slots = np.empty(256, np.int64)
        seen = 0
        for c0 in range(0, ncells, 256):
            width = min(256, ncells - c0)
            for t in range(size):
                row = bits[t, c0 : c0 + width]
                for cc in range(width):
                    slots[cc] = cc * 64 + ((np.int64(row[cc]) >> 17) & 63)
                for cc in range(width):
                    table[slots[cc]] += 1
            for j in range(table.size):
                seen += table[j] != 0
                table[j] = 0
        return seen

    def run(block: np.ndarray) -> None:
        rows = np.ascontiguousarray(block, dtype=np.float32).reshape(block.shape[0], -1)
        count(rows.view(np.uint32), np.zeros(256 * 64, np.int32))

    return run


def bench_groupby(tmp: Path, nbytes: int, repeat: int) -> list[Row]:
    """Monthly climatology and daily resample of hourly float32 zstd data, 6 statistics.

    count, mean, std, min, max and quantiles 0.05/0.5/0.95 per group, kept
    (y, x) maps. toolkit computes all in one pass; xarray computes the same
    six in one ``dask.compute``: its groupby/resample reductions on
    ``xr.open_zarr`` (dask chunks = zarr chunks) and its groupby quantile,
    which needs each group in one chunk, so the climatology's quantiles
    include the rechunk to whole time series (space split to keep chunks
    ~64 MiB); the daily groups lie in one chunk each (chunks are whole
    weeks), so the resample's need none. The floor reads and decodes every
    chunk and does nothing with it. Every statistic of toolkit's is checked
    against xarray's in the same run: counts and extrema equal, moments
    within float32 rounding, quantiles within the sketch's bound.
    """
    import pandas as pd
    from xarray.groupers import TimeResampler

    ny, nx = 64, 128
    week = 168
    nt = max(2 * week, nbytes // (ny * nx * 4) // week * week)
    path = tmp / "groupby.zarr"
    base = np.sin(np.linspace(0, 20, ny * nx, dtype="f4")).reshape(ny, nx)
    noise = da.random.default_rng(0).standard_normal((nt, ny, nx), chunks=(week, ny, nx))
    data = (base[None] + 0.1 * noise.astype("f4")).round(3)
    time = pd.date_range("2001-01-01", periods=nt, freq="h")
    ds = xr.Dataset({"v": (("time", "y", "x"), data)}, coords={"time": time})
    toolkit.to_zarr(ds, path, mode="w", encoding={"v": {"chunks": (week, ny, nx)}}, progress=False)
    size = nt * ny * nx * 4
    qs = [0.05, 0.5, 0.95]
    alpha = 0.01
    five = ["count", "mean", "std", "min", "max"]
    tile = max(1, (64 << 20) // (nt * nx * 4))  # rows of y per whole-time-series chunk

    def floor(work: Callable[[np.ndarray], None] | None = None) -> None:
        def block(b: np.ndarray) -> np.ndarray:
            if work is not None:
                work(b)
            return np.zeros((1,) * b.ndim)

        d = toolkit.open_zarr(path).v.data
        d.map_blocks(block, chunks=(1,) * d.ndim).sum().compute()

    bare = _bare_count()
    if bare is not None:
        bare(np.zeros((2, 256), np.float32))  # compiled before it is timed

    cases: list[tuple[str, Any, Callable[[xr.DataArray], Any], Callable[[xr.DataArray], Any]]] = [
        (
            "monthly climatology",
            "time.month",
            lambda v: v.groupby("time.month"),
            lambda v: v.chunk({"time": -1, "y": tile}).groupby("time.month"),
        ),
        (
            "daily resample",
            {"time": TimeResampler("1D")},
            lambda v: v.resample(time="1D"),
            lambda v: v.resample(time="1D"),
        ),
    ]
    rows = []
    floor_s = timed(floor, repeat)
    bare_s = timed(lambda: floor(bare), repeat) if bare is not None else 0.0
    for label, groupby, group, qgroup in cases:

        def tk(groupby: Any = groupby) -> xr.Dataset:
            return toolkit.stats(
                path,
                "time",
                groupby=groupby,
                stats=five,
                quantiles=qs,
                quantile_error=alpha,
                progress=False,
            )

        def xarray_six(group: Any = group, qgroup: Any = qgroup) -> dict[str, Any]:
            v = xr.open_zarr(path).v
            g = group(v)
            lazy = {s: getattr(g, s)() for s in five}
            lazy["quantiles"] = qgroup(v).quantile(qs, dim="time")
            return dict(zip(lazy, dask.compute(*lazy.values()), strict=True))

        def tk_five(groupby: Any = groupby) -> xr.Dataset:
            return toolkit.stats(path, "time", groupby=groupby, stats=five, progress=False)

        got = tk()
        want = xarray_six()
        np.testing.assert_array_equal(got["v_count"].values, want["count"].values)
        for s in ("min", "max"):
            np.testing.assert_array_equal(got[f"v_{s}"].values, want[s].values)
        for s in ("mean", "std"):  # xarray's float32 accumulation
            np.testing.assert_allclose(got[f"v_{s}"].values, want[s].values, rtol=1e-4, atol=1e-5)
        q = want["quantiles"].transpose(*got["v_quantiles"].dims).values
        err = np.abs(got["v_quantiles"].values - q)
        assert (err <= alpha * np.abs(q) * (1 + 1e-6) + 2e-3).all(), float(err.max())
        case = f"groupby {label}, {size / 2**30:.2f} GiB hourly f32 zstd, 6 statistics"
        ngroups = got.sizes["month" if "month" in got.sizes else "time"]
        rows += [
            Row(case, "floor: read + decode every chunk", floor_s),
            *(
                [
                    Row(
                        case,
                        "floor + one count a value in a table per cell (below any sketch)",
                        bare_s,
                    )
                ]
                if bare is not None
                else []
            ),
            Row(
                case,
                f"xarray{_flox()}, one dask.compute (+ rechunk for quantile)",
                timed(xarray_six, max(1, repeat - 1)),
            ),
            Row(case, f"toolkit stats(groupby=...), {ngroups} groups, checked", timed(tk, repeat)),
            Row(
                case,
                "toolkit, the 5 without quantiles (the sketch's share)",
                timed(tk_five, repeat),
            ),
        ]
    return rows


_INGEST_RUN = """
import sys, time, warnings
warnings.filterwarnings("ignore")
import dask, xarray as xr, toolkit
method, pattern, out = sys.argv[1:4]
t0 = time.perf_counter()
with dask.config.set(scheduler="threads"):
    if method == "xarray":
        ds = xr.open_mfdataset(pattern, parallel=True, engine="h5netcdf", combine="by_coords")
        ds.chunk({"time": 48}).to_zarr(out, encoding={"t2m": {"chunks": (48, 180, 360)}})
    else:
        toolkit.ingest(pattern, out, concat_dim="time", chunks={"time": 48}, progress=False)
# VmHWM is this process's own peak: getrusage's ru_maxrss outlives exec, so a child of a
# large benchmark process would report its parent's peak.
hwm = next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(time.perf_counter() - t0, hwm)
"""


def bench_ingest(tmp: Path, nfiles: int, repeat: int) -> list[Row]:
    """One-step netCDF files (180 x 360 float32) into 48-step Zarr chunks, each run in a
    fresh process: wall time, and peak memory (max RSS) at nfiles and a quarter of it.
    """
    import subprocess

    import pandas as pd

    rng = np.random.default_rng(0)
    root = tmp / "ingest"
    root.mkdir()
    lat, lon = np.linspace(-89.5, 89.5, 180), np.linspace(0.5, 359.5, 360)
    for i in range(nfiles):
        t = pd.date_range("2020-01-01", periods=1, freq="h") + pd.Timedelta(hours=i)
        v = (280 + 10 * rng.standard_normal((1, 180, 360))).astype("f4")
        xr.Dataset(
            {"t2m": (("time", "lat", "lon"), v, {"units": "K"})},
            coords={"time": t, "lat": lat, "lon": lon},
        ).to_netcdf(root / f"f{i:05d}.nc", engine="h5netcdf")
    files = sorted(str(p) for p in root.glob("*.nc"))
    rows = []
    for n in (nfiles // 4, nfiles):
        sub = tmp / f"ingest{n}"
        sub.mkdir()
        for f in files[:n]:
            os.symlink(f, sub / Path(f).name)
        for method in ("xarray", "toolkit"):
            times, peaks = [], []
            for k in range(max(1, repeat - 1)):
                out = tmp / f"out-{method}-{n}-{k}.zarr"
                r = subprocess.run(
                    [sys.executable, "-c", _INGEST_RUN, method, str(sub / "*.nc"), str(out)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                sec, rss = r.stdout.split()[-2:]
                times.append(float(sec))
                peaks.append(int(rss) / 1024)
                shutil.rmtree(out)
            label = (
                "xarray open_mfdataset(parallel=True).chunk().to_zarr()"
                if method == "xarray"
                else "toolkit ingest"
            )
            peak = f"{label}, peak {statistics.median(peaks):.0f} MiB"
            rows.append(Row(f"ingest {n} one-step netCDF files", peak, statistics.median(times)))
    return rows


def bench_jobs(writers: list[int], procs: int, delta_max: int) -> list[Row]:
    """N concurrent writers, each adding its own partition on the S3 server (multijob.py)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import multijob

    out = []
    for r in multijob.rows(writers, procs, delta_max, timeout=1800):
        n = r["writers"]
        if "error" in r:
            out.append(Row(f"{n} writers, a partition each, S3", f"{r['kind']}: {r['error']}", 0))
            continue
        name = "toolkit overwrite-partitions" if r["kind"] == "toolkit" else "delta-rs append"
        method = (
            f"{name}: {r['succeeded']}/{n} landed, {r['attempts']} commit attempts, "
            f"{r['commits']} commits, {'intact' if r['intact'] else 'NOT intact'}"
        )
        out.append(Row(f"{n} writers, a partition each, S3", method, r["seconds"]))
    return out


def bench_rechunk(steps: list[int], max_mem: str, limit: int) -> list[Row]:
    """Maps to time series at each size: toolkit, xarray + dask, dask p2p, the floor."""
    sys.path.insert(0, str(Path(__file__).parent))
    import rechunk

    names = {
        "toolkit": f"toolkit rechunk, max_mem={max_mem}",
        "xarray": "xarray open_zarr().chunk().to_zarr(), dask threads",
        "p2p": "dask p2p rechunk, LocalCluster of 2 workers",
    }
    out = []
    for r in rechunk.rows(steps, max_mem, limit, slabs=steps[len(steps) // 2]):
        to = "series" if r["target"] == "series" else "slabs of 24 maps"
        case = f"rechunk {r['steps']} maps of 360x360 to {to} ({r['nbytes'] / 2**30:.2f} GiB)"
        peak = f"peak {r['peak'] / 2**20:,.0f} MiB"
        if r["method"] == "floor":
            method = (
                f"floor: read+decode once {r.get('read', 0):.1f} s + encode+write once "
                f"{r.get('write', 0):.1f} s"
            )
        else:
            method = f"{names[r['method']]} ({peak})"
        if "error" in r:
            method += f": {r['error']}"
        out.append(Row(case, method, r["seconds"]))
    return out


def table(rows: list[Row]) -> str:
    """Rows with their ratio to toolkit's time on the same case (or the case it extends)."""
    lines = ["| case | method | seconds | vs toolkit |", "|---|---|---:|---:|"]
    tk: dict[str, Row] = {}
    for r in rows:
        if r.method.split()[0] == "toolkit":
            tk.setdefault(r.case, r)  # the first toolkit row of a case: its default
    for r in rows:
        # A floor row of "write 1 GiB" compares with toolkit's "write 1 GiB, aligned".
        ref = tk.get(r.case) or next((v for k, v in tk.items() if k.startswith(r.case)), None)
        ratio = f"{r.seconds / ref.seconds:.2f}x" if ref is not None else ""
        lines.append(f"| {r.case} | {r.method} | {r.seconds:.2f} | {ratio} |")
    return "\n".join(lines)


def machine() -> str:
    pk = ", ".join(f"{p} {version(p)}" for p in ("dask", "distributed", "xarray", "zarr", "numpy"))
    return (
        f"{datetime.date.today()} · {platform.machine()} · {os.cpu_count()} cores · "
        f"Python {platform.python_version()} · {pk} · toolkit {toolkit.__version__}"
    )


def tree_of(nodes: int = 13, variables: int = 2, values: int = 10) -> xr.DataTree:
    """Issue 32's tree: ``nodes`` nodes (a root, 3 children, grandchildren) of small variables."""
    out = {}
    for i in range(nodes):
        path = (
            "/"
            if i == 0
            else f"/n{(i - 1) // 4}"
            if (i - 1) % 4 == 0
            else (f"/n{(i - 1) // 4}/m{i}")
        )
        out[path] = xr.Dataset(
            {f"v{k}": ("x", np.arange(values, dtype="f8") + i + k) for k in range(variables)}
        )
    return xr.DataTree.from_dict(out)


def bench_tree(latencies: list[float], repeat: int) -> list[Row]:
    """A DataTree of 13 nodes of 2 variables of 10 values, locally and on S3 behind a proxy.

    toolkit (one plan, one metadata round, one graph) against ``DataTree.to_zarr``
    with xarray's defaults, into zarr's ObjectStore (obstore) and through fsspec
    (s3fs), and the reads: ``toolkit.open_datatree`` (lazy) and ``xr.open_datatree``.
    Each S3 row names the serial round trips the proxy counted (``toolkit.testing.ledger``).
    """
    import logging

    from toolkit.testing import FaultProxy, S3Server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    tree = tree_of()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="toolkit-bench-tree-") as tmp:
        case = "DataTree of 13 nodes x 2 variables x 10 values, local"
        path = Path(tmp) / "t.zarr"
        toolkit.to_zarr(tree, path, mode="w", progress=False)  # warm: imports, first pools
        t = timed(lambda: toolkit.to_zarr(tree, path, mode="w", progress=False), repeat)
        rows.append(Row(f"{case}, write", "toolkit (to_zarr)", t))
        rows.append(
            Row(
                f"{case}, write",
                "DataTree.to_zarr",
                timed(lambda: tree.to_zarr(path, mode="w"), repeat),
            )
        )
        rows.append(
            Row(
                f"{case}, read (lazy)",
                "toolkit (open_datatree)",
                timed(lambda: toolkit.open_datatree(path), repeat),
            )
        )
        rows.append(
            Row(
                f"{case}, read (lazy)",
                "xr.open_datatree",
                timed(lambda: xr.open_datatree(path, engine="zarr"), repeat),
            )
        )
    with S3Server() as s3:
        s3.create_bucket("data")
        for lat in latencies:
            with FaultProxy(s3.endpoint_url, latency=lat) as proxy:
                rows += _tree_case(tree, s3, proxy, lat, repeat)
    return rows


def _tree_case(tree: xr.DataTree, s3: Any, proxy: Any, lat: float, repeat: int) -> list[Row]:
    from toolkit.io.stores import resolve_store
    from toolkit.testing.ledger import summarize

    case = f"DataTree of 13 nodes x 2 variables x 10 values, S3 + {lat * 1e3:.0f} ms"
    rows: list[Row] = []

    def measured(what: str, method: str, fn: Callable[[], object], runs: int) -> None:
        times, trips = [], []
        for _ in range(runs):
            with proxy.ledger() as ledger:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            trips.append(summarize(ledger.requests).round_trips)
        trip = f"{statistics.median(trips):.0f} round trips"
        rows.append(Row(f"{case}, {what}", f"{method}, {trip}", statistics.median(times), trip))

    opts = {**s3.storage_options(proxy.url), "client": "obstore"}
    url = f"s3://data/tree-{int(lat * 1e3)}.zarr"
    fresh = itertools.count()
    # A new store each run, as xarray's rows write one: the creation, claim included.
    measured(
        "write",
        "toolkit (to_zarr)",
        lambda: toolkit.to_zarr(
            tree,
            f"s3://data/tree-{int(lat * 1e3)}-{next(fresh)}.zarr",
            storage_options=opts,
            progress=False,
        ),
        repeat,
    )
    toolkit.to_zarr(tree, url, storage_options=opts, progress=False)
    measured(
        "overwrite",
        "toolkit (to_zarr, mode='w')",
        lambda: toolkit.to_zarr(tree, url, mode="w", storage_options=opts, progress=False),
        repeat,
    )
    for client in ("obstore", "s3fs"):
        store = resolve_store(
            f"s3://data/xr-{client}-{int(lat * 1e3)}.zarr",
            storage_options={**opts, "client": client},
        )
        label = "zarr's ObjectStore" if client == "obstore" else "fsspec"
        # One run each: tens of seconds at 100 ms.
        measured(
            "write",
            f"DataTree.to_zarr ({label})",
            lambda store=store: tree.to_zarr(store, mode="w"),
            1,
        )
    measured(
        "read (lazy)",
        "toolkit (open_datatree)",
        lambda: toolkit.open_datatree(url, storage_options=opts),
        repeat,
    )
    read = resolve_store(url, storage_options=opts)
    measured(
        "read (lazy)", "xr.open_datatree", lambda: xr.open_datatree(read, engine="zarr"), repeat
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", default="1GiB", help="write benchmark size (default 1GiB)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--chunks", default="10000,100000", help="graph benchmark chunk counts")
    p.add_argument(
        "--only",
        choices=(
            "write",
            "graph",
            "cloud",
            "latency",
            "stats",
            "groupby",
            "ingest",
            "jobs",
            "rechunk",
            "tree",
        ),
        default=None,
    )
    p.add_argument(
        "--chains", action="store_true", help="latency: print toolkit's critical paths too"
    )
    p.add_argument("--writers", default="10,100,1000", help="many-writers benchmark N values")
    p.add_argument("--files", type=int, default=2000, help="ingest benchmark files (default 2000)")
    p.add_argument("--stats-size", default="2GiB", help="statistics benchmark size (default 2GiB)")
    p.add_argument(
        "--groupby-size", default="2GiB", help="grouped statistics benchmark size (default 2GiB)"
    )
    p.add_argument("--cloud-size", default="256MiB", help="cloud benchmark size (default 256MiB)")
    p.add_argument(
        "--latency", default="0.02,0.1", help="cloud and latency proxy latencies, seconds"
    )
    p.add_argument("--rechunk-steps", default="1000,4000,16000", help="rechunk: time steps")
    p.add_argument("--rechunk-mem", default="256MiB", help="rechunk: toolkit's max_mem")
    p.add_argument(
        "--rechunk-limit", default="6GiB", help="rechunk: memory limit of each method's processes"
    )
    p.add_argument("--report", default=None, help="also write a Markdown report here")
    args = p.parse_args(argv)
    rows: list[Row] = []
    extra: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="toolkit-bench-") as tmp,
        dask.config.set(scheduler="threads"),
    ):
        if args.only in (None, "write"):
            rows += bench_write(Path(tmp), parse_size(args.size), args.repeat)
        if args.only in (None, "graph"):
            for n in (int(x) for x in args.chunks.split(",")):
                rows += bench_graph(Path(tmp), n, args.repeat if n <= 10_000 else 1)
        if args.only in (None, "stats"):
            rows += bench_stats(Path(tmp), parse_size(args.stats_size), args.repeat)
        if args.only in (None, "groupby"):
            rows += bench_groupby(Path(tmp), parse_size(args.groupby_size), args.repeat)
        if args.only in (None, "ingest"):
            rows += bench_ingest(Path(tmp), args.files, args.repeat)
        if args.only in (None, "jobs"):
            rows += bench_jobs([int(x) for x in args.writers.split(",")], 4, delta_max=100)
        if args.only in (None, "rechunk"):
            steps = [int(x) for x in args.rechunk_steps.split(",")]
            rows += bench_rechunk(steps, args.rechunk_mem, parse_size(args.rechunk_limit))
        if args.only in (None, "latency"):
            lats = [float(x) for x in args.latency.split(",")]
            trips, block = bench_round_trips(lats, min(args.repeat, 2), args.chains)
            rows += trips
            extra.append(block)
        if args.only in (None, "tree"):
            rows += bench_tree([float(x) for x in args.latency.split(",")], min(args.repeat, 2))
        if args.only in (None, "cloud"):
            lats = [float(x) for x in args.latency.split(",")]
            rows += bench_cloud(parse_size(args.cloud_size), lats, min(args.repeat, 2))
            rows += bench_latency(0.2, min(args.repeat, 2))
            budget, model = bench_budget(min(args.repeat, 2))
            rows += budget
            extra.append(
                "The model of a shared budget (one dies at 4 s, one joins at 7 s; "
                f"toolkit.testing.ratesim):\n\n{model}\n"
            )
    text = f"toolkit benchmarks — {machine()}\n\n{table(rows)}\n"
    for block in extra:
        text += f"\n{block}"
    print(text)
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(f"# {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
