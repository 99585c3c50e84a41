"""The one exception tree of toolkit.

Every error subclasses :class:`ToolkitError` *and* the builtin that matches its
meaning, so ``except ValueError`` keeps working for callers who do not know
toolkit. Errors raised while planning are raised before anything is written:
the store is left byte-identical.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: The name toolkit is installed under (``pip install zarr-toolkit``); it imports as ``toolkit``.
DISTRIBUTION = "zarr-toolkit"

__all__ = [
    "AppendError",
    "AttributeTypeError",
    "CleanupWarning",
    "CommitConflictError",
    "CoordinationError",
    "CorruptChunkError",
    "CorruptMetadataError",
    "EncodingError",
    "EncodingTypeError",
    "ExistingStoreError",
    "IncompleteStoreError",
    "IngestError",
    "LeaseLostError",
    "LeaseTimeoutError",
    "MissingExtraError",
    "PartitionError",
    "PlanError",
    "RechunkError",
    "RegionError",
    "RegionKeyError",
    "RegionTypeError",
    "RequestAbortedError",
    "SourceChangedError",
    "StatsError",
    "StatsOverflowError",
    "StoreAccessError",
    "StoreError",
    "StoreRequestError",
    "StoreThrottledError",
    "StoreUnavailableError",
    "ToolkitError",
    "UnknownOptionError",
    "UnknownVariableError",
    "UnsafePlanError",
    "UnsupportedVariableError",
    "UsageError",
    "VariableNameError",
    "WriteError",
]


class ToolkitError(Exception):
    """Base class of every error toolkit raises on purpose."""


class UnknownOptionError(ToolkitError, TypeError):
    """A keyword the function does not take (the message suggests the closest one)."""


class MissingExtraError(ToolkitError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it.

    ``err.extra`` is that extra (``"netcdf"``, ``"cloud"``, ...), ``err.name``
    the missing module.
    """

    def __init__(self, what: str, module: str, extra: str) -> None:
        super().__init__(
            f"{what} needs {module}, which is not installed: pip install "
            f'"{DISTRIBUTION}[{extra}]" (or "{DISTRIBUTION}[all]" for every optional feature)',
            name=module,
        )
        self.what, self.module, self.extra = what, module, extra

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.what, self.module, self.extra))


class UsageError(ToolkitError, ValueError):
    """A command-line argument is malformed (the CLI exits with status 2)."""


class PlanError(ToolkitError, ValueError):
    """The requested write cannot be planned; nothing was written."""


class RegionError(PlanError, IndexError):
    """``region`` is out of bounds, malformed, or does not match the dataset."""


class RegionKeyError(RegionError, KeyError):
    """``region="auto"`` found dataset labels that the store's index does not hold."""

    def __str__(self) -> str:  # KeyError's own would show the message quoted
        return str(self.args[0]) if self.args else ""


class RegionTypeError(RegionError, TypeError):
    """``region`` is not a dict of dimension -> slice (or ``"auto"``)."""


class AppendError(PlanError):
    """An append does not fit the existing arrays (dims, dtype or shapes)."""


class EncodingError(PlanError):
    """``encoding`` is invalid or contradicts an existing array."""


class UnknownVariableError(EncodingError, KeyError):
    """``encoding`` names a variable that the dataset does not have."""

    def __str__(self) -> str:  # KeyError's own would show the message quoted
        return str(self.args[0]) if self.args else ""


class EncodingTypeError(EncodingError, TypeError):
    """``encoding`` holds a value of the wrong kind (a codec that is not one, say)."""


class VariableNameError(PlanError, TypeError):
    """A variable's name cannot be a Zarr array's (not a string, or a path)."""


class AttributeTypeError(PlanError, TypeError):
    """An attribute of the dataset or of a variable that Zarr cannot store as JSON.

    A set, bytes or an arbitrary object, say (xarray's writer raises a bare
    ``TypeError`` for them, halfway through the metadata). The message names the
    attribute, its owner and its type.
    """


class UnsupportedVariableError(PlanError, NotImplementedError):
    """A variable that Zarr cannot hold as it is (a pandas MultiIndex, say)."""


class ExistingStoreError(PlanError, FileExistsError):
    """The target already holds data and the mode forbids overwriting it."""


class PartitionError(PlanError):
    """A partition overwrite does not fit the stored partitions (labels, sizes, order)."""


class IngestError(PlanError):
    """Sources to ingest are missing, unreadable or disagree; nothing was written."""


