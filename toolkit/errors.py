"""The one exception tree of toolkit.

Every error subclasses :class:`ToolkitError` *and* the builtin that matches its
meaning, so ``except ValueError`` keeps working for callers who do not know
toolkit. Errors raised while planning are raised before anything is written:
the store is left byte-identical.
"""

from __future__ import annotations

__all__ = [
    "AppendError",
    "EncodingError",
    "ExistingStoreError",
    "PlanError",
    "RegionError",
    "ToolkitError",
    "UnsafePlanError",
    "WriteError",
]


class ToolkitError(Exception):
    """Base class of every error toolkit raises on purpose."""


class PlanError(ToolkitError, ValueError):
    """The requested write cannot be planned; nothing was written."""


class RegionError(PlanError, IndexError):
    """``region`` is out of bounds, malformed, or does not match the dataset."""


class AppendError(PlanError):
    """An append does not fit the existing arrays (dims, dtype or shapes)."""


class EncodingError(PlanError):
    """``encoding`` is invalid or contradicts an existing array."""


class ExistingStoreError(PlanError, FileExistsError):
    """The target already holds data and the mode forbids overwriting it."""


class UnsafePlanError(PlanError):
    """A plan failed validation.

    A write unit would be owned by two tasks, or a task would exceed its memory
    budget.
    """


class WriteError(ToolkitError, RuntimeError):
    """Writing failed after planning succeeded; the message says what landed."""
