"""The ``toolkit`` command line: copy, rechunk, ingest, verify, inspect, stats and demo."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import Hashable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NoReturn

from toolkit.errors import UsageError

__all__ = ["EXIT_CODES", "entry", "main"]

#: The exit statuses of every command (the CLI reference lists them).
EXIT_CODES: Mapping[int, str] = MappingProxyType(
    {
        0: "done: written, or equal",
        1: "the data is wrong or the run failed: values differ, a store is damaged, a write failed",
        2: "the command cannot run as given: bad arguments, a missing file, store or extra, "
        "access refused",
        3: "cannot check: the store holds no manifest (verify)",
        130: "interrupted (Ctrl-C); what landed is kept, and the same command resumes",
    }
)
_DIM_FLAGS = ("--chunks", "--shards")
_DIM_ITEM = re.compile(r"[A-Za-z_][\w.-]*=\d+(,[A-Za-z_][\w.-]*=\d+)*")


def _dim_sizes(items: Sequence[str] | None, flag: str) -> dict[Hashable, int]:
    out: dict[Hashable, int] = {}
    for item in items or []:
        for part in item.split(","):
            dim, sep, n = part.partition("=")
            if not sep or not n.strip().isdigit() or int(n) < 1:
                raise UsageError(f"{flag} takes dim=N with N >= 1, got {part!r}")
            if dim.strip() in out and out[dim.strip()] != int(n):
                raise UsageError(f"{flag} gives {dim.strip()!r} twice ({out[dim.strip()]} and {n})")
            out[dim.strip()] = int(n)
    return out


_CHUNKS_HELP = "target chunk length per dim: time=24,lat=90 (or the flag again per dim)"
_SHARDS_HELP = "target shard length per dim, as --chunks"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from toolkit.errors import DISTRIBUTION

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def _store_options() -> _Parser:
    """The object-store flags every command takes, for each store it touches."""
    p = _Parser(add_help=False)
    g = p.add_argument_group(
        "object stores",
        "for s3://, gs:// and az:// URLs (every store the command touches; local paths ignore "
        "them). Unset, the environment is read as the AWS CLI reads it: AWS_ENDPOINT_URL "
        "(an http:// endpoint allows http), AWS_REGION, AWS_PROFILE, AWS_ACCESS_KEY_ID, ...",
    )
    g.add_argument("--endpoint-url", metavar="URL", help="the S3-compatible endpoint")
    g.add_argument("--region", help="the bucket's region")
    g.add_argument("--anon", action="store_true", help="no credentials (public data)")
    g.add_argument("--profile", help="a profile of ~/.aws/config and ~/.aws/credentials")
    g.add_argument(
        "--client",
        choices=("obstore", "s3fs"),
        help="the object-store client (default: obstore where installed, else s3fs)",
    )
    g.add_argument(
        "-o",
        "--storage-option",
        action="append",
        metavar="KEY=VALUE",
        default=[],
        help="any storage option, fsspec's names (-o requester_pays=true -o key=...); "
        "VALUE is read as JSON where it parses (true, 3, {...}), else as text",
    )
    return p


def storage_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """The ``storage_options`` the store flags of ``args`` ask for (None: none)."""
    opts: dict[str, Any] = {}
    for item in getattr(args, "storage_option", None) or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"-o takes KEY=VALUE, got {item!r}")
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        opts[key.strip()] = value
    if getattr(args, "endpoint_url", None):
        opts["endpoint_url"] = args.endpoint_url
    if getattr(args, "region", None):
        # fsspec's place for it, which both clients read.
        opts["client_kwargs"] = {**(opts.get("client_kwargs") or {}), "region_name": args.region}
    if getattr(args, "anon", False):
        opts["anon"] = True
    if getattr(args, "profile", None):
        opts["profile"] = args.profile
    if getattr(args, "client", None):
        opts["client"] = args.client
    return opts or None


def _for(path: str | None, opts: dict[str, Any] | None) -> dict[str, Any] | None:
    """The options for one path: URLs take them, local paths none."""
    if path is None or "://" not in path or path.startswith("file://"):
        return None
    return opts


def _merged_dims(argv: list[str]) -> list[str]:
    """``--chunks time=4 y=6`` as ``--chunks time=4,y=6``: the old spelling keeps working.

    Only words that look like ``DIM=N`` are taken, so that paths after the flag
    stay positional (``--chunks time=4 src.nc dst.zarr``).
    """
    out: list[str] = []
    in_dims = False
    for word in argv:
        if in_dims and _DIM_ITEM.fullmatch(word):
            out[-1] = f"{out[-1]},{word}"
            continue
        in_dims = bool(out) and out[-1] in _DIM_FLAGS and _DIM_ITEM.fullmatch(word) is not None
        out.append(word)
    return out


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line like every other error (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="toolkit",
        description="Chunk-safe parallel Zarr writes and aligned reads for xarray and dask.",
        epilog="exit status: "
        + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items()),
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    p.add_argument(
        "--traceback",
        action="store_true",
        help="on an error, show the full traceback (also: TOOLKIT_DEBUG=1)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    stores = _store_options()
    _add_copy(sub, stores)
    _add_rechunk(sub, stores)
    _add_ingest(sub, stores)
    _add_verify(sub, stores)
    _add_inspect(sub, stores)
    _add_stats(sub, stores)
    _add_demo(sub)
    return p


def _add_run_options(cmd: argparse.ArgumentParser) -> None:
    """Where a command runs and how hard it may press the store."""
    cmd.add_argument("--workers", type=int, default=0, help="LocalCluster worker processes")
    cmd.add_argument("--rate", type=float, default=None, help="requests/s allowed")
    cmd.add_argument("--max-inflight", type=int, default=None, help="requests in flight")
    cmd.add_argument("--no-progress", action="store_true")


def _add_copy(sub: Any, stores: argparse.ArgumentParser) -> None:
    """``toolkit copy``: one dataset into a chunk-aligned store."""
    c = sub.add_parser(
        "copy",
        parents=[stores],
        help="rewrite a dataset (zarr, netCDF) into a chunk-aligned Zarr store",
    )
    c.add_argument("src", help="source: a Zarr store or a file xarray opens")
    c.add_argument("dst", help="target Zarr store (path or URL)")
    c.add_argument("--chunks", action="append", metavar="DIM=N[,DIM=N]", help=_CHUNKS_HELP)
    c.add_argument(
        "--shards", action="append", metavar="DIM=N[,DIM=N]", help=_SHARDS_HELP + " (format 3)"
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


def _add_rechunk(sub: Any, stores: argparse.ArgumentParser) -> None:
    """``toolkit rechunk``: a store's chunks changed with bounded memory."""
    r = sub.add_parser(
        "rechunk",
        parents=[stores],
        help="rechunk a Zarr store with memory bounded by --max-mem (one or two stages)",
    )
    r.add_argument("src", help="source Zarr store (path or URL)")
    r.add_argument("dst", help="target Zarr store (path or URL)")
    r.add_argument(
        "--chunks", action="append", required=True, metavar="DIM=N[,DIM=N]", help=_CHUNKS_HELP
    )
    r.add_argument("--shards", action="append", metavar="DIM=N[,DIM=N]", help=_SHARDS_HELP)
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
    _add_run_options(r)


