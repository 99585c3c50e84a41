"""Storage: resolving stores, the zarr ``Store`` wrappers, request budgets, I/O metrics.

Everything here works inside one process and knows nothing of clusters, of
toolkit's records or of datasets. Budgets that a cluster coordinates are handed to
:class:`~toolkit.io.wrappers.ThrottleStore` from above (``remote=``).
"""
