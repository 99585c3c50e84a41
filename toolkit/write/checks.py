"""What a write's inputs must be: the checks :func:`~toolkit.write.plan.plan_write` makes.

Each refuses, before anything is written, what xarray or zarr would refuse (with
xarray's builtin classes and words) or would only fail on halfway through a
write: encodings, regions, variable names, attributes, dtypes, and a store the
tasks could not reach. The placement of variables in the store (their layout
against the stored arrays) is :mod:`toolkit.write.plan`'s.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Hashable, Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr
import zarr
from zarr.abc.store import Store
from zarr.storage import LocalStore

from toolkit.cluster.executor import executor
from toolkit.errors import (
    AppendError,
    AttributeTypeError,
    EncodingError,
    EncodingTypeError,
    PlanError,
    RegionError,
    RegionKeyError,
    RegionTypeError,
    UnknownVariableError,
    UnsupportedVariableError,
    VariableNameError,
)
from toolkit.io.extent import open_settled
from toolkit.io.groups import RESERVED_PREFIX, ExistingGroup
from toolkit.io.keys import METADATA_DOCUMENTS
from toolkit.io.stores import unwrap
from toolkit.upstream import (
    determine_zarr_chunks,
    encode_variable_name,
    encode_zarr_attr_value,
    extract_zarr_variable_encoding,
    xarray_to_zarr,
)

__all__ = [
    "CF_ENCODING_KEYS",
    "LAYOUT_KEYS",
    "check_dtype",
    "check_encoding",
    "check_name",
    "check_store_reachable",
    "check_variables",
    "check_with_xarray",
    "encoded_from_values",
    "own_layout",
    "resolve_region",
    "unstorable",
]

LAYOUT_KEYS = frozenset({"chunks", "shards", "preferred_chunks"})
"""Encoding keys of a variable's layout (placed by the plan, not checked by xarray)."""
_ZARR_KEYS = frozenset(
    {
        "compressors",
        "compressor",
        "filters",
        "serializer",
        "write_empty_chunks",
        "chunk_key_encoding",
        "dimension_separator",
        "object_codec",
    }
)
_CF_KEYS = frozenset(
    {
        "dtype",
        "units",
        "calendar",
        "scale_factor",
        "add_offset",
        "_FillValue",
        "missing_value",
        "_Unsigned",
    }
)
_VALID_ENCODING = LAYOUT_KEYS | _ZARR_KEYS | _CF_KEYS
CF_ENCODING_KEYS = _CF_KEYS
"""Encoding keys of CF conventions (units, calendar, packing, fill values)."""
_V3_ONLY_KEYS = frozenset({"fill_value"})  # zarr 2 takes the fill value from _FillValue only
# Variables xarray writes itself, in the metadata round, rather than through
# tasks: strings and objects (VLen codecs, values inspected while encoding),
# and in-memory times (their CF units may be chosen from the values).
_XARRAY_KINDS = "OUST"
_TIME_KINDS = "mM"