def _add_ingest(sub: Any, stores: argparse.ArgumentParser) -> None:
    """``toolkit ingest``: many files along a dim into one store."""
    g = sub.add_parser(
        "ingest",
        parents=[stores],
        help="many source files (netCDF, ...) along a dim into one chunk-aligned store",
    )
    g.add_argument(
        "sources",
        nargs="+",
        help="source files, or a glob ('data/era5_*.nc', quoted or as the shell expands it)",
    )
    g.add_argument("dst", help="target Zarr store (path or URL)")
    g.add_argument("--concat-dim", required=True, help="the dim the files follow each other along")
    g.add_argument("--chunks", action="append", metavar="DIM=N[,DIM=N]", help=_CHUNKS_HELP)
    g.add_argument("--shards", action="append", metavar="DIM=N[,DIM=N]", help=_SHARDS_HELP)
    g.add_argument("--zarr-format", type=int, choices=(2, 3), default=3)
    g.add_argument("--overwrite", action="store_true", help="replace an existing target")
    g.add_argument("--no-resume", action="store_true", help="start over, keep no resume log")
    g.add_argument("--max-task-mib", type=int, default=256, help="memory target per task")
    _add_run_options(g)


def _add_verify(sub: Any, stores: argparse.ArgumentParser) -> None:
    """``toolkit verify``: a store against its sources or its manifest."""
    v = sub.add_parser(
        "verify", parents=[stores], help="compare a written store with its sources, block by block"
    )
    v.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="STORE alone (checked against its manifest), or SRC STORE (compared value by "
        "value); with --concat-dim, many source files (or a glob) and then STORE",
    )
    v.add_argument("--concat-dim", default=None, help="for many files: the dim they follow along")
    v.add_argument("--no-progress", action="store_true")


