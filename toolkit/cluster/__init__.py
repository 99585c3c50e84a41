"""Running on dask: the active client, progress, cluster-wide budgets and metrics.

The scheduler-side coordinator (:mod:`.coordinator`) enforces request budgets for a
whole ``distributed`` cluster; the store wrappers below are handed its budgets.
"""
