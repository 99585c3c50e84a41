"""The Delta Lake experiment replayed: N concurrent writers, each adding its own partition.

Run by ``benchmarks/run.py --only jobs`` (or directly: ``python benchmarks/multijob.py
--writers 10,100,1000``). The writers are threads spread over ``--procs`` processes; all
write one dataset on the local S3 server (moto, started here). For toolkit each writer
calls ``toolkit.to_zarr(part, url, mode="overwrite-partitions", partition="part")``: the
partition's rows are placed through the store's group-committed log, then written. For
delta-rs each writer calls ``write_deltalake(url, table, mode="append",
partition_by=["part"])`` (one commit per writer, retried on conflicts by delta-rs).

Reported per run: writers that succeeded, commit attempts (log entries tried), wall
time from the start barrier to the last writer, and whether every partition reads back
whole.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import xarray as xr

ROWS, WIDTH = 24, 32


def _part(i: int) -> xr.Dataset:
    v = np.full((ROWS, WIDTH), float(i), "f4")
    return xr.Dataset(
        {"v": (("time", "x"), v)},
        coords={
            "time": np.arange(ROWS, dtype="i8") + i * ROWS,
            "part": ("time", np.full(ROWS, i, "i8")),
        },
    )


def _toolkit_writer(url: str, opts: dict[str, Any], i: int) -> dict[str, Any]:
    import dask

    import toolkit

    with dask.config.set(scheduler="sync"):
        r = toolkit.to_zarr(
            _part(i),
            url,
            mode="overwrite-partitions",
            partition="part",
            storage_options=opts,
            progress=False,
        )
    # Calls batched in one process share one job's figures: say by how many.
    return {**r.placement["commit"], "batched_calls": r.placement.get("batched_calls", 1)}


def _delta_writer(url: str, opts: dict[str, Any], i: int) -> dict[str, Any]:
    import pyarrow as pa
    from deltalake import write_deltalake

    t = pa.table({"part": np.full(ROWS, i, "i8"), "v": np.full(ROWS, float(i), "f4")})
    write_deltalake(url, t, mode="append", partition_by=["part"], storage_options=opts)
    return {"attempts": 1, "commits": 1}


def _process(kind: str, url: str, opts: dict[str, Any], ids: list[int], start: float) -> list:
    fn = _toolkit_writer if kind == "toolkit" else _delta_writer
    while time.time() < start:
        time.sleep(0.001)

    def one(i: int) -> dict[str, Any]:
        try:
            return {"ok": True, **fn(url, opts, i)}
        except Exception as e:
            return {"ok": False, "error": f"{type(e).__name__}: {e}", "tb": traceback.format_exc()}

    with ThreadPoolExecutor(len(ids)) as pool:
        return list(pool.map(one, ids))


def run(kind: str, n: int, procs: int, endpoint: str, bucket: str, timeout: float) -> dict:
    """N writers of ``kind`` on the S3 server at ``endpoint``; returns the measured figures."""
    opts: dict[str, Any] = {
        "key": "testing",
        "secret": "testing",
        "endpoint_url": endpoint,
        "client_kwargs": {"region_name": "us-east-1"},
    }
    url = f"s3://{bucket}/{kind}-{n}"
    if kind == "toolkit":
        import toolkit

        toolkit.to_zarr(
            _part(-1),
            url,
            storage_options=opts,
            progress=False,
            throttle=False,
            encoding={
                "v": {"chunks": (ROWS, WIDTH)},
                "time": {"chunks": (ROWS,)},
                "part": {"chunks": (ROWS,)},
            },
        )
    else:
        opts = _delta_options(endpoint)
        _delta_writer(url, opts, -1)  # the table exists before the writers start, as for toolkit
    ctx = mp.get_context("spawn")
    groups = [list(range(k, n, procs)) for k in range(procs)]
    with ctx.Pool(procs) as pool:
        # Processes start and import first; the writers start together at `start`.
        pool.map(_warm, range(procs))
        start = time.time() + 1.0
        results = [
            pool.apply_async(_process, (kind, url, opts, ids, start)) for ids in groups if ids
        ]
        out = [r for res in results for r in res.get(timeout=timeout)]
    wall = time.time() - start
    ok = [r for r in out if r["ok"]]
    errors = [r["error"] for r in out if not r["ok"]]
    whole = _check(kind, url, opts, n) if kind == "toolkit" else _check_delta(url, opts, n)
    return {
        "kind": kind,
        "writers": n,
        "succeeded": len(ok),
        "attempts": round(sum(r.get("attempts", 0) / r.get("batched_calls", 1) for r in ok)),
        "commits": _log_entries(url, opts) if kind == "toolkit" else len(ok),
        "seconds": wall,
        "intact": whole,
        "errors": errors[:3],
    }


def _log_entries(url: str, opts: dict[str, Any]) -> int:
    """Entries in the dataset's commit log: the commits all the writers cost."""
    import fsspec

    fs = fsspec.filesystem("s3", **opts)
    return sum(p.endswith(".json") for p in fs.ls(f"{url}/.toolkit/coord/log/", refresh=True))


def _warm(_: int) -> None:
    import toolkit  # noqa: F401


def _check(kind: str, url: str, opts: dict[str, Any], n: int) -> bool:
    ds = xr.open_zarr(url, storage_options=opts, consolidated=False).load()
    parts = ds.part.values
    if sorted(set(parts.tolist())) != list(range(-1, n)):
        return False
    for i in range(-1, n):
        rows = parts == i
        if rows.sum() != ROWS or not (ds.v.values[rows] == i).all():
            return False
    return True


def _delta_options(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
        "AWS_S3_ALLOW_UNSAFE_RENAME": "false",
        "conditional_put": "etag",
    }


def _check_delta(url: str, opts: dict[str, Any], n: int) -> bool:
    try:
        from deltalake import DeltaTable

        t = DeltaTable(url, storage_options=opts).to_pyarrow_table()
        parts = np.asarray(t["part"])
        return sorted(set(parts.tolist())) == list(range(-1, n)) and len(parts) == (n + 1) * ROWS
    except Exception:
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--writers", default="10,100,1000")
    p.add_argument("--procs", type=int, default=4)
    p.add_argument("--delta-max", type=int, default=200, help="largest N tried with delta-rs")
    p.add_argument("--timeout", type=float, default=600)
    args = p.parse_args(argv)
    for row in rows(
        [int(x) for x in args.writers.split(",")], args.procs, args.delta_max, args.timeout
    ):
        print(row)
    return 0


def rows(writers: list[int], procs: int, delta_max: int, timeout: float) -> list[dict]:
    """Every run, toolkit and delta-rs (where installed and N <= delta_max)."""
    from toolkit.testing import S3Server

    try:
        import deltalake  # noqa: F401

        have_delta = True
    except ImportError:
        have_delta = False
    out = []
    with S3Server() as s3:
        for n in writers:
            bucket = f"bench-{n}"
            s3.create_bucket(bucket)
            out.append(run("toolkit", n, procs, s3.endpoint_url, bucket, timeout))
            print(out[-1], file=sys.stderr)
            if have_delta and n <= delta_max:
                try:
                    out.append(run("delta", n, procs, s3.endpoint_url, bucket, timeout))
                except Exception as e:
                    out.append({"kind": "delta", "writers": n, "error": repr(e)})
                print(out[-1], file=sys.stderr)
    return out


if __name__ == "__main__":
    sys.exit(main())