class RechunkError(PlanError):
    """A rechunk cannot run as asked (a memory limit below one chunk, a temporary store in use)."""


class SourceChangedError(PlanError):
    """The source of an interrupted job changed since its first run started.

    Resuming would keep the old values in what had landed. Attribute
    ``changed`` lists the objects, each with how it changed.
    """

    def __init__(self, message: str, changed: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.changed = list(changed)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.changed))


class UnsafePlanError(PlanError):
    """A plan failed validation.

    A write unit would be owned by two tasks, or a task would exceed its memory
    budget.
    """


class WriteError(ToolkitError, RuntimeError):
    """Writing failed after planning succeeded; the message says what landed.

    Attributes
    ----------
    record : mapping or None
        When the data phase failed, per variable: units planned, units written,
        the index of every missing unit and the errors
        (``{"a": {"units": 64, "written": 53, "missing": [[7, 0], ...],
        "errors": [...]}}``). The same record stays in the store under
        ``.toolkit/writes/``.
    """

    def __init__(self, message: str, record: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.record = record

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the record when the error crosses processes (distributed pickles it).
        return (type(self), (str(self), self.record))


class StoreError(ToolkitError, OSError):
    """A store request failed for good."""


class StoreThrottledError(StoreError):
    """The store kept answering "slow down" (503 SlowDown, 429) past the retry budget."""


class StoreUnavailableError(StoreError, ConnectionError):
    """Retryable failures (500s, dropped connections, timeouts) outlasted the retry budget."""


class StoreAccessError(StoreError, PermissionError):
    """The store refused access (403): credentials or permissions are wrong."""


class StoreRequestError(StoreError):
    """The store rejected a request as malformed or unknown (4xx other than 403/404/429)."""


class CorruptChunkError(ToolkitError, ValueError):
    """A stored chunk cannot be decoded; the message names its key.

    ``err.keys`` lists the store keys that failed to decode.
    """

    def __init__(self, message: str, keys: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.keys = list(keys)

    def __reduce__(self) -> tuple[Any, ...]:  # raised on workers, re-raised here
        return (type(self), (self.args[0], self.keys))


class CorruptMetadataError(ToolkitError, ValueError):
    """A stored metadata document is there but cannot be read: damaged, not absent.

    A group's or an array's ``zarr.json`` (or ``.zgroup``, ``.zarray``, ...)
    that is not JSON, or lacks fields. ``err.key`` is the document's key in
    the store.
    """

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:  # raised on workers, re-raised here
        return (type(self), (self.args[0], self.key))


class StatsError(ToolkitError, ValueError):
    """A statistics request is invalid (unknown statistic, missing dim, bad bins or quantiles)."""


class StatsOverflowError(ToolkitError, OverflowError):
    """An exact integer sum does not fit the 64-bit integer type of the result."""


class RequestAbortedError(ToolkitError, RuntimeError):
    """A request was not sent because its write had already failed."""


class IncompleteStoreError(ToolkitError, ValueError):
    """A store holds the record of a write that did not finish: parts are missing.

    Reading it would return fill values where data was meant to be. Attribute
    ``records`` holds the unfinished writes' records.
    """

    def __init__(self, message: str, records: Sequence[Mapping[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.records = list(records or [])

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.records))


class CleanupWarning(ToolkitError, UserWarning):
    """A write landed whole, but removing its bookkeeping (record, resume log) failed.

    Readers refuse the store until the record is gone: rerun the write, or
    remove it with :func:`toolkit.coordination.records.clear_records`.
    """


class CoordinationError(ToolkitError, RuntimeError):
    """Concurrent jobs cannot coordinate through this store (no atomic conditional write)."""


class LeaseTimeoutError(CoordinationError, TimeoutError):
    """A lease or lock in the store stayed held by another job past the timeout."""


class LeaseLostError(CoordinationError):
    """A job's lease expired or was taken over: the job stops writing (it is fenced)."""


class CommitConflictError(ToolkitError, RuntimeError):
    """A job's changes overlap changes another job committed since it started.

    Attribute ``conflicts`` maps each array to the chunk keys both touched.
    Nothing of the job was committed; retry it on the new state.
    """

    def __init__(self, message: str, conflicts: Mapping[str, Sequence[str]] | None = None) -> None:
        super().__init__(message)
        self.conflicts = {k: list(v) for k, v in (conflicts or {}).items()}

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.conflicts))