def _add_inspect(sub: Any, stores: argparse.ArgumentParser) -> None:
    """``toolkit inspect``: what a store holds."""
    i = sub.add_parser(
        "inspect", parents=[stores], help="print variables, shapes, chunk/shard layout and sizes"
    )
    i.add_argument("store")
    i.add_argument("--group", default=None)


def _add_stats(sub: Any, stores: argparse.ArgumentParser) -> None:
    """``toolkit stats``: statistics in one pass, per group too."""
    st = sub.add_parser(
        "stats",
        parents=[stores],
        help="statistics of a store in one pass over its chunks (toolkit.stats)",
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
    st.add_argument(
        "--groupby",
        action="append",
        metavar="NAME",
        help="statistics per group of a coordinate or a virtual one (time.month, time.season, "
        "region); again for groups of several (month x region)",
    )
    st.add_argument(
        "--resample",
        action="append",
        metavar="DIM=FREQ",
        help="statistics per time bin, as xarray's resample: time=1D, time=MS",
    )
    _add_run_options(st)


def _add_demo(sub: Any) -> None:
    """``toolkit demo``: the embedded default, end to end."""
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
    """Run the command line; return the exit status (:data:`EXIT_CODES`)."""
    words = list(sys.argv[1:] if argv is None else argv)
    # --traceback is taken before or after the command's name.
    debug = "--traceback" in words or os.environ.get("TOOLKIT_DEBUG", "").lower() in (
        "1",
        "true",
        "yes",
    )
    words = [w for w in words if w != "--traceback"]
    args, extra = _parser().parse_known_args(_merged_dims(words))
    if extra:
        hint = "; for many source files, use toolkit ingest" if args.command == "copy" else ""
        print(
            f"toolkit {args.command}: error: unrecognized arguments: {' '.join(extra)}{hint} "
            f"(see toolkit {args.command} --help)",
            file=sys.stderr,
        )
        return 2
    try:
        return _run(args)
    except KeyboardInterrupt:
        # The interrupted run's requests are abandoned on zarr's loop: asyncio would
        # print a "Task was destroyed but it is pending!" for each at exit.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        print(f"toolkit {args.command}: interrupted; {_after_interrupt(args)}", file=sys.stderr)
        return 130
    except Exception as e:
        code, text = _explain(e)
        if debug:
            import traceback

            traceback.print_exc()
            return code
        print(f"toolkit {args.command}: error: {_cli_words(text)}", file=sys.stderr)
        return code


def _run(args: argparse.Namespace) -> int:
    from toolkit import commands

    opts = storage_options(args)
    if args.command == "copy":
        with commands.local_cluster(args.workers, 1, print):
            report = commands.copy(
                args.src,
                args.dst,
                chunks=_dim_sizes(args.chunks, "--chunks"),
                shards=_dim_sizes(args.shards, "--shards"),
                zarr_format=args.zarr_format,
                mode="w" if args.overwrite else "w-",
                max_task_bytes=args.max_task_mib * 2**20,
                progress=not args.no_progress,
                storage_options=_for(args.dst, opts),
                source_storage_options=_for(args.src, opts),
                throttle=_throttle(args),
            )
        print(report)
        return 0
    if args.command == "rechunk":
        from toolkit.rechunk import execute_rechunk, plan_rechunk

        with commands.local_cluster(args.workers, 1, print):
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
                storage_options=_for(args.dst, opts) or _for(args.src, opts),
                throttle=_throttle(args),
                workers=args.workers or None,
            )
            print(plan)
            if not args.plan:
                print(execute_rechunk(plan, progress=not args.no_progress))
        return 0
    if args.command == "ingest":
        from toolkit.ingest import ingest

        sources = args.sources[0] if len(args.sources) == 1 else args.sources
        with commands.local_cluster(args.workers, 1, print):
            report = ingest(
                sources,
                args.dst,
                concat_dim=args.concat_dim,
                chunks=_dim_sizes(args.chunks, "--chunks"),
                shards=_dim_sizes(args.shards, "--shards"),
                zarr_format=args.zarr_format,
                mode="w" if args.overwrite else "w-",
                max_task_bytes=args.max_task_mib * 2**20,
                storage_options=_for(args.dst, opts),
                throttle=_throttle(args),
                progress=not args.no_progress,
                resume=not args.no_resume,
            )
        print(report)
        return 0
    if args.command == "verify":
        return _verify(args, opts)
    if args.command == "inspect":
        print(
            commands.inspect(args.store, group=args.group, storage_options=_for(args.store, opts))
        )
        return 0
    if args.command == "stats":
        with commands.local_cluster(args.workers, 1):
            print(_stats(args, _for(args.store, opts)))
        return 0
    ok = commands.demo(
        size=args.size,
        out=args.out,
        workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        zarr_format=args.zarr_format,
        progress=not args.no_progress,
    )
    return 0 if ok else 1


