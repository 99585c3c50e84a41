"""Maps to time series: toolkit.rechunk beside xarray + dask, dask's p2p rechunk, and the floor.

Run by ``benchmarks/run.py --only rechunk`` (or directly: ``python benchmarks/rechunk.py
--steps 1000,4000``). The source is ``T x 360 x 360`` float32 stored one map per chunk
``(1, 360, 360)``; the target is one time series of a 36 x 36 tile per chunk
``(T, 36, 36)`` (two stages), and at one size slabs of 24 maps ``(24, 360, 360)``
(one stage). Each method runs in a process of its own (its time: the work, not the
imports or the cluster's start), and the resident memory of its whole process tree
(workers included) is sampled every 50 ms; a method whose tree grows past ``--limit`` is
killed, as a container's memory limit would, and reported so.

The floor reads and decodes every source chunk once, then encodes and writes every
target chunk once from memory (both with one thread per core, measured apart).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any

import psutil

_MAKE = textwrap.dedent(
    """
    import sys
    import numpy as np, zarr
    path, T = sys.argv[1], int(sys.argv[2])
    g = zarr.open_group(path, mode="w")
    a = g.create_array("v", shape=(T, 360, 360), chunks=(1, 360, 360), dtype="f4",
                       dimension_names=("time", "y", "x"))
    t = g.create_array("time", shape=(T,), chunks=(T,), dtype="i8", dimension_names=("time",))
    t[:] = np.arange(T)
    rng = np.random.default_rng(0)
    for i in range(0, T, 200):
        n = min(200, T - i)
        # A smooth field plus noise, at 0.01 resolution: compresses like real data does.
        y = np.linspace(0, 3, 360, dtype="f4")
        a[i : i + n] = (np.sin(y)[None, :, None] * np.cos(y)[None, None, :] * 20
                        + rng.normal(0, 1, (n, 360, 360)).astype("f4")).round(2)
    zarr.consolidate_metadata(path)
    """
)

_METHODS = {
    "toolkit": """
        import toolkit
        t0 = time.perf_counter()
        toolkit.rechunk(src, dst, CHUNKS, max_mem=max_mem, progress=False)
        print("SECONDS", time.perf_counter() - t0)
    """,
    "xarray": """
        import dask, xarray as xr
        t0 = time.perf_counter()
        ds = xr.open_zarr(src)
        for v in ds.variables.values():
            v.encoding.pop("chunks", None); v.encoding.pop("preferred_chunks", None)
        with dask.config.set(scheduler="threads"):
            ds.chunk(CHUNKS).to_zarr(dst, mode="w")
        print("SECONDS", time.perf_counter() - t0)
    """,
    "p2p": """
        import dask, xarray as xr
        from distributed import Client, LocalCluster
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=":0", silence_logs=40) as c, Client(c):
            t0 = time.perf_counter()  # the cluster is up: its start is not counted
            ds = xr.open_zarr(src)
            for v in ds.variables.values():
                v.encoding.pop("chunks", None); v.encoding.pop("preferred_chunks", None)
            with dask.config.set({"array.rechunk.method": "p2p"}):
                ds.chunk(CHUNKS).to_zarr(dst, mode="w")
            print("SECONDS", time.perf_counter() - t0)
    """,
    "floor": """
        import time, numpy as np, zarr
        from concurrent.futures import ThreadPoolExecutor
        a = zarr.open_group(src, mode="r")["v"]
        data = np.empty(a.shape, dtype=a.dtype)
        t0 = time.perf_counter()
        def rd(i):
            data[i : i + 100] = a[i : i + 100]
        with ThreadPoolExecutor(os.cpu_count()) as ex:
            list(ex.map(rd, range(0, T, 100)))
        t1 = time.perf_counter()
        g = zarr.open_group(dst, mode="w")
        shape = tuple(CHUNKS.get(d, n) for d, n in zip(("time", "y", "x"), a.shape))
        b = g.create_array("v", shape=a.shape, chunks=shape, dtype=a.dtype)
        if shape[0] == T:  # series: a block of whole series per call
            blocks = [(slice(None), slice(j, j + 36)) for j in range(0, 360, 36)]
        else:  # slabs of maps: ten chunks' worth per call
            blocks = [(slice(i, i + 10 * shape[0]),) for i in range(0, T, 10 * shape[0])]
        def wr(sel):
            b[sel] = data[sel]
        with ThreadPoolExecutor(os.cpu_count()) as ex:
            list(ex.map(wr, blocks))
        t2 = time.perf_counter()
        print("FLOOR", t1 - t0, t2 - t1)
    """,
}


def _run(
    method: str,
    src: str,
    dst: str,
    steps: int,
    max_mem: str,
    limit: int,
    timeout: float,
    target: str = "series",
) -> dict[str, Any]:
    head = "import os, sys, time\nsrc, dst, T, max_mem = sys.argv[1:3] + [int(sys.argv[3])] + "
    head += 'sys.argv[4:5]\nCHUNKS = {"time": T, "y": 36, "x": 36} if sys.argv[5] == "series" '
    code = head + 'else {"time": 24}\n' + textwrap.dedent(_METHODS[method])
    shutil.rmtree(dst, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code, src, dst, str(steps), max_mem, target],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ps = psutil.Process(proc.pid)
    peak, killed = 0, None
    while proc.poll() is None:
        try:
            tree = [ps, *ps.children(recursive=True)]
            rss = sum(p.memory_info().rss for p in tree if p.is_running())
        except psutil.Error:
            rss = 0
        peak = max(peak, rss)
        elapsed = time.perf_counter() - t0
        # The floor holds the whole array in memory by design: it has no limit.
        if (rss > limit and method != "floor") or elapsed > timeout:
            killed = f"over the {limit / 2**30:.1f} GiB limit" if rss > limit else "timed out"
            for p in [*ps.children(recursive=True), ps]:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            break
        time.sleep(0.05)
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    row: dict[str, Any] = {"method": method, "seconds": seconds, "peak": peak}
    if killed:
        row["error"] = f"killed {killed} after {seconds:.0f} s"
    elif proc.returncode:
        row["error"] = err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"
    for line in out.splitlines():  # the method's own time, imports (and cluster start) left out
        if line.startswith("SECONDS"):
            row["seconds"] = float(line.split()[1])
        if line.startswith("FLOOR"):
            _, read, write = line.split()
            row["read"], row["write"] = float(read), float(write)
            row["seconds"] = float(read) + float(write)
    shutil.rmtree(dst, ignore_errors=True)
    return row


def rows(
    steps: list[int], max_mem: str, limit: int, timeout: float = 1800, slabs: int | None = None
) -> list[dict[str, Any]]:
    """Every method at every size, in one run; each row a dict (see the module's doc).

    ``slabs``: at this size, also maps to slabs of 24 maps (one stage suffices).
    """
    out = []
    with tempfile.TemporaryDirectory(prefix="toolkit-rechunk-") as tmp:
        for t in steps:
            src = f"{tmp}/maps{t}.zarr"
            subprocess.run([sys.executable, "-c", _MAKE, src, str(t)], check=True)
            for target in ("series", "slabs") if t == slabs else ("series",):
                for method in ("floor", "toolkit", "xarray", "p2p"):
                    row = _run(method, src, f"{tmp}/out.zarr", t, max_mem, limit, timeout, target)
                    row.update(steps=t, nbytes=t * 360 * 360 * 4, max_mem=max_mem, target=target)
                    out.append(row)
                    print(json.dumps(row), flush=True)
            shutil.rmtree(src, ignore_errors=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", default="1000,4000,16000")
    p.add_argument("--max-mem", default="256MiB")
    p.add_argument("--limit", default="6GiB", help="memory limit of each method's process tree")
    from dask.utils import parse_bytes

    p.add_argument("--slabs", type=int, default=None, help="at this size, also maps to slabs")
    a = p.parse_args()
    rows([int(x) for x in a.steps.split(",")], a.max_mem, parse_bytes(a.limit), slabs=a.slabs)


if __name__ == "__main__":
    main()
    os._exit(0)
