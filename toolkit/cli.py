"""The ``toolkit`` command line: copy, rechunk, ingest, verify, inspect, stats and demo."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Hashable, Sequence
from typing import Any

from toolkit.errors import UsageError

__all__ = ["main"]


def _dim_sizes(items: Sequence[str] | None, flag: str) -> dict[Hashable, int]:
    out: dict[Hashable, int] = {}
    for item in items or []:
        for part in item.split(","):
            dim, sep, n = part.partition("=")
            if not sep or not n.strip().isdigit() or int(n) < 1:
                raise UsageError(f"{flag} takes dim=N with N >= 1, got {part!r}")
            out[dim.strip()] = int(n)
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="toolkit",
        description="Chunk-safe parallel Zarr writes and aligned reads for xarray and dask.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser(
        "copy", help="rewrite a dataset (zarr, netCDF) into a chunk-aligned Zarr store"
    )
    c.add_argument("src", help="source: a Zarr store or a file xarray opens")
    c.add_argument("dst", help="target Zarr store (path or URL)")
    c.add_argument("--chunks", nargs="+", metavar="DIM=N", help="target chunk length per dim")
    c.add_argument(
        "--shards", nargs="+", metavar="DIM=N", help="target shard length per dim (zarr format 3)"
    )
    c.add_argument("--zarr-format", type=int, choices=(2, 3), default=3)
    c.add_argument("--overwrite", action="store_true", help="replace an existing target")
    c.add_argument("--max-task-mib", type=int, default=256, help="memory target per task")
    c.add_argument(
        "--workers",
        type=int,
        default=0,
        help="run on a LocalCluster of this many worker processes (default: threads)",
    )
    c.add_argument(
        "--rate", type=float, default=None, help="requests/s allowed (whole cluster; object stores)"
    )
    c.add_argument(
        "--max-inflight", type=int, default=None, help="requests in flight (whole cluster)"
    )
    c.add_argument("--no-progress", action="store_true")

    r = sub.add_parser(
        "rechunk", help="rechunk a Zarr store with memory bounded by --max-mem (one or two stages)"
    )
    r.add_argument("src", help="source Zarr store (path or URL)")
    r.add_argument("dst", help="target Zarr store (path or URL)")
    r.add_argument(
        "--chunks", nargs="+", required=True, metavar="DIM=N", help="target chunk length per dim"
    )
    r.add_argument("--shards", nargs="+", metavar="DIM=N", help="target shard length per dim")
    r.add_argument(
        "--max-mem", default="1GiB", help="memory one task may use, e.g. 256MiB (default 1GiB)"
    )
    r.add_argument(
        "--temp", default=None, help="where the intermediate copy goes (default: DST.rechunk-tmp)"
    )
    r.add_argument("--variables", nargs="+", default=None, help="variables (default: all)")
    r.add_argument("--zarr-format", type=int, choices=(2, 3), default=3)
    r.add_argument("--overwrite", action="store_true", help="replace an existing target")
    r.add_argument("--plan", action="store_true", help="print the plan and write nothing")
    r.add_argument("--workers", type=int, default=0, help="LocalCluster worker processes")
    r.add_argument("--rate", type=float, default=None, help="requests/s allowed")
    r.add_argument("--max-inflight", type=int, default=None, help="requests in flight")
    r.add_argument("--no-progress", action="store_true")

    g = sub.add_parser(
        "ingest", help="many source files (netCDF, ...) along a dim into one chunk-aligned store"
    )
    g.add_argument("sources", help="a glob of source files (quote it), e.g. 'data/era5_*.nc'")
    g.add_argument("dst", help="target Zarr store (path or URL)")
    g.add_argument("--concat-dim", required=True, help="the dim the files follow each other along")
    g.add_argument("--chunks", nargs="+", metavar="DIM=N", help="target chunk length per dim")
    g.add_argument("--shards", nargs="+", metavar="DIM=N", help="target shard length per dim")
    g.add_argument("--zarr-format", type=int, choices=(2, 3), default=3)
    g.add_argument("--overwrite", action="store_true", help="replace an existing target")
    g.add_argument("--no-resume", action="store_true", help="start over, keep no resume log")
    g.add_argument("--max-task-mib", type=int, default=256, help="memory target per task")
    g.add_argument("--workers", type=int, default=0, help="LocalCluster worker processes")
    g.add_argument("--rate", type=float, default=None, help="requests/s allowed")
    g.add_argument("--max-inflight", type=int, default=None, help="requests in flight")
    g.add_argument("--no-progress", action="store_true")

    v = sub.add_parser("verify", help="compare a written store with its sources, block by block")
    v.add_argument("src", help="the source (a store, a file, a quoted glob), or the store alone")
    v.add_argument("dst", nargs="?", default=None, help="the written store (omit: manifest)")
    v.add_argument("--concat-dim", default=None, help="for many files: the dim they follow along")
    v.add_argument("--no-progress", action="store_true")

    i = sub.add_parser("inspect", help="print variables, shapes, chunk/shard layout and sizes")
    i.add_argument("store")
    i.add_argument("--group", default=None)

    st = sub.add_parser(
        "stats", help="statistics of a store in one pass over its chunks (toolkit.stats)"
    )
    st.add_argument("store", help="Zarr store (path or URL)")
    st.add_argument("--dim", nargs="+", default=None, help="dims to reduce (default: all)")
    st.add_argument(
        "--stats",
        default="count,mean,std,min,max",
        help="comma-separated statistics (default: count,mean,std,min,max)",
    )
    st.add_argument("--variables", nargs="+", default=None, help="variables (default: numeric)")
    st.add_argument("--bins", type=int, default=None, help="histogram: number of equal bins")
    st.add_argument("--range", default=None, metavar="LOW,HIGH", help="histogram range")
    st.add_argument("--quantiles", default=None, metavar="Q,...", help="e.g. 0.05,0.5,0.95")
    st.add_argument("--workers", type=int, default=0, help="LocalCluster worker processes")
    st.add_argument("--rate", type=float, default=None, help="requests/s allowed")
    st.add_argument("--max-inflight", type=int, default=None, help="requests in flight")
    st.add_argument("--no-progress", action="store_true")

    d = sub.add_parser(
        "demo",
        help="generate a sample dataset, write it on a LocalCluster, read it back and verify",
    )
    d.add_argument("--size", default="200MB", help="dataset size, e.g. 200MB, 2GB (default 200MB)")
    d.add_argument("--out", default=None, help="keep the store here (default: a temp dir)")
    d.add_argument("--workers", type=int, default=2, help="worker processes (0: local threads)")
    d.add_argument("--threads-per-worker", type=int, default=1)
    d.add_argument("--zarr-format", type=int, choices=(2, 3), default=3)
    d.add_argument("--no-progress", action="store_true")
    return p


def _throttle(args: argparse.Namespace) -> Any:
    """A Throttle from --rate/--max-inflight, over the target URL's defaults."""
    if args.rate is None and args.max_inflight is None:
        return None
    from dataclasses import replace

    from toolkit.io.throttle import Throttle

    base = Throttle.for_url(getattr(args, "dst", None) or args.store) or Throttle()
    changes: dict[str, Any] = {}
    if args.rate is not None:
        changes.update(rate=args.rate, read_rate=None, write_rate=None)
    if args.max_inflight is not None:
        changes["max_inflight"] = args.max_inflight
    return replace(base, **changes)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    from toolkit import jobs
    from toolkit.errors import CorruptChunkError, CorruptMetadataError, ToolkitError

    try:
        if args.command == "copy":
            with jobs._cluster(args.workers, 1, print):
                report = jobs.copy(
                    args.src,
                    args.dst,
                    chunks=_dim_sizes(args.chunks, "--chunks"),
                    shards=_dim_sizes(args.shards, "--shards"),
                    zarr_format=args.zarr_format,
                    mode="w" if args.overwrite else "w-",
                    max_task_bytes=args.max_task_mib * 2**20,
                    progress=not args.no_progress,
                    throttle=_throttle(args),
                )
            print(report)
            return 0
        if args.command == "rechunk":
            from toolkit.rechunk import execute_rechunk, plan_rechunk

            with jobs._cluster(args.workers, 1, print):
                plan = plan_rechunk(
                    args.src,
                    args.dst,
                    _dim_sizes(args.chunks, "--chunks"),
                    shards=_dim_sizes(args.shards, "--shards"),
                    max_mem=args.max_mem,
                    temp_store=args.temp,
                    variables=args.variables,
                    zarr_format=args.zarr_format,
                    mode="w" if args.overwrite else "w-",
                    throttle=_throttle(args),
                    workers=args.workers or None,
                )
                print(plan)
                if not args.plan:
                    print(execute_rechunk(plan, progress=not args.no_progress))
            return 0
        if args.command == "ingest":
            from toolkit.ingest import ingest

            with jobs._cluster(args.workers, 1, print):
                report = ingest(
                    args.sources,
                    args.dst,
                    concat_dim=args.concat_dim,
                    chunks=_dim_sizes(args.chunks, "--chunks"),
                    shards=_dim_sizes(args.shards, "--shards"),
                    zarr_format=args.zarr_format,
                    mode="w" if args.overwrite else "w-",
                    max_task_bytes=args.max_task_mib * 2**20,
                    throttle=_throttle(args),
                    progress=not args.no_progress,
                    resume=not args.no_resume,
                )
            print(report)
            return 0
        if args.command == "verify":
            from toolkit.verify import verify

            found = verify(
                args.src, args.dst, concat_dim=args.concat_dim, progress=not args.no_progress
            )
            print(found)
            return 0 if found.ok else 1
        if args.command == "inspect":
            print(jobs.inspect(args.store, group=args.group))
            return 0
        if args.command == "stats":
            with jobs._cluster(args.workers, 1):
                print(_stats(args))
            return 0
        ok = jobs.demo(
            size=args.size,
            out=args.out,
            workers=args.workers,
            threads_per_worker=args.threads_per_worker,
            zarr_format=args.zarr_format,
            progress=not args.no_progress,
        )
        return 0 if ok else 1
    except (CorruptChunkError, CorruptMetadataError) as e:  # the store is damaged
        print(f"toolkit {args.command}: error: {e}", file=sys.stderr)
        return 1
    except (ToolkitError, FileNotFoundError, ValueError) as e:
        print(f"toolkit {args.command}: error: {e}", file=sys.stderr)
        return 2