def check_encoding(
    ds: xr.Dataset, encoding: Mapping[Hashable, Mapping[str, Any]] | None, zarr_format: int
) -> dict[Hashable, dict[str, Any]]:
    """``encoding`` checked against ``ds`` and normalized (chunks and shards as tuples).

    Refuses unknown variables (naming the closest), unknown keys, chunks and
    shards that are not one positive integer per dimension, shards on Zarr 2,
    and shards that are not whole multiples of the chunks.
    """
    encoding = dict(encoding or {})
    for name, enc in encoding.items():
        if name not in ds.variables:
            close = difflib.get_close_matches(str(name), [str(k) for k in ds.variables], 1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownVariableError(
                f"encoding names {name!r}, which is not in the dataset{hint}"
            )
        if not isinstance(enc, Mapping):
            raise EncodingError(
                f"encoding[{name!r}] must be castable to a dict of encoding keys, got "
                f"{type(enc).__name__} {enc!r}"
            )
        unknown = set(enc) - _VALID_ENCODING - (_V3_ONLY_KEYS if zarr_format == 3 else frozenset())
        if unknown:
            hint = (
                " Use `_FillValue` to set the Zarr array `fill_value`"
                if "fill_value" in unknown
                else ""
            )
            raise EncodingError(
                f"unexpected encoding parameters for zarr backend: encoding[{name!r}] has "
                f"unknown keys {sorted(unknown)}; valid keys are {sorted(_VALID_ENCODING)}." + hint
            )
        ndim = ds[name].ndim
        for key in ("chunks", "shards"):
            val = enc.get(key)
            if val is None:
                continue
            if isinstance(val, int):
                val = (val,) * ndim
            if (
                not isinstance(val, tuple | list)
                or len(val) != ndim
                or not all(isinstance(x, int | np.integer) and x > 0 for x in val)
            ):
                raise EncodingError(
                    f"encoding[{name!r}][{key!r}] must be {ndim} positive integers "
                    f"(one per dim of {ds[name].dims}), got {enc[key]!r}"
                )
        if enc.get("shards") is not None:
            if zarr_format != 3:
                raise EncodingError(f"encoding[{name!r}] asks for shards, which need zarr_format=3")
            if enc.get("chunks") is None:
                raise EncodingError(
                    f"encoding[{name!r}] gives 'shards' without 'chunks'; give both, "
                    "with each shard a whole multiple of the chunk"
                )
    out: dict[Hashable, dict[str, Any]] = {}
    for name, enc in encoding.items():
        e = dict(enc)
        for key in ("chunks", "shards"):
            if isinstance(e.get(key), int):
                e[key] = (e[key],) * ds[name].ndim
            if e.get(key) is not None:
                e[key] = tuple(int(x) for x in e[key])
        if e.get("shards") and any(s % c for s, c in zip(e["shards"], e["chunks"], strict=True)):
            raise EncodingError(
                f"encoding[{name!r}]: shards {e['shards']} must be whole multiples of "
                f"chunks {e['chunks']}"
            )
        out[name] = e
    return out


def resolve_region(
    ds: xr.Dataset,
    region: Mapping[Hashable, slice | Literal["auto"]] | Literal["auto"],
    existing: ExistingGroup,
    store: Store,
    group: str | None,
) -> dict[str, slice]:
    """``region`` as explicit slices of the stored dimensions, checked as xarray checks it.

    ``"auto"`` (for the whole region or a dimension) is found from the stored
    index coordinate (read from ``store``), which the dataset's values must be
    one contiguous, increasing run of.
    """
    sizes = existing.sizes()
    if region == "auto":
        region = dict.fromkeys(ds.dims, "auto")
    if not isinstance(region, Mapping):
        raise RegionTypeError(f"region must be a dict of dim -> slice or 'auto', got {region!r}")
    out: dict[str, slice] = {}
    auto_index: xr.Dataset | None = None
    for dim, sl in region.items():
        if dim not in ds.dims:
            raise RegionError(
                f"all keys in ``region`` are not in Dataset dimensions: {dim!r} is not "
                f"(the dataset has {list(ds.dims)})"
            )
        if dim not in sizes:
            raise RegionError(
                f"region names dimension {dim!r}, which the store does not have "
                f"(it has {sorted(sizes)}); write the dataset first with mode='w'"
            )
        if isinstance(sl, str) and sl == "auto":
            if dim not in ds.indexes:
                out[str(dim)] = slice(0, ds.sizes[dim])
                continue
            if auto_index is None:
                auto_index = open_settled(store, group, chunks=None, consolidated=False)
            if dim not in auto_index.indexes:
                raise RegionError(
                    f"region={{{dim!r}: 'auto'}} needs a {dim!r} coordinate in the store; "
                    "give an explicit slice instead"
                )
            idx = auto_index.indexes[dim].get_indexer(ds.indexes[dim])
            if (idx < 0).any():
                missing = ds.indexes[dim][idx < 0][:5].tolist()
                raise RegionKeyError(
                    f"region={{{dim!r}: 'auto'}}: values {missing} of the dataset's {dim!r} "
                    "are not in the store; to add new values use append_dim"
                )
            if (np.diff(idx) != 1).any():
                raise RegionError(
                    f"region={{{dim!r}: 'auto'}}: the dataset's {dim!r} values are not one "
                    "contiguous, increasing run of the store's; sort the dataset or split "
                    "the write"
                )
            out[str(dim)] = slice(int(idx[0]), int(idx[-1]) + 1)
            continue
        if not isinstance(sl, slice):
            raise RegionTypeError(
                f"region values must be slice objects (or 'auto'), got region[{dim!r}] = {sl!r}"
            )
        if sl.step not in (None, 1):
            raise RegionError(f"the step on all slices of region must be 1 or None, got {sl!r}")
        start, stop = sl.start or 0, sizes[dim] if sl.stop is None else sl.stop
        if not (0 <= start <= stop <= sizes[dim]):
            raise RegionError(
                f"region[{dim!r}] = {start}:{stop} is out of bounds for the stored "
                f"dimension of length {sizes[dim]}"
            )
        if stop - start != ds.sizes[dim]:
            along = [str(k) for k, v in ds.data_vars.items() if dim in v.dims] or [str(dim)]
            raise RegionError(
                f"variable {along[0]!r} already exists with different dimension sizes: "
                f"region[{dim!r}] = {start}:{stop} has length {stop - start}, but the "
                f"dataset's {dim!r} has length {ds.sizes[dim]}; use "
                f"region={{{dim!r}: slice({start}, {start + ds.sizes[dim]})}}"
            )
        out[str(dim)] = slice(int(start), int(stop))
    unrelated = [str(k) for k, v in ds.variables.items() if not set(out) & set(v.dims)]
    unrelated = [k for k in unrelated if k not in ds.indexes]
    if unrelated:
        raise RegionError(
            "all variables in the dataset to write must have at least one dimension in "
            f"common with the region's dimensions {list(out)}: {unrelated} have none, so "
            f"a region write cannot place them; write ds.drop_vars({unrelated!r})"
        )
    return out


def encoded_from_values(var: xr.Variable) -> bool:
    """Whether xarray's encoders look at ``var``'s values (strings, objects, in-memory times)."""
    kind = var.dtype.kind
    return kind in _XARRAY_KINDS or (kind in _TIME_KINDS and var.chunks is None)


def own_layout(name: str, var: xr.Variable) -> dict[str, Any]:
    """A variable's own encoding, as xarray reads it when ``encoding`` does not name it.

    Its ``chunks`` (and ``shards``) are checked as xarray checks them; keys that
    Zarr does not take stay in the variable's encoding for xarray to drop.
    """
    own = dict(var.encoding)
    if own.get("chunks") is not None:
        try:
            own["chunks"] = determine_zarr_chunks(own["chunks"], None, var.ndim, name)
        except TypeError as e:
            raise EncodingTypeError(f"{name!r}.encoding['chunks']: {e}") from e
        except ValueError as e:
            raise EncodingError(f"{name!r}.encoding['chunks']: {e}") from e
    if isinstance(own.get("shards"), int | np.integer):
        own["shards"] = (int(own["shards"]),) * var.ndim
    return own


def check_with_xarray(
    name: str,
    var: xr.Variable,
    encoding: Mapping[str, Any],
    zarr_format: int,
    *,
    explicit: bool = True,
) -> None:
    """Run xarray's own encoding checks now, so they cannot fail mid-write.

    ``explicit``: the encoding was given as ``encoding=`` (xarray refuses its
    unknown keys) rather than being the variable's own (xarray drops them).
    """
    probe = var.copy(deep=False)
    probe.encoding = {k: v for k, v in encoding.items() if k not in _CF_KEYS}
    try:
        extract_zarr_variable_encoding(
            probe,
            raise_on_invalid=explicit,
            name=name,
            zarr_format=3 if zarr_format == 3 else 2,
        )
        # Then the array's metadata, created for real in memory: codecs, fill values
        # and CF encoding fail here, never halfway through the write.
        own = {} if explicit else {k: v for k, v in var.encoding.items() if k not in encoding}
        lazy = xr.Variable(var.dims, _probe_data(var), var.attrs, {**own, **encoding})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the real write shows xarray's warnings
            # xarray's function, not the method: a user may have routed
            # ``Dataset.to_zarr`` itself through toolkit (this would then recurse).
            xarray_to_zarr(
                xr.Dataset({"probe": lazy}),
                zarr.storage.MemoryStore(),
                mode="w",
                compute=False,
                consolidated=False,
                zarr_format=zarr_format,
                safe_chunks=False,
                encoding={"probe": dict(encoding)} if explicit else None,
            )
    except NotImplementedError as e:
        raise UnsupportedVariableError(f"{name!r}: {e}") from e
    except TypeError as e:
        raise EncodingTypeError(f"encoding[{name!r}]: {e}") from e
    except (ValueError, KeyError) as e:
        raise EncodingError(f"encoding[{name!r}]: {e}") from e


def _probe_data(var: xr.Variable) -> Any:
    """Data standing for ``var``'s in the metadata probe, never computed or copied whole.

    Numeric data becomes a never-computed dask array of its shape. Data xarray
    encodes from its values (strings, objects, in-memory times) is probed with
    the values themselves when small, else with its first element.
    """
    import dask.array as da

    data = var.data
    first = (slice(0, 1),) * var.ndim
    if encoded_from_values(var):
        if isinstance(data, da.Array):
            return np.asarray(data[first].compute() if var.size else data.compute())
        return np.asarray(data if var.size < 2**16 else data[first])
    if isinstance(data, da.Array):
        # One chunk of the same shape and dtype, never computed: the probe's graph
        # stays one task however many blocks the data has.
        return da.empty(data.shape, dtype=data.dtype, chunks=-1)
    return da.from_array(np.asarray(data) if var.size < 2**16 else data, chunks=-1)


def check_variables(ds: xr.Dataset, store: Store, zarr_format: int) -> xr.Dataset:
    """Refuse what xarray refuses to write, with xarray's builtin classes and words.

    Also refuse, before anything is written, what xarray or zarr would only
    fail on halfway through the write: names that cannot be array paths in
    ``store``, and attributes that Zarr's JSON metadata cannot hold.

    A variable named ``None`` is stored under xarray's own name for it (and read
    back as ``None`` by xarray).
    """
    for name, index in ds.xindexes.items():
        if isinstance(getattr(index, "index", None), pd.MultiIndex):
            raise UnsupportedVariableError(
                f"variable {name!r} is a MultiIndex, which cannot yet be serialized; "
                "use reset_index() to convert it to regular variables (and "
                "set_index() after reading it back)"
            )
    local = isinstance(unwrap(store), LocalStore)
    for name in ds.variables:
        if name is not None:
            check_name(name, local=local)
    _check_attributes(ds, zarr_format)
    if None in ds.variables:
        ds = ds.rename({None: encode_variable_name(None)})
    return ds


# Zarr's metadata documents (v3's and v2's): an array of that name would be a
# directory (or a key prefix) where the group keeps its own document.
_NAME_MAX = 255  # bytes of one file name on every common local file system


def check_name(name: Hashable, *, local: bool = False) -> str:
    """A variable's name as a Zarr key: a string that can be an array's path in the group.

    ``local``: the store is a directory, whose file names are at most 255 bytes.
    """
    if not isinstance(name, str):
        raise VariableNameError(
            f"Invalid name {name!r} for DataArray or Dataset key: must be either a "
            "string or None for serialization to netCDF or zarr files; rename it, e.g. "
            f"ds.rename({{{name!r}: {str(name)!r}}})"
        )
    if not name:
        raise VariableNameError(
            f"Invalid name {name!r} for DataArray or Dataset key: string must be length 1 "
            "or greater for serialization to netCDF or zarr files; rename it, e.g. "
            "ds.rename({'': 'var'})"
        )
    reason = unstorable(name, local)
    if reason is not None:
        fixed = name.strip("./").replace("/", "_").replace("\\", "_").replace("\0", "")
        fixed = fixed.encode()[:64].decode(errors="ignore") if len(fixed.encode()) > 64 else fixed
        if fixed.casefold() in METADATA_DOCUMENTS or not fixed:
            fixed = "var"
        raise VariableNameError(
            f"variable name {name!r} cannot be a Zarr array name: {reason}; rename it, "
            f"e.g. ds.rename({{{name!r}: {fixed!r}}})"
        )
    return name


def unstorable(name: str, local: bool) -> str | None:
    """Why ``name`` cannot be an array's path in a Zarr group (None: it can)."""
    if name.casefold() in METADATA_DOCUMENTS:
        case = "" if name in METADATA_DOCUMENTS else " on file systems that ignore case"
        return (
            f"{name!r} is the name of a Zarr metadata document, and the array would "
            f"collide with the group's own{case}"
        )
    if name == RESERVED_PREFIX:
        return f"toolkit keeps its own state (write records, leases) under {RESERVED_PREFIX}/"
    if name in (".", ".."):
        return "'.' and '..' are path segments that zarr refuses"
    if "/" in name or "\\" in name:
        return "a '/' (or a '\\', which zarr reads as one) makes a nested group"
    if name.startswith("."):
        return "a leading '.' makes a hidden key, where Zarr keeps metadata documents"
    if "\0" in name:
        return "a NUL character cannot be in a file or object name"
    if local and len(name.encode()) > _NAME_MAX:
        return (
            f"it is {len(name.encode())} bytes long, and a file name in a directory store "
            f"is at most {_NAME_MAX}"
        )
    return None


def _check_attributes(ds: xr.Dataset, zarr_format: int) -> None:
    """Refuse attributes that Zarr's JSON metadata cannot hold, naming each and its type.

    Each value is encoded as xarray encodes it (numpy scalars and arrays
    become numbers and lists) and stored in an in-memory group of the same
    Zarr format: what passes is exactly what xarray's write stores. Done on
    every mode, although appends and region writes leave the stored
    attributes alone, so that the same dataset is refused (or not) whatever
    the mode. The CF keys of a variable (``units``, ``_FillValue``, ...) are
    xarray's encoders' to check, as they rewrite them.
    """
    owners: list[tuple[str, str, Mapping[Any, Any]]] = [("the dataset", "ds", ds.attrs)]
    owners += [
        (
            f"variable {name!r}",
            f"ds[{name!r}]",
            {k: v for k, v in var.attrs.items() if k not in _CF_KEYS},
        )
        for name, var in ds.variables.items()
    ]
    probe: zarr.Group | None = None
    for owner, path, attrs in owners:
        if not attrs:
            continue
        if probe is None:
            fmt: Literal[2, 3] = 2 if zarr_format == 2 else 3
            probe = zarr.create_group(zarr.storage.MemoryStore(), zarr_format=fmt)
        try:
            probe.attrs.put({k: encode_zarr_attr_value(v) for k, v in attrs.items()})
        except (TypeError, ValueError) as e:
            for key, value in attrs.items():
                try:
                    probe.attrs.put({key: encode_zarr_attr_value(value)})
                except (TypeError, ValueError) as err:
                    raise _bad_attribute(owner, path, key, value, probe, err) from err
            raise AttributeTypeError(
                f"the attributes of {owner} cannot be stored in Zarr's JSON metadata: {e}"
            ) from e


def _bad_attribute(
    owner: str, path: str, key: Any, value: Any, probe: zarr.Group, err: Exception
) -> AttributeTypeError:
    """The error for one attribute: its value's type, or its name's, and what to do."""
    try:
        probe.attrs.put({"value": encode_zarr_attr_value(value)})
    except (TypeError, ValueError):
        pass
    else:  # the value is fine: the name is not
        kind = type(key)
        return AttributeTypeError(
            f"attribute name {key!r} of {owner} is a {kind.__module__}.{kind.__qualname__}, "
            f"which Zarr's JSON metadata cannot hold as a name ({err}); use a string, e.g. "
            f"{path}.attrs[{str(key)!r}] = {path}.attrs.pop({key!r})"
        )
    kind = type(value)
    if isinstance(value, set | frozenset):
        hint = f"{path}.attrs[{key!r}] = sorted({path}.attrs[{key!r}])"
    elif isinstance(value, bytes):
        hint = f"{path}.attrs[{key!r}] = {path}.attrs[{key!r}].decode()"
    else:
        hint = f"del {path}.attrs[{key!r}]"
    return AttributeTypeError(
        f"Invalid attribute in Dataset.attrs: {key!r} of {owner} is a "
        f"{kind.__module__}.{kind.__qualname__} "
        f"({value!r:.60}), which Zarr's JSON metadata cannot hold ({type(err).__name__}: "
        f"{err}); store a string, a number, a bool, None, or a list or dict of them "
        f"instead, e.g. {hint}"
    )


def check_store_reachable(store: Store) -> None:
    """Refuse a process-local store when tasks run in other processes."""
    from zarr.storage import MemoryStore

    if isinstance(store, MemoryStore) and executor().distributed:
        raise PlanError(
            "a zarr MemoryStore lives in this process, but a distributed client is active "
            "and its workers would each write to their own copy (the data would be lost). "
            "Write to a directory or object store, or close the client to use local threads"
        )


def check_dtype(name: str, old: np.dtype[Any], new: np.dtype[Any], appending: bool) -> None:
    """Refuse a write whose values the stored dtype cannot hold."""
    ok = (
        (old.kind in "biuf" and new.kind in "biuf" and np.can_cast(new, old, "same_kind"))
        or (old.kind == "c" and new.kind in "biufc")
        or (old.kind == new.kind and old.kind in "mMb")
        or (old.kind in "OUST" and new.kind in "OUST")
    )
    if not ok:
        raise (AppendError if appending else PlanError)(
            f"{name!r} is stored as {old} but the data is {new}, which it cannot hold "
            f"without losing values; cast it first, e.g. ds[{name!r}].astype({str(old)!r})"
        )
    if appending and new.kind in "SU" and old.kind != "O" and new != old:
        # xarray's rule for appends (_validate_datatypes_for_zarr_append), checked here
        # before anything is written: fixed-width strings of another width would be cut.
        raise AppendError(
            f"Mismatched dtypes for variable {name!r} between the store and the data to "
            f"append: the store has {old}, the data {new}; strings of another fixed width "
            f"would be cut or refused. Cast them to the stored width if they fit "
            f"(ds[{name!r}].astype({str(old)!r})), or rewrite the store with the wider dtype"
        )