def _verify(args: argparse.Namespace, opts: dict[str, Any] | None) -> int:
    from toolkit.verify import verify

    paths: list[str] = args.paths
    if args.concat_dim is None and len(paths) > 2:
        raise UsageError(
            f"verify takes STORE, or SRC STORE; got {len(paths)} paths. For many source "
            "files, pass --concat-dim DIM (then the files, or a quoted glob, and STORE last)"
        )
    if args.concat_dim is not None and len(paths) < 2:
        raise UsageError("with --concat-dim, verify takes the source files (or a glob), then STORE")
    target = paths[-1] if len(paths) > 1 else None
    source: str | list[str] = paths[0] if len(paths) <= 2 else paths[:-1]
    found = verify(
        source,
        target,
        concat_dim=args.concat_dim,
        progress=not args.no_progress,
        storage_options=_for(target or paths[0], opts),
        source_storage_options=_for(paths[0], opts) if target is not None else None,
    )
    print(found)
    if not found.checked:
        return 3
    return 0 if found.ok else 1


def _after_interrupt(args: argparse.Namespace) -> str:
    """What an interrupted command leaves, and what to do next."""
    if args.command in ("verify", "inspect", "stats") or getattr(args, "plan", False):
        return "nothing was written"
    if args.command == "demo":
        return "run it again to start over"
    if args.command == "ingest" and args.no_resume:
        return f"{args.dst} is incomplete; rerun with --overwrite to start over"
    return (
        f"what landed in {args.dst} is kept (readers refuse it until the write is whole): "
        "run the same command again to resume; it writes only what is missing"
    )


#: The modules behind each extra: a missing one is named with the extra that brings it.
_EXTRAS = MappingProxyType(
    {
        "h5netcdf": "netcdf",
        "h5py": "netcdf",
        "netCDF4": "netcdf",
        "s3fs": "cloud",
        "obstore": "cloud",
        "icechunk": "icechunk",
        "numba": "fast",
        "bokeh": "dashboard",
    }
)


def _explain(e: BaseException) -> tuple[int, str]:
    """The exit status and one line for an error: what went wrong and what to do."""
    from toolkit import errors as err
    from toolkit.io.classify import ACCESS_HINT, refused

    data = (
        err.CorruptChunkError,
        err.CorruptMetadataError,
        err.IncompleteStoreError,
        err.WriteError,
        err.CommitConflictError,
        err.StatsOverflowError,
        err.StoreThrottledError,
        err.StoreUnavailableError,
        err.CoordinationError,
    )
    if isinstance(e, data):
        return 1, _one_line(e)
    if isinstance(e, ImportError):
        module = (e.name or "").split(".")[0]
        if isinstance(e, err.MissingExtraError) or module not in _EXTRAS:
            return 2, _one_line(e)
        return 2, str(err.MissingExtraError("this command", module, _EXTRAS[module]))
    if isinstance(e, err.StoreAccessError | PermissionError):
        return 2, _one_line(e)
    if refused(e):  # a client's own "no credentials", met outside toolkit's retries
        return 2, f"{type(e).__name__}: {_one_line(e)}. {ACCESS_HINT}"
    if isinstance(e, err.ToolkitError | FileNotFoundError | NotADirectoryError | ValueError):
        return 2, _one_line(e)
    if isinstance(e, TypeError) and "unexpected keyword argument" in str(e):
        # A storage option the client does not know (-o NAME=...).
        return 2, f"{_one_line(e)}: an option (-o) the store's client does not take"
    return 1, f"{type(e).__name__}: {_one_line(e)} (rerun with --traceback to see where)"