def _numbers(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated numbers, got {text!r}") from None


def _stats(args: argparse.Namespace) -> str:
    """The statistics of ``args.store``: a table when everything was reduced."""
    from toolkit._render import text_table
    from toolkit.stats.compute import stats

    bin_range = _numbers(args.range, "--range")
    if bin_range is not None and len(bin_range) != 2:
        raise UsageError(f"--range takes LOW,HIGH, got {args.range!r}")
    result = stats(
        args.store,
        dim=args.dim,
        stats=[s.strip() for s in args.stats.split(",") if s.strip()],
        variables=args.variables,
        bins=args.bins,
        bin_range=(bin_range[0], bin_range[1]) if bin_range else None,
        quantiles=_numbers(args.quantiles, "--quantiles"),
        throttle=_throttle(args),
        progress=not args.no_progress,
    )
    scalars = [v for v in result.data_vars.values() if v.ndim == 0]
    if len(scalars) < len(result.data_vars):
        return str(result)
    rows: dict[str, dict[str, str]] = {}
    for v in scalars:
        rows.setdefault(v.attrs["variable"], {"variable": v.attrs["variable"]})
        rows[v.attrs["variable"]][v.attrs["statistic"]] = f"{v.item():.6g}"
    return text_table(list(rows.values()))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