def _one_line(e: BaseException) -> str:
    """An error's message on one line: no client debug dump, no line breaks."""
    from toolkit.io.stores import redact

    text = str(e).split("Debug source", 1)[0]  # obstore appends its request state's dump
    text = " ".join(text.split())
    if len(text) > 600:
        text = text[:597] + "..."
    return redact(text) or type(e).__name__


#: Python's words in toolkit's messages, and the flags that say the same on the command line.
_CLI_WORDS = (
    (re.compile(r" and mode='w-' never overwrites; use mode='w' to replace it[^;]*"), ""),
    (re.compile(r"mode='w' \(CLI: --overwrite\)"), "--overwrite"),
    (re.compile(r"mode='w-' never overwrites"), "nothing is replaced without --overwrite"),
    (re.compile(r"use mode='w'"), "pass --overwrite"),
    (re.compile(r", or raise max_retries / max_retry_seconds in toolkit\.Throttle"), ""),
    (re.compile(r"\bconcat_dim="), "--concat-dim "),
    (re.compile(r"\bmax_mem="), "--max-mem "),
    (re.compile(r"in storage_options|storage_options="), "with --profile, --anon or -o KEY=VALUE"),
)


def _cli_words(text: str) -> str:
    for pattern, words in _CLI_WORDS:
        text = pattern.sub(words, text)
    if "already holds data" in text and "--overwrite" not in text:
        text += "; pass --overwrite to replace it"
    if "Account must be specified" in text:  # an az:// URL with no account anywhere
        text += (
            " (give the storage account: -o account_name=NAME with -o account_key=... or "
            "-o sas_token=..., or -o connection_string=..., or AZURE_STORAGE_ACCOUNT_NAME and "
            "AZURE_STORAGE_ACCOUNT_KEY in the environment)"
        )
    if "bucket does not exist" in text:
        text += " (create the bucket first, or check its name, --endpoint-url and --region)"
    return text


def _numbers(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated numbers, got {text!r}") from None


def _groupby(args: argparse.Namespace) -> Any:
    """``groupby=`` of :func:`toolkit.stats` from ``--groupby`` and ``--resample``."""
    names: list[str] = args.groupby or []
    if not args.resample:
        return names[0] if len(names) == 1 else (names or None)
    from xarray.groupers import TimeResampler, UniqueGrouper

    groupers: dict[str, Any] = {}
    for item in args.resample:
        dim, sep, freq = item.partition("=")
        if not sep or not dim.strip() or not freq.strip():
            raise UsageError(f"--resample takes DIM=FREQ (time=1D), got {item!r}")
        groupers[dim.strip()] = TimeResampler(freq.strip())
    groupers.update({name: UniqueGrouper() for name in names})
    return groupers


def _stats(args: argparse.Namespace, opts: dict[str, Any] | None) -> str:
    """The statistics of ``args.store``: a table when everything was reduced."""
    from toolkit.stats.compute import stats, summary_table

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
        groupby=_groupby(args),
        throttle=_throttle(args),
        progress=not args.no_progress,
        storage_options=opts,
    )
    table = summary_table(result)  # None: some statistic keeps dims (a map, a histogram)
    return table if table is not None else str(result)


def entry() -> None:  # pragma: no cover - the installed ``toolkit`` command
    """Run :func:`main` and end the process with its status, skipping interpreter teardown.

    The object-store client's Rust threads can outlive the interpreter: after a
    request that failed in obstore's Python credential provider, about one exit
    in twenty aborted (SIGABRT, "Fatal Python error: Aborted") while the
    interpreter was finalizing, after the command had printed its result, so the
    documented status became -6. Everything the command opened (clusters,
    stores, files) is closed by then; the output is flushed, then the process
    ends without finalizing.
    """
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):  # a reader that went away (| head)
            stream.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
